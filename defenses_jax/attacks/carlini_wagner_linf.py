"""Carlini-Wagner L-inf (Carlini & Wagner 2017), after the reference implementation's
li_attack, run for every example of a batch at once.

For a bound tau (starting at 1, the whole pixel range), minimise
    c * max(sign * margin-shortfall, 0) + sum(max(|x' - x| - tau, 0))
with Adam in tanh space, starting from the last success. An iterate whose loss is below
1e-4 * c and that is misclassified is a success: tau shrinks to 0.9 * min(tau, ||x' - x||_inf),
the optimiser restarts from it, and the search goes on until tau <= 1/256. When
`max_iterations` steps pass without success, c doubles (keeping the optimiser state); past
`largest_const` the example stops and keeps its last success (or the clean input: a failure).

The reference code's loop over examples and tau stages is a per-example state machine inside
one `lax.while_loop`; `max_total_iterations` bounds the whole run.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks.carlini_wagner import adam_step, from_tanh_space, to_tanh_space
from defenses_jax.attacks.norms import distances, per_example, varying_like
from defenses_jax.attacks.objectives import is_successful, margin, resolve_targets
from defenses_jax.attacks.wrappers import call_logits


def cw_linf(logits_fn: Callable, x, y, key, *, kappa: float = 0.0,
            max_iterations: int = 1000, learning_rate: float = 5e-3,
            initial_const: float = 1e-5, largest_const: float = 20.0,
            const_factor: float = 2.0, decrease_factor: float = 0.9,
            max_total_iterations: int = 20000, target: str = "none",
            targets: Optional[jax.Array] = None):
  """Returns (x_adv, info) with per-example success (fresh forward pass), l2, linf, the
  final tau and const, and whether the example's search finished within the iteration budget."""
  key, check_key = jax.random.split(key)
  t = resolve_targets(logits_fn, x, y, target, targets)
  batch = x.shape[0]
  x_clean = from_tanh_space(to_tanh_space(x))

  def objective(modifier, start, tau, const, step_key):
    x_new = from_tanh_space(modifier + start)
    logits = call_logits(logits_fn, x_new, step_key)
    shortfall = jnp.maximum(kappa - margin(logits, y, t), 0.0)
    excess = jnp.sum(jnp.maximum(jnp.abs(x_new - x_clean) - per_example(tau, x), 0.0)
                     .reshape(batch, -1), axis=-1)
    losses = const * shortfall + excess
    return jnp.sum(losses), (losses, logits, x_new)

  grad_fn = jax.grad(objective, has_aux=True)

  def body(s):
    g, (loss, logits, x_new) = grad_fn(s["modifier"], s["start"], s["tau"], s["const"],
                                       jax.random.fold_in(key, s["i"]))
    active = ~s["done"]
    # The iterate just evaluated succeeds if its loss is (almost) zero and it fools the model.
    success = active & (loss < 1e-4 * s["const"]) & is_successful(logits, y, t, kappa)
    modifier, m, v = adam_step(s["modifier"], s["m"], s["v"], g, s["count"] + 1, learning_rate,
                               active & ~success)
    # Success: remember it, tighten tau, restart the optimiser from it.
    actual_tau = jnp.max(jnp.abs(x_new - x_clean).reshape(batch, -1), axis=-1)
    tau = jnp.where(success, jnp.minimum(s["tau"], actual_tau) * decrease_factor, s["tau"])
    sb = per_example(success, x)
    start = jnp.where(sb, s["start"] + s["modifier"], s["start"])
    modifier = jnp.where(sb, 0.0, modifier)
    m, v = jnp.where(sb, 0.0, m), jnp.where(sb, 0.0, v)
    # Failure for max_iterations steps: raise the constant (the optimiser state is kept).
    count = jnp.where(success, 0, s["count"] + active.astype(jnp.int32))
    exhausted = active & ~success & (count >= max_iterations)
    const = jnp.where(exhausted, s["const"] * const_factor, s["const"])
    count = jnp.where(exhausted, 0, count)
    done = s["done"] | (success & (tau <= 1.0 / 256)) | (exhausted & (const >= largest_const))
    return dict(i=s["i"] + 1, modifier=modifier, start=start, m=m, v=v, count=count, tau=tau,
                const=const, done=done, best=jnp.where(sb, x_new, s["best"]),
                found=s["found"] | success)

  zeros = jnp.zeros_like(x)
  init = dict(i=jnp.zeros((), jnp.int32), modifier=zeros, start=to_tanh_space(x), m=zeros,
              v=zeros, count=jnp.zeros((batch,), jnp.int32), tau=jnp.ones((batch,)),
              const=jnp.full((batch,), initial_const), done=jnp.zeros((batch,), bool),
              best=x, found=jnp.zeros((batch,), bool))
  final = lax.while_loop(lambda s: (s["i"] < max_total_iterations) & ~jnp.all(s["done"]),
                         body, varying_like(init, x))
  success = is_successful(call_logits(logits_fn, final["best"], check_key), y, t, kappa)
  x_adv = jnp.where(per_example(success, x), final["best"], x)
  return x_adv, {"success": success, **distances(x_adv, x), "tau": final["tau"],
                 "const": final["const"], "finished": final["done"]}
