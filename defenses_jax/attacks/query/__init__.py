"""Query (black-box) attacks: they see the model only through an Oracle (scores or labels),
which counts their queries per example and refuses gradients.

    random_search  labels  random points of the eps-sphere (the baseline)
    hop_skip_jump  labels  HopSkipJump, L2 / L-inf minimum-norm (or success within eps)
    zoo            scores  ZOO: CW-L2 with finite-difference coordinate ADAM / Newton
    gen_attack     scores  GenAttack: a genetic search in the L-inf ball
    square         scores  Square: random square windows, L-inf / L2 (AutoAttack's member)
    es_sign_pgd    scores  sign-PGD on an antithetic ES gradient estimate (the k-WTA break)
"""

from defenses_jax.attacks.query.es_sign_pgd import es_sign_pgd
from defenses_jax.attacks.query.gen_attack import gen_attack
from defenses_jax.attacks.query.hop_skip_jump import hop_skip_jump
from defenses_jax.attacks.query.oracle import Oracle, QueryAccessError
from defenses_jax.attacks.query.random_search import random_search
from defenses_jax.attacks.query.square import square
from defenses_jax.attacks.query.zoo import zoo

__all__ = ["Oracle", "QueryAccessError", "es_sign_pgd", "gen_attack", "hop_skip_jump", "random_search",
           "square", "zoo"]
