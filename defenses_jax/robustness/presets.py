"""How hard `evaluate` attacks: the attack budgets and sanity-check sizes of each preset.

- `standard`: AutoAttack's budgets (Croce & Hein 2020): APGD-CE and APGD-T at 100 iterations,
  APGD-T against the 9 highest other classes, Square with 5,000 queries, EOT over 20 draws.
- `quick`: about a minute on 2 CPU cores for a small MNIST model and 100 images: for trying a
  model out, never for a number anyone should cite.
- `thorough`: AutoAttack's budgets with 5 restarts (its "plus" setting), Square with 10,000
  queries, and the adaptive attacks of this project's papers that apply to any model: PGD on
  the C&W margin loss with restarts (papers 000-001), sign-PGD on an evolution-strategies
  gradient estimate that needs no gradient (paper 004); for a detector-guarded model, APGD-T
  with the detector weighed 10x lighter and 10x heavier than the automatic balance.
"""

from __future__ import annotations

import dataclasses

from defenses_jax.errors import EvaluationInputError


@dataclasses.dataclass(frozen=True)
class Preset:
  name: str
  apgd_steps: int
  apgd_restarts: int
  target_classes: int  # APGD-T's targets: the highest other classes of the clean logits.
  square_queries: int
  eot_draws: int  # Gradient draws per APGD step on a randomised model (EOT).
  decision_draws: int  # A randomised model's decision: the majority of this many draws.
  sanity_examples: int  # The sanity checks run on the first this many images.
  more_steps_factor: int
  check_restarts: int  # The restarts check reruns APGD-CE with this many restarts.
  unbounded_steps: int
  # Adaptive attacks beyond AutoAttack's members (see the module docstring).
  margin_pgd_restarts: int = 0
  es_sign_pgd_steps: int = 0
  detector_weight_factors: tuple = ()


PRESETS = {
    "quick": Preset("quick", apgd_steps=25, apgd_restarts=1, target_classes=3,
                    square_queries=300, eot_draws=4, decision_draws=5, sanity_examples=32,
                    more_steps_factor=4, check_restarts=3, unbounded_steps=50),
    "standard": Preset("standard", apgd_steps=100, apgd_restarts=1, target_classes=9,
                       square_queries=5000, eot_draws=20, decision_draws=10,
                       sanity_examples=100, more_steps_factor=4, check_restarts=5,
                       unbounded_steps=100),
    "thorough": Preset("thorough", apgd_steps=100, apgd_restarts=5, target_classes=9,
                       square_queries=10000, eot_draws=50, decision_draws=25,
                       sanity_examples=250, more_steps_factor=4, check_restarts=10,
                       unbounded_steps=200, margin_pgd_restarts=5, es_sign_pgd_steps=100,
                       detector_weight_factors=(0.1, 10.0)),
}


def preset_named(preset) -> Preset:
  """A Preset from its name (or the Preset itself)."""
  if isinstance(preset, Preset):
    return preset
  if preset not in PRESETS:
    raise EvaluationInputError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} "
                               "or pass a robustness.Preset.")
  return PRESETS[preset]
