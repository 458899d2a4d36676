"""An AutoAttack-style worst case (Croce & Hein 2020) over the members this library has: APGD
and APGD-T (apgd.py), then Square (query/square.py), each run after the previous one on the
examples still correctly classified."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.apgd import apgd, apgd_targeted
from defenses_jax.attacks.objectives import check_batch
from defenses_jax.attacks.query.oracle import Oracle
from defenses_jax.attacks.query.square import square
from defenses_jax.attacks.target import call_logits

AUTOATTACK_VERSIONS = ("standard", "rand")


def autoattack(system: Callable, x, y, key, *, eps: float, norm: str = "linf",
               version: str = "standard", steps: int = 100, num_target_classes: int = 9,
               eot_iter: int = 20, square_queries: int = 5000):
  """An AutoAttack-style worst case over the members this library has, each run after the
  previous one on the examples still correctly classified (Croce & Hein 2020):
  standard: APGD-CE, then APGD-T (targeted DLR, `num_target_classes` targets, at most the
  number of other classes), then Square (`square_queries` score queries, p_init 0.8, margin
  loss; 0 leaves it out); `rand` (randomised defenses): APGD-CE and APGD-DLR, each with EOT
  over `eot_iter` draws. AutoAttack's FAB-T is not a member, so this is a lower bound on what
  the full AutoAttack finds.

  Returns (x_adv, info) with info = {success, broken_by (per example, the index of the first
  member that fooled it, -1 for none), square_queries (per example; 0 for the points APGD
  broke, which Square does not attack), l2, linf}. The batch has a fixed shape, so a member runs
  on every example and its result is kept only for those still robust; a member is skipped when
  no example is left.
  """
  check_batch(x, y)
  norms.check_norm(norm)
  if version not in AUTOATTACK_VERSIONS:
    raise ValueError(f"unknown AutoAttack version {version!r}; choose one of "
                     f"{AUTOATTACK_VERSIONS}.")
  num_classes = jax.eval_shape(lambda z: call_logits(system, z, key), x).shape[-1]
  # Each member: (key, still robust (B,)) -> (x_adv, info).
  if version == "standard":
    members = [lambda k, _: apgd(system, x, y, k, eps=eps, norm=norm, steps=steps)]
    if num_classes >= 4:
      members.append(lambda k, _: apgd_targeted(
          system, x, y, k, eps=eps, norm=norm, steps=steps,
          num_target_classes=min(num_target_classes, num_classes - 1)))
    if square_queries > 0:
      if x.ndim != 4:
        raise ValueError("AutoAttack's Square member attacks images (B, H, W, C); for other "
                         f"inputs (shape {x.shape}) pass square_queries=0.")
      # Square pays queries only for the points still robust (the others are masked out).
      members.append(lambda k, robust: square(
          Oracle(system, "scores", square_queries), x, y, k, eps=eps, norm=norm,
          max_queries=square_queries, attack_mask=robust))
  else:
    members = [lambda k, _, loss=loss: apgd(system, x, y, k, eps=eps, norm=norm,
                                            steps=steps, loss=loss, eot_iter=eot_iter)
               for loss in ("ce", "dlr")]
  keys = member_keys(key, len(members))
  x_adv = x
  broken_by = norms.match_varying(jnp.full(x.shape[:1], -1, jnp.int32), x)
  queries = jnp.zeros_like(broken_by)  # Square's score queries, per example.
  for index, member in enumerate(members):
    def run(state, member=member, index=index):
      x_adv, broken_by, queries = state
      candidate, report = member(keys[index], broken_by < 0)
      take = report["success"] & (broken_by < 0)
      return (jnp.where(norms.per_example(take, x), candidate, x_adv),
              jnp.where(take, index, broken_by), queries + report.get("queries", 0))

    x_adv, broken_by, queries = lax.cond(jnp.all(broken_by >= 0), lambda state: state, run,
                                         (x_adv, broken_by, queries))
  success = jnp.argmax(call_logits(system, x_adv, keys[-1]), -1) != y
  return x_adv, {"success": success, "broken_by": broken_by, "square_queries": queries,
                 **norms.distances(x_adv, x)}


def member_keys(key, num_members: int):
  """The key each AutoAttack member runs with (and, last, the final check's)."""
  return jax.random.split(key, num_members + 1)
