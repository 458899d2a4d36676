"""suites/provenance.py: a run stopped mid-stage keeps that stage's time, marked interrupted,
and the published header says so."""

import json
import os
import subprocess

import pytest

from defenses_jax.suites import provenance, publish


def test_an_interrupted_stage_is_recorded_with_its_time(tmp_path):
  out_dir = str(tmp_path / "suite")
  with provenance.recording(out_dir, "train", "python launch.py ...") as run:
    with run.stage("train a"):
      pass
  with pytest.raises(KeyboardInterrupt):
    with provenance.recording(out_dir, "train", "python launch.py ...") as run:
      with run.stage("train b"):
        raise KeyboardInterrupt  # What a SIGTERM'd training raises through.
  with open(os.path.join(out_dir, provenance.FILENAME)) as f:
    first, second = json.load(f)["runs"]
  assert first["finished"] and first["stages"] == [{"stage": "train a",
                                                     "seconds": first["stages"][0]["seconds"]}]
  assert second["finished"] is None
  (stage,) = second["stages"]
  assert stage["stage"] == "train b" and stage["interrupted"] is True
  assert stage["seconds"] >= 0
  header = publish.provenance_header("suite", [first, second])
  assert "train b 0 s (interrupted)" in header and "train a 0 s;" not in header
  assert "train a 0 s (interrupted)" not in header


def test_uncommitted_code_is_recorded_but_published_results_are_not_code(tmp_path):
  """A report run after a publish (README and results/ rewritten, code committed) runs the
  committed code; an edited source file does not."""
  git = lambda *args: subprocess.run(["git", "-C", str(tmp_path), *args], check=True,
                                     capture_output=True)
  git("init", "-q")
  for name in ("code.py", "README.md", "results/suite/tables.md"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("before\n")
  git("add", ".")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
  assert provenance.code_identity(str(tmp_path))["uncommitted_changes"] is False
  (tmp_path / "README.md").write_text("findings\n")
  (tmp_path / "results/suite/tables.md").write_text("published\n")
  identity = provenance.code_identity(str(tmp_path))
  assert identity["uncommitted_changes"] is False and len(identity["commit"]) == 40
  (tmp_path / "code.py").write_text("after\n")
  assert provenance.code_identity(str(tmp_path))["uncommitted_changes"] is True
