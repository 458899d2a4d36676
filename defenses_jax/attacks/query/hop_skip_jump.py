"""HopSkipJumpAttack (Chen, Jordan, Wainwright 2020): a label-only (decision-based) attack that
walks along the decision boundary towards the clean input, from the authors' `hsja.py`.

It sees only the Oracle's labels (a `scores` Oracle works too: only its argmax is used). Per
example:

1. One query on x. An x that is already misclassified (targeted: already the target) is
   returned unchanged: success, distance 0, 1 query (no 0/0 step, unlike the reference:
   foolbox #670, ART #307).
2. Initialisation: uniform noise in [0, 1] drawn until one is adversarial (at most
   `max_init_queries` draws, each a query; draw i from the example's own key and i; `starts`,
   if given, is draw 0). The first adversarial draw in draw order is the one the reference's
   one-at-a-time loop finds, but the draws are asked in rounds of 1, 1, 2, 4, ... (at most a
   unit, chunk / 4) so that an image noise rarely fools takes a few steps, not hundreds: every
   draw asked is counted, at most twice the reference's draws (or a unit more). Then
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
     phi agree and mean((phi - mean phi) u) otherwise, normalised. The directions come from
     the example's own key and t, in units of chunk / 4 (the last unit partial: only its
     directions are asked and counted); an Oracle call asks B x chunk queries, the units of
     all examples packed together when the Oracle's examples are independent, and what is
     left below a call's worth in calls of an eighth (hop_skip_jump_parts.ask_packed): an
     example's estimate does not depend on which examples share its calls or at which
     iteration they are (up to float rounding: two call sizes are two compiled programs).
     Each unit's sums are added to the example's running totals in unit order, so the
     totals are two copies of the input per example whatever n_t (plus a call's queries);
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
`max_search_steps`. Its adversarial end, the very array the Oracle labelled, is where the next
iteration starts (as the reference). That end lies within float rounding of the boundary, and
the model compiled for another batch shape rounds differently, so a success resting on it could
vanish when the evaluation scores it in its own batches. So with `margin` > 0 (default 1e-3)
one more query asks about the point on the search line max(margin x its distance, an L-inf move
of 1e-5) past the adversarial end (a margin a label-only attacker can know: that far past the
last point labelled not adversarial), and a point becomes the attack's best only when the
Oracle confirms it (parts.blend_search): one query per search, about 0.1% more distance.
margin=0 is the reference's search and query count.

theta = gamma / (d sqrt(d)) (L2) or gamma / d^2 (L-inf), d the number of input features.

Budget: every query is counted by the Oracle per example (info["queries"]). An example stops
at its budget (the Oracle's, or `max_queries` if smaller): an unanswered query means no
information, so it keeps its best adversarial point so far. An iteration's gradient estimate
is started only if all its n_t directions fit in the example's remaining budget (else the
example stops without asking them). `hop_skip_jump_query_budget` gives
the most queries the schedule can ask (exact with d, the number of input features; without d
an upper bound for any d), so an Oracle built with it never refuses one.

Returns (x_adv, info). x_adv is the adversarial point of smallest attack-norm distance found
(every candidate is a confirmed point past a binary search's end, above; the reference returns
the last boundary point); an example whose first search confirmed none keeps its adversarial
noise draw until one is. If `eps` is given, an example whose best point is farther than eps
comes back as x with success False, so that robust accuracy at eps, judged on x_adv, is honest.
info: success (adversarial under the Oracle and, with eps, within it), distance (attack norm of
x_adv - x; inf where success is False), found_distance (of the best adversarial point found,
even outside eps; inf if none), queries, iterations (started), targets (targeted only), l2,
linf, l0 (of x_adv - x).

With eps and stop_within_eps (the default), an example stops as soon as its best point is
within eps: its success within eps is settled (a later point is only closer), so robust
accuracy is unchanged and the queries it reports are those it needed; set stop_within_eps to
False for the closest point found in `steps` iterations.

The attack is a SteppedAttack (hop_skip_jump_stepped): an example drawing noise makes one
round of draws per step (then, once one is adversarial, its blend and projection searches),
one on the boundary makes one whole iteration per step, and an example stops once it is
finished (already adversarial, no adversarial draw, out of budget, `steps` done, or within
eps). All examples' draws and directions of a step share packed Oracle calls, and the
projection of a new start shares the binary search of the others' iterations.
`hop_skip_jump` runs one batch until its last example stops; the evaluation's slot runner
(evaluation/slot_runner.py) refills a finished example's slot with the next image, and each
image's result is the same either way (up to float rounding).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch
from defenses_jax.attacks.query.hop_skip_jump_parts import (BOUNDARY_MARGIN, Decision, Draws,
                                                            ask_packed, binary_search,
                                                            blend_search, distance,
                                                            gradient_evals, resolve_targets,
                                                            search_steps, threshold, unit_size)
from defenses_jax.attacks.stepped import SteppedAttack, run_batch

__all__ = ["binary_search", "gradient_evals", "hop_skip_jump", "hop_skip_jump_query_budget",
           "hop_skip_jump_stepped", "search_steps", "threshold"]

# The reference's initial blend search runs to a tolerance of 0.001: 10 halvings of [0, 1].
INIT_BLEND_STEPS = 10
# An example's phase: drawing noise until adversarial, iterating, or finished.
DRAW, ITERATE, DONE = 0, 1, 2
# Per-example streams: fold_in(example key, stream) then the draw or iteration number.
_DRAW_STREAM, _DIRECTION_STREAM = 0, 1


class HopSkipJumpState(NamedTuple):
  x: jax.Array
  y: jax.Array
  targets: Any  # (B,) targeted, else None.
  starts: Any  # (B, ...) the first initialisation candidates, else None.
  keys: jax.Array  # (B,) each example's own key.
  counts: jax.Array  # (B,) queries asked.
  phase: jax.Array  # (B,) DRAW, ITERATE or DONE.
  draws: jax.Array  # (B,) noise draws asked.
  t: jax.Array  # (B,) the next iteration (1-based).
  x_t: jax.Array  # The current boundary point.
  dist_post: jax.Array  # (B,) distance of the point before the last binary search.
  best: jax.Array  # The closest adversarial point found.
  best_dist: jax.Array  # (B,) its distance (inf if none).
  already: jax.Array  # (B,) x itself was adversarial.
  found: jax.Array  # (B,) an adversarial noise draw was found.


def _check(steps, gamma, init_evals, max_evals, max_init_queries, max_step_halvings,
           max_search_steps, chunk, max_queries, eps, margin):
  for name, value, low in (("steps", steps, 0), ("init_evals", init_evals, 1),
                           ("max_evals", max_evals, 1), ("max_init_queries", max_init_queries, 1),
                           ("max_step_halvings", max_step_halvings, 0),
                           ("max_search_steps", max_search_steps, 0), ("chunk", chunk, 1)):
    if int(value) != value or value < low:
      raise ValueError(f"HopSkipJump needs an integer {name} >= {low}; got {value}.")
  if gamma <= 0:
    raise ValueError(f"HopSkipJump needs gamma > 0; got {gamma}.")
  if not 0 <= margin < 1:
    raise ValueError(f"HopSkipJump needs 0 <= margin < 1; got {margin}.")
  if max_queries is not None and max_queries < 1:
    raise ValueError(f"max_queries must be >= 1; got {max_queries}.")
  if isinstance(eps, (int, float)) and not eps > 0:  # eps may also be traced.
    raise ValueError(f"eps must be > 0 (or None); got {eps}.")


def hop_skip_jump_stepped(oracle, *, norm: str = "l2", steps: int = 40, gamma: float = 1.0,
                          init_evals: int = 100, max_evals: int = 10_000,
                          max_init_queries: int = 1_000, max_step_halvings: int = 25,
                          max_search_steps: int = 40, chunk: int = 100,
                          margin: float = BOUNDARY_MARGIN,
                          eps: Optional[float] = None, stop_within_eps: bool = True,
                          target: str = "none", targets: Optional[jax.Array] = None,
                          starts: Optional[jax.Array] = None,
                          max_queries: Optional[int] = None) -> SteppedAttack:
  """HopSkipJump as a per-example state machine (attacks/stepped.py): one step is one round of
  noise draws (1, 1, 2, 4, ... up to a unit) for an example still looking for its start (then
  its blend and projection searches), and one whole iteration for an example on the boundary;
  parameters as hop_skip_jump."""
  norms.check_norm(norm)
  _check(steps, gamma, init_evals, max_evals, max_init_queries, max_step_halvings,
         max_search_steps, chunk, max_queries, eps, margin)
  fixed_targets = resolve_targets(target, targets)
  schedule_list = gradient_evals(max(steps, 1), init_evals, max_evals)
  schedule = np.asarray(schedule_list, np.int32)
  # Rows of different examples may share an Oracle call only if the model treats rows apart.
  compact = oracle.independent_examples
  draw_unit = unit_size(chunk)

  def geometry(x):
    d = int(np.prod(x.shape[1:]))
    theta = threshold(norm, d, gamma)
    scale = math.sqrt(d) * theta if norm == "l2" else d * theta
    return search_steps(theta, max_search_steps), scale

  def decide_for(s: HopSkipJumpState):
    return Decision(oracle, s.y, s.targets, max_queries)

  def init(x, y, example_keys, key):
    check_batch(x, y, fixed_targets)
    if starts is not None and starts.shape != x.shape:
      raise ValueError(f"starts must be shaped like x {x.shape}; got {starts.shape}.")
    batch = x.shape[0]
    every = norms.match_varying(jnp.ones((batch,), bool), x)
    decide = Decision(oracle, y, fixed_targets, max_queries)
    already, counts, answered = decide(x[:, None], oracle.initial_counts(batch), key, every)
    already = already[:, 0]
    zeros = jnp.zeros((batch,), jnp.int32)
    return HopSkipJumpState(
        x, y, fixed_targets, None if starts is None else starts.astype(x.dtype), example_keys,
        counts, jnp.where(already | ~answered, DONE, DRAW).astype(jnp.int32), zeros, zeros + 1,
        x, jnp.zeros((batch,), x.dtype), x, jnp.full((batch,), jnp.inf, x.dtype), already,
        jnp.zeros((batch,), bool))

  def step(s: HopSkipJumpState, key) -> HopSkipJumpState:
    """One step for every unfinished example: noise draws for one still looking for an
    adversarial start (then its blend and projection searches), one whole iteration for one
    on the boundary."""
    x = s.x
    n_search, scale = geometry(x)
    decide = decide_for(s)
    pe = lambda v: norms.per_example(v, x)
    ask_key, blend_key, step_key, search_key = jax.random.split(key, 4)
    drawing, iterating = s.phase == DRAW, s.phase == ITERATE
    left = decide.limit - s.counts
    # Draws in doubling rounds (1, 1, 2, 4, ... at most a unit): the first adversarial one in
    # draw order is the one the reference's one-at-a-time loop finds, in a few steps; every
    # draw asked is counted.
    draw_size = jnp.where(drawing, jnp.minimum(jnp.minimum(jnp.maximum(s.draws, 1), draw_unit),
                                               jnp.minimum(max_init_queries - s.draws, left)), 0)
    t = s.t
    n_t = jnp.asarray(schedule)[jnp.clip(t - 1, 0, len(schedule) - 1)]
    # An estimate that cannot be completed within the budget is not started.
    started = iterating & (n_t <= left)
    delta = jnp.where(t == 1, 0.1, scale * s.dist_post).astype(x.dtype)
    stream = lambda i: jax.vmap(lambda k: jax.random.fold_in(k, i))(s.keys)
    iteration_keys = jax.vmap(jax.random.fold_in)(stream(_DIRECTION_STREAM), t)
    asked = ask_packed(decide, s.x_t, delta, jnp.where(started, n_t, 0), iteration_keys,
                       Draws(draw_size, s.draws, stream(_DRAW_STREAM), s.starts), s.counts, ask_key,
                       chunk=chunk, norm=norm, compact=compact)
    counts = asked.counts
    draws = s.draws + asked.draws
    found = drawing & asked.found & ~asked.refused
    failed = drawing & ~found & ((draw_size == 0) | asked.refused | (draws >= max_init_queries))
    alive = started & ~asked.refused

    # A start found: blended towards x (the reference's tolerance 0.001, in both norms).
    blend = blend_search(decide, x, asked.draw, counts, blend_key, found, "l2", INIT_BLEND_STEPS)
    far, counts = blend.boundary, blend.counts
    found_alive = found & ~blend.exhausted

    # An iteration: geometric step size along the estimate, halved until adversarial (at most
    # max_step_halvings times).
    v = asked.estimate if norm == "l2" else jnp.sign(asked.estimate)
    x_t = s.x_t
    eps0 = distance(x_t, x, norm) / jnp.sqrt(t.astype(x.dtype))

    def step_cond(c):
      j, _, _, _, searching, _, _ = c
      return (j <= max_step_halvings) & jnp.any(searching)

    def step_body(c):
      j, size, x_new, stepped, searching, refused, counts = c
      z = jnp.clip(x_t + pe(size) * v, 0.0, 1.0)
      adv, counts, answered = decide(z[:, None], counts, jax.random.fold_in(step_key, j),
                                     searching)
      adv = adv[:, 0]
      refused = refused | (searching & ~answered)  # Out of budget.
      searching = searching & answered & ~adv
      return (j + 1, jnp.where(searching, size / 2, size), jnp.where(pe(adv), z, x_new),
              stepped | adv, searching, refused, counts)

    batch = x.shape[0]
    c = (jnp.zeros((), jnp.int32), eps0, x_t, jnp.zeros((batch,), bool), alive,
         jnp.zeros((batch,), bool), counts)
    _, _, x_new, stepped, _, refused, counts = lax.while_loop(step_cond, step_body,
                                                              norms.varying_like(c, x))
    alive = alive & ~refused  # Not stepped: x_t stays, with no binary search.
    moved = alive & stepped

    # One binary search back to the boundary for both: a new start's projection, an
    # iteration's step. The next iteration starts from its adversarial end, on the boundary;
    # a success rests on the confirmed point `margin` beyond it, which survives another batch
    # shape's rounding (blend_search). A start with no confirmed point keeps its noise draw.
    searched = found_alive | moved
    search = blend_search(decide, x, jnp.where(pe(found), far, x_new), counts, search_key,
                          searched, norm, n_search, margin)
    counts = search.counts
    found_alive = found_alive & ~search.exhausted
    alive = alive & ~search.exhausted
    x_t = jnp.where(pe(searched), search.boundary, jnp.where(pe(found), far, x_t))
    dist_t = distance(x_t, x, norm)
    dist_beyond = distance(search.beyond, x, norm)
    closer = searched & search.confirmed & (dist_beyond < s.best_dist)
    draw_only = found & ~closer
    best = jnp.where(pe(closer), search.beyond, jnp.where(pe(draw_only), asked.draw, s.best))
    best_dist = jnp.where(closer, dist_beyond,
                          jnp.where(draw_only, distance(asked.draw, x, norm), s.best_dist))
    phase = jnp.where(drawing, jnp.where(found_alive, ITERATE, jnp.where(found | failed, DONE,
                                                                           DRAW)),
                      jnp.where(alive, ITERATE, jnp.where(iterating, DONE, s.phase)))
    return s._replace(
        counts=counts, phase=phase.astype(jnp.int32), draws=draws,
        t=jnp.where(started, t + 1, t), x_t=x_t,
        dist_post=jnp.where(found, distance(far, x, norm),
                            jnp.where(moved, distance(x_new, x, norm),
                                      jnp.where(iterating, dist_t, s.dist_post))),
        best=best, best_dist=best_dist, found=s.found | found)

  def settle(s: HopSkipJumpState) -> HopSkipJumpState:
    """Ends the examples past their last iteration and, with stop_within_eps, those whose
    success within eps is settled."""
    finished = s.t > steps
    if eps is not None and stop_within_eps:
      finished = finished | (s.best_dist <= eps)
    return s._replace(phase=jnp.where((s.phase == ITERATE) & finished, DONE, s.phase))

  def done(s: HopSkipJumpState):
    return s.phase == DONE

  def finish(s: HopSkipJumpState, key):
    del key
    x = s.x
    found_distance = jnp.where(s.already, 0.0, s.best_dist)
    success = s.already | s.found
    if eps is not None:
      success = success & (found_distance <= eps)
    x_adv = jnp.where(norms.per_example(success & ~s.already, x), s.best, x)
    info = {"success": success, "distance": jnp.where(success, found_distance, jnp.inf),
            "found_distance": found_distance, "queries": s.counts,
            "iterations": jnp.where(s.found, s.t - 1, 0), **norms.distances(x_adv, x)}
    if s.targets is not None:
      info["targets"] = s.targets
    return x_adv, info

  return SteppedAttack(init, lambda s, key: settle(step(s, key)), done, finish)


def hop_skip_jump(oracle, x, y, key, *, norm: str = "l2", steps: int = 40, gamma: float = 1.0,
                  init_evals: int = 100, max_evals: int = 10_000,
                  max_init_queries: int = 1_000, max_step_halvings: int = 25,
                  max_search_steps: int = 40, chunk: int = 100,
                  margin: float = BOUNDARY_MARGIN, eps: Optional[float] = None,
                  stop_within_eps: bool = True, target: str = "none",
                  targets: Optional[jax.Array] = None, starts: Optional[jax.Array] = None,
                  max_queries: Optional[int] = None):
  """Returns (x_adv, info); see the module docstring.

  norm: 'l2' or 'linf'; steps: iterations; gamma: sets theta; init_evals, max_evals: the
  gradient-estimate schedule n_t = min(int(init_evals sqrt(t)), max_evals); max_init_queries:
  uniform-noise draws (the reference asserts after 1e4; 1000 is foolbox's number of blended
  noise directions); max_step_halvings: the cap on step-size halvings; max_search_steps: the
  cap on binary-search halvings (ceil(log2(1/theta)) is below it up to d ~ 10^6 for L-inf);
  chunk: an Oracle call asks batch x chunk queries, in units of chunk / 4 (one example's
  directions or draws; packed across examples when the Oracle's examples are independent,
  else four units of each example per call); margin: a returned point lies this fraction of
  its distance (at least an L-inf move of 1e-5) past a binary search's end, confirmed by one
  query (0: the reference's boundary point, which another batch shape may round back); eps:
  the threat model's radius, None for a pure minimum-norm attack; stop_within_eps: with eps,
  an example stops once its best point is within eps (its success is settled); target: 'none'
  or 'given' (with `targets`); starts: optional first initialisation candidates (B, ...);
  max_queries: a per-example query budget below the Oracle's."""
  attack = hop_skip_jump_stepped(
      oracle, norm=norm, steps=steps, gamma=gamma, init_evals=init_evals, max_evals=max_evals,
      max_init_queries=max_init_queries, max_step_halvings=max_step_halvings,
      max_search_steps=max_search_steps, chunk=chunk, margin=margin, eps=eps,
      stop_within_eps=stop_within_eps,
      target=target, targets=targets, starts=starts, max_queries=max_queries)
  return run_batch(attack, x, y, key)


def hop_skip_jump_query_budget(*, d: Optional[int] = None, **params) -> int:
  """The most queries hop_skip_jump(**params) can ask of one example: max_queries if given;
  else 1 (the clean input) + max_init_queries + INIT_BLEND_STEPS + K + sum over t of (n_t +
  max_step_halvings + 1 + K), K the binary-search halvings and, with margin > 0, the query
  past the boundary. Exact for inputs of d features; without d, K = max_search_steps (+ 1), an
  upper bound for every d. An Oracle with this budget never refuses a query the schedule asks
  for. params are hop_skip_jump's keyword arguments
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
  k += p["margin"] > 0  # The query past the boundary.
  return int(1 + p["max_init_queries"] + INIT_BLEND_STEPS + k
             + sum(n + p["max_step_halvings"] + 1 + k
                   for n in gradient_evals(p["steps"], p["init_evals"], p["max_evals"])))
