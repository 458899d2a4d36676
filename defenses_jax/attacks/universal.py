"""Universal attacks: one perturbation v fitted on a set of (training) images, then added to any
input. `fit(system, x, key, **params) -> (v, info)`; `apply_perturbation(v, x)`.

UAP (Moosavi-Dezfooli et al. 2017), after the authors' code (LTS4/universal, universal_pert.py):
passes over the shuffled crafting set; for each image the current v does not fool yet, DeepFool
(L2, the top `candidates` classes, `overshoot`) runs from x+v and its step is added to v, which is
projected back onto the ball of radius eps. After each pass the fooling rate (the share of the
crafting set whose prediction v changes, against the clean *predictions*, not the labels) is
measured, and the fit stops once it reaches 1 - delta or after `max_passes` passes. The fit
returns the v of its best pass (the reference returns the last one: the fooling rate of
successive passes is not monotone, on MNIST it swings by 30 points), so more passes never make
the result worse on the fitting images.

Where we differ from the reference, on purpose:
- the radius (the paper's xi) has no default: the reference's xi = 10 and ART's eps = 10 on
  [0, 1] images mean no constraint at all;
- x + v is clipped to the [0, 1] box (the reference never clips), and DeepFool is box aware;
- a DeepFool step is kept when DeepFool changed the label (as ART), rather than when it stopped
  before its last iteration (the reference's proxy for the same thing);
- the number of passes is bounded (the reference's default is unbounded and never ends on an
  unreachable target: qilong-zhang/Pytorch_Universal-adversarial-perturbation#2).

The passes run as one compiled loop (lax.while_loop over passes, lax.scan over the images of a
pass): the algorithm is sequential by nature (each image's step starts from the v the previous
images built), so a fit runs on one device. The fooling rate is measured in batches.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.deepfool import deepfool
from defenses_jax.attacks.target import call_logits


def apply_perturbation(v, x):
  """x + v, clipped to the [0, 1] box (v broadcast over the batch)."""
  return jnp.clip(x + v, 0.0, 1.0)


def project_perturbation(v, eps, norm: str):
  """v onto the ball of radius eps around 0: v * min(1, eps / ||v||_2), or v clipped to +-eps."""
  if norm == "linf":
    return jnp.clip(v, -eps, eps)
  return v * jnp.minimum(1.0, eps / jnp.maximum(jnp.sqrt(jnp.sum(v * v)), 1e-12))


def _predictions(system: Callable, x, key, batch_size: int):
  """argmax logits over x in batches of `batch_size` (the last padded), as one compiled loop."""
  n = x.shape[0]
  batch_size = min(batch_size, n)
  padded = -(-n // batch_size) * batch_size
  chunks = jnp.pad(x, [(0, padded - n)] + [(0, 0)] * (x.ndim - 1))
  chunks = chunks.reshape((padded // batch_size, batch_size) + x.shape[1:])
  keys = jax.random.split(key, chunks.shape[0])
  preds = lax.map(lambda c: jnp.argmax(call_logits(system, c[0], c[1]), -1), (chunks, keys))
  return preds.reshape(-1)[:n]


def uap(system: Callable, x, key, *, eps: float, norm: str = "linf", delta: float = 0.2,
        max_passes: int = 10, overshoot: float = 0.02, max_iter_df: int = 10,
        candidates: int = 10, batch_size: int = 256):
  """Fits a universal perturbation on the crafting images x (B, ...). Returns (v, info), v shaped
  like one image, with info = {fooling_rate (of the v returned: the best pass's), best_pass,
  fooling_rate_per_pass (-1 for passes not run), passes, l2, linf (of v)}.

  eps: the radius of v in `norm` (the paper's xi), required. delta: stop once the fooling rate
  reaches 1 - delta. max_iter_df, overshoot, candidates: the inner DeepFool's settings.
  """
  norms.check_norm(norm)
  if not eps > 0:
    raise ValueError(f"UAP needs a radius eps > 0 (the paper's xi); got {eps}.")
  if not 0.0 <= delta < 1.0:
    raise ValueError(f"UAP's delta (1 - target fooling rate) must lie in [0, 1); got {delta}.")
  if max_passes < 1:
    raise ValueError(f"UAP needs max_passes >= 1; got {max_passes}.")
  n = x.shape[0]
  clean_key, fit_key = jax.random.split(key)
  clean = _predictions(system, x, clean_key, batch_size)
  no_label = jnp.zeros((1,), jnp.int32)  # DeepFool moves away from the prediction; y unused.

  def visit(pass_key, v, i):
    """One image of a pass: a DeepFool step from x_i + v if v does not fool it yet."""
    check_key, df_key = jax.random.split(jax.random.fold_in(pass_key, i))
    xv = apply_perturbation(v, x[i][None])
    not_fooled = jnp.argmax(call_logits(system, xv, check_key), -1)[0] == clean[i]

    def step(v):
      x_df, report = deepfool(system, xv, no_label, df_key, norm="l2", overshoot=overshoot,
                              max_iter=max_iter_df, candidates=candidates)
      moved = project_perturbation(v + (x_df - xv)[0], eps, norm)
      return jnp.where(report["success"][0], moved, v)

    return lax.cond(not_fooled, step, lambda v: v, v), None

  def one_pass(state):
    p, v, rates, best_v, best_pass = state
    order_key, visit_key, measure_key = jax.random.split(jax.random.fold_in(fit_key, p), 3)
    order = jax.random.permutation(order_key, n)
    v, _ = lax.scan(lambda v, i: visit(visit_key, v, i), v, order)
    fooled = _predictions(system, apply_perturbation(v, x), measure_key, batch_size) != clean
    rates = rates.at[p].set(jnp.mean(fooled.astype(jnp.float32)))
    better = (p == 0) | (rates[p] > rates[best_pass])  # Ties keep the earlier v.
    return (p + 1, v, rates, jnp.where(better, v, best_v), jnp.where(better, p, best_pass))

  def keep_going(state):
    p, _, rates, _, _ = state
    return (p < max_passes) & ((p == 0) | (rates[jnp.maximum(p - 1, 0)] < 1.0 - delta))

  zero = jnp.zeros(x.shape[1:], x.dtype)
  init = (jnp.zeros((), jnp.int32), zero, jnp.full((max_passes,), -1.0, jnp.float32), zero,
          jnp.zeros((), jnp.int32))
  passes, _, rates, v, best_pass = lax.while_loop(keep_going, one_pass, init)
  return v, {"fooling_rate": rates[best_pass], "best_pass": best_pass,
             "fooling_rate_per_pass": rates, "passes": passes, "l2": jnp.sqrt(jnp.sum(v * v)),
             "linf": jnp.max(jnp.abs(v))}
