"""HopSkipJump's pieces (see hop_skip_jump.py for the attack): the threshold and schedules, the
Oracle's answers as adversarial or not, the binary search to the boundary and the
gradient-direction estimate, each for a batch of examples that may be at different iterations.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch
from defenses_jax.attacks.query.oracle import check_query_targets

_TINY = 1e-12
# Packed Oracle calls of 1/_SMALL_CALL of the usual rows serve what is left when few are.
_SMALL_CALL = 8
_UNITS_PER_CHUNK = 4
# How far past the binary search's adversarial end a returned point lies (blend_search): this
# fraction of its distance, and at least an L-inf move of MIN_BEYOND (for L2 the L2 norm of
# such a move on every feature, MIN_BEYOND sqrt(d)). The floor is for an input already within a
# hair of the boundary, whose distance (and so a fraction of it) is tiny: the rounding and the
# margin a move gains both scale with the model's input gradient, so an input-space floor well
# above float32's resolution of [0, 1] (1.2e-7 at 1) holds for any model computed in float32.
BOUNDARY_MARGIN = 1e-3
MIN_BEYOND = 1e-5


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


def distance(a, b, norm: str):
  """Per-example attack-norm distance, (B,)."""
  diff = (a - b).reshape(a.shape[0], -1)
  if norm == "l2":
    return jnp.sqrt(jnp.sum(diff * diff, -1))
  return jnp.max(jnp.abs(diff), -1)


def resolve_targets(target: str, targets):
  check_query_targets("HopSkipJump", target, targets)
  return targets if target == "given" else None


class Decision:
  """Asks the Oracle whether points are adversarial for examples with labels y (or, targeted,
  their targets), within a per-example limit (the Oracle's budget, or max_queries if smaller).
  An inactive example, or one whose queries do not fit in its budget, is not asked and pays
  nothing (answered False)."""

  def __init__(self, oracle, y, targets, max_queries: Optional[int]):
    self.oracle, self.y, self.targets = oracle, y, targets
    self.limit = oracle.budget if max_queries is None else min(int(max_queries), oracle.budget)

  def _hit(self, answers, goal):
    labels = answers if self.oracle.access == "labels" else jnp.argmax(answers, axis=-1)
    return labels != goal if self.targets is None else labels == goal

  def __call__(self, xs, counts, key, active):
    """(B, Q, ...) candidates -> adversarial (B, Q), counts, answered (B,)."""
    active = active & (counts + xs.shape[1] <= self.limit)
    answers, counts, answered = self.oracle.query_many(xs, counts, key, active)
    goal = self.y if self.targets is None else self.targets
    return self._hit(answers, goal[:, None]) & answered[:, None], counts, answered

  def units(self, xs, owner, mask, counts, key):
    """Rows of queries of examples `owner` (Oracle.query_units) -> adversarial (R, Q), counts,
    answered (R,). The caller checks the budget (an Oracle refusal still shows as answered
    False)."""
    answers, counts, answered = self.oracle.query_units(xs, owner, mask, counts, key)
    goal = (self.y if self.targets is None else self.targets)[owner]
    return self._hit(answers, goal[:, None]) & (mask & answered[:, None]), counts, answered


class Bisection(NamedTuple):
  """blend_search's answer for a batch of examples."""
  boundary: jax.Array  # The adversarial end: the last candidate labelled adversarial, or x_far.
  low: jax.Array  # (B,) the bracket: blend coefficients (L2) or L-inf radii.
  high: jax.Array
  counts: jax.Array
  exhausted: jax.Array  # (B,) the budget ran out during the search (or its confirmation).
  beyond: jax.Array  # The point a success rests on, past `boundary` (blend_search).
  confirmed: jax.Array  # (B,) `beyond` was labelled adversarial (margin 0: the search completed).


def blend_search(decide, x, x_far, counts, key, active, norm: str, steps: int,
                 margin: float = 0.0) -> Bisection:
  """Binary search between x (not adversarial) and the adversarial x_far (hop_skip_jump.py's
  docstring), then, with margin > 0, one more query, at `beyond`: the point of the search line
  max(margin x its distance, MIN_BEYOND in L-inf) past the adversarial end (the line continued
  past x_far where it must).
  The adversarial end itself lies within float rounding of the boundary (a logit margin of
  ~1e-5 after 20 halvings on the MNIST CNN, L-inf), and a model compiled for another batch
  shape can round it back to the true class. With labels only the margin cannot be read, but
  `beyond` lies that far past the last point labelled not adversarial on the line, a logit
  margin of about margin x the clean one; it counts only if the Oracle labels it adversarial
  (confirmed). The bracket is the reference's, so the attack's next gradient estimate still
  starts on the boundary."""
  batch = x.shape[0]
  high0 = (jnp.ones((batch,), x.dtype) if norm == "l2" else
           distance(x_far, x, "linf").astype(x.dtype))

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
  if margin > 0:
    if norm == "l2":  # Blend coefficients: distances over ||x_far - x||_2.
      floor = MIN_BEYOND * math.sqrt(x[0].size) / jnp.maximum(distance(x_far, x, "l2"), _TINY)
    else:
      floor = MIN_BEYOND
    extra = jnp.maximum(margin * high, floor).astype(x.dtype)
    beyond = _past(candidate, x, x_far, high + extra, high0)
    adv, counts, answered = decide(beyond[:, None], counts, jax.random.fold_in(key, steps),
                                   searching)
    confirmed, searching = adv[:, 0], searching & answered
  else:
    beyond = x_high
    confirmed = searching
  exhausted = active & ~searching if steps > 0 or margin > 0 else jnp.zeros_like(active)
  return Bisection(x_high, low, high, counts, exhausted, beyond, confirmed)


def _past(candidate, x, x_far, alpha, high0):
  """The search line's point at alpha, continued past x_far (alpha > high0) along x_far - x
  and clipped to the box: a step point a hair from the previous boundary point is itself on
  the boundary, and a point past it must leave the segment."""
  a = norms.per_example(alpha / high0, x)
  continued = jnp.clip(x + a * (x_far - x), 0.0, 1.0)
  return jnp.where(a > 1, continued, candidate(jnp.minimum(alpha, high0)))


def binary_search(oracle, x, x_adv, y, key, *, norm: str = "l2", theta: Optional[float] = None,
                  gamma: float = 1.0, target: str = "none", targets=None,
                  max_queries: Optional[int] = None, max_search_steps: int = 40,
                  margin: float = BOUNDARY_MARGIN):
  """HopSkipJump's binary search on its own, from x (not adversarial) towards x_adv
  (adversarial), for every example of the batch. theta defaults to the attack's. Returns
  (x_boundary, info): x_boundary is the confirmed point beyond the adversarial end
  (blend_search; where not confirmed, the adversarial end), info = {low, high (the bracket:
  blend coefficients for L2, L-inf radii), bracket (high - low), boundary (the adversarial
  end), confirmed, queries, exhausted}."""
  norms.check_norm(norm)
  check_batch(x, y, targets)
  targets = resolve_targets(target, targets)
  theta = threshold(norm, x[0].size, gamma) if theta is None else theta
  decide = Decision(oracle, y, targets, max_queries)
  counts = oracle.initial_counts(x.shape[0])
  active = norms.match_varying(jnp.ones((x.shape[0],), bool), x)
  found = blend_search(decide, x, x_adv, counts, key, active, norm,
                       search_steps(theta, max_search_steps), margin)
  x_b = jnp.where(norms.per_example(found.confirmed, x), found.beyond, found.boundary)
  return x_b, {"low": found.low, "high": found.high, "bracket": found.high - found.low,
               "boundary": found.boundary, "confirmed": found.confirmed,
               "queries": found.counts, "exhausted": found.exhausted}


def _allocate(pending, done, rows: int, compact: bool):
  """Which example and which of its units each of `rows` unit places takes this call.
  Compact: the first `rows` pending units in example order (an example with many units takes
  several places, one with none takes none); else rows / B places per example, in example
  order (example b's next units). Returns (owner, unit, valid) per place and the examples'
  units done after the call."""
  batch = pending.shape[0]
  if not compact:
    per_example = rows // batch
    owner = jnp.repeat(jnp.arange(batch), per_example)
    unit = done[owner] + jnp.tile(jnp.arange(per_example), batch)
    valid = unit < (done + pending)[owner]
    return owner, unit, valid, done + jnp.minimum(pending, per_example)
  ends = jnp.cumsum(pending)
  starts = ends - pending
  r = jnp.arange(rows)
  owner = jnp.minimum(jnp.searchsorted(ends, r, side="right"), batch - 1)
  valid = r < ends[-1]
  unit = done[owner] + r - starts[owner]
  taken = jnp.clip(rows - starts, 0, pending)
  return owner, unit, valid, done + taken


class Draws(NamedTuple):
  """Noise draws asked this call: `size` (B,) draws per example (0: none), numbered from
  `start` (B,), draw i from fold_in(keys[example], i), except draw 0, which is `first` (B,
  ...) when given."""
  size: jax.Array
  start: jax.Array
  keys: jax.Array
  first: Optional[jax.Array] = None


class Asked(NamedTuple):
  estimate: jax.Array  # Unit gradient estimates (zero where no directions were asked).
  counts: jax.Array
  refused: jax.Array  # (B,) some query of the example went unanswered.
  found: jax.Array  # (B,) one of its draws was adversarial.
  draw: jax.Array  # The first adversarial draw (in draw order), else x_t.
  draws: jax.Array  # (B,) draws asked.


def unit_size(chunk: int) -> int:
  """Queries per unit: a quarter of `chunk` (an example's last, partial unit wastes less)."""
  return max(1, chunk // _UNITS_PER_CHUNK)


def ask_packed(decide, x_t, delta, n_evals, keys, draws: Draws, counts, key, *, chunk: int,
               norm: str, compact: bool) -> Asked:
  """Asks the Oracle, in units of unit_size(chunk) queries, for every example its
  n_evals (B,) gradient directions at x_t (unit k of directions from
  fold_in(keys[example], k)) or its draws (one unit at most). Each Oracle call asks about
  B x chunk queries (fewer for what is left when less than that is): with `compact` the
  pending units of all examples packed together (an example that needs little frees rows for
  others: examples at different iterations, drawing noise or finished share the calls without
  waste), else chunk / unit_size units of each example (row r of the call is example r, for
  an Oracle whose examples are not independent). Each example's unit sums are added to its
  running totals one unit at a time in unit order (_add_in_unit_order), so its estimate does
  not depend on the examples beside it or on how its units were split into calls, and the
  totals are two (B, input) arrays whatever the number of units (a call's queries and
  directions, rows x unit inputs, come on top). The caller checks that the
  queries fit in each example's budget."""
  batch, shape = x_t.shape[0], x_t.shape[1:]
  size = unit_size(chunk)
  per_call = batch * (chunk // size)
  dtype = x_t.dtype
  positive = delta > 0
  safe_delta = jnp.where(positive, delta, 1.0)
  drawing = draws.size > 0
  units = jnp.where(drawing, 1, -(-n_evals // size))
  lift = lambda v, ndim: v.reshape(v.shape + (1,) * (ndim - v.ndim))
  column = jnp.arange(size)[None, :]

  def noise(owner):
    index = draws.start[owner][:, None] + column
    draw_keys = jax.vmap(jax.vmap(jax.random.fold_in, (None, 0)))(draws.keys[owner], index)
    z = jax.vmap(jax.vmap(lambda k: jax.random.uniform(k, shape, dtype)))(draw_keys)
    if draws.first is None:
      return z
    return jnp.where(lift(index == 0, z.ndim), draws.first[owner][:, None], z)

  def one_call(carry, rows: int):
    done, sums_phi_u, sums_u, n_adv, counts, refused, found, first, call = carry
    owner, unit, valid, done = _allocate(units - done, done, rows, compact)
    is_draw = valid & drawing[owner]
    u = jax.vmap(lambda k: _directions(k, size, shape, dtype, norm))(
        jax.vmap(jax.random.fold_in)(keys[owner], unit))
    step = lift(delta[owner], u.ndim)
    z = jnp.clip(x_t[owner][:, None] + step * u, 0.0, 1.0)
    z = lax.cond(jnp.any(is_draw),
                 lambda: jnp.where(lift(is_draw, z.ndim), noise(owner), z), lambda: z)
    limit = jnp.where(is_draw, draws.size[owner], n_evals[owner] - unit * size)
    mask = valid[:, None] & (column < limit[:, None])
    use = mask & ~is_draw[:, None]
    u = jnp.where(lift(positive[owner], u.ndim) & lift(use, u.ndim),
                  (z - x_t[owner][:, None]) / lift(safe_delta[owner], u.ndim), 0.0)
    call_key = jax.random.fold_in(key, call)
    if compact:
      adv, counts, answered = decide.units(z, owner, mask, counts, call_key)
    else:  # Row b of the Oracle call holds example b's units.
      rows = z.shape[0]
      adv, counts, answered = decide.units(
          z.reshape((batch, -1) + shape), jnp.arange(batch), mask.reshape(batch, -1), counts,
          call_key)
      adv = adv.reshape(rows, size)
      answered = jnp.repeat(answered, rows // batch)
    phi = jnp.where(use, jnp.where(adv, 1.0, -1.0), 0.0).astype(dtype)
    slot = jnp.where(valid & ~is_draw, owner, batch)  # Out of range: not written.
    # An elementwise product summed over the unit (not a dot, whose accumulation order may
    # change with the call's shape): a unit's sum is the same in a full call and a small one.
    sums_phi_u, sums_u = _add_in_unit_order(
        (sums_phi_u, sums_u), (jnp.sum(lift(phi, u.ndim) * u, axis=1), jnp.sum(u, axis=1)),
        slot)
    n_adv = n_adv.at[slot].add(jnp.sum(adv & use, axis=1, dtype=jnp.int32), mode="drop")
    refused = refused.at[jnp.where(valid, owner, batch)].max(valid & ~answered, mode="drop")
    hit = is_draw & jnp.any(adv, axis=1)
    pick = jnp.take_along_axis(z, lift(jnp.argmax(adv, axis=1), z.ndim), axis=1)[:, 0]
    draw_slot = jnp.where(hit, owner, batch)
    found = found.at[draw_slot].set(True, mode="drop")
    first = first.at[draw_slot].set(pick, mode="drop")
    return done, sums_phi_u, sums_u, n_adv, counts, refused, found, first, call + 1

  zeros = jnp.zeros((batch,) + shape, dtype)
  none = jnp.zeros((batch,), bool)
  carry = (jnp.zeros((batch,), jnp.int32), zeros, zeros, jnp.zeros((batch,), jnp.int32), counts,
           none, none, x_t, jnp.zeros((), jnp.int32))
  small = max(1, per_call // _SMALL_CALL)

  def packed_call(carry):
    # Less than a call's worth left (the end of a step, a lone straggler): calls of `small`
    # unit places until done, so that at most small - 1 places of the step go unused.
    return lax.cond(jnp.sum(units - carry[0]) < per_call, lambda c: one_call(c, small),
                    lambda c: one_call(c, per_call), carry)

  carry = lax.while_loop(lambda c: jnp.any(c[0] < units),
                         packed_call if compact and small < per_call else
                         lambda c: one_call(c, per_call), norms.varying_like(carry, x_t))
  _, sums_phi_u, sums_u, n_adv, counts, refused, found, first, _ = carry
  n = jnp.maximum(n_evals, 1).astype(dtype)
  mean_phi = (2 * n_adv - n_evals).astype(dtype) / n
  # All phi equal: no baseline (the reference's mean(u) / -mean(u) cases, which mean(phi u) is).
  baseline = norms.per_example(jnp.where(jnp.abs(mean_phi) == 1, 0.0, mean_phi), x_t)
  g = (sums_phi_u - baseline * sums_u) / norms.per_example(n, x_t)
  g = g / jnp.maximum(norms.l2_norm(g), _TINY)
  return Asked(g, counts, refused, found, first, jnp.where(drawing, draws.size, 0))


def _add_in_unit_order(totals, unit_sums, slot):
  """Adds the call's unit sums (each (rows, ...)) to the examples' totals (each (B, ...)): row
  r goes to example slot[r] (B or more: nowhere). An example's rows in a call are consecutive
  and in unit order (as _allocate places them), and its units are added one at a time in that
  order, (((total + S_k) + S_k+1) + ...): the same floats whether its units came in one call or
  several, and no two rows are added to one example at once (a scatter-add of several would
  sum them in an unspecified order)."""
  batch, rows = totals[0].shape[0], slot.shape[0]
  first = jnp.full((batch,), rows, jnp.int32).at[slot].min(
      jnp.arange(rows, dtype=jnp.int32), mode="drop")
  count = jnp.zeros((batch,), jnp.int32).at[slot].add(1, mode="drop")

  def add_rank(j, totals):
    row = jnp.where(j < count, first + j, rows)  # rows: out of range, gathers zeros.
    return tuple(t + jnp.take(s, row, axis=0, mode="fill", fill_value=0)
                 for t, s in zip(totals, unit_sums))

  return lax.fori_loop(0, jnp.max(count), add_rank, totals)


def _directions(key, chunk: int, shape, dtype, norm: str):
  """A unit of random unit directions: normal (L2) or uniform in [-1, 1] (L-inf), normalised
  in L2."""
  if norm == "l2":
    u = jax.random.normal(key, (chunk,) + shape, dtype)
  else:
    u = jax.random.uniform(key, (chunk,) + shape, dtype, -1.0, 1.0)
  length = jnp.sqrt(jnp.sum(jnp.square(u), axis=tuple(range(1, u.ndim)), keepdims=True))
  return u / jnp.maximum(length, _TINY)


def estimate_gradient(decide, x_t, delta, n_evals, keys, counts, key, active, *, chunk: int,
                      norm: str, compact: bool):
  """The sign-of-boundary gradient estimate at x_t of each active example from its own n_evals
  (B,) directions (ask_packed without draws). Returns (unit estimate, counts, refused)."""
  batch = x_t.shape[0]
  zeros = jnp.zeros((batch,), jnp.int32)
  asked = ask_packed(decide, x_t, delta, jnp.where(active, n_evals, 0), keys,
                     Draws(zeros, zeros, keys), counts, key, chunk=chunk, norm=norm,
                     compact=compact)
  return asked.estimate, asked.counts, asked.refused
