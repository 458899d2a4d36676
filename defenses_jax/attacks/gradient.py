"""Gradient attacks in L-inf and L2 balls: FGSM, BIM, PGD (Madry), least-likely-class PGD.

The papers' "Name(n1, n2)" notation is: step eps/n1, n2 iterations; BIM starts at x, PGD/Madry
at a uniformly random point of the ball. All loops are `lax.fori_loop`/`lax.scan`; every
function is batched and can be jitted, vmapped, or called inside a compiled train step.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import attack_loss, is_successful, resolve_targets
from defenses_jax.attacks.target import call_logits


# Folded into the attack's key for the final forward pass (which only a randomised defense
# uses), so that the attack's own draws are those it made before it reported success.
_CHECK_STREAM = 0x5EED


def _report(system, x_adv, x, y, targets, key):
  """The per-example info every attack returns: success on a fresh forward pass, distances."""
  logits = call_logits(system, x_adv, jax.random.fold_in(key, _CHECK_STREAM))
  return x_adv, {"success": is_successful(logits, y, targets), **norms.distances(x_adv, x)}


def _loss_and_grad(system, x, labels, targets, loss, key):
  def total(z):
    logits = call_logits(system, z, key)
    per_example = attack_loss(logits, labels, targets, loss)
    return jnp.sum(per_example), (per_example, logits)

  (_, (per_example, logits)), grad = jax.value_and_grad(total, has_aux=True)(x)
  return per_example, logits, grad


def _is_better(success, loss, best_success, best_loss):
  """Per-example: a success beats a failure; otherwise the higher loss wins."""
  return (success & ~best_success) | ((success == best_success) & (loss > best_loss))


def fgsm(system: Callable, x, y, key, *, eps: float, norm: str = "linf",
         loss: str = "ce", target: str = "none", targets: Optional[jax.Array] = None):
  """Fast Gradient (Sign) Method: one step of size eps along the steepest-ascent direction.
  Returns (x_adv, info): per-example success (fresh forward pass), l2, linf."""
  norms.check_norm(norm)
  t = resolve_targets(lambda z: call_logits(system, z, key), x, y, target, targets)
  _, _, grad = _loss_and_grad(system, x, y, t, loss, key)
  x_adv = norms.project(x + eps * norms.steepest_ascent(grad, norm), x, eps, norm)
  return _report(system, x_adv, x, y, t, key)


def pgd(system: Callable, x, y, key, *, eps: float, step_size: float, steps: int,
        norm: str = "linf", random_start: bool = True, restarts: int = 1, loss: str = "ce",
        target: str = "none", targets: Optional[jax.Array] = None):
  """Projected gradient ascent on the attack loss.

  Each example keeps its best iterate over all steps and restarts (a successful one before a
  failed one, then the higher loss), so more steps or restarts never make the attack weaker.
  target: 'none' | 'given' (with `targets`) | 'least_likely' (LL-PGD).
  Returns (x_adv, info): per-example success (fresh forward pass), l2, linf.
  """
  norms.check_norm(norm)
  if steps < 0 or restarts < 1:
    raise ValueError(f"PGD needs steps >= 0 and restarts >= 1; got {steps}, {restarts}.")
  t = resolve_targets(lambda z: call_logits(system, z, key), x, y, target, targets)

  def one_restart(carry, restart_key):
    best_x, best_loss, best_success = carry
    start_key, step_key = jax.random.split(restart_key)
    x0 = x
    if random_start:
      x0 = norms.project(norms.random_point_in_ball(start_key, x, eps, norm), x, eps, norm)

    def keep_best(k, xk, loss_k, logits_k, best):
      bx, bl, bs = best
      success = is_successful(logits_k, y, t)
      better = _is_better(success, loss_k, bs, bl)
      return jnp.where(norms.per_example(better, xk), xk, bx), jnp.where(better, loss_k, bl), bs | success

    def step(k, state):
      xk, best = state
      loss_k, logits_k, grad = _loss_and_grad(system, xk, y, t, loss,
                                              jax.random.fold_in(step_key, k))
      best = keep_best(k, xk, loss_k, logits_k, best)
      x_next = norms.project(xk + step_size * norms.steepest_ascent(grad, norm), x, eps, norm)
      return x_next, best

    x_last, best = lax.fori_loop(0, steps, step, (x0, (best_x, best_loss, best_success)))
    last_key = jax.random.fold_in(step_key, steps)
    logits_last = call_logits(system, x_last, last_key)
    best = keep_best(steps, x_last, attack_loss(logits_last, y, t, loss), logits_last, best)
    return best, None

  init = (x, jnp.full(x.shape[:1], -jnp.inf), jnp.zeros(x.shape[:1], bool))
  (best_x, _, _), _ = lax.scan(one_restart, norms.varying_like(init, x),
                               jax.random.split(key, restarts))
  return _report(system, best_x, x, y, t, key)


def bim(system, x, y, key, *, eps: float, n1: int, n2: int, **kwargs):
  """BIM(n1, n2) (Kurakin et al.): steps of eps/n1, n2 iterations, starting at x."""
  return pgd(system, x, y, key, eps=eps, step_size=eps / n1, steps=n2, random_start=False,
             **kwargs)


def madry(system, x, y, key, *, eps: float, n1: int, n2: int, **kwargs):
  """Madry(n1, n2): BIM(n1, n2) from a uniformly random start in the ball."""
  return pgd(system, x, y, key, eps=eps, step_size=eps / n1, steps=n2, random_start=True,
             **kwargs)


def ll_pgd(system, x, y, key, *, eps: float, step_size: float, steps: int, **kwargs):
  """Least-likely-class PGD: targeted at argmin of the clean logits (paper 004's g(x))."""
  return pgd(system, x, y, key, eps=eps, step_size=step_size, steps=steps,
             target="least_likely", **kwargs)
