"""Attack benchmark: our compiled attacks vs foolbox 3 on the same model, in the same process.

The model is the Target Training MNIST CNN (paper 000, Table 5) trained by
experiments/standard.py:cpu (trained first if no checkpoint exists). Both implementations
attack the same jitted logits function on the same correctly classified test images; success
is re-checked for both with one fresh forward pass, and failures count as the clean input (foolbox's
CW returns an all-zero image for them, which is scored as a failure). Times exclude compilation
(our attacks are compiled ahead of time; foolbox's model function is jitted and warmed up first).
Fast attacks are timed as the median of several calls.

  pip install -r benchmarks/requirements.txt
  python -m benchmarks.attacks --workdir=runs   # every attack: 128 images, 32 for CW 9 x 1000
  python -m benchmarks.attacks --workdir=runs --attacks=fgsm,pgd40 --num_images=256
"""

import json
import os
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "runs", "Where the standard cpu experiment lives.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 128, "Batch size (one batch is attacked).")
_ATTACKS = flags.DEFINE_list("attacks", ["fgsm", "pgd40", "deepfool", "cw_l2_5x100",
                                         "cw_l2_9x1000"], "Which rows to run.")
_SLOW_IMAGES = flags.DEFINE_integer(
    "slow_num_images", 32, "Images for the slow rows (CW 9 x 1000: ~0.2 s per iteration per 128 "
    "images on 2 CPU cores, for each implementation).")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")
_SKIP_FOOLBOX = flags.DEFINE_bool("skip_foolbox", False, "Time our attacks only.")

EPS = 0.3  # MNIST L-inf budget of paper 000 (FGSM eps 0.3; PGD 40 steps of 0.01 within 0.3).


def our_attacks():
  """name -> (logits_fn, x, y, key) -> x_adv (each attack's info dropped)."""
  from defenses_jax import attacks
  adversarial_only = lambda attack: lambda f, x, y, k: attack(f, x, y, k)[0]
  return {name: adversarial_only(attack) for name, attack in {
      "fgsm": lambda f, x, y, k: attacks.fgsm(f, x, y, k, eps=EPS),
      "pgd40": lambda f, x, y, k: attacks.pgd(f, x, y, k, eps=EPS, step_size=0.01, steps=40,
                                              random_start=False),
      "deepfool": lambda f, x, y, k: attacks.deepfool(f, x, y, k, overshoot=0.02, max_iter=50),
      "cw_l2_5x100": lambda f, x, y, k: attacks.cw_l2(f, x, y, k, binary_search_steps=5,
                                                      max_iterations=100),
      "cw_l2_9x1000": lambda f, x, y, k: attacks.cw_l2(f, x, y, k, binary_search_steps=9,
                                                       max_iterations=1000),
  }.items()}


def foolbox_attacks():
  import foolbox as fb
  a = fb.attacks
  return {
      "fgsm": (a.FGSM(random_start=False), EPS),
      "pgd40": (a.LinfPGD(steps=40, abs_stepsize=0.01, random_start=False), EPS),
      "deepfool": (a.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02), None),
      "cw_l2_5x100": (a.L2CarliniWagnerAttack(binary_search_steps=5, steps=100, stepsize=0.01,
                                               confidence=0, initial_const=1e-3,
                                               abort_early=True), None),
      "cw_l2_9x1000": (a.L2CarliniWagnerAttack(binary_search_steps=9, steps=1000, stepsize=0.01,
                                                confidence=0, initial_const=1e-3,
                                                abort_early=True), None),
  }


def load_model_and_batch(workdir, num_images):
  import jax
  import jax.numpy as jnp
  from defenses_jax import train as train_lib
  from defenses_jax.defenses import Network
  from defenses_jax.experiment import Experiment, variables
  from experiments import standard
  config = standard.get_config("cpu")
  exp = Experiment(config, workdir)
  ckpt = exp.checkpoints()
  if ckpt.latest_step() is None or ckpt.latest_step() < exp.total_steps:
    ckpt.close()
    print("training the standard cpu model first ...", flush=True)
    train_lib.train_and_evaluate(config, workdir)
    ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  ckpt.close()
  logits_fn = jax.jit(Network(exp.model, variables(state.params, state.batch_stats)))
  x, y = jnp.asarray(exp.test_ds.images), jnp.asarray(exp.test_ds.labels)
  correct = jnp.argmax(logits_fn(x), -1) == y
  x, y = x[correct][:num_images], y[correct][:num_images]
  return logits_fn, x, y


