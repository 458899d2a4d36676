"""Slot refill against batch after batch: early-stopping attacks (CW-L2, DeepFool) over a whole
test set on the paper 000 MNIST CNN (experiments/standard.py:cpu, trained first if no checkpoint
exists), the same slots / batch size for both.

Batch after batch, every batch runs until its slowest example stops; with slot refill
(evaluation/slot_runner.py) a finished example's slot takes the next image. Reported per attack:
images per second both ways and their ratio, the attack steps each way (batch after batch: the
sum over batches of each batch's slowest example; slot refill: the busiest device's steps; a
count that does not depend on the machine's load), and the largest difference between the two
runs' adversarial examples (the same per image up to float rounding: the model is
deterministic). A run under a minute is timed on its second, compiled call; a longer one once,
its compilation included (marked in the JSON).

  python -m benchmarks.slot_refill --workdir=runs                       # cpu settings
  python -m benchmarks.slot_refill --workdir=runs --num_images=10000 --batch_size=512 \\
      --cw_binary_steps=9 --cw_iterations=1000 --output=benchmarks/results/slot_refill_gpu.json
"""

import json
import math
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "runs", "Where the standard cpu experiment lives.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "Test images attacked (the first ones).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size, and slots of the slot runner.")
_ATTACKS = flags.DEFINE_list("attacks", ["deepfool", "cw_l2"], "Which attacks to run.")
_CW_STEPS = flags.DEFINE_integer("cw_binary_steps", 5, "CW-L2 binary search steps.")
_CW_ITERATIONS = flags.DEFINE_integer("cw_iterations", 100, "CW-L2 iterations per step.")
_CW_IMAGES = flags.DEFINE_integer("cw_num_images", 512, "Images for the CW-L2 row.")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")


def attack_builders():
  from defenses_jax.attacks.carlini_wagner import cw_l2_stepped
  from defenses_jax.attacks.deepfool import deepfool_stepped
  cw = dict(binary_search_steps=_CW_STEPS.value, max_iterations=_CW_ITERATIONS.value,
            learning_rate=1e-2, initial_const=1e-3)
  return {
      "deepfool": ("DeepFool L2 (overshoot 0.02, at most 50 iterations)",
                   lambda f: deepfool_stepped(f, overshoot=0.02, max_iter=50), _NUM_IMAGES.value),
      "cw_l2": (f"CW-L2 ({cw['binary_search_steps']} x {cw['max_iterations']}, early abort)",
                lambda f: cw_l2_stepped(f, **cw), _CW_IMAGES.value),
  }


def batch_after_batch(build, logits_fn, batch_size):
  """The fixed-batch runner's cost: one compiled call per batch (the last one padded)."""
  import jax
  import numpy as np
  from defenses_jax.attacks.stepped import run_batch
  run = jax.jit(lambda xb, yb, k: run_batch(build(logits_fn), xb, yb, k, count_steps=True))

  def call(x, y):
    n = len(x)
    padded = math.ceil(n / batch_size) * batch_size
    xp = np.concatenate([x, np.repeat(x[-1:], padded - n, 0)])
    yp = np.concatenate([y, np.repeat(y[-1:], padded - n, 0)])
    outs, steps = [], 0
    for b in range(0, padded, batch_size):
      x_adv, info = run(xp[b:b + batch_size], yp[b:b + batch_size], jax.random.key(b))
      outs.append(np.asarray(x_adv))
      steps += int(info["steps"])
    return np.concatenate(outs)[:n], steps

  return call


def with_slot_refill(build, logits_fn, batch_size):
  import jax
  from defenses_jax import parallel
  from defenses_jax.evaluation.slot_runner import make_slot_runner
  mesh = parallel.make_mesh()
  slots = max(1, batch_size // mesh.shape[parallel.DATA_AXIS])
  run = make_slot_runner(build, lambda p, b: logits_fn, mesh, slots)

  def call(x, y):
    x_adv, info = run(None, None, x, y, jax.random.key(0))
    return x_adv, int(info["steps"].max())

  return call


def timed(call, rerun_below_seconds: float = 60.0):
  """(result, seconds, whether the time includes compilation): a run shorter than
  `rerun_below_seconds` is repeated and the second (compiled) run timed; a longer one is timed
  once (its compilation, seconds, is then small beside it)."""
  start = time.perf_counter()
  result = call()
  seconds = time.perf_counter() - start
  if seconds >= rerun_below_seconds:
    return result, seconds, True
  start = time.perf_counter()
  result = call()
  return result, time.perf_counter() - start, False


def main(argv):
  del argv
  import jax
  import numpy as np
  from benchmarks.standard_model import load_model_and_batch
  logits_fn, _, x_all, y_all = load_model_and_batch(_WORKDIR.value, _NUM_IMAGES.value)
  x_all, y_all = np.asarray(x_all), np.asarray(y_all)
  builders = attack_builders()
  results = {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
             "batch_size": _BATCH.value, "rows": {}}
  for name in _ATTACKS.value:
    label, build, n = builders[name]
    x, y = x_all[:n], y_all[:n]
    print(f"{label}: {len(x)} images, batch / slots {_BATCH.value} ...", flush=True)
    fixed_run = batch_after_batch(build, logits_fn, _BATCH.value)
    refill_run = with_slot_refill(build, logits_fn, _BATCH.value)
    (fixed, fixed_steps), fixed_s, fixed_compile = timed(lambda: fixed_run(x, y))
    (refill, refill_steps), refill_s, refill_compile = timed(lambda: refill_run(x, y))
    predicted = lambda a: np.asarray(jax.numpy.argmax(logits_fn(a), -1))
    row = {"label": label, "num_images": len(x),
           "batch_after_batch": {"seconds": fixed_s, "images_per_second": len(x) / fixed_s,
                                 "steps": fixed_steps, "includes_compilation": fixed_compile},
           "slot_refill": {"seconds": refill_s, "images_per_second": len(x) / refill_s,
                           "steps": refill_steps, "includes_compilation": refill_compile},
           "speed_up": fixed_s / refill_s, "step_ratio": fixed_steps / refill_steps,
           "max_abs_difference": float(np.abs(fixed - refill).max()),
           "success_batch_after_batch": float(np.mean(predicted(fixed) != y)),
           "success_slot_refill": float(np.mean(predicted(refill) != y))}
    results["rows"][name] = row
    print(json.dumps(row, indent=1), flush=True)
  print(markdown(results))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(results, f, indent=1)


def markdown(results) -> str:
  lines = [f"Device: {results['device']} x {results['devices']}; batch / slots "
           f"{results['batch_size']}.", "",
           "| attack | images | batch after batch img/s | slot refill img/s | speed-up | "
           "steps (batches / slots) | success (batches / slots) | max difference |",
           "|---" * 8 + "|"]
  for r in results["rows"].values():
    f, s = r["batch_after_batch"], r["slot_refill"]
    lines.append(f"| {r['label']} | {r['num_images']} | {f['images_per_second']:.1f} | "
                 f"{s['images_per_second']:.1f} | {r['speed_up']:.2f}x | "
                 f"{f['steps']} / {s['steps']} ({r['step_ratio']:.2f}x) | "
                 f"{r['success_batch_after_batch']:.3f} / {r['success_slot_refill']:.3f} | "
                 f"{r['max_abs_difference']:.1e} |")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
