"""Defense registry: configs name a defense; `create_defense` builds it from its options."""

from __future__ import annotations

from defenses_jax.defenses.base import Defense, Deployed, Network
from defenses_jax.defenses.standard import StandardTraining
from defenses_jax.defenses.adversarial_training import AdversarialTraining
from defenses_jax.defenses.adv_transform import AdvTransform
from defenses_jax.defenses.atda import ATDA
from defenses_jax.defenses.collaborative import Collaborative
from defenses_jax.defenses.free_adv import FreeAdv
from defenses_jax.defenses.pdm import PDM
from defenses_jax.defenses.sim_adv import SimAdv
from defenses_jax.defenses.target_training import TargetTraining
from defenses_jax.registry import Registry

DEFENSES = Registry("defense", {
    "standard": StandardTraining,
    "target_training": TargetTraining,
    "adversarial_training": AdversarialTraining,
    "sim_adv": SimAdv,
    "free_adv": FreeAdv,
    "atda": ATDA,
    "pdm": PDM,
    "collaborative": Collaborative,
    "adv_transform": AdvTransform,
})


def create_defense(name: str, num_classes: int, **options) -> Defense:
  return DEFENSES.create(name, options, num_classes=num_classes)


__all__ = ["DEFENSES", "ATDA", "AdvTransform", "AdversarialTraining", "Collaborative", "Defense",
           "Deployed", "FreeAdv", "Network", "PDM", "SimAdv", "StandardTraining", "TargetTraining", "create_defense"]
