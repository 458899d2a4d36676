"""Slot refill against batch after batch: early-stopping attacks (CW-L2, CW-L-inf, DeepFool,
JSMA, APGD-T over its targets, HopSkipJump within eps) over a whole test set on the paper 000
MNIST CNN (experiments/standard.py:cpu; with --model=at_pgd the same CNN adversarially trained
with PGD, on which the images' costs differ more; trained first if no checkpoint exists), the
same slots / batch size for both.

Batch after batch, every batch runs until its slowest example stops; with slot refill
(evaluation/slot_runner.py) a finished example's slot takes the next image. Reported per attack:
images per second both ways and their ratio, the attack steps each way (batch after batch: the
sum over batches of each batch's slowest example; slot refill: the busiest device's steps; a
count that does not depend on the machine's load), and the largest difference between the two
runs' adversarial examples (the same per image up to float rounding: the model is
deterministic; except APGD-T's and HopSkipJump's, whose random starts, noise and directions
the two runs draw from different keys). A run under a minute is timed on its second, compiled call; a longer one once,
its compilation included (marked in the JSON).

The embedded cpu test set has 1,000 images, so a set of 8 batches ends on one batch's slowest
example either way. From the steps each image took (the slot runner counts them), the step
counts of both schedules are also projected to a 10,000-image test set (the images' step counts
resampled with replacement, 5 draws averaged): batch after batch, the sum of each batch's
largest; slot refill, each image started on the first free slot. Steps are what either costs
on an accelerator, so this is the ratio a full-size test set would see.

  python -m benchmarks.slot_refill --workdir=runs                       # cpu settings
  # GPU: the same 969 correctly classified images of the embedded set (the standard cpu model;
  # no dataset download there), 512 slots, the reference CW-L2 budget; the projection to
  # 10,000 images (--project_to) gives the full-size test set's ratio.
  python -m benchmarks.slot_refill --workdir=runs --batch_size=512 --cw_num_images=969 \\
      --apgd_num_images=969 --hsj_num_images=969 --cw_binary_steps=9 --cw_iterations=1000 \\
      --output=benchmarks/results/slot_refill_gpu.json
"""

import json
import math
import time

from absl import app, flags

from benchmarks import standard_model
from benchmarks.results_json import write_results

