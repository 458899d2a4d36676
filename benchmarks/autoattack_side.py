"""The reference side of the robust-accuracy benchmark: AutoAttack's own PyTorch code
(fra31/auto-attack) on a PyTorch port of the same weights (`references.torch_port`, parity-
checked to 1e-4 in the logits), so both sides evaluate the same function.

It runs in its own virtualenv (torch and AutoAttack are not dependencies of the library;
AutoAttack is not on PyPI), built from the repository root as:

  PYENV_VERSION=3.12.1 python3.12 -m venv /work/benchvenv
  /work/benchvenv/bin/pip install -r requirements.txt
  /work/benchvenv/bin/pip install torch==2.13.0
  mkdir -p /work/autoattack_src && git --git-dir=/work/.mirror/fra31+auto-attack/repo archive \
      a39220048b3c9f2cca9a4d3a54604793c68eca7e -- . ':(exclude)autoattack/examples/model_test.pt' \
      | tar -x -C /work/autoattack_src
  /work/benchvenv/bin/pip install /work/autoattack_src

(torch from PyPI: download.pytorch.org was unreachable, and PyPI's Linux wheel is the CUDA 13
build, which cannot be imported without its nvidia-* wheels (~6 GB in all); it runs on CPU. The
mirror lacks the blob of the example checkpoint model_test.pt, hence the exclude. Where GitHub
is reachable: pip install git+https://github.com/fra31/auto-attack@a392200.)

Run with PYTHONPATH=<repository root> /work/benchvenv/bin/python.
"""

from __future__ import annotations

import json
import time

import numpy as np

from benchmarks import references

# The commit the recipe above installs; reported when pip's metadata does not name one (an
# install from a local copy records only its path).
AUTOATTACK_COMMIT = "a39220048b3c9f2cca9a4d3a54604793c68eca7e"

# The settings the standard version (L-inf) runs the attacks that 'custom' shares with it:
# AutoAttack's constructor values (autoattack.py) as set_version('standard') overrides them.
# A 'custom' AutoAttack keeps the constructor's, and one differs: APGD-CE has 5 restarts there,
# 1 in 'standard'. Set them all, so that 'custom' runs exactly the standard version's APGD-CE,
# APGD-T and Square, only without FAB-T.
STANDARD_SETTINGS = {
    "apgd": {"n_restarts": 1, "n_iter": 100},
    "apgd_targeted": {"n_restarts": 1, "n_iter": 100, "n_target_classes": 9},
    "square": {"n_restarts": 1, "n_queries": 5000, "p_init": 0.8},
}
CUSTOM_ATTACKS = ["apgd-ce", "apgd-t", "square"]  # the members our library also has


def autoattack_commit() -> str:
  """The installed AutoAttack's commit: pip's record of a git install, else AUTOATTACK_COMMIT."""
  from importlib import metadata
  try:
    direct_url = json.loads(metadata.distribution("autoattack").read_text("direct_url.json")
                            or "{}")
  except metadata.PackageNotFoundError:
    return "not installed"
  return direct_url.get("vcs_info", {}).get("commit_id", AUTOATTACK_COMMIT)


def make_autoattack(model, *, eps, version, seed):
  """AutoAttack on `model` (PyTorch, NCHW) at L-inf eps: version 'standard' (APGD-CE, APGD-T,
  FAB-T, Square) or 'custom' (CUSTOM_ATTACKS with the standard version's settings)."""
  from autoattack import AutoAttack
  if version == "standard":
    return AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=seed, device="cpu",
                      verbose=False)
  if version != "custom":
    raise ValueError(f"version must be 'standard' or 'custom', not {version!r}")
  adversary = AutoAttack(model, norm="Linf", eps=eps, version="custom", seed=seed, device="cpu",
                         attacks_to_run=list(CUSTOM_ATTACKS), verbose=False)
  for attack, settings in STANDARD_SETTINGS.items():
    for name, value in settings.items():
      setattr(getattr(adversary, attack), name, value)
  return adversary


def run_autoattack(logits_fn, variables, x, y, *, eps, version, seed=0):
  """AutoAttack's robust accuracy of the paper 000 MNIST CNN (`variables`, whose jitted logits
  are `logits_fn`) on x (NHWC in [0, 1]), y (int labels).

  Returns {"robust_accuracy": over all given images (a clean-misclassified image is not
  robust), "per_example_robust": list of bool, "seconds": wall time of AutoAttack's
  run_standard_evaluation (its sanity checks, clean pass and attacks; not the port, which is
  set-up), "version", "autoattack_commit"}. Images go through in AutoAttack's default batches
  of 250; the seed is AutoAttack's, reset by each attack on each batch."""
  import torch
  x = np.asarray(x, np.float32)
  model = references.torch_port(logits_fn, variables, x)
  adversary = make_autoattack(model, eps=eps, version=version, seed=seed)
  x_nchw = references.to_nchw(x)
  labels = torch.tensor(np.asarray(y), dtype=torch.long)
  start = time.perf_counter()
  _, y_adv = adversary.run_standard_evaluation(x_nchw, labels, return_labels=True)
  seconds = time.perf_counter() - start
  # y_adv is the clean prediction where no attack succeeded and the adversarial one elsewhere,
  # so it equals the label exactly where the image is clean-correct and robust.
  robust = (y_adv == labels).numpy()
  return {"robust_accuracy": float(robust.mean()) if len(robust) else float("nan"),
          "per_example_robust": [bool(r) for r in robust], "seconds": seconds,
          "version": version, "autoattack_commit": autoattack_commit()}
