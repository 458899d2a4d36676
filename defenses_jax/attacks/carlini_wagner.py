"""Carlini-Wagner L2 (Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural
Networks"), following their reference implementation:

- tanh reparameterisation x' = (tanh(w) + 1) / 2, so x' stays in [0, 1] without clipping;
- objective ||x' - x||_2^2 + c * max(sign * margin + kappa, 0) minimised with Adam, where the
  margin masks the reference class out of the max (logits can be negative);
- one constant c per example, found by binary search: after each outer step, success halves
  the search interval's upper end, failure raises c x10 until an upper bound exists, then bisects;
- the perturbation and the Adam state are reset at every outer step;
- the smallest-L2 successful iterate is kept per example over all steps; with kappa > 0 success
  means margin >= kappa;
- early abort per example when its objective stops decreasing (checked every max_iterations/10);
- examples never successfully attacked are returned unchanged (as the clean input).
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks.norms import distances, per_example, varying_like
from defenses_jax.attacks.objectives import is_successful, margin, resolve_targets
from defenses_jax.attacks.wrappers import call_logits

_NO_UPPER_BOUND = 1e10
# arctanh(+-1) is infinite: the reference code scales by 0.999999 before the arctanh.
_TANH_SCALE = 0.999999


def to_tanh_space(x):
  return jnp.arctanh((2.0 * x - 1.0) * _TANH_SCALE)


def from_tanh_space(w):
  return (jnp.tanh(w) + 1.0) / 2.0  # Strictly inside (0, 1): no clipping, no dead gradients.


def adam_step(w, m, v, grad, count, learning_rate, active):
  """One Adam step (TF/Kingma defaults) per example; `count` is each example's step number
  (from 1), since examples restart their optimiser at different times. Inactive examples keep
  their parameters and moments."""
  beta1, beta2, eps = 0.9, 0.999, 1e-8
  m_new = beta1 * m + (1 - beta1) * grad
  v_new = beta2 * v + (1 - beta2) * grad * grad
  t = per_example(count.astype(jnp.float32), w)
  update = learning_rate * (m_new / (1 - beta1 ** t)) / (jnp.sqrt(v_new / (1 - beta2 ** t)) + eps)
  a = per_example(active, w)
  return jnp.where(a, w - update, w), jnp.where(a, m_new, m), jnp.where(a, v_new, v)


def cw_l2(logits_fn: Callable, x, y, key, *, kappa: float = 0.0,
          binary_search_steps: int = 9, max_iterations: int = 1000,
          learning_rate: float = 1e-2, initial_const: float = 1e-3, abort_early: bool = True,
          target: str = "none", targets: Optional[jax.Array] = None):
  """Returns (x_adv, info) with per-example info: success (re-checked on a fresh forward pass),
  l2, linf, and the binary search's final bracket [const_lower, const] (const: the smallest
  constant that succeeded, or the last one tried if none did)."""
  key, check_key, target_key = jax.random.split(key, 3)
  t = resolve_targets(lambda z: call_logits(logits_fn, z, target_key), x, y, target, targets,
                      target_key)

  def violation(x_new, step_key):
    logits = call_logits(logits_fn, x_new, step_key)
    # The reference code's f6: max(Z_y - max_{j != y} Z_j + kappa, 0) = max(kappa - margin, 0).
    return jnp.maximum(kappa - margin(logits, y, t), 0.0), is_successful(logits, y, t, kappa)

  best_x, const, lower = cw_l2_search(
      violation, x, key, binary_search_steps=binary_search_steps, max_iterations=max_iterations,
      learning_rate=learning_rate, initial_const=initial_const, abort_early=abort_early)
  # Re-check on a fresh forward pass; a candidate that no longer succeeds (it can only differ by
  # float noise) is replaced by the clean input, so failures are always returned as x.
  success = is_successful(call_logits(logits_fn, best_x, check_key), y, t, kappa)
  x_adv = jnp.where(per_example(success, x), best_x, x)
  return x_adv, {"success": success, **distances(x_adv, x), "const": const, "const_lower": lower}


def cw_l2_search(violation_fn: Callable, x, key, *, binary_search_steps: int,
                 max_iterations: int, learning_rate: float, initial_const: float,
                 abort_early: bool = True, start=None):
  """The Carlini-Wagner L2 optimisation with any constraint term: minimises
  ||x' - x||^2 + c * violation(x') per example (Adam in tanh space, binary search on c, early
  abort, smallest-L2 successful iterate kept), where `violation_fn(x', key) -> (violation >= 0,
  success)` per example. `start` (default x): where each outer step's optimisation starts (in
  input space); distances are always measured from x. Returns (best_x: x where nothing
  succeeded, const: the bracket's upper end or the last constant tried, const_lower)."""
  batch = x.shape[0]
  w_clean = to_tanh_space(x)
  w_start = w_clean if start is None else to_tanh_space(start)
  # x as the tanh map reproduces it (within 5e-7); distances are measured from it, as in the
  # reference code.
  x_clean = from_tanh_space(w_clean)
  check_every = max(max_iterations // 10, 1)

  def objective(w, const, step_key):
    x_new = from_tanh_space(w)
    violation, success = violation_fn(x_new, step_key)
    l2sq = jnp.sum(jnp.square(x_new - x_clean).reshape(batch, -1), axis=-1)
    losses = l2sq + const * violation
    return jnp.sum(losses), (losses, l2sq, success, x_new)

  grad_fn = jax.grad(objective, has_aux=True)

  def outer_step(carry, outer):
    const, lower, upper, best_l2, best_x = carry
    outer_key = jax.random.fold_in(key, outer)

    def inner_cond(state):
      i, _, _, _, _, active, _, _ = state
      return (i < max_iterations) & jnp.any(active)

    def inner_body(state):
      i, w, m, v, prev_obj, active, succeeded, bests = state
      grad, (obj, l2sq, success, x_new) = grad_fn(w, const, jax.random.fold_in(outer_key, i))
      # Track the iterate that was just evaluated (before this Adam update), as the reference
      # implementation does.
      b_l2, b_x = bests
      improved = success & (l2sq < b_l2) & active
      bests = (jnp.where(improved, l2sq, b_l2), jnp.where(per_example(improved, x), x_new, b_x))
      succeeded = succeeded | (success & active)
      # Adam, frozen for examples that aborted early.
      w, m, v = adam_step(w, m, v, grad, jnp.full((batch,), i + 1), learning_rate, active)
      if abort_early:
        at_check = (i % check_every == 0) & (i > 0)
        stalled = at_check & (obj > prev_obj * 0.9999)
        active = active & ~stalled
        prev_obj = jnp.where(at_check, obj, prev_obj)
      return i + 1, w, m, v, prev_obj, active, succeeded, bests

    zeros = jnp.zeros_like(w_clean)
    init = (jnp.zeros((), jnp.int32), w_start, zeros, zeros, jnp.full((batch,), jnp.inf),
            jnp.ones((batch,), bool), jnp.zeros((batch,), bool), (best_l2, best_x))
    _, _, _, _, _, _, succeeded, (best_l2, best_x) = lax.while_loop(inner_cond, inner_body,
                                                                     varying_like(init, x))
    # Binary search on c, per example.
    upper = jnp.where(succeeded, jnp.minimum(upper, const), upper)
    lower = jnp.where(succeeded, lower, jnp.maximum(lower, const))
    bracketed = upper < _NO_UPPER_BOUND
    const = jnp.where(bracketed, (lower + upper) / 2.0, const * 10.0)
    return (const, lower, upper, best_l2, best_x), None

  init = (jnp.full((batch,), initial_const), jnp.zeros((batch,)),
          jnp.full((batch,), _NO_UPPER_BOUND), jnp.full((batch,), jnp.inf), x)
  (const, lower, upper, _, best_x), _ = lax.scan(outer_step, varying_like(init, x),
                                                 jnp.arange(binary_search_steps))
  return best_x, jnp.where(upper < _NO_UPPER_BOUND, upper, const), lower
