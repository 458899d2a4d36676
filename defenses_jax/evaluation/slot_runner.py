"""Early-stopping attacks over a whole test set, with a finished slot refilled by the next image.

The fixed-batch runner (runner.py) attacks batch after batch, and each batch runs until its
slowest example stops: CW-L2's early abort and DeepFool's stop at the boundary save nothing
while one example of the batch is still going. Here each device keeps a fixed-shape batch of
`slots` examples of a SteppedAttack (attacks/stepped.py) in one compiled loop over its shard of
the test set; when examples finish, their results are written out and their slots start the
next images. The set costs about the mean number of steps per image instead of the sum over
batches of each batch's maximum, with one compilation and no host round trip per step.

Each image's own draws (a random target, APGD's random starts) come from a key folded with its
index in the test set (as stepped.run_batch folds the position in its batch), and the attack's
per-example trajectory does not depend on the other slots, so on a deterministic model every
image's result is what one batch of the whole set gives it, whatever the slot count or the
number of devices. A randomised model's draws are per call (shared by the slots), as in
the fixed-batch runner.

The loop runs in chunks of `chunk_steps` steps, so that a long attack reports progress.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from defenses_jax import parallel
from defenses_jax.attacks.norms import match_varying
from defenses_jax.attacks.stepped import SteppedAttack, example_keys, select_examples
from defenses_jax.evaluation.runner import to_host


class _Slots(NamedTuple):
  state: Any  # The attack's state, one row per slot.
  index: jax.Array  # (S,) the local image each slot holds.
  valid: jax.Array  # (S,) the slot holds an image that is not finished.
  next: jax.Array  # (1,) the next local image to start.
  finished: jax.Array  # (1,) local images finished.
  steps: jax.Array  # (1,) attack steps run on this device.
  begun: jax.Array  # (S,) the device's step count when each slot's image started.
  image_steps: jax.Array  # (n_local,) the steps each finished image took.
  x_adv: jax.Array  # (n_local, ...) results, written as images finish.
  info: Any  # Per-example info, (n_local,) per field.


def make_slot_runner(build_attack: Callable, build_target: Callable, mesh, slots: int,
                     chunk_steps: int = 50) -> Callable:
  """run(params, batch_stats, images, labels, key, progress=None) -> (x_adv, info) for a whole
  (host numpy) test set; `build_attack(target) -> SteppedAttack`; `build_target(params,
  batch_stats)` -> the attack target (a threat_models.TargetBuilder); `slots` per
  device. info also holds "steps": the attack steps each device ran, and "image_steps": the
  steps each image took (what it costs alone). Per-image inputs come only as `images` and
  `labels`: an attack built with a fixed array (e.g. `targets=`) is for run_batch, not here."""
  if slots < 1 or chunk_steps < 1:
    raise ValueError(f"slots and chunk_steps must be positive; got {slots}, {chunk_steps}.")
  devices = mesh.shape[parallel.DATA_AXIS]

  def keys(key):  # As stepped.run_batch splits its key, so that one batch of the set agrees.
    device = lax.axis_index(parallel.DATA_AXIS)
    examples, calls = jax.random.split(key)
    return examples, jax.random.fold_in(calls, device)

  def start(params, batch_stats, images, labels, key):
    attack = build_attack(build_target(params, batch_stats))
    examples_key, calls_key = keys(key)
    n_local = images.shape[0]
    index = jnp.minimum(jnp.arange(slots), n_local - 1)
    offset = lax.axis_index(parallel.DATA_AXIS) * n_local
    state = attack.init(images[index], labels[index],
                        example_keys(examples_key, offset + index), calls_key)
    x_adv, info = jax.eval_shape(attack.finish, state, calls_key)
    first = jnp.minimum(slots, n_local)
    carry = _Slots(state, index, jnp.arange(slots) < n_local, jnp.full((1,), first, jnp.int32),
                   jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32),
                   jnp.zeros((slots,), jnp.int32), jnp.zeros((n_local,), jnp.int32),
                   jnp.zeros((n_local,) + x_adv.shape[1:], x_adv.dtype),
                   jax.tree.map(lambda a: jnp.zeros((n_local,) + a.shape[1:], a.dtype), info))
    return jax.tree.map(lambda v: match_varying(v, images), carry)

  def advance(params, batch_stats, carry, images, labels, key):
    attack = build_attack(build_target(params, batch_stats))
    examples_key, calls_key = keys(key)
    step_key, init_key, finish_key = jax.random.split(calls_key, 3)
    n_local = images.shape[0]
    offset = lax.axis_index(parallel.DATA_AXIS) * n_local

    def retire_and_refill(c: _Slots, finished):
      steps = c.steps[0]
      x_adv, info = attack.finish(c.state, jax.random.fold_in(finish_key, steps))
      dest = jnp.where(finished, c.index, n_local)  # Out of range: not written.
      x_out = c.x_adv.at[dest].set(x_adv, mode="drop")
      info_out = jax.tree.map(lambda buf, v: buf.at[dest].set(v, mode="drop"), c.info, info)
      image_steps = c.image_steps.at[dest].set(steps - c.begun, mode="drop")
      new_index = c.next[0] + jnp.cumsum(finished) - 1
      load = finished & (new_index < n_local)
      source = jnp.minimum(new_index, n_local - 1)
      fresh = attack.init(images[source], labels[source],
                          example_keys(examples_key, offset + source),
                          jax.random.fold_in(init_key, steps))
      done_now = jnp.sum(finished).astype(jnp.int32)
      return c._replace(
          state=select_examples(load, fresh, c.state), index=jnp.where(load, new_index, c.index),
          valid=(c.valid & ~finished) | load, begun=jnp.where(load, steps, c.begun),
          image_steps=image_steps,
          next=jnp.minimum(c.next + done_now, n_local), finished=c.finished + done_now,
          x_adv=x_out, info=info_out)

    def body(loop):
      n, c = loop
      state = attack.step(c.state, jax.random.fold_in(step_key, c.steps[0]))
      finished = c.valid & attack.done(state)
      c = c._replace(state=state, steps=c.steps + 1)
      c = lax.cond(jnp.any(finished), retire_and_refill, lambda c, _: c, c, finished)
      return n + 1, c

    def cond(loop):
      n, c = loop
      return (n < chunk_steps) & jnp.any(c.valid)

    _, carry = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry))
    return carry

  R, S = parallel.REPLICATED, parallel.SHARDED
  start_fn = parallel.data_parallel(start, mesh, in_specs=(R, R, S, S, R), out_specs=S)
  advance_fn = parallel.data_parallel(advance, mesh, in_specs=(R, R, S, S, S, R), out_specs=S,
                                      donate_argnums=(2,))

  def run(params, batch_stats, images, labels, key, progress=None):
    n = len(images)
    if n == 0:
      raise ValueError("the slot runner needs at least one image.")
    padded = -(-n // devices) * devices
    data = _local_rows({"image": _pad(np.asarray(images), padded),
                        "label": _pad(np.asarray(labels), padded)})
    data = parallel.shard_batch(data, mesh)
    carry = start_fn(params, batch_stats, data["image"], data["label"], key)
    reported = 0
    while True:
      carry = advance_fn(params, batch_stats, carry, data["image"], data["label"], key)
      finished = int(np.sum(to_host(carry.finished)))
      if progress is not None:
        progress.update(min(finished, n) - reported)
        reported = min(finished, n)
      if finished >= padded:
        break
      if not np.any(to_host(carry.valid)):  # Would loop forever: a bookkeeping bug.
        raise RuntimeError(f"the slot runner finished {finished} of {padded} images and has "
                           "none left in its slots.")
    info = jax.tree.map(lambda a: to_host(a)[:n], carry.info)
    info["steps"] = to_host(carry.steps)
    info["image_steps"] = to_host(carry.image_steps)[:n]
    return to_host(carry.x_adv)[:n], info

  return run


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
  """Padded with copies of the last row (attacked too, then dropped)."""
  return np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)]) if rows > len(a) else a


def _local_rows(data: dict) -> dict:
  """This process's contiguous block of the padded set (its devices' shards, in order)."""
  count, index = jax.process_count(), jax.process_index()
  rows = len(data["image"]) // count
  return {k: v[index * rows:(index + 1) * rows] for k, v in data.items()}
