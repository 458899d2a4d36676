"""DeepFool (Moosavi-Dezfooli et al. 2016), L2 and L-inf, after the authors' reference code.

The reference class is the clean prediction and the candidate classes are the `candidates`
highest clean logits, fixed once. At each iteration every candidate's boundary is linearised;
the closest one is stepped to (plus 1e-4), the total perturbation is scaled by (1 + overshoot),
and the result is clipped to [0, 1]. Examples stop individually once the prediction changes.
All candidate gradients come from one forward pass: the VJP is vmapped over the candidates.
Written as a per-example state machine (attacks/stepped.py) for the slot runner.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch
from defenses_jax.attacks.stepped import SteppedAttack, run_batch
from defenses_jax.attacks.wrappers import call_logits

_TINY = 1e-8


def deepfool(logits_fn: Callable, x, y, key, *, norm: str = "l2", overshoot: float = 0.02,
             max_iter: int = 50, candidates: int = 10, box_aware: bool = True):
  """Returns (x_adv, info) with info = {success, iterations, l2, linf} per example.

  `y` is not used: DeepFool moves away from the clean prediction (an input the model already
  misclassifies is returned unchanged). It is accepted for the common attack signature.
  Parameters: see deepfool_stepped.
  """
  attack = deepfool_stepped(logits_fn, norm=norm, overshoot=overshoot, max_iter=max_iter,
                            candidates=candidates, box_aware=box_aware)
  return run_batch(attack, x, y, key)


class DeepFoolState(NamedTuple):
  x: jax.Array  # The clean input.
  xi: jax.Array  # The current iterate.
  r_total: jax.Array  # The accumulated step (before the overshoot).
  classes: jax.Array  # (B, k): the clean prediction, then the other candidate classes.
  active: jax.Array  # Still classified as the clean prediction (and moving).
  steps: jax.Array  # Iterations this example has been through (the cap is max_iter).
  iterations: jax.Array  # Iterations in which it moved.


def deepfool_stepped(logits_fn: Callable, *, norm: str = "l2", overshoot: float = 0.02,
                     max_iter: int = 50, candidates: int = 10,
                     box_aware: bool = True) -> SteppedAttack:
  """DeepFool as a SteppedAttack.

  box_aware=False is the reference behaviour (the step is computed as if the image were
  unbounded, then clipped). On images with many saturated pixels (MNIST) most of such a step is
  clipped away and DeepFool creeps towards the boundary without crossing it; box_aware=True
  (default) removes the pixels held at a bound from each linearised step.
  """
  norms.check_norm(norm)

  def init(x, y, example_keys, key):
    del example_keys  # DeepFool draws nothing per example.
    check_batch(x, y)
    clean_logits = call_logits(logits_fn, x, key)
    k = min(candidates, clean_logits.shape[-1])
    if k < 2:
      raise ValueError(f"DeepFool needs at least 2 candidate classes; got {k}.")
    batch = x.shape[0]
    classes = jnp.argsort(-clean_logits, axis=-1)[:, :k]  # Column 0: the clean prediction.
    zeros = jnp.zeros((batch,), jnp.int32)
    return DeepFoolState(x, x, jnp.zeros_like(x), classes, jnp.ones((batch,), bool), zeros,
                         zeros)

  def step(s: DeepFoolState, key) -> DeepFoolState:
    x, xi, classes = s.x, s.xi, s.classes
    batch, k = classes.shape
    logits, vjp = jax.vjp(lambda z: call_logits(logits_fn, z, key), xi)
    num_classes = logits.shape[-1]
    cotangents = norms.match_varying(  # (k, B, K), typed like the logits (see varying_like).
        jax.nn.one_hot(classes.T, num_classes, dtype=logits.dtype), logits)
    (grads,) = jax.vmap(vjp)(cotangents)  # (k, B, ...): gradient of each candidate's logit.
    values = jnp.take_along_axis(logits, classes, axis=-1)  # (B, k)
    live = ~done(s)
    active = s.active & live & (jnp.argmax(logits, -1) == classes[:, 0])
    f = values[:, 1:] - values[:, :1]  # (B, k-1): logit gaps to the reference class.
    w = grads[1:] - grads[:1]  # (k-1, B, ...)
    if box_aware:
      # Steps go along +w (raising f towards 0). Pixels already at a bound of [0, 1] cannot move
      # further out, so they drop out of the linearised problem instead of absorbing the step.
      w = jnp.where(((xi <= 0.0) & (w < 0)) | ((xi >= 1.0) & (w > 0)), 0.0, w)
    w_flat = w.reshape(k - 1, batch, -1)
    if norm == "l2":
      w_norm = jnp.sqrt(jnp.sum(w_flat * w_flat, -1)).T  # (B, k-1)
    else:
      w_norm = jnp.sum(jnp.abs(w_flat), -1).T  # Dual of L-inf is L1.
    distance = jnp.abs(f) / (w_norm + _TINY)
    best = jnp.argmin(distance, axis=-1)  # The closest linearised boundary.
    f_best = jnp.take_along_axis(f, best[:, None], -1)[:, 0]
    norm_best = jnp.take_along_axis(w_norm, best[:, None], -1)[:, 0]
    w_best = jnp.take_along_axis(w, best[None, :, None].reshape(1, batch, *(1,) * (x.ndim - 1)),
                                 axis=0)[0]
    scale = (jnp.abs(f_best) + 1e-4) / (norm_best + _TINY)
    if norm == "l2":
      r = norms.per_example(scale / (norm_best + _TINY), x) * w_best
    else:
      r = norms.per_example(scale, x) * jnp.sign(w_best)
    moving = norms.per_example(active, x)
    r_total = s.r_total + jnp.where(moving, r, 0.0)
    x_next = jnp.clip(x + (1.0 + overshoot) * r_total, 0.0, 1.0)
    if box_aware:  # Keep the accumulated step equal to what the clipped image really moved.
      r_total = jnp.where(moving, (x_next - x) / (1.0 + overshoot), s.r_total)
    return s._replace(xi=jnp.where(moving, x_next, xi), r_total=r_total, active=active,
                      steps=s.steps + live.astype(jnp.int32),
                      iterations=s.iterations + active.astype(jnp.int32))

  def done(s: DeepFoolState):
    return ~s.active | (s.steps >= max_iter)

  def finish(s: DeepFoolState, key):
    success = jnp.argmax(call_logits(logits_fn, s.xi, key), -1) != s.classes[:, 0]
    return s.xi, {"success": success, "iterations": s.iterations, **norms.distances(s.xi, s.x)}

  return SteppedAttack(init, step, done, finish)