def summarise(logits_fn, x, x_adv, y, seconds):
  import jax.numpy as jnp
  import numpy as np
  success = np.asarray(jnp.argmax(logits_fn(x_adv), -1) != y)
  d = np.asarray(x_adv - x).reshape(len(x), -1)
  l2, linf = np.linalg.norm(d, axis=1), np.abs(d).max(axis=1)
  med = lambda v: float(np.median(v[success])) if success.any() else float("nan")
  return {"seconds": seconds, "images_per_second": len(x) / seconds,
          "success_rate": float(success.mean()), "median_l2": med(l2), "median_linf": med(linf),
          "in_box": bool((np.asarray(x_adv) >= 0).all() and (np.asarray(x_adv) <= 1).all())}


SLOW = ("cw_l2_9x1000",)


def time_ours(name, fn, logits_fn, x, y):
  import jax
  key = jax.random.key(0)
  start = time.perf_counter()
  # Ahead-of-time compilation, so the timed call is a single run of the attack.
  run = jax.jit(lambda x, y, k: fn(logits_fn, x, y, k)).lower(x, y, key).compile()
  compile_seconds = time.perf_counter() - start
  x_adv, seconds = _timed(lambda: jax.block_until_ready(run(x, y, key)))
  result = summarise(logits_fn, x, x_adv, y, seconds)
  result["compile_seconds"] = compile_seconds
  return result


def _timed(call, budget_seconds: float = 10.0):
  """(result, seconds): the median of several calls for fast attacks, one call for slow ones."""
  start = time.perf_counter()
  result = call()
  times = [time.perf_counter() - start]
  while sum(times) < budget_seconds and len(times) < 7:
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return result, float(sorted(times)[len(times) // 2])


def time_foolbox(name, spec, logits_fn, x, y):
  import foolbox as fb
  import jax
  import jax.numpy as jnp
  attack, eps = spec
  model = fb.JAXModel(logits_fn, bounds=(0, 1))
  fb.attacks.FGSM()(model, x, y, epsilons=0.1)  # Warm-up: compiles the model's forward/grad.
  x_adv, seconds = _timed(lambda: jax.block_until_ready(attack(model, x, y, epsilons=eps)[1]))
  # foolbox's CW returns its all-zero initialisation for examples it never fooled; a black image
  # is usually misclassified, which would count as a "success" at a huge distance. Score those as
  # failures, as our attacks do (they return the clean input).
  never_found = jnp.all(x_adv.reshape(len(x), -1) == 0, axis=1) & jnp.any(
      x.reshape(len(x), -1) != 0, axis=1)
  x_adv = jnp.where(never_found[:, None, None, None], x, x_adv)
  return summarise(logits_fn, x, x_adv, y, seconds)


def markdown(results):
  lines = ["| attack | images | ours img/s | foolbox img/s | speed-up | ours success | foolbox success | "
           "ours median L2 / Linf | foolbox median L2 / Linf |", "|---" * 9 + "|"]
  for name, r in results.items():
    o, f = r["ours"], r.get("foolbox")
    fb_cells = ([f"{f['images_per_second']:.1f}", f"{o['images_per_second'] / f['images_per_second']:.1f}x",
                 f"{o['success_rate']:.3f}", f"{f['success_rate']:.3f}"] if f else
                ["-", "-", f"{o['success_rate']:.3f}", "-"])
    dist = lambda s: f"{s['median_l2']:.3f} / {s['median_linf']:.3f}"
    lines.append(f"| {name} | {r['num_images']} | {o['images_per_second']:.1f} | " + " | ".join(fb_cells) +
                 f" | {dist(o)} | {dist(f) if f else '-'} |")
  return "\n".join(lines)


def main(argv):
  del argv
  import jax
  logits_fn, x, y = load_model_and_batch(_WORKDIR.value, _NUM_IMAGES.value)
  ours, theirs = our_attacks(), ({} if _SKIP_FOOLBOX.value else foolbox_attacks())
  unknown = set(_ATTACKS.value) - set(ours)
  if unknown:
    raise app.UsageError(f"unknown attacks {sorted(unknown)}; choose from {sorted(ours)}")
  results = {}
  print(f"{len(x)} correctly classified test images, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPU cores", flush=True)
  for name in _ATTACKS.value:
    n = _SLOW_IMAGES.value if name in SLOW else len(x)
    results[name] = {"num_images": n, "ours": time_ours(name, ours[name], logits_fn, x[:n], y[:n])}
    print(name, "ours", json.dumps(results[name]["ours"]), flush=True)
    if name in theirs:
      results[name]["foolbox"] = time_foolbox(name, theirs[name], logits_fn, x[:n], y[:n])
      print(name, "foolbox", json.dumps(results[name]["foolbox"]), flush=True)
  print(markdown(results))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
