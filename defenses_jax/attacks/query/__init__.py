"""Query (black-box) attacks: they see the model only through an Oracle (scores or labels),
which counts their queries per example and refuses gradients."""

from defenses_jax.attacks.query.oracle import Oracle, QueryAccessError
from defenses_jax.attacks.query.random_search import random_search

__all__ = ["Oracle", "QueryAccessError", "random_search"]
