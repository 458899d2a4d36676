"""Query (black-box) attacks: they see the model only through an Oracle (scores or labels),
which counts their queries per example and refuses gradients."""

from defenses_jax.attacks.query.oracle import Oracle, QueryAccessError

__all__ = ["Oracle", "QueryAccessError"]
