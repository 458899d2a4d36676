"""Robust accuracy during training, after every epoch (catastrophic overfitting shows up as a
collapse). The training loop imports this module; nothing here imports the training loop."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from defenses_jax.evaluation.runner import adversarial_correct, make_attack_runner, make_predictor
from defenses_jax.evaluation.threat_models import TargetBuilder, parse_attack_specs


class RobustnessMonitor:
  """Robust accuracy of the current training state under one configured attack, on the first
  `eval.monitor.num_examples` test images: called after every epoch, so that single-step
  methods' catastrophic overfitting (robust accuracy collapsing during training) is visible."""

  def __init__(self, config: ml_collections.ConfigDict, exp):
    key = config.eval.monitor.attack
    specs = {s.key: s for s in parse_attack_specs(
        config.eval.attacks, exp.defense, has_detector=bool(config.eval.detection.detector))}
    if key not in specs or specs[key].threat_model == "transfer" or specs[key].info.universal \
        or specs[key].detector_aware:
      raise ValueError(f"eval.monitor.attack {key!r} must name a per-example, non-transfer "
                       f"attack of eval.attacks ({sorted(specs)}) that needs no detector (none "
                       "is fitted during training).")
    spec = specs[key]
    self.ds = exp.test_ds.take(config.eval.monitor.num_examples)
    self.batch_size = min(config.eval.batch_size, -(-len(self.ds) // exp.mesh.shape["data"]) *
                          exp.mesh.shape["data"])
    self.mesh = exp.mesh
    self.runner = make_attack_runner(spec, TargetBuilder(spec.threat_model, exp.model,
                                                         exp.defense, spec.eot_samples),
                                     exp.mesh)
    self.predictor = make_predictor(exp.model, exp.defense, exp.mesh)
    self.key = jax.random.key(config.seed + 2)

  def __call__(self, state) -> float:
    return float(np.mean(adversarial_correct(self.runner, self.predictor, state, self.ds,
                                             self.batch_size, self.mesh, self.key)))
