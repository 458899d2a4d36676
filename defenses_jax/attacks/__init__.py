"""Attacks as pure JAX functions with one calling convention:

    x_adv, info = attack(target, x, y, key, **params)

`target(x, key) -> Deployed` is the attacked system (target.py): the deployed defense, the bare
network, an adaptive surrogate, a transfer source, with or without a detector, randomised or
not, always called the same way (a deterministic one ignores its key). A plain model becomes
one with `as_target`. `info` holds per-example `success` (re-checked on a fresh forward pass),
`l2` and `linf`, and what else the attack reports. To compile, close over the parameters inside
a jitted function:

    attack = jax.jit(lambda v, x, y, k: pgd(as_target(lambda z: model.apply(v, z)), x, y, k,
                                            eps=0.3, step_size=0.01, steps=40)[0])

`registry.ATTACKS` lists every attack with its access kind, norm and budget parameter.
"""

from defenses_jax.attacks.apgd import apgd, apgd_targeted, dlr_loss
from defenses_jax.attacks.autoattack import autoattack
from defenses_jax.attacks.carlini_wagner import cw_l2
from defenses_jax.attacks.carlini_wagner_linf import cw_linf
from defenses_jax.attacks.deepfool import deepfool
from defenses_jax.attacks.detector_evasion import cw_wb, feature_matching
from defenses_jax.attacks.gradient import bim, fgsm, ll_pgd, madry, pgd
from defenses_jax.attacks.jsma import jsma
from defenses_jax.attacks.norms import distances, project
from defenses_jax.attacks.objectives import is_successful, margin
from defenses_jax.attacks.universal import apply_perturbation, uap
from defenses_jax.attacks.registry import ATTACKS, AttackInfo, attack_info, get_attack
from defenses_jax.attacks.target import Deployed, Evasion, Target, as_target, call_logits
from defenses_jax.attacks.wrappers import bpda, eot, reject_as_true_class, rejecting

__all__ = ["ATTACKS", "AttackInfo", "Deployed", "Evasion", "Target", "apgd", "apgd_targeted",
           "apply_perturbation", "as_target", "attack_info", "autoattack", "bim", "bpda",
           "call_logits", "cw_l2", "cw_linf", "cw_wb", "deepfool", "distances", "dlr_loss", "eot",
           "feature_matching", "fgsm", "get_attack", "is_successful", "jsma", "ll_pgd", "madry",
           "margin", "pgd", "project", "reject_as_true_class", "rejecting", "uap"]
