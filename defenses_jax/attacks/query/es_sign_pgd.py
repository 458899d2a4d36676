"""Sign-PGD on an antithetic evolution-strategies gradient estimate (scores only): the attack
Tramer, Carlini, Brendel and Madry (2020, `wielandbrendel/adaptive_attacks_paper`, 01_kwta)
used to break k-WTA, a defense by the authors of paper 004 whose gradients are useless through
discontinuity. It needs no gradient, so neither a non-differentiable transformation nor
randomness inside the model can mask it.

Per iteration, for each example: n gaussian directions u_i, 2n queries at x +- sigma u_i
(clipped to [0, 1]: queries are images), the estimate
    g = sum_i [L(x + sigma u_i) - L(x - sigma u_i)] u_i / (2 sigma n)
of the gradient of the margin L (own class score minus the best other; targeted: the best
other minus the target's), then x <- Pi_eps(x - step_size sgn g), and one query at the new
point; an example stops (frozen) at its first success or when its budget is spent. n grows with
the iteration as the reference: 100 below iteration 20, 1,000 below 40, then 20,000 (`samples`,
`boundaries`); the reference's other settings are the defaults: sigma 8/255, step 0.01, eps
0.031, 100 iterations. The queries of one direction batch run in chunks (`chunk`), so memory
stays that of `chunk` images per example whatever n is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch, class_logit, max_other_logit
from defenses_jax.attacks.query.oracle import check_query_targets


def _phases(steps: int, samples: tuple, boundaries: tuple) -> list:
  """[(first iteration, end, directions)] covering range(steps)."""
  edges = [0, *[min(b, steps) for b in boundaries], steps]
  return [(a, b, n) for a, b, n in zip(edges[:-1], edges[1:], samples) if b > a]


def es_sign_pgd_query_budget(steps: int = 100, samples: tuple = (100, 1000, 20000),
                             boundaries: tuple = (20, 40), **_) -> int:
  """Queries per example if it is never fooled: one at x, then 2n + 1 per iteration."""
  return 1 + sum((b - a) * (2 * n + 1) for a, b, n in _phases(steps, tuple(samples),
                                                               tuple(boundaries)))


def _check(x, y, eps, steps, step_size, sigma, samples, boundaries, chunk, target, targets):
  check_batch(x, y)
  check_query_targets("es_sign_pgd", target, targets)
  if not (eps > 0 and step_size > 0 and sigma > 0 and steps >= 0 and chunk >= 1):
    raise ValueError(f"es_sign_pgd needs eps, step_size, sigma > 0, steps >= 0 and chunk >= 1; "
                     f"got {eps}, {step_size}, {sigma}, {steps}, {chunk}.")
  if (len(samples) != len(boundaries) + 1 or any(n < 1 for n in samples)
      or list(boundaries) != sorted(boundaries)):
    raise ValueError(f"es_sign_pgd: `samples` needs one more entry than the increasing "
                     f"`boundaries` (the iterations where n changes), all >= 1; got {samples}, "
                     f"{boundaries}.")


def margin_of(scores: jax.Array, classes: jax.Array, targeted: bool) -> jax.Array:
  """Negative iff the scores are fooled (untargeted: another class wins; targeted: the
  target wins)."""
  own, others = class_logit(scores, classes), max_other_logit(scores, classes)
  return others - own if targeted else own - others


def antithetic_gradient(oracle, x, classes, counts, key, *, n: int, sigma: float,
                        chunk: int, targeted: bool = False, active=None):
  """The ES estimate of d margin / dx per example from 2n queries (in chunks of at most
  `chunk` directions). Returns (estimate, counts, answered): an example the Oracle stopped
  answering (budget) gets answered False."""
  size = next(d for d in range(min(chunk, n), 0, -1) if n % d == 0)  # Divides n exactly.
  batch = x.shape[0]
  answered = jnp.ones((batch,), bool) if active is None else active

  def one_chunk(j, state):
    estimate, counts, answered = state
    k = jax.random.fold_in(key, j)
    u = jax.random.normal(jax.random.fold_in(k, 0), (batch, size) + x.shape[1:], x.dtype)
    xs = jnp.clip(jnp.concatenate([x[:, None] + sigma * u, x[:, None] - sigma * u], 1), 0, 1)
    scores, counts, ok = oracle.query_many(xs, counts, jax.random.fold_in(k, 1),
                                           active=answered)
    flat = scores.reshape((batch * 2 * size,) + scores.shape[2:])
    losses = margin_of(flat, jnp.repeat(classes, 2 * size), targeted).reshape(batch, 2 * size)
    diff = jnp.where(ok[:, None], losses[:, :size] - losses[:, size:], 0.0)
    estimate = estimate + jnp.einsum("bs,bs...->b...", diff, u) / (2 * sigma * n)
    return estimate, counts, answered & ok

  return lax.fori_loop(0, n // size, one_chunk,
                       norms.varying_like((jnp.zeros_like(x), counts, answered), x))


def es_sign_pgd(oracle, x, y, key, *, eps: float = 0.031, steps: int = 100,
                step_size: float = 0.01, sigma: float = 8 / 255,
                samples: tuple = (100, 1000, 20000), boundaries: tuple = (20, 40),
                chunk: int = 500, target: str = "none", targets=None):
  """Returns (x_adv, info) with per example: success (the Oracle's own answer), queries used,
  l2, linf. An example never fooled comes back as x."""
  samples, boundaries = tuple(int(n) for n in samples), tuple(int(b) for b in boundaries)
  _check(x, y, eps, steps, step_size, sigma, samples, boundaries, chunk, target, targets)
  if oracle.access != "scores":
    raise ValueError("es_sign_pgd needs an Oracle with access 'scores' (it estimates a "
                     "gradient from score differences).")
  targeted = target != "none"
  classes = targets if targeted else y
  start_key, loop_key = jax.random.split(key)
  scores, counts, answered = oracle.query(x, oracle.initial_counts(x.shape[0]), start_key)
  done = answered & (margin_of(scores, classes, targeted) < 0)
  active = answered & ~done

  def iteration(n):
    def body(loop_state):
      i, (x_cur, counts, done, active) = loop_state
      k = jax.random.fold_in(loop_key, i)
      g, counts, ok = antithetic_gradient(oracle, x_cur, classes, counts, k, n=n, sigma=sigma,
                                          chunk=chunk, targeted=targeted, active=active)
      active = active & ok
      moved = norms.project(x_cur - step_size * jnp.sign(g), x, eps, "linf")
      x_cur = jnp.where(norms.per_example(active, x), moved, x_cur)
      scores, counts, ok = oracle.query(x_cur, counts, jax.random.fold_in(k, 2 ** 20),
                                        active=active)
      fooled = ok & (margin_of(scores, classes, targeted) < 0)
      return i + 1, (x_cur, counts, done | fooled, active & ok & ~fooled)
    return body

  state = norms.varying_like((x, counts, done, active), x)
  for first, end, n in _phases(steps, samples, boundaries):  # At most len(samples) phases.
    # Stops as soon as no example is left to attack (all fooled or out of budget).
    _, state = lax.while_loop(lambda s, end=end: (s[0] < end) & jnp.any(s[1][3]),
                              iteration(n), (jnp.asarray(first, jnp.int32), state))
  x_cur, counts, done, _ = state
  x_adv = jnp.where(norms.per_example(done, x), x_cur, x)
  return x_adv, {"success": done, "queries": counts, **norms.distances(x_adv, x)}