_WORKDIR = flags.DEFINE_string("workdir", "runs", "Where the standard cpu experiment lives.")
_MODEL = flags.DEFINE_enum("model", "standard", list(standard_model.MODELS),
                           "The attacked CNN (benchmarks/standard_model.py): undefended, or "
                           "adversarially trained with PGD.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "Test images attacked (the first ones).")
_BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size, and slots of the slot runner.")
_ATTACKS = flags.DEFINE_list("attacks",
                             ["deepfool", "jsma", "apgd_t", "cw_l2", "cw_linf", "hsj"],
                             "Which attacks to run.")
_CW_STEPS = flags.DEFINE_integer("cw_binary_steps", 5, "CW-L2 binary search steps.")
_CW_ITERATIONS = flags.DEFINE_integer("cw_iterations", 100, "CW-L2 iterations per step.")
_CW_IMAGES = flags.DEFINE_integer("cw_num_images", 512, "Images for the CW rows.")
_CW_LINF_ITERATIONS = flags.DEFINE_integer(
    "cw_linf_iterations", 20, "CW-L-inf steps without success before the constant doubles.")
_JSMA_GAMMA = flags.DEFINE_float("jsma_gamma", 0.1, "JSMA's largest fraction of features.")
_APGD_EPS = flags.DEFINE_float("apgd_eps", 0.05, "APGD-T's L-inf budget (0.05: about half of "
                               "the undefended CNN's images stay robust, benchmarks/attacks.py).")
_APGD_STEPS = flags.DEFINE_integer("apgd_steps", 100, "APGD-T iterations per target.")
_APGD_IMAGES = flags.DEFINE_integer("apgd_num_images", 256, "Images for the APGD-T row.")
_HSJ_EPS = flags.DEFINE_float("hsj_eps", 0.1, "HopSkipJump's L-inf eps (an image stops once "
                              "within it).")
_HSJ_STEPS = flags.DEFINE_integer("hsj_steps", 10, "HopSkipJump iterations at most.")
_HSJ_IMAGES = flags.DEFINE_integer("hsj_num_images", 384, "Images for the HopSkipJump row.")
_PROJECT_TO = flags.DEFINE_integer("project_to", 10_000, "Test-set size of the projection.")
_PROJECT_BATCH = flags.DEFINE_integer("project_batch", 0,
                                      "Batch / slots of the projection (0: --batch_size).")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")


def attack_builders():
  from defenses_jax.attacks.apgd import apgd_targeted_stepped
  from defenses_jax.attacks.carlini_wagner import cw_l2_stepped
  from defenses_jax.attacks.carlini_wagner_linf import cw_linf_stepped
  from defenses_jax.attacks.deepfool import deepfool_stepped
  from defenses_jax.attacks.jsma import jsma_stepped
  from defenses_jax.attacks.query import Oracle
  from defenses_jax.attacks.query.hop_skip_jump import (hop_skip_jump_query_budget,
                                                        hop_skip_jump_stepped)
  hsj = dict(norm="linf", steps=_HSJ_STEPS.value, eps=_HSJ_EPS.value)
  # Labels only, through an Oracle that packs different images' queries into one call, as the
  # evaluation's; its budget is the schedule's most (28 x 28 inputs).
  hsj_oracle = lambda f: Oracle(f, "labels", hop_skip_jump_query_budget(d=784, **hsj),
                                independent_examples=True)
  cw = dict(binary_search_steps=_CW_STEPS.value, max_iterations=_CW_ITERATIONS.value,
            learning_rate=1e-2, initial_const=1e-3)
  # The reference's schedule with a shorter wait per constant (its 1000 steps are hours on 2
  # cores); tau down to 1/256 or the constant past 20 ends an example.
  cw_linf = dict(max_iterations=_CW_LINF_ITERATIONS.value, learning_rate=5e-3,
                 initial_const=1e-5, max_total_iterations=20_000)
  return {
      # An image stops once its best point is within eps (or after its last iteration).
      "hsj": (f"HopSkipJump L-inf (eps {_HSJ_EPS.value}, at most {_HSJ_STEPS.value} iterations)",
              lambda f: hop_skip_jump_stepped(hsj_oracle(f), **hsj), _HSJ_IMAGES.value),
      # AutoAttack's APGD-T: 9 targets, 1 + steps gradients each; an image stops at the first
      # target that fools it. Its random starts come from keys the two runs derive differently
      # (by batch, by position in the set): success agrees within noise, not bit for bit.
      "apgd_t": (f"APGD-T (eps {_APGD_EPS.value}, 9 targets x {_APGD_STEPS.value} steps)",
                 lambda f: apgd_targeted_stepped(f, eps=_APGD_EPS.value, steps=_APGD_STEPS.value,
                                                 num_target_classes=9), _APGD_IMAGES.value),
      "cw_linf": (f"CW-L-inf ({cw_linf['max_iterations']} steps per constant)",
                  lambda f: cw_linf_stepped(f, **cw_linf), _CW_IMAGES.value),
      # Least-likely targets, so that both runs attack the same target (a random one is drawn
      # from keys the two runners derive differently).
      "jsma": (f"JSMA (least-likely target, gamma {_JSMA_GAMMA.value})",
               lambda f: jsma_stepped(f, target="least_likely", gamma=_JSMA_GAMMA.value),
               _NUM_IMAGES.value),
      "deepfool": ("DeepFool L2 (overshoot 0.02, at most 50 iterations)",
                   lambda f: deepfool_stepped(f, overshoot=0.02, max_iter=50), _NUM_IMAGES.value),
      "cw_l2": (f"CW-L2 ({cw['binary_search_steps']} x {cw['max_iterations']}, early abort)",
                lambda f: cw_l2_stepped(f, **cw), _CW_IMAGES.value),
  }


def batch_after_batch(build, target, batch_size):
  """The fixed-batch runner's cost: one compiled call per batch (the last one padded)."""
  import jax
  import numpy as np
  from defenses_jax.attacks.stepped import run_batch
  run = jax.jit(lambda xb, yb, k: run_batch(build(target), xb, yb, k, count_steps=True))

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


def with_slot_refill(build, target, batch_size):
  import jax
  from defenses_jax import parallel
  from defenses_jax.evaluation.slot_runner import make_slot_runner
  mesh = parallel.make_mesh()
  slots = max(1, batch_size // mesh.shape[parallel.DATA_AXIS])
  run = make_slot_runner(build, lambda p, b: target, mesh, slots)

  def call(x, y):
    x_adv, info = run(None, None, x, y, jax.random.key(0))
    return x_adv, int(info["steps"].max()), info["image_steps"]

  return call


def projected_steps(image_steps, batch_size: int, num_images: int, draws: int = 5):
  """(batch after batch, slot refill, mean per image) steps over `num_images` images whose
  step counts are drawn from `image_steps`, averaged over `draws` resamples."""
  import heapq
  import numpy as np
  rng = np.random.default_rng(0)
  fixed, refill = [], []
  for _ in range(draws):
    steps = rng.choice(np.asarray(image_steps), num_images)
    padded = np.concatenate([steps, np.zeros(-num_images % batch_size, steps.dtype)])
    fixed.append(int(padded.reshape(-1, batch_size).max(axis=1).sum()))
    free = [0] * batch_size  # When each slot is next free; an image takes the first free one.
    for s in steps:
      heapq.heappush(free, heapq.heappop(free) + int(s))
    refill.append(max(free))
  return float(np.mean(fixed)), float(np.mean(refill)), float(np.mean(image_steps))


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
  from defenses_jax.attacks import as_target
  logits_fn, _, x_all, y_all = standard_model.load_model_and_batch(
      _WORKDIR.value, _NUM_IMAGES.value, _MODEL.value)
  target = as_target(logits_fn)
  x_all, y_all = np.asarray(x_all), np.asarray(y_all)
  builders = attack_builders()
  results = {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
             "batch_size": _BATCH.value, "model": _MODEL.value, "rows": {}}
  for name in _ATTACKS.value:
    label, build, n = builders[name]
    x, y = x_all[:n], y_all[:n]
    print(f"{label}: {len(x)} images, batch / slots {_BATCH.value} ...", flush=True)
    fixed_run = batch_after_batch(build, target, _BATCH.value)
    refill_run = with_slot_refill(build, target, _BATCH.value)
    (fixed, fixed_steps), fixed_s, fixed_compile = timed(lambda: fixed_run(x, y))
    (refill, refill_steps, image_steps), refill_s, refill_compile = timed(
        lambda: refill_run(x, y))
    project_batch = _PROJECT_BATCH.value or _BATCH.value
    projection = projected_steps(image_steps, project_batch, _PROJECT_TO.value)
    predicted = lambda a: np.asarray(jax.numpy.argmax(logits_fn(a), -1))
    row = {"label": label, "num_images": len(x),
           "batch_after_batch": {"seconds": fixed_s, "images_per_second": len(x) / fixed_s,
                                 "steps": fixed_steps, "includes_compilation": fixed_compile},
           "slot_refill": {"seconds": refill_s, "images_per_second": len(x) / refill_s,
                           "steps": refill_steps, "includes_compilation": refill_compile},
           "speed_up": fixed_s / refill_s, "step_ratio": fixed_steps / refill_steps,
           "max_abs_difference": float(np.abs(fixed - refill).max()),
           "success_batch_after_batch": float(np.mean(predicted(fixed) != y)),
           "success_slot_refill": float(np.mean(predicted(refill) != y)),
           "image_steps": {"mean": float(np.mean(image_steps)),
                           "median": float(np.median(image_steps)),
                           "max": int(np.max(image_steps))},
           "projected": {"num_images": _PROJECT_TO.value, "batch_size": project_batch,
                         "batch_after_batch_steps": projection[0],
                         "slot_refill_steps": projection[1],
                         "step_ratio": projection[0] / projection[1]}}
    results["rows"][name] = row
    print(json.dumps(row, indent=1), flush=True)
    write_results(_OUTPUT.value, results, complete=False)
  write_results(_OUTPUT.value, results, complete=True)
  print(markdown(results))


def markdown(results) -> str:
  lines = [f"Device: {results['device']} x {results['devices']}; batch / slots "
           f"{results['batch_size']}; model {results.get('model', 'standard')}.", "",
           "| attack | images | batch after batch img/s | slot refill img/s | speed-up | "
           "steps (batches / slots) | steps per image (mean / max) | projected step ratio | "
           "success (batches / slots) | max difference |",
           "|---" * 10 + "|"]
  for r in results["rows"].values():
    f, s = r["batch_after_batch"], r["slot_refill"]
    lines.append(f"| {r['label']} | {r['num_images']} | {f['images_per_second']:.1f} | "
                 f"{s['images_per_second']:.1f} | {r['speed_up']:.2f}x | "
                 f"{f['steps']} / {s['steps']} ({r['step_ratio']:.2f}x) | "
                 f"{r['image_steps']['mean']:.1f} / {r['image_steps']['max']} | "
                 f"{r['projected']['step_ratio']:.2f}x ({r['projected']['num_images']:,}) | "
                 f"{r['success_batch_after_batch']:.3f} / {r['success_slot_refill']:.3f} | "
                 f"{r['max_abs_difference']:.1e} |")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
