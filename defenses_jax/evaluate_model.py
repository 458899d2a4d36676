"""Evaluate any JAX model from the command line (robustness.evaluate):

  python -m defenses_jax.evaluate_model --model=my_models:load --data=test.npz --eps=0.3 \
      --preset=quick --out=robustness_report

--model=MODULE:FUNCTION names an importable function (the current directory is on the path)
that takes no arguments and returns either model_fn, x -> logits, or a dict with `model_fn`
and any of `randomised`, `detector_score`, `detector_threshold`, `detector_weight`,
`surrogate_fn` (what robustness.evaluate takes). --data is an .npz with `images` (N, ...) in
[0, 1] and `labels` (N,). Prints the markdown report; --out also writes report.json, report.md
and the broken images' adversarial examples (adversarial.npz) there.
"""

from __future__ import annotations

import importlib
import os
import sys

import numpy as np
from absl import app, flags

from defenses_jax.errors import UserError

_MODEL = flags.DEFINE_string("model", None, "MODULE:FUNCTION returning model_fn or a dict.")
_DATA = flags.DEFINE_string("data", None, ".npz file with `images` in [0, 1] and `labels`.")
_EPS = flags.DEFINE_float("eps", None, "The radius of the threat model's ball.")
_NORM = flags.DEFINE_enum("norm", "linf", ["linf", "l2"], "The threat model's norm.")
_PRESET = flags.DEFINE_enum("preset", "standard", ["quick", "standard", "thorough"],
                            "quick: a minute on CPU for a small model; standard: AutoAttack's "
                            "budgets; thorough: restarts, more queries, adaptive extras.")
_NUM = flags.DEFINE_integer("num_examples", 0, "Evaluate the first N images (0: all).")
_SEED = flags.DEFINE_integer("seed", 0, "The attacks' random seed.")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Images per compiled attack batch.")
_RANDOMISED = flags.DEFINE_bool("randomised", None,
                                "The model takes (x, key); overrides the model's dict.")
_OUT = flags.DEFINE_string("out", "", "Directory for report.json, report.md, adversarial.npz.")
_OPTIONS = ("model_fn", "randomised", "detector_score", "detector_threshold", "detector_weight",
            "surrogate_fn")


class _Refused(UserError):
  """A mistake in the command line or its files: one line, no traceback."""


def load_model(spec: str) -> dict:
  """The evaluate() arguments that --model=MODULE:FUNCTION gives."""
  module_name, _, function_name = spec.partition(":")
  if not module_name or not function_name:
    raise _Refused(f"--model must be MODULE:FUNCTION; got {spec!r}.")
  sys.path.insert(0, os.getcwd())
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise _Refused(f"cannot import {module_name!r} ({e}).") from e
  if not callable(getattr(module, function_name, None)):
    raise _Refused(f"{module_name} has no function {function_name!r}.")
  made = getattr(module, function_name)()
  options = dict(made) if isinstance(made, dict) else {"model_fn": made}
  unknown = set(options) - set(_OPTIONS)
  if unknown or not callable(options.get("model_fn")):
    raise _Refused(f"{spec} must return a callable model_fn or a dict with a callable "
                   f"'model_fn' and any of {_OPTIONS[1:]}; got keys {sorted(options)}.")
  return options


def load_data(path: str, num_examples: int):
  if not os.path.exists(path):
    raise _Refused(f"no data file {path!r}.")
  with np.load(path) as data:
    missing = {"images", "labels"} - set(data.files)
    if missing:
      raise _Refused(f"{path} needs arrays 'images' and 'labels'; it has {data.files}.")
    images, labels = data["images"], data["labels"]
  if num_examples:
    images, labels = images[:num_examples], labels[:num_examples]
  return images, labels


def main(argv):
  del argv
  import jax
  from defenses_jax import robustness
  try:
    if _MODEL.value is None or _DATA.value is None or _EPS.value is None:
      raise _Refused("--model, --data and --eps are required.")
    options = load_model(_MODEL.value)
    if _RANDOMISED.value is not None:
      options["randomised"] = _RANDOMISED.value
    images, labels = load_data(_DATA.value, _NUM.value)
    report = robustness.evaluate(
        images=images, labels=labels, eps=_EPS.value, norm=_NORM.value,
        key=jax.random.key(_SEED.value), preset=_PRESET.value, batch_size=_BATCH.value,
        **options)
  except UserError as e:
    sys.exit(f"error: {e}")
  print(report.to_markdown())
  if _OUT.value:
    report.write(_OUT.value)
    print(f"wrote {_OUT.value}/report.json and report.md")


if __name__ == "__main__":
  app.run(main)
