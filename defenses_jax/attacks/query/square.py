"""Square Attack (Andriushchenko, Croce, Flammarion, Hein 2020): random search over square
windows, scores only. The member of AutoAttack that needs no gradient at all.

Follows AutoAttack's `square.py` (fra31/auto-attack a392200) as AutoAttack runs it: margin loss
on the class scores, p_init 0.8, 5,000 queries, the window-size schedule on the absolute query
index (`resc_schedule=False`; `rescale_schedule=True` rescales it to the budget, as the original
square-attack code does).
- L-inf: start from vertical stripes of +-eps; each query changes one s x s window of the best
  point so far to +-eps (one sign per channel), projected to the ball and the box; kept if the
  loss drops.
- L2: start from tiles of "meta pseudo-gaussian" bumps scaled to radius eps; each query moves the
  perturbation's mass from a second window into a new bump in the first, keeping the norm eps.

Where we differ from the reference, and why:
- Each example draws its own window position and signs (AutoAttack's batched version draws one
  window for the whole batch, so a batch's examples explore in lockstep; the original square-attack
  code draws per image, as we do).
- Window positions cover [0, h - s] inclusive (torch.randint's exclusive bound never places a
  window on the last row or column).
- A candidate equal to the current best point (a window already at +-eps with the drawn signs)
  is not sent to the Oracle: the query would be wasted. The iteration still counts towards the
  schedule, so the result is the reference's random search, minus repeated queries.
- Inputs are NHWC images; the budget counts the initial query (AutoAttack's n_queries counts
  only the loop).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch, class_logit, cross_entropy, max_other_logit
from defenses_jax.attacks.query.oracle import check_query_targets

LOSSES = ("margin", "ce")
# AutoAttack's schedule: the fraction p of the image a window covers halves at these query
# indices (on a 10,000-query scale).
_SCHEDULE = np.asarray([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])


def square(oracle, x, y, key, *, eps: float, norm: str = "linf", max_queries: int = 5000,
           p_init: float = 0.8, loss: str = "margin", rescale_schedule: bool = False,
           target: str = "none", targets=None, attack_mask=None):
  """Returns (x_adv, info) with per example: success (the Oracle's own answer), queries used,
  l2, linf, l0. An example stops at its first success or when its queries are spent; one never
  fooled comes back as x (so robust accuracy counts it as robust). `attack_mask` (B,) bool:
  attack only these examples (the others cost no query and come back as x, unsuccessful), as
  AutoAttack runs a member only on the points still robust."""
  _check(x, y, eps, norm, max_queries, p_init, loss, target, targets)
  attack_mask = jnp.ones(x.shape[:1], bool) if attack_mask is None else attack_mask
  classes = y if target == "none" else targets
  batch, h, w, c = x.shape
  init_key, loop_key = jax.random.split(key)

  def margin_and_loss(scores):
    # margin > 0: not yet fooled. Both are minimised (AutoAttack's margin_and_loss).
    others, own = max_other_logit(scores, classes), class_logit(scores, classes)
    margin = own - others if target == "none" else others - own
    if loss == "margin":
      return margin, margin
    xent = cross_entropy(scores, classes)
    return margin, (-xent if target == "none" else xent)

  x_init = (_linf_init(init_key, x, eps) if norm == "linf" else _l2_init(init_key, x, eps))
  counts = oracle.initial_counts(batch)
  scores, counts, answered = oracle.query(x_init, counts, jax.random.fold_in(init_key, 1),
                                          active=attack_mask)
  margin_min, loss_min = margin_and_loss(scores)
  # An unanswered example (masked out, or no budget at all) stays at x, unfooled, and stops.
  attack_mask = attack_mask & answered
  margin_min = jnp.where(answered, margin_min, jnp.inf)
  loss_min = jnp.where(answered, loss_min, jnp.inf)
  best = jnp.where(norms.per_example(answered, x), x_init, x)

  def window_size(i):
    it = (i * 10000) // max_queries if rescale_schedule else i
    p = p_init / 2.0 ** jnp.sum(it > _SCHEDULE)
    s = jnp.round(jnp.sqrt(p * h * w)).astype(jnp.int32)  # sqrt(p * n_features / c).
    if norm == "linf":
      return jnp.clip(s, 1, min(h, w) - 1)
    s = jnp.clip(s, 3, min(h, w))
    return jnp.where(s % 2 == 0, jnp.where(s + 1 > min(h, w), s - 1, s + 1), s)

  def cond(state):
    i, counts, margin_min, *_ = state
    return (i < max_queries - 1) & jnp.any(attack_mask & (margin_min > 0)
                                           & (counts < oracle.budget))

  def body(state):
    i, counts, margin_min, loss_min, best = state
    k = jax.random.fold_in(loop_key, i)
    s = window_size(i)
    if norm == "linf":
      candidate = _linf_step(k, x, best, eps, s)
    else:
      candidate = _l2_step(k, x, best, eps, s)
    changed = jnp.any((candidate != best).reshape(batch, -1), axis=-1)
    scores, counts, answered = oracle.query(candidate, counts, jax.random.fold_in(k, 1),
                                            active=attack_mask & (margin_min > 0) & changed)
    margin, new_loss = margin_and_loss(scores)
    improved = answered & ((new_loss < loss_min) | (margin <= 0))
    return (i + 1, counts, jnp.where(improved, margin, margin_min),
            jnp.where(improved, new_loss, loss_min),
            jnp.where(norms.per_example(improved, x), candidate, best))

  init = (jnp.zeros((), jnp.int32), counts, margin_min, loss_min, best)
  _, counts, margin_min, _, best = lax.while_loop(cond, body, norms.varying_like(init, x))
  success = margin_min <= 0
  x_adv = jnp.where(norms.per_example(success, x), best, x)
  return x_adv, {"success": success, "queries": counts, **norms.distances(x_adv, x)}


def _check(x, y, eps, norm, max_queries, p_init, loss, target, targets):
  check_batch(x, y, targets)
  norms.check_norm(norm)
  if x.ndim != 4:
    raise ValueError(f"Square attacks images (B, H, W, C); got shape {x.shape}.")
  if min(x.shape[1:3]) < (2 if norm == "linf" else 3):
    raise ValueError(f"images of {x.shape[1]} x {x.shape[2]} are too small for square windows.")
  if not eps > 0:
    raise ValueError(f"Square needs eps > 0; got {eps}.")
  if max_queries < 1:
    raise ValueError(f"max_queries must be >= 1; got {max_queries}.")
  if not 0 < p_init <= 1:
    raise ValueError(f"p_init is a fraction of the image, in (0, 1]; got {p_init}.")
  if loss not in LOSSES:
    raise ValueError(f"unknown Square loss {loss!r}; choose one of {LOSSES}.")
  check_query_targets("Square", target, targets)


def _window(key, x, s):
  """A per-example s x s window mask (B, H, W, 1) at a uniformly random position."""
  _, h, w, _ = x.shape
  kh, kw = jax.random.split(key)
  top = jax.random.randint(kh, (x.shape[0], 1, 1, 1), 0, h - s + 1)
  left = jax.random.randint(kw, (x.shape[0], 1, 1, 1), 0, w - s + 1)
  rows = jnp.arange(h)[None, :, None, None] - top
  cols = jnp.arange(w)[None, None, :, None] - left
  return (rows >= 0) & (rows < s) & (cols >= 0) & (cols < s), rows, cols


def _signs(key, shape, dtype):
  return jax.random.rademacher(key, shape, dtype)


def _linf_init(key, x, eps):
  stripes = _signs(key, (x.shape[0], 1, x.shape[2], x.shape[3]), x.dtype)
  return jnp.clip(x + eps * stripes, 0.0, 1.0)


def _linf_step(key, x, best, eps, s):
  k_window, k_sign = jax.random.split(key)
  inside, _, _ = _window(k_window, x, s)
  signs = _signs(k_sign, (x.shape[0], 1, 1, x.shape[3]), x.dtype)
  candidate = jnp.where(inside, best + 2.0 * eps * signs, best)
  return jnp.clip(jnp.clip(candidate, x - eps, x + eps), 0.0, 1.0)


def _eta_rectangles(rows: int, cols: int) -> np.ndarray:
  """AutoAttack's eta_rectangles: nested rectangles around the centre, weight 1/(k+1)^2 for the
  k-th ring outwards, unit L2 norm."""
  delta = np.zeros((rows, cols))
  r, c = rows // 2, cols // 2
  for k in range(max(r, c) + 1):
    delta[max(r - k, 0):min(r - k + 2 * k + 1, rows),
          max(c - k, 0):min(c - k + 2 * k + 1, cols)] += 1.0 / (k + 1) ** 2
  return delta / np.sqrt(np.sum(delta ** 2))


def _meta_pseudo_gaussian(s: int) -> np.ndarray:
  delta = np.zeros((s, s))
  delta[:s // 2] = _eta_rectangles(s // 2, s)
  delta[s // 2:] = -_eta_rectangles(s - s // 2, s)
  return delta / np.sqrt(np.sum(delta ** 2))


def _l2_init(key, x, eps):
  """AutoAttack's L2 start: a grid of (h // s) x (w // s) blocks of side s = h // 5, each a
  meta-pseudo-gaussian bump (transposed at random) with a random sign per channel, the whole
  scaled to L2 norm eps. Blocks past the image edge are cut, as torch's slicing does."""
  batch, h, w, c = x.shape
  s = max(h // 5, 1)
  start = (h - 5 * s) // 2
  bump = _meta_pseudo_gaussian(s)
  block = np.full((h, w), -1)
  local = np.zeros((h, w, 2), int)
  blocks = 0
  for a in range(h // s):
    for b in range(w // s):
      top, left = start + a * s, start + b * s
      for i in range(top, min(top + s, h)):
        for j in range(left, min(left + s, w)):
          block[i, j] = blocks  # Later blocks overwrite nothing: blocks do not overlap.
          local[i, j] = (i - top, j - left)
      blocks += 1
  k_sign, k_flip = jax.random.split(key)
  signs = _signs(k_sign, (batch, blocks, c), x.dtype)
  flip = jax.random.bernoulli(k_flip, 0.5, (batch, blocks))
  inside = jnp.asarray(block >= 0)[None, :, :, None]
  ids = np.maximum(block, 0)
  plain = jnp.asarray(bump[local[..., 0], local[..., 1]], x.dtype)
  transposed = jnp.asarray(bump[local[..., 1], local[..., 0]], x.dtype)
  shape = jnp.where(flip[:, ids], transposed, plain)[..., None]  # (B, H, W, 1)
  delta = jnp.where(inside, shape * signs[:, ids, :], 0.0)
  return jnp.clip(x + eps * delta / jnp.maximum(norms.l2_norm(delta), 1e-12), 0.0, 1.0)


def _eta_table(h: int, w: int) -> np.ndarray:
  """cumulative[m] = sum_{k <= m} 1/(k+1)^2: an eta_rectangles(s, s) entry at ring m (its
  Chebyshev distance from the centre) is cumulative[s // 2] - cumulative[m - 1]."""
  return np.cumsum(1.0 / (np.arange(max(h, w)) + 1.0) ** 2)


def _l2_step(key, x, best, eps, s):
  """AutoAttack's L2 update: a new bump (eta_rectangles(s, s), a random sign per channel) plus
  the old window's normalised content in window 1, window 2 emptied, the freed mass (and any
  slack up to eps) given to window 1, then the whole rescaled to norm eps."""
  k1, k2, k_sign = jax.random.split(key, 3)
  _, h, w, c = x.shape
  delta = best - x
  in_1, rows, cols = _window(k1, x, s)
  in_2, _, _ = _window(k2, x, s)
  sum_sq = lambda v: jnp.sum(jnp.square(v), axis=(1, 2), keepdims=True)  # Per channel.
  norm_window_1 = jnp.sqrt(sum_sq(jnp.where(in_1, delta, 0.0)))
  norm_image = norms.l2_norm(delta)
  norm_windows = norms.l2_norm(jnp.where(in_1 | in_2, delta, 0.0))

  half = s // 2
  ring = jnp.maximum(jnp.abs(rows - half), jnp.abs(cols - half))
  cumulative = jnp.asarray(_eta_table(h, w), x.dtype)
  eta = cumulative[half] - jnp.where(ring > 0, cumulative[jnp.clip(ring - 1, 0, None)], 0.0)
  eta = jnp.where(in_1, eta, 0.0)
  eta = eta / jnp.sqrt(sum_sq(eta))  # The same for every channel; (B, 1, 1, 1).
  signs = _signs(k_sign, (x.shape[0], 1, 1, c), x.dtype)
  new = jnp.where(in_1, eta * signs + delta / (1e-12 + norm_window_1), 0.0)
  target_norm = jnp.sqrt(jnp.maximum(eps ** 2 - norm_image ** 2, 0.0) / c + norm_windows ** 2)
  new = new / (1e-12 + jnp.sqrt(sum_sq(new))) * target_norm
  delta = jnp.where(in_1, new, jnp.where(in_2, 0.0, delta))
  return jnp.clip(x + eps * delta / (norms.l2_norm(delta) + 1e-12), 0.0, 1.0)


def square_query_budget(**params) -> int:
  """The most queries Square spends per example: max_queries (default 5,000)."""
  return int(params.get("max_queries", 5000))
