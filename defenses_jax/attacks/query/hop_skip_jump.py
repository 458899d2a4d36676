"""HopSkipJumpAttack (Chen, Jordan, Wainwright 2020): a label-only (decision-based) attack that
walks along the decision boundary towards the clean input, from the authors' `hsja.py`.

It sees only the Oracle's labels (a `scores` Oracle works too: only its argmax is used). Per
example:

1. One query on x. An x that is already misclassified (targeted: already the target) is
   returned unchanged: success, distance 0, 1 query (no 0/0 step, unlike the reference:
   foolbox #670, ART #307).
2. Initialisation: uniform noise in [0, 1] drawn until one is adversarial (at most
   `max_init_queries` draws, each a query; `starts`, if given, is the first candidate), then
   a blend binary search between x and it to a tolerance of 0.001 (10 queries), then the
   binary search below (the projection to the boundary). An example with no adversarial draw
   is unsuccessful and comes back as x. Targeted (target='given'): the reference starts from a
   user-supplied `target_image`; here the draws must be classified as the target, which noise
   rarely is for a multi-class model, so pass `starts` (e.g. an image of the target class)
   for a targeted attack that is to succeed.
3. Iteration t = 1..steps from the boundary point x_t:
   - delta_t = 0.1 at t = 1, else sqrt(d) theta dist_post (L2) or d theta dist_post (L-inf),
     dist_post the distance of the point *before* the last binary search (as the reference);
   - n_t = min(int(init_evals sqrt(t)), max_evals) random unit directions u (normal for L2,
     uniform in [-1, 1] for L-inf, normalised in L2), x~ = clip(x_t + delta u) and u recomputed
     as (x~ - x_t) / delta; phi = +1 (adversarial) / -1; the estimate is mean(phi u) when all
     phi agree and mean((phi - mean phi) u) otherwise, normalised. The n_t directions are
     queried in blocks of `chunk` directions (an inner while_loop), the remainder in blocks of
     isqrt(chunk) and then one by one, accumulating sum(phi u), sum(u) and the number of
     adversarial directions: the estimate is exact, every query counted, every shape static;
   - v = g (L2) or sign(g) (L-inf); step eps = dist(x_t) / sqrt(t), halved until
     clip(x_t + eps v) is adversarial: at most `max_step_halvings` halvings, so at most
     max_step_halvings + 1 queries (the reference has no cap and can loop forever); if none
     is adversarial x_t is kept for the next iteration (no binary search);
   - binary search back to the boundary (below).

Binary search between x and an adversarial x': L2 blends (1 - a) x + a x' over a in [0, 1];
L-inf clips x' to [x - a, x + a] over a in [0, ||x' - x||_inf]. The reference loops while
(high - low) / threshold > 1 with threshold theta (L2) or min(dist theta, theta) (L-inf); in
the [0, 1] box both take exactly ceil(log2(1 / theta)) halvings, which is what runs here (a
fixed count: a float32 bracket that stops shrinking cannot loop forever), capped by
`max_search_steps`. It returns the adversarial end, the very array the Oracle labelled.

theta = gamma / (d sqrt(d)) (L2) or gamma / d^2 (L-inf), d the number of input features.

Budget: every query is counted by the Oracle per example (info["queries"]). An example stops
at its budget (the Oracle's, or `max_queries` if smaller): an unanswered query means no
information, so it keeps its best adversarial point so far. A batch of directions is asked
only if all of it fits in the example's remaining budget. `hop_skip_jump_query_budget` gives
the most queries the schedule can ask (exact with d, the number of input features; without d
an upper bound for any d), so an Oracle built with it never refuses one.

Returns (x_adv, info). x_adv is the adversarial point of smallest attack-norm distance found
(every candidate is an Oracle-verified boundary point; the reference returns the last one). If
`eps` is given, an example whose best point is farther than eps comes back as x with success
False, so that robust accuracy at eps, judged on x_adv, is honest. info: success (adversarial
under the Oracle and, with eps, within it), distance (attack norm of x_adv - x; inf where
success is False), found_distance (of the best adversarial point found, even outside eps; inf
if none), queries, targets (targeted only), l2, linf, l0 (of x_adv - x).
"""

from __future__ import annotations

import inspect
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch
from defenses_jax.attacks.query.oracle import check_query_targets

# The reference's initial blend search runs to a tolerance of 0.001: 10 halvings of [0, 1].
INIT_BLEND_STEPS = 10
_TINY = 1e-12


