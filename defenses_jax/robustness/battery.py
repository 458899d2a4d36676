"""The attacks `evaluate` runs on a system, picked from what the system declares.

Every system gets AutoAttack's members that this library has (Croce & Hein 2020): APGD-CE,
APGD-T (targeted DLR) and Square. A randomised system is attacked through EOT: the gradient
attacks see its class scores averaged over `eot_draws` fresh draws at every step (the mean
log-probability, wrappers.eot), Square's Oracle answers each query with the mean over
`decision_draws` fresh draws; so an attack judges its own success on an average, not on one
lucky draw that the system's majority decision would overrule. A detector-guarded system is
attacked as a whole: its detector is folded into the class scores as a reject logit merged into
the true class (wrappers.reject_as_true_class), so every member, APGD-T included, aims at
"misclassified and accepted"; AutoAttack itself would count a rejected input as robust and
attack the classifier alone. That detector-unaware attack is run too, as a reference row, to
show what it would have reported.

Rows run in order as AutoAttack's do, each on the examples no earlier row got through
("cascade"), except reference rows, which attack every example whose clean input did not
already get through, so that their robust accuracy alone is known.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from defenses_jax.attacks.apgd import apgd, apgd_targeted
from defenses_jax.attacks.gradient import pgd
from defenses_jax.attacks.query.es_sign_pgd import es_sign_pgd, es_sign_pgd_query_budget
from defenses_jax.attacks.query.oracle import Oracle
from defenses_jax.attacks.query.square import square
from defenses_jax.robustness.presets import Preset
from defenses_jax.robustness.system import System


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  description: str
  # run(x, y, key) -> (x_adv, per-example queries or None): pure, jitted by the runner.
  run: Callable
  access: str  # "gradient" or "scores" (a black-box attack: it reads only class scores)
  detector_aware: Optional[bool] = None  # None: the system has no detector.
  cascade: bool = True


def _apgd_rows(system: System, preset: Preset, eps, norm, num_classes, aware) -> list[Row]:
  common = dict(eps=eps, norm=norm, steps=preset.apgd_steps, restarts=preset.apgd_restarts)
  draws = preset.eot_draws
  eot = f", EOT {draws}" if system.randomised else ""
  rows = [Row("APGD-CE", f"APGD, cross-entropy, {preset.apgd_steps} steps x "
              f"{preset.apgd_restarts}{eot}",
              lambda x, y, k: (apgd(system.attacked(y, draws=draws), x, y, k, loss="ce",
                                    **common)[0], None), "gradient", aware)]
  if num_classes >= 4:  # Targeted DLR's denominator needs four classes.
    targets = min(preset.target_classes, num_classes - 1)
    extra = preset.detector_weight_factors if system.guarded else ()
    for factor in (1.0,) + tuple(f for f in extra if f != 1.0):
      name = "APGD-T" if factor == 1.0 else f"APGD-T, detector x{factor:g}"
      rows.append(Row(
          name, f"APGD, targeted DLR, {targets} targets x {preset.apgd_restarts} x "
          f"{preset.apgd_steps} steps{eot}",
          lambda x, y, k, f=factor: (apgd_targeted(system.attacked(y, f, draws), x, y, k,
                                                   num_target_classes=targets, **common)[0],
                                     None), "gradient", aware))
  elif num_classes == 3:  # DLR's denominator z_pi1 - z_pi3 needs three.
    rows.append(Row("APGD-DLR", f"APGD, DLR (APGD-T needs >= 4 classes), "
                    f"{preset.apgd_steps} steps{eot}",
                    lambda x, y, k: (apgd(system.attacked(y, draws=draws), x, y, k,
                                          loss="dlr", **common)[0], None), "gradient", aware))
  # Two classes: the cross-entropy is a monotone function of the one margin, so APGD-CE
  # already follows what a margin or DLR loss would.
  return rows


def _query_rows(system: System, preset: Preset, eps, norm, image_shape, aware) -> list[Row]:
  """Score-only attacks. A randomised system answers each query with the mean over
  `decision_draws` fresh draws: one draw's answer would end an attack on a lucky draw."""
  rows, draws = [], preset.decision_draws
  eot = f", each query EOT {draws}" if system.randomised else ""
  if len(image_shape) == 3 and preset.square_queries > 0:  # Square perturbs (H, W, C) windows.
    q = preset.square_queries

    def run_square(x, y, k):
      x_adv, info = square(Oracle(system.attacked(y, draws=draws), "scores", q), x, y, k,
                           eps=eps, norm=norm, max_queries=q)
      return x_adv, info["queries"]

    rows.append(Row("Square", f"Square, margin loss, {q} queries{eot}", run_square, "scores",
                    aware))
  if preset.es_sign_pgd_steps > 0 and norm == "linf":
    steps, budget_samples = preset.es_sign_pgd_steps, (50, 200, 500)

    def run_es(x, y, k):
      oracle = Oracle(system.attacked(y, draws=draws), "scores",
                      es_sign_pgd_query_budget(steps=steps, samples=budget_samples))
      x_adv, info = es_sign_pgd(oracle, x, y, k, eps=eps, steps=steps, step_size=eps / 10,
                                sigma=eps / 4, samples=budget_samples)
      return x_adv, info["queries"]

    rows.append(Row("ES sign-PGD", f"sign-PGD on an antithetic ES gradient estimate, {steps} "
                    f"steps, {budget_samples} directions per phase{eot}", run_es, "scores",
                    aware))
  return rows


def _margin_pgd_row(system: System, preset: Preset, eps, norm, aware) -> Row:
  restarts, steps, draws = preset.margin_pgd_restarts, preset.apgd_steps, preset.eot_draws

  def run(x, y, k):
    return pgd(system.attacked(y, draws=draws), x, y, k, eps=eps,
               step_size=eps / 8 if norm == "linf" else eps / 4, steps=steps, norm=norm,
               restarts=restarts, loss="margin")[0], None

  eot = f", EOT {draws}" if system.randomised else ""
  return Row("PGD-margin", f"PGD on the C&W margin, {steps} steps x {restarts} restarts{eot}",
             run, "gradient", aware)


def build_rows(system: System, preset: Preset, eps: float, norm: str, num_classes: int,
               image_shape: tuple) -> list[Row]:
  """The battery for `system` under `preset`, in the order it runs."""
  aware = True if system.guarded else None
  rows = _apgd_rows(system, preset, eps, norm, num_classes, aware)
  if preset.margin_pgd_restarts > 0:
    rows.append(_margin_pgd_row(system, preset, eps, norm, aware))
  rows += _query_rows(system, preset, eps, norm, image_shape, aware)
  if system.guarded:
    classifier = System(system.model_fn, system.randomised)
    rows.append(Row(
        "APGD-CE, detector ignored",
        "APGD-CE on the classifier alone (what AutoAttack would run), judged on the system",
        lambda x, y, k: (apgd(classifier.attacked(y, draws=preset.eot_draws), x, y, k, eps=eps,
                              norm=norm, steps=preset.apgd_steps,
                              restarts=preset.apgd_restarts)[0], None),
        "gradient", detector_aware=False, cascade=False))
  return rows
