"""Carlini-Wagner L-inf (Carlini & Wagner 2017), after the reference implementation's
li_attack, run for every example of a batch at once.

For a bound tau (starting at 1, the whole pixel range), minimise
    c * max(sign * margin-shortfall, 0) + sum(max(|x' - x| - tau, 0))
with Adam in tanh space, starting from the last success. An iterate whose loss is below
1e-4 * c and that is misclassified is a success: tau shrinks to 0.9 * min(tau, ||x' - x||_inf),
the optimiser restarts from it, and the search goes on until tau <= 1/256. When
`max_iterations` steps pass without success, c doubles (keeping the optimiser state); past
`largest_const` the example stops and keeps its last success (or the clean input: a failure).

The reference code's loop over examples and tau stages is a per-example state machine
(attacks/stepped.py): each example stops on its own, so that the slot runner can refill its place
with the next image; `max_total_iterations` bounds each example's run.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from defenses_jax.attacks.carlini_wagner import adam_step, from_tanh_space, to_tanh_space
from defenses_jax.attacks.norms import distances, per_example
from defenses_jax.attacks.objectives import check_batch, is_successful, margin
from defenses_jax.attacks.stepped import SteppedAttack, example_targets, run_batch
from defenses_jax.attacks.target import call_logits


def cw_linf(system: Callable, x, y, key, *, kappa: float = 0.0,
            max_iterations: int = 1000, learning_rate: float = 5e-3,
            initial_const: float = 1e-5, largest_const: float = 20.0,
            const_factor: float = 2.0, decrease_factor: float = 0.9,
            max_total_iterations: int = 20000, target: str = "none",
            targets: Optional[jax.Array] = None):
  """Returns (x_adv, info) with per-example success (fresh forward pass), l2, linf, the
  final tau and const, and whether the example's search finished within the iteration budget."""
  attack = cw_linf_stepped(system, kappa=kappa, max_iterations=max_iterations,
                           learning_rate=learning_rate, initial_const=initial_const,
                           largest_const=largest_const, const_factor=const_factor,
                           decrease_factor=decrease_factor,
                           max_total_iterations=max_total_iterations, target=target,
                           targets=targets)
  return run_batch(attack, x, y, key)


class CWLinfState(NamedTuple):
  """One row per example: its tau stage, constant and Adam iterations."""
  x: jax.Array  # The clean input.
  x_clean: jax.Array  # x as the tanh map reproduces it: distances are from it.
  y: jax.Array
  t: Any  # Targets, or None (untargeted).
  modifier: jax.Array
  start: jax.Array  # The last success (tanh space): each tau stage starts from it.
  m: jax.Array
  v: jax.Array
  count: jax.Array  # Steps since the last success or constant change.
  tau: jax.Array
  const: jax.Array
  finished: jax.Array  # The search ended (tau small enough, or the constant too large).
  iterations: jax.Array  # Steps this example has run (bounded by max_total_iterations).
  best: jax.Array  # The last success (x where none).
  found: jax.Array


def cw_linf_stepped(system: Callable, *, kappa: float = 0.0, max_iterations: int = 1000,
                    learning_rate: float = 5e-3, initial_const: float = 1e-5,
                    largest_const: float = 20.0, const_factor: float = 2.0,
                    decrease_factor: float = 0.9, max_total_iterations: int = 20000,
                    target: str = "none",
                    targets: Optional[jax.Array] = None) -> SteppedAttack:
  """CW-L-inf as a SteppedAttack. A random target is drawn from each example's own key, so that
  it does not depend on which images share the batch."""

  def init(x, y, example_keys, key):
    check_batch(x, y, targets)
    t = example_targets(system, x, y, target, targets, example_keys, key)
    batch = x.shape[0]
    w = to_tanh_space(x)
    zeros = jnp.zeros_like(x)
    return CWLinfState(
        x=x, x_clean=from_tanh_space(w), y=y, t=t, modifier=zeros, start=w, m=zeros, v=zeros,
        count=jnp.zeros((batch,), jnp.int32), tau=jnp.ones((batch,)),
        const=jnp.full((batch,), initial_const), finished=jnp.zeros((batch,), bool),
        iterations=jnp.zeros((batch,), jnp.int32), best=x, found=jnp.zeros((batch,), bool))

  def done(s: CWLinfState):
    return s.finished | (s.iterations >= max_total_iterations)

  def step(s: CWLinfState, key) -> CWLinfState:
    batch = s.x.shape[0]

    def objective(modifier):
      x_new = from_tanh_space(modifier + s.start)
      logits = call_logits(system, x_new, key)
      shortfall = jnp.maximum(kappa - margin(logits, s.y, s.t), 0.0)
      excess = jnp.sum(jnp.maximum(jnp.abs(x_new - s.x_clean) - per_example(s.tau, s.x), 0.0)
                       .reshape(batch, -1), axis=-1)
      losses = s.const * shortfall + excess
      return jnp.sum(losses), (losses, logits, x_new)

    g, (loss, logits, x_new) = jax.grad(objective, has_aux=True)(s.modifier)
    active = ~done(s)
    # The iterate just evaluated succeeds if its loss is (almost) zero and it fools the model.
    success = active & (loss < 1e-4 * s.const) & is_successful(logits, s.y, s.t, kappa)
    modifier, m, v = adam_step(s.modifier, s.m, s.v, g, s.count + 1, learning_rate,
                               active & ~success)
    # Success: remember it, tighten tau, restart the optimiser from it.
    actual_tau = jnp.max(jnp.abs(x_new - s.x_clean).reshape(batch, -1), axis=-1)
    tau = jnp.where(success, jnp.minimum(s.tau, actual_tau) * decrease_factor, s.tau)
    sb = per_example(success, s.x)
    start = jnp.where(sb, s.start + s.modifier, s.start)
    modifier = jnp.where(sb, 0.0, modifier)
    m, v = jnp.where(sb, 0.0, m), jnp.where(sb, 0.0, v)
    # Failure for max_iterations steps: raise the constant (the optimiser state is kept).
    count = jnp.where(success, 0, s.count + active.astype(jnp.int32))
    exhausted = active & ~success & (count >= max_iterations)
    const = jnp.where(exhausted, s.const * const_factor, s.const)
    count = jnp.where(exhausted, 0, count)
    finished = s.finished | (success & (tau <= 1.0 / 256)) | (exhausted & (const >= largest_const))
    return s._replace(modifier=modifier, start=start, m=m, v=v, count=count, tau=tau,
                      const=const, finished=finished,
                      iterations=s.iterations + active.astype(jnp.int32),
                      best=jnp.where(sb, x_new, s.best), found=s.found | success)

  def finish(s: CWLinfState, key):
    success = is_successful(call_logits(system, s.best, key), s.y, s.t, kappa)
    x_adv = jnp.where(per_example(success, s.x), s.best, s.x)
    return x_adv, {"success": success, **distances(x_adv, s.x), "tau": s.tau, "const": s.const,
                   "finished": s.finished}

  return SteppedAttack(init, step, done, finish)
