"""notebooks/quickstart.ipynb executed end to end (nbclient, a real kernel), so it never rots:
every cell runs without error in the pinned environment, its figures are drawn, and its numbers
are sane. DEFENSES_JAX_NOTEBOOK_QUICK=1 shrinks its data and attacks to CPU-CI size."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")


def outputs(cell, kind):
  return [o for o in cell.get("outputs", []) if o.get("output_type") in kind]


def text_of(cell):
  return "".join(o.get("text", "") for o in outputs(cell, ("stream",)))


def test_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv("DEFENSES_JAX_NOTEBOOK_QUICK", "1")
  # The checkout's defenses_jax, as the install cell would provide it in Colab.
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  # The kernel runs in tmp_path, so the notebook's runs land there.
  NotebookClient(notebook, timeout=900, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  code = [c for c in notebook.cells if c.cell_type == "code"]
  assert not any(outputs(c, ("error",)) for c in code)
  images = sum("image/png" in o.get("data", {}) for c in code
               for o in outputs(c, ("display_data", "execute_result")))
  assert images == 3, images  # The digits, the adversarial images, the eps curve.
  log = "\n".join(text_of(c) for c in code)
  assert "restored step 8" in log  # 512 images, batch 64, 1 epoch: restored by name.
  assert "PGD (40 x 0.01, eps 0.3): robust accuracy 0.000" in log  # An undefended CNN.
  for label in ("CW-L2 (4 x 100), paper protocol", "CW-L2 (4 x 100), adaptive sum layer",
                "PGD (40 x 0.01, eps 0.3), deployed (white box)"):
    assert f"{label}: robust accuracy" in log
  assert os.path.exists(tmp_path / "defenses_jax_runs" / "quickstart_target_training" /
                        "results" / "eval.md")
  # A model defined in the notebook, evaluated in one call; behind input quantisation its
  # gradients are masked and the sanity checks say so.
  assert "worst case: robust accuracy" in log and "sanity checks pass: True" in log
  assert "warn: " in log and "all-zero input gradient" in log


def test_the_committed_notebook_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")
  assert not any(c.get("execution_count") for c in notebook.cells if c.cell_type == "code")


def test_the_install_cell_finds_the_code_and_keeps_the_runtimes_jax(tmp_path, monkeypatch):
  """The first cell pip-installed a placeholder URL (failing in Colab as committed) and let pip
  replace a GPU runtime's JAX with the CPU wheel. Run here as in a fresh runtime (defenses_jax
  not importable), with pip's call recorded instead of made."""
  source = next(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells
                if c.cell_type == "code")
  assert "OWNER" not in source
  calls = []
  monkeypatch.setattr(subprocess, "check_call", calls.append)
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(RuntimeError, match="Set REPOSITORY above to its git URL"):
    exec(source, {})  # Nothing to install from: says what to do.
  (tmp_path / "defenses_jax-main.zip").write_bytes(b"")  # Uploaded from GitHub's Download ZIP.
  exec(source, {})
  command = calls[-1]
  assert command[:4] == [sys.executable, "-m", "pip", "install"]
  assert command[-1] == str(tmp_path / "defenses_jax-main.zip")
  with open(command[command.index("-c") + 1]) as f:
    pins = f.read().split()
  for name in ("jax", "jaxlib"):
    assert f"{name}=={importlib.metadata.version(name)}" in pins
  monkeypatch.chdir(os.path.join(REPO, "notebooks"))  # Opened inside a checkout.
  exec(source, {})
  assert calls[-1][-1] == REPO
