"""Robust accuracy against the attack budget: an evaluation's eps sweep, and the accuracy-vs-eps
curves of suite figures (paper 002's Figure 3).
"""

from __future__ import annotations

from typing import Optional

import ml_collections
import numpy as np

from defenses_jax.evaluation.attacked_set import AttackedSet
from defenses_jax.evaluation.threat_models import AttackSpec, parse_attack_specs
from defenses_jax.experiment import TrainedExperiment
from defenses_jax.progress import progress_bar


def eps_sweep(ev: AttackedSet, specs, cfg, clean_correct) -> dict:
  """Robust accuracy under the attack `cfg.attack` at each of `cfg.eps_values`."""
  spec = next((s for s in specs if s.key == cfg.attack), None)
  if spec is None:
    raise ValueError(f"eval.eps_sweep.attack {cfg.attack!r} is not one of eval.attacks.")
  n = min(cfg.num_examples, len(ev.ds))
  sub = ev.subset(n, seed=2)
  config = ev.trained.exp.config
  bar = progress_bar(len(cfg.eps_values), enabled=config.train.progress, unit="eps",
                     description=f"{config.experiment_name}: {spec.label} over eps")
  points = _sweep(sub, spec, cfg.eps_values, clean_correct[:n], bar)
  bar.close()
  return {"attack": spec.key, "label": spec.label, "num_examples": n, "points": points}


def _sweep(sub: AttackedSet, spec: AttackSpec, eps_values, clean_correct, bar=None
           ) -> list[dict]:
  points = []
  for eps in eps_values:
    changes = {"eps": float(eps)}
    if spec.attack in ("pgd", "ll_pgd") and "step_size" in spec.params:
      # Keep the step a fixed fraction of the budget, as the papers' Name(n1, n2) notation does.
      changes["step_size"] = spec.params["step_size"] * float(eps) / spec.params["eps"]
    correct = sub.attack(spec.with_params(**changes), None).correct & clean_correct
    points.append({"eps": float(eps), "robust_accuracy": float(np.mean(correct))})
    if bar is not None:
      bar.update(1)
  return points


def accuracy_vs_eps(config: ml_collections.ConfigDict, workdir: str, attack_key: str,
                    eps_values, num_examples: int, datasets: Optional[tuple] = None) -> dict:
  """Accuracy of the trained experiment under one of its eval.attacks (not detector-aware, not
  transfer) at each eps, on its first `num_examples` test images (paper 002's Figure 3)."""
  trained = TrainedExperiment(config, workdir, datasets)
  specs = {s.key: s for s in parse_attack_specs(config.eval.attacks, trained.exp.defense,
                                                has_detector=bool(config.eval.detection.detector))}
  spec = specs.get(attack_key)
  if spec is None or "eps" not in spec.params or spec.detector_aware or spec.source_experiment:
    raise ValueError(f"accuracy_vs_eps: {attack_key!r} must be one of {config.experiment_name}'s "
                     "eval.attacks with an eps, neither detector-aware nor a transfer attack.")
  ev = AttackedSet(trained, trained.exp.test_ds.take(num_examples), config.eval.batch_size,
                  config.seed)
  return {"attack": attack_key, "label": spec.label, "num_examples": len(ev.ds),
          "points": _sweep(ev, spec, eps_values, ev.clean_correct())}