def threshold(norm: str, d: int, gamma: float = 1.0) -> float:
  """The binary-search threshold theta: gamma / d^1.5 (L2) or gamma / d^2 (L-inf)."""
  norms.check_norm(norm)
  return gamma / (d * math.sqrt(d)) if norm == "l2" else gamma / d ** 2


def search_steps(theta: float, cap: Optional[int] = None) -> int:
  """The halvings of the reference's binary search: the smallest k with 2^-k <= theta, at most
  `cap`."""
  k = 0
  while 2.0 ** -k > theta and (cap is None or k < cap):
    k += 1
  return k


def gradient_evals(steps: int, init_evals: int = 100, max_evals: int = 10_000) -> list:
  """n_t = min(int(init_evals sqrt(t)), max_evals) for t = 1..steps (float64, as the
  reference's numpy)."""
  return [int(min(int(init_evals * np.sqrt(t)), max_evals)) for t in range(1, steps + 1)]


def _distance(a, b, norm: str):
  """Per-example attack-norm distance, (B,)."""
  diff = (a - b).reshape(a.shape[0], -1)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(diff * diff, -1))
  return jnp.max(jnp.abs(diff), -1)


class _Decision:
  """Asks the Oracle whether points are adversarial: (B, Q, ...) candidates -> adversarial
  (B, Q), counts, answered (B,). An inactive example, or one whose Q queries do not fit in its
  budget (the Oracle's, or max_queries), is not asked and pays nothing (answered False)."""

  def __init__(self, oracle, y, targets, max_queries: Optional[int]):
    self.oracle, self.y, self.targets = oracle, y, targets
    self.limit = oracle.budget if max_queries is None else min(int(max_queries), oracle.budget)

  def __call__(self, xs, counts, key, active):
    active = active & (counts + xs.shape[1] <= self.limit)
    answers, counts, answered = self.oracle.query_many(xs, counts, key, active)
    labels = answers if self.oracle.access == "labels" else jnp.argmax(answers, axis=-1)
    hit = labels != self.y[:, None] if self.targets is None else labels == self.targets[:, None]
    return hit & answered[:, None], counts, answered


def _binary_search(decide, x, x_far, counts, key, active, norm: str, steps: int):
  """Binary search between x (not adversarial) and the adversarial x_far (see the module
  docstring). Returns (boundary point, low, high, counts, exhausted): the boundary point is
  the last candidate labelled adversarial (x_far itself if none was); exhausted marks the
  examples whose budget ran out during the search."""
  batch = x.shape[0]
  high0 = (jnp.ones((batch,), x.dtype) if norm == "l2" else
           _distance(x_far, x, "linf").astype(x.dtype))

  def candidate(alpha):
    a = norms.per_example(alpha, x)
    if norm == "l2":
      return (1 - a) * x + a * x_far
    return jnp.clip(x_far, x - a, x + a)

  def cond(state):
    i, _, _, _, _, searching = state
    return (i < steps) & jnp.any(searching)

  def body(state):
    i, low, high, x_high, counts, searching = state
    mid = (low + high) / 2
    z = candidate(mid)
    adv, counts, answered = decide(z[:, None], counts, jax.random.fold_in(key, i), searching)
    adv = adv[:, 0]
    high = jnp.where(adv, mid, high)
    low = jnp.where(answered & ~adv, mid, low)
    x_high = jnp.where(norms.per_example(adv, x), z, x_high)
    return i + 1, low, high, x_high, counts, searching & answered

  init = (jnp.zeros((), jnp.int32), jnp.zeros((batch,), x.dtype), high0, x_far, counts, active)
  _, low, high, x_high, counts, searching = lax.while_loop(cond, body,
                                                           norms.varying_like(init, x))
  exhausted = active & ~searching if steps > 0 else jnp.zeros_like(active)
  return x_high, low, high, counts, exhausted


def binary_search(oracle, x, x_adv, y, key, *, norm: str = "l2", theta: Optional[float] = None,
                  gamma: float = 1.0, target: str = "none", targets=None,
                  max_queries: Optional[int] = None, max_search_steps: int = 40):
  """HopSkipJump's binary search on its own, from x (not adversarial) towards x_adv
  (adversarial), for every example of the batch. theta defaults to the attack's. Returns
  (x_boundary, info) with info = {low, high (the bracket: blend coefficients for L2, L-inf
  radii), bracket (high - low), queries, exhausted}."""
  norms.check_norm(norm)
  check_batch(x, y, targets)
  targets = _resolve_targets(target, targets)
  theta = threshold(norm, x[0].size, gamma) if theta is None else theta
  decide = _Decision(oracle, y, targets, max_queries)
  counts = oracle.initial_counts(x.shape[0])
  active = norms.match_varying(jnp.ones((x.shape[0],), bool), x)
  x_b, low, high, counts, exhausted = _binary_search(
      decide, x, x_adv, counts, key, active, norm, search_steps(theta, max_search_steps))
  return x_b, {"low": low, "high": high, "bracket": high - low, "queries": counts,
               "exhausted": exhausted}


