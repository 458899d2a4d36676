"""The sanity checks of Carlini et al. 2019 (sanity.py) run against an evaluation: each attack
rerun longer, random noise of its size, an unbounded attack, the input gradients, transfer
against white-box; on the first `eval.sanity.num_examples` attacked images.
"""

from __future__ import annotations

import inspect

import jax.numpy as jnp
import numpy as np

from defenses_jax.attacks.target import call_logits
from defenses_jax.evaluation import sanity
from defenses_jax.evaluation.attacked_set import AttackedSet
from defenses_jax.evaluation.results import SanityCheck
from defenses_jax.evaluation.threat_models import AttackSpec, TargetBuilder
from defenses_jax.progress import call_each


def run_checks(ev: AttackedSet, specs, results: dict, per_attack_correct: dict,
               clean_correct: np.ndarray, cfg, show_progress: bool = True) -> list[SanityCheck]:
  """Carlini et al. 2019 checks on the first `cfg.num_examples` attacked examples (`results`:
  attack key -> AttackResult), with a progress bar over the checks."""
  n = min(cfg.num_examples, len(ev.ds))
  sub = ev.subset(n, seed=1)
  sub_clean = clean_correct[:n]
  checks = [lambda: _gradients(ev, sub), lambda: _unbounded(sub, sub_clean, cfg)]
  for spec in specs:
    if spec.threat_model == "transfer":
      continue
    # An attack run on fewer examples (its own num_examples) is checked on those only.
    m = min(n, spec.num_examples or n)
    spec_sub, spec_clean = (sub, sub_clean) if m == n else (ev.subset(m, seed=1),
                                                            clean_correct[:m])
    attack_correct = per_attack_correct[spec.key][:m] & spec_clean
    if spec.info.budget_param and spec.threat_model in cfg.more_steps_threat_models:
      checks.append(lambda spec=spec, on=spec_sub, ok=spec_clean, done=attack_correct:
                    _more_steps(spec, on, ok, done, cfg))
    if "eps" in spec.params:
      checks.append(lambda spec=spec, on=spec_sub, ok=spec_clean, done=attack_correct:
                    sanity.noise_weaker_than_attack(
                        spec.label, float(np.mean(done)),
                        float(np.mean(on.noise_correct(spec.params["eps"],
                                                       spec.info.norm_of(spec.params),
                                                       len(ok)) & ok)),
                        num_examples=len(ok)))
  for spec in specs:
    for other in specs:
      if (spec.threat_model == "transfer" and other.threat_model == "white_box"
          and other.attack == spec.attack and other.params == spec.params
          and other.detector_aware == spec.detector_aware):
        checks.append(lambda spec=spec, other=other: sanity.transfer_not_stronger(
            spec.label, results[spec.key].system_robust_accuracy, other.label,
            results[other.key].system_robust_accuracy))
  return call_each(checks, f"{ev.trained.exp.config.experiment_name}: sanity checks",
                   enabled=show_progress)


def _gradients(ev: AttackedSet, sub: AttackedSet) -> SanityCheck:
  s, exp = ev.trained.state, ev.trained.exp
  white_box = TargetBuilder("white_box", exp.model, exp.defense)(s.params, s.batch_stats)
  return sanity.gradients_are_informative(
      lambda z: call_logits(white_box, z, ev.key), jnp.asarray(sub.ds.images),
      jnp.asarray(sub.ds.labels))


def _unbounded(sub: AttackedSet, clean: np.ndarray, cfg) -> SanityCheck:
  unbounded = AttackSpec("unbounded", "PGD, eps = 1 (whole box)", "pgd", "white_box",
                         {"eps": 1.0, "step_size": 0.05, "steps": cfg.unbounded_steps,
                          "random_start": False, "loss": "margin"})
  adv_correct = sub.attack(unbounded, None).correct
  success = float(np.mean(~adv_correct[clean])) if clean.any() else 1.0
  return sanity.unbounded_attack_succeeds(success)


def _more_steps(spec: AttackSpec, on: AttackedSet, clean: np.ndarray, attack_correct: np.ndarray,
                cfg) -> SanityCheck:
  """The attack rerun more_steps_factor times longer, unless it fooled every image already."""
  if not attack_correct.any():
    # Nothing left to find: rerunning (an attack such as ZOO costs minutes) cannot lower 0.
    return sanity.more_steps_not_needed(spec.label, num_examples=len(clean))
  param = spec.info.budget_param
  accuracy_at = lambda steps: float(
      np.mean(on.attack(spec.with_params(**{param: steps}), None).correct & clean))
  default_steps = inspect.signature(spec.fn).parameters[param].default
  return sanity.more_steps_do_not_help(spec.label, accuracy_at,
                                       int(spec.params.get(param, default_steps)),
                                       cfg.more_steps_factor, num_examples=len(clean))
