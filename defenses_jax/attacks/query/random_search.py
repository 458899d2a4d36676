"""Random search: the simplest query attack, a baseline any black-box attack must beat.

Each query is a uniformly random point of the eps-sphere around x (an L-inf corner, or an L2
direction scaled to eps), clipped to [0, 1]; the first one the Oracle labels as another class is
kept. Per example it stops at its first success or when its query budget is spent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch


def random_search(oracle, x, y, key, *, eps: float, norm: str = "linf",
                  max_queries: int = 1000):
  """Returns (x_adv, info): success (the Oracle's own answer), queries used, l2, linf; an
  example that is never fooled comes back as x."""
  check_batch(x, y)
  norms.check_norm(norm)
  batch = x.shape[0]
  draw_key, query_key = jax.random.split(key)

  def candidate(i):
    k = jax.random.fold_in(draw_key, i)
    if norm == "linf":
      step = eps * jax.random.rademacher(k, x.shape, x.dtype)
    else:
      direction = jax.random.normal(k, x.shape, x.dtype)
      step = eps * direction / norms.l2_norm(direction)
    return jnp.clip(x + step, 0.0, 1.0)

  def cond(state):
    i, counts, done, _ = state
    return (i < max_queries) & jnp.any(~done & (counts < oracle.budget))

  def body(state):
    i, counts, done, best = state
    z = candidate(i)
    answers, counts, answered = oracle.query(z, counts, jax.random.fold_in(query_key, i),
                                             active=~done)
    labels = answers if oracle.access == "labels" else jnp.argmax(answers, axis=-1)
    fooled = answered & (labels != y)
    return i + 1, counts, done | fooled, jnp.where(norms.per_example(fooled, x), z, best)

  init = (jnp.zeros((), jnp.int32), oracle.initial_counts(batch), jnp.zeros((batch,), bool), x)
  _, counts, done, x_adv = lax.while_loop(cond, body, norms.varying_like(init, x))
  return x_adv, {"success": done, "queries": counts, **norms.distances(x_adv, x)}
