"""ZOO (Chen, Zhang, Sharma, Yi, Hsieh 2017): the Carlini-Wagner L2 attack with gradients
replaced by symmetric finite differences of the class scores, B coordinates per iteration.

Follows the authors' code (IBM/ZOO-Attack `l2_attack_black.py`, run as `test_all.py` runs it):
the objective ||x' - x||^2 + c * loss1 on log-probabilities (`use_log`), each iteration queries
the current point and x' +- h e_i for B sampled coordinates (2B + 1 queries), then updates those
coordinates with ZOO-ADAM (per-coordinate bias-corrected Adam with its own step counter) or ZOO-
Newton (g / max(second difference, 0.1), negative curvature taken as 1); a binary search on c with
the modifier and solver state reset at every step; early abort when the loss stops falling.
Defaults: B 128, h 1e-4, lr 1e-2, c0 0.01 with 9 binary-search steps and 1,000 iterations (the
README's MNIST/CIFAR run and paper 000's settings), box-constrained modifier (test_all.py's MNIST
choice; `use_tanh=True` is its CIFAR choice).

Where we differ from the reference, and why:
- kappa is honoured on log-probabilities too (the reference uses it only on logits), and success
  is judged with the same margin.
- Importance sampling really refreshes: with `importance_sampling=True` the coordinate
  probabilities are recomputed from |modifier| (max-pooled over blocks of side size // 8, per
  channel) every iteration. The reference's refresh is guarded by the batch dimension and never
  runs. A tenth of the probability stays uniform so that no coordinate is starved (the reference
  fails when fewer than B coordinates have non-zero probability, e.g. at the first iteration).
- Queries are counted as they happen: 2B + 1 per iteration (the reference counts B).
- Attack-space reduction (`reduced_size`) keeps the modifier at reduced_size x reduced_size x C
  and upsamples it bilinearly; the reference's hierarchical growth (32 -> 64 -> 128 at fixed
  iterations, ImageNet only) is not implemented. With a reduced modifier the box constraint is
  kept by clipping the image, since the modifier cannot be projected per pixel.
- The reference's extra success rule L2 <= 20 (a constant for ImageNet-sized images) is dropped.
- A batch of examples runs together, each with its own c, solver state, early abort and budget.
  Finite-difference probes may lie up to h outside [0, 1], as the reference's do; the points
  kept are always inside.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch, is_successful, margin
from defenses_jax.attacks.query.oracle import check_query_targets

SOLVERS = ("adam", "newton")
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_UNIFORM_SHARE = 0.1  # Of the importance-sampling probability, see the module docstring.


class SolverState(NamedTuple):
  """Per example: the flat modifier (N, n) and the per-coordinate Adam moments and counters."""
  w: jax.Array
  m: jax.Array
  v: jax.Array
  t: jax.Array


def initial_solver_state(batch: int, size: int, dtype) -> SolverState:
  zeros = jnp.zeros((batch, size), dtype)
  return SolverState(zeros, zeros, zeros, jnp.ones((batch, size), jnp.int32))


def coordinate_step(objective, state: SolverState, idx, *, h: float, learning_rate: float,
                    solver: str, lower=None, upper=None, active=None):
  """One ZOO iteration on the coordinates idx (N, B) of each example.

  objective(points (N, 2B + 1, n)) -> (losses (N, 2B + 1), aux): row 0 is the current modifier,
  rows 2i + 1 / 2i + 2 are +- h along coordinate idx[:, i]. Returns (new state, losses, aux);
  examples not `active` keep their state. lower / upper (N, n): the box of the modifier (None:
  unconstrained, as in tanh space)."""
  n_ex, size = state.w.shape
  b = idx.shape[1]
  basis = jax.nn.one_hot(idx, size, dtype=state.w.dtype) * h  # (N, B, n)
  probes = jnp.stack([state.w[:, None] + basis, state.w[:, None] - basis], axis=2)
  points = jnp.concatenate([state.w[:, None], probes.reshape(n_ex, 2 * b, size)], axis=1)
  losses, aux = objective(points)
  f0, f_plus, f_minus = losses[:, 0], losses[:, 1::2], losses[:, 2::2]
  grad = (f_plus - f_minus) / (2.0 * h)
  rows = jnp.arange(n_ex)[:, None]
  w_i = jnp.take_along_axis(state.w, idx, axis=1)
  if solver == "adam":
    m_i = _BETA1 * jnp.take_along_axis(state.m, idx, axis=1) + (1 - _BETA1) * grad
    v_i = _BETA2 * jnp.take_along_axis(state.v, idx, axis=1) + (1 - _BETA2) * grad ** 2
    t_i = jnp.take_along_axis(state.t, idx, axis=1)
    corr = jnp.sqrt(1 - _BETA2 ** t_i) / (1 - _BETA1 ** t_i)
    w_new = w_i - learning_rate * corr * m_i / (jnp.sqrt(v_i) + _ADAM_EPS)
    m, v, t = (state.m.at[rows, idx].set(m_i), state.v.at[rows, idx].set(v_i),
               state.t.at[rows, idx].set(t_i + 1))
  else:
    hess = (f_plus - 2.0 * f0[:, None] + f_minus) / h ** 2
    hess = jnp.where(hess < 0, 1.0, jnp.maximum(hess, 0.1))
    w_new = w_i - learning_rate * grad / hess
    m, v, t = state.m, state.v, state.t
  if lower is not None:
    w_new = jnp.clip(w_new, jnp.take_along_axis(lower, idx, axis=1),
                     jnp.take_along_axis(upper, idx, axis=1))
  new = SolverState(state.w.at[rows, idx].set(w_new), m, v, t)
  # An example whose queries were not answered (its budget is spent) has NaN losses: it keeps
  # its state, and the caller stops it.
  keep = jnp.isfinite(losses).all(axis=1) if active is None else active & jnp.isfinite(
      losses).all(axis=1)
  new = jax.tree.map(lambda a, b: jnp.where(keep[:, None], a, b), new, state)
  return new, losses, aux


def zoo_objective(scores, l2sq, labels, targets, const, kappa: float, use_log: bool):
  """The CW-L2 objective per query (N, Q): l2sq + c * max(kappa - margin, 0), the margin taken
  on log-probabilities (use_log) or on the scores themselves. The margin of log-probabilities
  equals the margin of the logits they come from, so kappa means the same either way; the
  reference's log branch ignores it."""
  logits = jax.nn.log_softmax(scores) if use_log else scores
  margins = jax.vmap(lambda z: margin(z, labels, targets), in_axes=1, out_axes=1)(logits)
  return l2sq + const[:, None] * jnp.maximum(kappa - margins, 0.0)