def _resolve_targets(target: str, targets):
  check_query_targets("HopSkipJump", target, targets)
  return targets if target == "given" else None


def _estimate_gradient(decide, x_t, delta, counts, key, active, n_evals, chunk: int, norm: str):
  """The sign-of-boundary gradient estimate at x_t from n_evals (traced) directions, asked in
  blocks of `chunk`, then of isqrt(chunk), then one by one. Returns (unit estimate, counts,
  exhausted)."""
  batch, shape = x_t.shape[0], x_t.shape[1:]
  dtype = x_t.dtype
  delta_b = delta.reshape((batch, 1) + (1,) * len(shape))
  positive = delta_b > 0
  safe_delta = jnp.where(positive, delta_b, 1.0)

  def evaluate(carry, q: int, k):
    sum_phi_u, sum_u, n_adv, counts, going = carry
    draw_key, query_key = jax.random.split(k)
    dshape = (batch, q) + shape
    if norm == "l2":
      u = jax.random.normal(draw_key, dshape, dtype)
    else:
      u = jax.random.uniform(draw_key, dshape, dtype, -1.0, 1.0)
    length = jnp.sqrt(jnp.sum(jnp.square(u), axis=tuple(range(2, u.ndim)), keepdims=True))
    u = u / jnp.maximum(length, _TINY)
    z = jnp.clip(x_t[:, None] + delta_b * u, 0.0, 1.0)
    u = jnp.where(positive, (z - x_t[:, None]) / safe_delta, 0.0)
    adv, counts, answered = decide(z, counts, query_key, going)
    phi = jnp.where(adv, 1.0, -1.0).astype(dtype)
    use = norms.per_example(answered, x_t)
    sum_phi_u = jnp.where(use, sum_phi_u + jnp.einsum("bq,bq...->b...", phi, u), sum_phi_u)
    sum_u = jnp.where(use, sum_u + jnp.sum(u, axis=1), sum_u)
    n_adv = n_adv + jnp.sum(adv, axis=1, dtype=jnp.int32)
    return sum_phi_u, sum_u, n_adv, counts, going & answered

  def blocks(carry, size: int, count, block_key):
    """`count` (traced) blocks of `size` directions, one Oracle call each."""
    def cond(state):
      c, carry = state
      return (c < count) & jnp.any(carry[-1])

    def body(state):
      c, carry = state
      return c + 1, evaluate(carry, size, jax.random.fold_in(block_key, c))

    return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry))[1]

  zeros = jnp.zeros_like(x_t)
  carry = norms.varying_like((zeros, zeros, jnp.zeros((batch,), jnp.int32), counts, active), x_t)
  # n = a chunk + b mid + c: at most (chunk / mid) + mid extra calls, three loop bodies to compile.
  mid = math.isqrt(chunk)
  left = n_evals
  for size, block_key in zip(sorted({chunk, mid, 1}, reverse=True), jax.random.split(key, 3)):
    carry = blocks(carry, size, left // size, block_key)
    left = left % size
  sum_phi_u, sum_u, n_adv, counts, going = carry
  n = n_evals.astype(dtype)
  mean_phi = norms.per_example((2 * n_adv - n_evals).astype(dtype) / n, x_t)
  # All phi equal: no baseline (the reference's mean(u) / -mean(u) cases, which mean(phi u) is).
  baseline = jnp.where(jnp.abs(mean_phi) == 1, 0.0, mean_phi)
  g = sum_phi_u / n - baseline * sum_u / n
  g = g / jnp.maximum(norms.l2_norm(g), _TINY)
  return g, counts, active & ~going


def hop_skip_jump(oracle, x, y, key, *, norm: str = "l2", steps: int = 40, gamma: float = 1.0,
                  init_evals: int = 100, max_evals: int = 10_000,
                  max_init_queries: int = 1_000, max_step_halvings: int = 25,
                  max_search_steps: int = 40, chunk: int = 100, eps: Optional[float] = None,
                  target: str = "none", targets: Optional[jax.Array] = None,
                  starts: Optional[jax.Array] = None, max_queries: Optional[int] = None):
  """Returns (x_adv, info); see the module docstring.

  norm: 'l2' or 'linf'; steps: iterations; gamma: sets theta; init_evals, max_evals: the
  gradient-estimate schedule n_t = min(int(init_evals sqrt(t)), max_evals); max_init_queries:
  uniform-noise draws (the reference asserts after 1e4; 1000 is foolbox's number of blended
  noise directions); max_step_halvings: the cap on step-size halvings; max_search_steps: the
  cap on binary-search halvings (ceil(log2(1/theta)) is below it up to d ~ 10^6 for L-inf);
  chunk: directions per Oracle call; eps: the threat model's radius, None for a pure minimum-
  norm attack; target: 'none' or 'given' (with `targets`); starts: optional first
  initialisation candidates (B, ...); max_queries: a per-example query budget below the
  Oracle's."""
  check_batch(x, y, targets)
  norms.check_norm(norm)
  targets = _resolve_targets(target, targets)
  for name, value, low in (("steps", steps, 0), ("init_evals", init_evals, 1),
                           ("max_evals", max_evals, 1), ("max_init_queries", max_init_queries, 1),
                           ("max_step_halvings", max_step_halvings, 0),
                           ("max_search_steps", max_search_steps, 0), ("chunk", chunk, 1)):
    if int(value) != value or value < low:
      raise ValueError(f"HopSkipJump needs an integer {name} >= {low}; got {value}.")
  if gamma <= 0:
    raise ValueError(f"HopSkipJump needs gamma > 0; got {gamma}.")
  if max_queries is not None and max_queries < 1:
    raise ValueError(f"max_queries must be >= 1; got {max_queries}.")
  if starts is not None and starts.shape != x.shape:
    raise ValueError(f"starts must be shaped like x {x.shape}; got {starts.shape}.")

  batch, d = x.shape[0], int(np.prod(x.shape[1:]))
  theta = threshold(norm, d, gamma)
  n_search = search_steps(theta, max_search_steps)
  schedule = jnp.asarray(gradient_evals(max(steps, 1), init_evals, max_evals), jnp.int32)
  decide = _Decision(oracle, y, targets, max_queries)
  clean_key, draw_key, ask_key, blend_key, project_key, loop_key = jax.random.split(key, 6)
  pe = lambda v: norms.per_example(v, x)

  # 1. The clean input.
  counts = oracle.initial_counts(batch)
  every = norms.match_varying(jnp.ones((batch,), bool), x)
  already, counts, answered = decide(x[:, None], counts, clean_key, every)
  already = already[:, 0]

  # 2. Initialisation: uniform noise (after `starts`) until adversarial.
  def draw_cond(state):
    i, _, _, _, searching = state
    return (i < max_init_queries) & jnp.any(searching)

  def draw_body(state):
    i, far, found, counts, searching = state
    z = jax.random.uniform(jax.random.fold_in(draw_key, i), x.shape, x.dtype)
    if starts is not None:
      z = jnp.where(i == 0, starts.astype(x.dtype), z)
    adv, counts, answered = decide(z[:, None], counts, jax.random.fold_in(ask_key, i),
                                   searching)
    adv = adv[:, 0]
    return (i + 1, jnp.where(pe(adv), z, far), found | adv, counts,
            searching & answered & ~adv)

  init = (jnp.zeros((), jnp.int32), x, jnp.zeros((batch,), bool), counts,
          answered & ~already)
  _, far, found, counts, _ = lax.while_loop(draw_cond, draw_body, norms.varying_like(init, x))

  # Blend search towards x (the reference's tolerance 0.001, in both norms), then the
  # projection to the boundary.
  far, _, _, counts, exhausted = _binary_search(decide, x, far, counts, blend_key, found, "l2",
                                                INIT_BLEND_STEPS)
  alive = found & ~exhausted
  dist_post = _distance(far, x, norm)
  x_t, _, _, counts, exhausted = _binary_search(decide, x, far, counts, project_key, alive, norm,
                                                n_search)
  alive = alive & ~exhausted
  best = x_t
  best_dist = jnp.where(found, _distance(x_t, x, norm), jnp.inf)

  # 3. The iterations.
  def cond(state):
    t = state[0]
    return (t <= steps) & jnp.any(state[-1])

  def body(state):
    t, x_t, dist_post, best, best_dist, counts, alive = state
    k = jax.random.fold_in(loop_key, t)
    grad_key, step_key, search_key = jax.random.split(k, 3)
    scale = math.sqrt(d) * theta if norm == "l2" else d * theta
    delta = jnp.where(t == 1, 0.1, scale * dist_post).astype(x.dtype)
    n_t = schedule[t - 1]
    g, counts, exhausted = _estimate_gradient(decide, x_t, delta, counts, grad_key, alive, n_t,
                                              chunk, norm)
    alive = alive & ~exhausted
    v = g if norm == "l2" else jnp.sign(g)

    # Geometric step size, halved until adversarial (at most max_step_halvings times).
    eps0 = _distance(x_t, x, norm) / jnp.sqrt(t.astype(x.dtype))

    def step_cond(s):
      j, _, _, _, searching, _, _ = s
      return (j <= max_step_halvings) & jnp.any(searching)

    def step_body(s):
      j, step, x_new, stepped, searching, refused, counts = s
      z = jnp.clip(x_t + pe(step) * v, 0.0, 1.0)
      adv, counts, answered = decide(z[:, None], counts, jax.random.fold_in(step_key, j),
                                     searching)
      adv = adv[:, 0]
      refused = refused | (searching & ~answered)  # Out of budget.
      searching = searching & answered & ~adv
      return (j + 1, jnp.where(searching, step / 2, step), jnp.where(pe(adv), z, x_new),
              stepped | adv, searching, refused, counts)

    s_init = (jnp.zeros((), jnp.int32), eps0, x_t, jnp.zeros((batch,), bool), alive,
              jnp.zeros((batch,), bool), counts)
    _, _, x_new, stepped, _, refused, counts = lax.while_loop(step_cond, step_body,
                                                              norms.varying_like(s_init, x))
    alive = alive & ~refused  # Not stepped: x_t stays, with no binary search.

    moved = alive & stepped
    x_b, _, _, counts, exhausted = _binary_search(decide, x, x_new, counts, search_key, moved,
                                                  norm, n_search)
    x_t = jnp.where(pe(moved), x_b, x_t)
    dist_post = jnp.where(moved, _distance(x_new, x, norm), _distance(x_t, x, norm))
    alive = alive & ~exhausted
    dist_t = _distance(x_t, x, norm)
    closer = moved & (dist_t < best_dist)
    best = jnp.where(pe(closer), x_t, best)
    best_dist = jnp.where(closer, dist_t, best_dist)
    return t + 1, x_t, dist_post, best, best_dist, counts, alive

  state = (jnp.ones((), jnp.int32), x_t, dist_post, best, best_dist, counts, alive)
  _, _, _, best, best_dist, counts, _ = lax.while_loop(cond, body,
                                                       norms.varying_like(state, x))

  found_distance = jnp.where(already, 0.0, best_dist)
  success = already | found
  if eps is not None:
    success = success & (found_distance <= eps)
  x_adv = jnp.where(pe(success & ~already), best, x)
  info = {"success": success, "distance": jnp.where(success, found_distance, jnp.inf),
          "found_distance": found_distance, "queries": counts,
          **norms.distances(x_adv, x)}
  if targets is not None:
    info["targets"] = targets
  return x_adv, info


def hop_skip_jump_query_budget(*, d: Optional[int] = None, **params) -> int:
  """The most queries hop_skip_jump(**params) can ask of one example: max_queries if given;
  else 1 (the clean input) + max_init_queries + INIT_BLEND_STEPS + K + sum over t of (n_t +
  max_step_halvings + 1 + K), K the binary-search halvings. Exact for inputs of d features;
  without d, K = max_search_steps, an upper bound for every d. An Oracle with this budget
  never refuses a query the schedule asks for. params are hop_skip_jump's keyword arguments
  (defaults as there); eps, target, chunk and the like do not change the budget."""
  signature = inspect.signature(hop_skip_jump).parameters
  names = {n for n, p in signature.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
  unknown = set(params) - names
  if unknown:
    raise TypeError(f"hop_skip_jump has no parameter(s) {sorted(unknown)}.")
  p = {n: params.get(n, signature[n].default) for n in names}
  if p["max_queries"] is not None:
    return int(p["max_queries"])
  k = p["max_search_steps"]
  if d is not None:
    k = search_steps(threshold(p["norm"], d, p["gamma"]), k)
  return int(1 + p["max_init_queries"] + INIT_BLEND_STEPS + k
             + sum(n + p["max_step_halvings"] + 1 + k
                   for n in gradient_evals(p["steps"], p["init_evals"], p["max_evals"])))
