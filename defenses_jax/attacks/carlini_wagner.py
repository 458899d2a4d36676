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


The optimisation is a per-example state machine (attacks/stepped.py): each example runs its own
binary-search step and Adam iterations and moves on when it aborts early, so that the slot
runner can refill a finished example's place with the next image.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from defenses_jax.attacks.norms import distances, per_example
from defenses_jax.attacks.objectives import check_batch, is_successful, margin
from defenses_jax.attacks.stepped import (SteppedAttack, example_targets, run_batch,
                                          run_until_done, select_examples)
from defenses_jax.attacks.target import call_logits

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


def cw_l2(system: Callable, x, y, key, *, kappa: float = 0.0,
          binary_search_steps: int = 9, max_iterations: int = 1000,
          learning_rate: float = 1e-2, initial_const: float = 1e-3, abort_early: bool = True,
          target: str = "none", targets: Optional[jax.Array] = None):
  """Returns (x_adv, info) with per-example info: success (re-checked on a fresh forward pass),
  l2, linf, and the binary search's final bracket [const_lower, const] (const: the smallest
  constant that succeeded, or the last one tried if none did)."""
  attack = cw_l2_stepped(system, kappa=kappa, binary_search_steps=binary_search_steps,
                         max_iterations=max_iterations, learning_rate=learning_rate,
                         initial_const=initial_const, abort_early=abort_early, target=target,
                         targets=targets)
  return run_batch(attack, x, y, key)


def cw_l2_stepped(system: Callable, *, kappa: float = 0.0, binary_search_steps: int = 9,
                  max_iterations: int = 1000, learning_rate: float = 1e-2,
                  initial_const: float = 1e-3, abort_early: bool = True, target: str = "none",
                  targets: Optional[jax.Array] = None) -> SteppedAttack:
  """CW-L2 as a SteppedAttack. A random target is drawn from each example's own key, so that it
  does not depend on which images share the batch."""

  def violation(x_new, aux, step_key):
    y, t = aux
    logits = call_logits(system, x_new, step_key)
    # The reference code's f6: max(Z_y - max_{j != y} Z_j + kappa, 0) = max(kappa - margin, 0).
    return jnp.maximum(kappa - margin(logits, y, t), 0.0), is_successful(logits, y, t, kappa)

  search = CWSearch(violation, binary_search_steps=binary_search_steps,
                    max_iterations=max_iterations, learning_rate=learning_rate,
                    initial_const=initial_const, abort_early=abort_early)

  def init(x, y, example_keys, key):
    check_batch(x, y, targets)
    t = example_targets(system, x, y, target, targets, example_keys, key)
    return search.start(x, (y, t))

  def finish(state, key):
    y, t = state.aux
    best_x, const, lower = search.result(state)
    # Re-check on a fresh forward pass; a candidate that no longer succeeds (it can only differ
    # by float noise) is replaced by the clean input, so failures are always returned as x.
    success = is_successful(call_logits(system, best_x, key), y, t, kappa)
    x_adv = jnp.where(per_example(success, state.x), best_x, state.x)
    return x_adv, {"success": success, **distances(x_adv, state.x), "const": const,
                   "const_lower": lower}

  return SteppedAttack(init, search.step, search.done, finish)


def cw_l2_search(violation_fn: Callable, x, key, *, binary_search_steps: int,
                 max_iterations: int, learning_rate: float, initial_const: float,
                 abort_early: bool = True, start=None):
  """The Carlini-Wagner L2 optimisation with any constraint term on one batch: minimises
  ||x' - x||^2 + c * violation(x') per example (Adam in tanh space, binary search on c, early
  abort, smallest-L2 successful iterate kept), where `violation_fn(x', key) -> (violation >= 0,
  success)` per example. `start` (default x): where each outer step's optimisation starts (in
  input space); distances are always measured from x. Returns (best_x: x where nothing
  succeeded, const: the bracket's upper end or the last constant tried, const_lower)."""
  search = CWSearch(lambda z, _, k: violation_fn(z, k), binary_search_steps=binary_search_steps,
                    max_iterations=max_iterations, learning_rate=learning_rate,
                    initial_const=initial_const, abort_early=abort_early)
  state, _ = run_until_done(search.step, search.done, search.start(x, None, start), key, x)
  return search.result(state)


class CWState(NamedTuple):
  """One row per example: where it is in its own binary search and Adam iterations."""
  x: jax.Array  # The clean input.
  x_clean: jax.Array  # x as the tanh map reproduces it (within 5e-7): distances are from it.
  w_start: jax.Array  # Where each outer step starts, in tanh space.
  aux: Any  # What the violation needs per example (labels, targets), or None.
  w: jax.Array
  m: jax.Array
  v: jax.Array
  prev_obj: jax.Array  # The objective at the last early-abort check.
  active: jax.Array  # Not yet aborted in this outer step.
  succeeded: jax.Array  # Some iterate of this outer step succeeded.
  best_l2: jax.Array
  best_x: jax.Array
  const: jax.Array
  lower: jax.Array
  upper: jax.Array
  iteration: jax.Array  # Within the current outer step.
  outer: jax.Array  # The binary-search step; the example is done at binary_search_steps.


