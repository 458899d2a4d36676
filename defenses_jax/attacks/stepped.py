"""Early-stopping attacks as per-example state machines.

An attack whose examples finish at different times (Carlini-Wagner's early abort and binary
search, DeepFool stopping at the boundary) wastes a fixed-shape batch on its finished examples
until the slowest one stops. Written as a `SteppedAttack`, the same attack runs two ways with
the same per-example trajectory:

- `run_batch`: one batch until every example is done (the attack's usual signature);
- evaluation/slot_runner.py: a fixed number of slots over a whole test set, each finished slot
  refilled with the next image, so the set costs the mean number of steps per image, not the
  batch's maximum.

The contract that makes both agree: every leaf of the state has the batch axis first, each
example's state depends only on its own inputs, its per-example key and the call keys, and
`step` leaves a finished example's state unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks.norms import varying_like
from defenses_jax.attacks.objectives import random_targets, resolve_targets
from defenses_jax.attacks.target import call_logits


@dataclasses.dataclass(frozen=True)
class SteppedAttack:
  """init(x, y, example_keys, key) -> state: fresh examples (`example_keys`: one key per example,
  for the example's own draws such as a random target; `key`: the call's key, for a randomised
  model's draws); step(state, key) -> state: one iteration for every unfinished example;
  done(state) -> (B,) bool; finish(state, key) -> (x_adv, info): the result of every example in
  the state (info: per-example arrays)."""
  init: Callable[..., Any]
  step: Callable[[Any, jax.Array], Any]
  done: Callable[[Any], jax.Array]
  finish: Callable[[Any, jax.Array], tuple]


def example_targets(system, x, y, target: str, targets, keys, key):
  """The targets of a stepped attack's fresh examples, as objectives.resolve_targets, except that
  a random target is drawn from each example's own key (`keys`): it does not depend on which images
  share the batch (or the slots)."""
  if target == "random":
    num_classes = jax.eval_shape(lambda z: call_logits(system, z, key), x).shape[-1]
    return jax.vmap(lambda k, label: random_targets(k, label, num_classes))(keys, y)
  return resolve_targets(lambda z: call_logits(system, z, key), x, y, target, targets, key)


def example_keys(key, index):
  """The keys of the examples at these positions of the attacked set (a batch, or the whole set
  in the slot runner, which derives them the same way): an example's own draws depend on its
  position, not on the other examples beside it."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def select_examples(mask, new, old):
  """Per example (leading axis): `new` where mask, else `old`, for every leaf of a state."""

  def pick(a, b):
    return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

  return jax.tree.map(pick, new, old)


def run_until_done(step: Callable, done: Callable, state, key, like):
  """Steps `state` until done(state) holds for every example (`like`: the batch, for the loop's
  device typing inside shard_map); step(state, key) gets a fresh key per iteration. Returns
  (state, the number of steps run)."""

  def cond(carry):
    return ~jnp.all(done(carry[1]))

  def body(carry):
    n, s = carry
    return n + 1, step(s, jax.random.fold_in(key, n))

  steps, state = lax.while_loop(cond, body,
                                varying_like((jnp.zeros((), jnp.int32), state), like))
  return state, steps


def run_batch(attack: SteppedAttack, x, y, key, count_steps: bool = False):
  """The attack on one batch, stepped until every example is done: (x_adv, info), info with
  "steps" (the batch's step count, its slowest example's) if count_steps."""
  examples_key, calls_key = jax.random.split(key)
  init_key, loop_key, finish_key = jax.random.split(calls_key, 3)
  state = attack.init(x, y, example_keys(examples_key, jnp.arange(x.shape[0])), init_key)
  state, steps = run_until_done(attack.step, attack.done, state, loop_key, x)
  x_adv, info = attack.finish(state, finish_key)
  return (x_adv, {**info, "steps": steps}) if count_steps else (x_adv, info)