def importance_probabilities(w, shape) -> jax.Array:
  """Coordinate probabilities (N, n) from the modifier w (N, n) of an image-shaped modifier
  `shape` (H, W, C): |w| max-pooled per channel over blocks of side max(H // 8, 1), normalised,
  with a uniform share (_UNIFORM_SHARE) mixed in; uniform where w is zero."""
  h, wd, c = shape
  side = max(h // 8, 1)
  a = jnp.abs(w).reshape((-1,) + tuple(shape))
  ph, pw = -h % side, -wd % side
  padded = jnp.pad(a, ((0, 0), (0, ph), (0, pw), (0, 0)))  # |w| >= 0: zeros never win a max.
  n = padded.shape[0]
  blocks = padded.reshape(n, (h + ph) // side, side, (wd + pw) // side, side, c).max((2, 4))
  pooled = jnp.repeat(jnp.repeat(blocks, side, 1), side, 2)[:, :h, :wd].reshape(n, -1)
  total = jnp.sum(pooled, axis=1, keepdims=True)
  uniform = jnp.full_like(pooled, 1.0 / pooled.shape[1])
  imp = jnp.where(total > 0, pooled / jnp.where(total > 0, total, 1.0), uniform)
  return (1 - _UNIFORM_SHARE) * imp + _UNIFORM_SHARE * uniform


def sample_coordinates(key, probabilities, b: int):
  """b distinct coordinates per example, drawn without replacement with the given probabilities
  (Gumbel top-k, the exact sampler for successive draws without replacement)."""
  gumbel = jax.random.gumbel(key, probabilities.shape)
  return lax.top_k(jnp.log(probabilities) + gumbel, b)[1]


def zoo(oracle, x, y, key, *, kappa: float = 0.0, binary_search_steps: int = 9,
        max_iterations: int = 1000, learning_rate: float = 1e-2, initial_const: float = 0.01,
        coordinates: int = 128, solver: str = "adam", h: float = 1e-4,
        early_stop_iters: Optional[int] = None, use_log: bool = True, use_tanh: bool = False,
        reduced_size: Optional[int] = None, importance_sampling: bool = False,
        target: str = "none", targets=None, max_queries: Optional[int] = None):
  """Returns (x_adv, info) with per example: success (some point the Oracle scored as
  adversarial with margin >= kappa), queries, const (the last c tried), l2, linf, l0. x_adv is
  the smallest-L2 adversarial point found, or x."""
  _check(x, y, kappa, binary_search_steps, max_iterations, coordinates, solver, h,
         reduced_size, target, targets, oracle)
  t = None if target == "none" else targets
  n_ex = x.shape[0]
  image_shape = x.shape[1:]
  if reduced_size is None:
    mod_shape = image_shape
  else:
    if x.ndim != 4:
      raise ValueError("attack-space reduction needs images (B, H, W, C).")
    mod_shape = (reduced_size, reduced_size, image_shape[-1])
  size = int(np.prod(mod_shape))
  b = min(coordinates, size)
  stop_every = early_stop_iters or max(max_iterations // 10, 1)

  if use_tanh:
    w0 = jnp.arctanh((x - 0.5) * 1.999999)
    to_image = lambda delta: jnp.tanh(w0 + delta) / 2 + 0.5
    x_ref = to_image(jnp.zeros_like(x))
  else:
    to_image = lambda delta: x + delta
    x_ref = x
  lower = upper = None
  if not use_tanh and reduced_size is None:  # The modifier itself stays in the box.
    lower, upper = (-x).reshape(n_ex, -1), (1.0 - x).reshape(n_ex, -1)

  def images(points):  # (N, Q, n) modifiers -> (N, Q, *image_shape) images.
    deltas = points.reshape((n_ex, -1) + tuple(mod_shape))
    if reduced_size is not None:
      deltas = jax.image.resize(deltas, deltas.shape[:2] + tuple(image_shape), "bilinear")
    out = to_image(deltas.swapaxes(0, 1)).swapaxes(0, 1)
    return out if (use_tanh or reduced_size is None) else jnp.clip(out, 0.0, 1.0)

  def one_constant(carry, step):
    counts, const, lower_c, upper_c, best_l2, best_adv = carry
    step_key = jax.random.fold_in(key, step)

    def iteration(state):
      it, solver_state, counts, active, prev, found_l2, found_adv = state
      k = jax.random.fold_in(step_key, it)
      probs = (importance_probabilities(solver_state.w, mod_shape) if importance_sampling
               else jnp.full((n_ex, size), 1.0 / size, x.dtype))
      idx = sample_coordinates(jax.random.fold_in(k, 0), probs, b)
      def objective(points):
        imgs = images(points)
        scores, new_counts, answered = oracle.query_many(imgs, counts, jax.random.fold_in(k, 1),
                                                         active=active)
        l2sq = jnp.sum(jnp.square(imgs - x_ref[:, None]).reshape(n_ex, points.shape[1], -1),
                       axis=-1)
        losses = zoo_objective(scores, l2sq, y, t, const, kappa, use_log)
        return losses, (scores[:, 0], l2sq[:, 0], imgs[:, 0], new_counts, answered)

      new_state, losses, (scores0, l2_0, img0, counts, answered) = coordinate_step(
          objective, solver_state, idx, h=h, learning_rate=learning_rate, solver=solver,
          lower=lower, upper=upper, active=active)
      success0 = answered & is_successful(scores0, y, t, kappa)
      better = success0 & (l2_0 < found_l2)
      found_l2 = jnp.where(better, l2_0, found_l2)
      found_adv = jnp.where(norms.per_example(better, x), img0, found_adv)
      # Early abort (the reference's rule, per example): every `stop_every` iterations, stop
      # once the loss of the current point has not fallen by 0.01%.
      f0 = losses[:, 0]
      check = (it % stop_every) == 0
      stalled = check & (f0 > prev * 0.9999)
      prev = jnp.where(check & answered, f0, prev)
      active = active & answered & ~stalled
      return it + 1, new_state, counts, active, prev, found_l2, found_adv

    def keep_going(state):
      it, _, _, active, *_ = state
      return (it < max_iterations) & jnp.any(active)

    init = (jnp.zeros((), jnp.int32), initial_solver_state(n_ex, size, x.dtype), counts,
            counts + (2 * b + 1) <= oracle.budget, jnp.full((n_ex,), 1e6, x.dtype),
            jnp.full((n_ex,), jnp.inf, x.dtype), x)
    _, _, counts, _, _, found_l2, found_adv = lax.while_loop(
        keep_going, iteration, norms.varying_like(init, x))
    found = jnp.isfinite(found_l2)
    # The reference's binary search on c.
    upper_c = jnp.where(found, jnp.minimum(upper_c, const), upper_c)
    lower_c = jnp.where(found, lower_c, jnp.maximum(lower_c, const))
    const_next = jnp.where(upper_c < 1e9, (lower_c + upper_c) / 2, const * 10)
    improve = found & (found_l2 < best_l2)
    best_l2 = jnp.where(improve, found_l2, best_l2)
    best_adv = jnp.where(norms.per_example(improve, x), found_adv, best_adv)
    return (counts, const_next, lower_c, upper_c, best_l2, best_adv), const

  init = (oracle.initial_counts(n_ex), jnp.full((n_ex,), initial_const, x.dtype),
          jnp.zeros((n_ex,), x.dtype), jnp.full((n_ex,), 1e10, x.dtype),
          jnp.full((n_ex,), jnp.inf, x.dtype), x)
  (counts, _, _, _, best_l2, x_adv), tried = lax.scan(
      one_constant, norms.varying_like(init, x), jnp.arange(binary_search_steps))
  success = jnp.isfinite(best_l2)
  return x_adv, {"success": success, "queries": counts, "const": tried[-1],
                 **norms.distances(x_adv, x)}


def zoo_query_budget(**params) -> int:
  """max_queries if given, else the schedule's most: binary_search_steps x max_iterations x
  (2B + 1) (B capped at the number of coordinates only when the attack runs; here the
  parameter's value, an upper bound)."""
  if params.get("max_queries") is not None:
    return int(params["max_queries"])
  return (int(params.get("binary_search_steps", 9)) * int(params.get("max_iterations", 1000))
          * (2 * int(params.get("coordinates", 128)) + 1))


def _check(x, y, kappa, binary_search_steps, max_iterations, coordinates, solver, h,
           reduced_size, target, targets, oracle):
  check_batch(x, y, targets)
  if oracle.access != "scores":
    raise ValueError("ZOO needs class scores; its Oracle answers only labels.")
  if solver not in SOLVERS:
    raise ValueError(f"unknown ZOO solver {solver!r}; choose one of {SOLVERS}.")
  for name, value in (("binary_search_steps", binary_search_steps),
                      ("max_iterations", max_iterations), ("coordinates", coordinates)):
    if value < 1:
      raise ValueError(f"ZOO's {name} must be >= 1; got {value}.")
  if not h > 0:
    raise ValueError(f"the finite-difference step h must be > 0; got {h}.")
  if kappa < 0:
    raise ValueError(f"kappa must be >= 0; got {kappa}.")
  if reduced_size is not None and reduced_size < 1:
    raise ValueError(f"reduced_size must be >= 1; got {reduced_size}.")
  check_query_targets("ZOO", target, targets)
