"""Evaluation of trained experiments: attacks under threat models over a test set (runner,
threat_models), detection, metrics, the Carlini et al. sanity checks, reports and figures, and
adversarial examples saved for transfer. `evaluate(config, workdir)` runs it all."""

from defenses_jax.evaluation.evaluator import evaluate

__all__ = ["evaluate"]
