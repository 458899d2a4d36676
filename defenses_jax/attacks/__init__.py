"""Attacks as pure JAX functions with one calling convention:

    x_adv, info = attack(logits_fn, x, y, key, **params)

`logits_fn(x) -> logits` closes over a model and a defense (or is `wrappers.stochastic` and
takes (x, key)), so the same attack runs against a bare network, a deployed defense, or an
adaptive surrogate. `info` holds per-example `success` (re-checked on a fresh forward pass),
`l2` and `linf`, and what else the attack reports. To compile, close over the parameters inside
a jitted function:

    attack = jax.jit(lambda v, x, y, k: pgd(lambda z: model.apply(v, z), x, y, k, eps=0.3,
                                            step_size=0.01, steps=40)[0])

`registry.ATTACKS` lists every attack with its access kind, norm and budget parameter.
"""

from defenses_jax.attacks.apgd import apgd, apgd_targeted, dlr_loss
from defenses_jax.attacks.autoattack import autoattack
from defenses_jax.attacks.carlini_wagner import cw_l2
from defenses_jax.attacks.carlini_wagner_linf import cw_linf
from defenses_jax.attacks.deepfool import deepfool
from defenses_jax.attacks.detector_evasion import DetectedSystem, cw_wb, feature_matching
from defenses_jax.attacks.gradient import bim, fgsm, ll_pgd, madry, pgd
from defenses_jax.attacks.jsma import jsma
from defenses_jax.attacks.norms import distances, project
from defenses_jax.attacks.objectives import is_successful, margin
from defenses_jax.attacks.universal import apply_perturbation, uap
from defenses_jax.attacks.registry import ATTACKS, AttackInfo, attack_info, get_attack
from defenses_jax.attacks.wrappers import bpda, eot, reject_as_true_class, stochastic

__all__ = ["ATTACKS", "AttackInfo", "DetectedSystem", "cw_wb", "feature_matching", "apgd", "apgd_targeted", "apply_perturbation", "attack_info",
           "autoattack", "dlr_loss", "bim", "bpda", "cw_l2", "cw_linf", "deepfool",
           "distances", "eot", "fgsm", "get_attack", "is_successful", "jsma", "ll_pgd", "madry",
           "margin", "pgd", "project", "reject_as_true_class", "stochastic", "uap"]