class CWSearch:
  """The search's state machine: start, step (one Adam iteration, then the binary-search update
  and a fresh start for every example whose outer step ended), done and result."""

  def __init__(self, violation_fn: Callable, *, binary_search_steps: int, max_iterations: int,
               learning_rate: float, initial_const: float, abort_early: bool = True):
    self.violation_fn = violation_fn  # (x', aux, key) -> (violation, success) per example.
    self.binary_search_steps = binary_search_steps
    self.max_iterations = max_iterations
    self.learning_rate = learning_rate
    self.initial_const = initial_const
    self.abort_early = abort_early
    self.check_every = max(max_iterations // 10, 1)

  def start(self, x, aux, start=None) -> CWState:
    batch = x.shape[0]
    w_clean = to_tanh_space(x)
    w_start = w_clean if start is None else to_tanh_space(start)
    zeros = jnp.zeros_like(w_clean)
    return CWState(
        x=x, x_clean=from_tanh_space(w_clean), w_start=w_start, aux=aux, w=w_start, m=zeros,
        v=zeros, prev_obj=jnp.full((batch,), jnp.inf), active=jnp.ones((batch,), bool),
        succeeded=jnp.zeros((batch,), bool), best_l2=jnp.full((batch,), jnp.inf), best_x=x,
        const=jnp.full((batch,), self.initial_const), lower=jnp.zeros((batch,)),
        upper=jnp.full((batch,), _NO_UPPER_BOUND), iteration=jnp.zeros((batch,), jnp.int32),
        outer=jnp.zeros((batch,), jnp.int32))

  def done(self, s: CWState):
    return s.outer >= self.binary_search_steps

  def result(self, s: CWState):
    return s.best_x, jnp.where(s.upper < _NO_UPPER_BOUND, s.upper, s.const), s.lower

  def step(self, s: CWState, key) -> CWState:
    batch = s.x.shape[0]
    live = ~self.done(s)
    active = s.active & live

    def objective(w):
      x_new = from_tanh_space(w)
      violation, success = self.violation_fn(x_new, s.aux, key)
      l2sq = jnp.sum(jnp.square(x_new - s.x_clean).reshape(batch, -1), axis=-1)
      losses = l2sq + s.const * violation
      return jnp.sum(losses), (losses, l2sq, success, x_new)

    grad, (obj, l2sq, success, x_new) = jax.grad(objective, has_aux=True)(s.w)
    # Track the iterate that was just evaluated (before this Adam update), as the reference
    # implementation does.
    improved = success & (l2sq < s.best_l2) & active
    best_l2 = jnp.where(improved, l2sq, s.best_l2)
    best_x = jnp.where(per_example(improved, s.x), x_new, s.best_x)
    succeeded = s.succeeded | (success & active)
    # Adam, frozen for examples that aborted early (and finished ones).
    w, m, v = adam_step(s.w, s.m, s.v, grad, s.iteration + 1, self.learning_rate, active)
    prev_obj = s.prev_obj
    if self.abort_early:
      at_check = (s.iteration % self.check_every == 0) & (s.iteration > 0) & live
      active = active & ~(at_check & (obj > prev_obj * 0.9999))
      prev_obj = jnp.where(at_check, obj, prev_obj)
    iteration = s.iteration + live.astype(jnp.int32)
    s = s._replace(w=w, m=m, v=v, prev_obj=prev_obj, active=active, succeeded=succeeded,
                   best_l2=best_l2, best_x=best_x, iteration=iteration)
    # The outer step ends at max_iterations or at an early abort: binary search on c, then the
    # perturbation and the Adam state are reset.
    ended = live & ((iteration >= self.max_iterations) | ~active)
    upper = jnp.where(succeeded, jnp.minimum(s.upper, s.const), s.upper)
    lower = jnp.where(succeeded, s.lower, jnp.maximum(s.lower, s.const))
    const = jnp.where(upper < _NO_UPPER_BOUND, (lower + upper) / 2.0, s.const * 10.0)
    zeros = jnp.zeros_like(s.w)
    restarted = dict(  # Only the fields a restart changes (x, best_x, ... stay as they are).
        w=s.w_start, m=zeros, v=zeros, prev_obj=jnp.full((batch,), jnp.inf),
        active=jnp.ones((batch,), bool), succeeded=jnp.zeros((batch,), bool), const=const,
        lower=lower, upper=upper, iteration=jnp.zeros((batch,), jnp.int32), outer=s.outer + 1)
    current = {name: getattr(s, name) for name in restarted}
    return s._replace(**select_examples(ended, restarted, current))
