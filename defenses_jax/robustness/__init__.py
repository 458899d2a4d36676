"""Evaluate any JAX model: `evaluate(model_fn, images, labels, eps=..., key=...)` runs the
adaptive battery (APGD-CE, APGD-T, Square; EOT for randomised models; the detector folded in
for detector-guarded ones) with the sanity checks that show whether the evaluation itself holds,
and returns a typed Report. `python -m defenses_jax.evaluate_model` is the same from the
command line."""

from defenses_jax.robustness.engine import evaluate
from defenses_jax.robustness.presets import PRESETS, Preset
from defenses_jax.robustness.report import Report, RowResult

__all__ = ["evaluate", "PRESETS", "Preset", "Report", "RowResult"]
