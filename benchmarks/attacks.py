"""Attack benchmark: our compiled attacks vs independent implementations on the same model.

The model is the Target Training MNIST CNN (paper 000, Table 5) trained by
experiments/standard.py:cpu (trained first if no checkpoint exists). Each row attacks the same
correctly classified test images with our attack and with a reference implementation
(benchmarks/references.py): foolbox 3 on the same jitted logits function (FGSM, PGD, DeepFool,
CW-L2), the adversarial-robustness-toolbox (JSMA, UAP) and AutoAttack's own APGD code (APGD-CE,
APGD-T) on a PyTorch port of the same weights, checked to give our logits to 1e-4. Success is
re-checked for both with one fresh forward pass of our model; failures count as the clean input.
Times exclude compilation and set-up (our attacks are compiled ahead of time, foolbox's model
function is warmed up first); fast attacks are timed as the median of several calls.

Query (black-box) rows: HopSkipJump (L2, L-inf) and GenAttack (targeted) against foolbox 3, ZOO
and Square against ART, on the same settings. Ours see the model through an Oracle and report
their queries per example; the references' model evaluations are counted per image by wrapping
their model function / classifier (references.QueryCounter: all evaluations, distinct points,
and distinct points up to the first adversarial one).

  pip install -r benchmarks/requirements.txt   # + AutoAttack, see there
  python -m benchmarks.attacks --workdir=runs   # every row: 128 images, 32 for the slow rows
  python -m benchmarks.attacks --workdir=runs --attacks=fgsm,pgd40 --num_images=256
  python -m benchmarks.attacks --workdir=runs --torch_threads=1 \\
      --attacks=hsj_l2,hsj_linf,genattack_t,zoo,square_linf,square_linf_eps0.1
"""

import dataclasses
import json
import os
import time
from typing import Callable

from absl import app, flags

from benchmarks import references
from benchmarks.standard_model import load_model_and_batch

_WORKDIR = flags.DEFINE_string("workdir", "runs", "Where the standard cpu experiment lives.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 128, "Batch size (one batch is attacked).")
_SLOW_IMAGES = flags.DEFINE_integer(
    "slow_num_images", 32, "Images for the slow rows (CW 9 x 1000: ~0.2 s per iteration per 128 "
    "images on 2 CPU cores for each implementation; ART's JSMA and UAP run image by image).")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")
_SKIP_REFERENCE = flags.DEFINE_bool("skip_reference", False, "Time our attacks only.")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "torch.set_num_threads for the PyTorch references (0: torch's default). "
    "On a machine whose cores another job keeps busy, torch's 2 intra-op threads wait on each "
    "other (a forward pass of one MNIST image: 29 ms with 2 threads, 0.5 ms with 1).")

EPS = 0.3  # MNIST L-inf budget of paper 000 (FGSM eps 0.3; PGD 40 steps of 0.01 within 0.3).
# APGD at 0.3 (or 0.1) fools every image of the undefended CNN, which compares nothing; at 0.05
# some images stay robust, so strength shows in the success rate.
APGD_EPS = 0.05
JSMA = dict(theta=1.0, gamma=0.1)  # cleverhans' defaults; ART's gamma default (1.0) is no limit
# Paper 000's UAP row: L-inf 0.3; DeepFool as the reference UAP code (overshoot 0.02, 10
# iterations, 10 candidate classes); at most 4 passes, stop at a 80% fooling rate (delta 0.2).
UAP = dict(eps=EPS, delta=0.2, max_passes=4, overshoot=0.02, max_iter_df=10, candidates=10)
# Query (black-box) attacks, the same settings on both sides, budgets cut to minutes on 2 CPU
# cores (see rows()). HopSkipJump: the authors' and foolbox's gradient-evaluation schedule.
HSJ = dict(hsj_norm="l2", hsj_steps=20, hsj_init_evals=100, hsj_max_evals=10_000, hsj_gamma=1.0)
# GenAttack: foolbox's defaults (population 10, mutation probability 0.1 and range 0.15, its
# minima under adaptive scaling, temperature 0.3, 1000 steps) at MNIST's eps 0.3; targeted.
GENATTACK = dict(gen_eps=EPS, gen_steps=1000, population=10, mutation_rate=0.1, alpha=0.15,
                 temperature=0.3)
# ZOO: 1 binary step of 100 iterations (the reference runs 9 x 1000 on MNIST), B = 128, lr 0.01,
# c0 0.5: the reference's test_all.py's constant when it does not binary-search.
ZOO = dict(zoo_binary_steps=1, zoo_iterations=100, zoo_const=0.5, zoo_lr=0.01,
           zoo_coordinates=128)
# Square: L-inf, 1000 queries (AutoAttack runs 5000), p_init 0.8, schedule rescaled to the budget
# (ART's); at 0.3 every image falls within ~100 queries, so a row at 0.1 as well.
SQUARE = dict(square_eps=EPS, square_queries=1000, p_init=0.8)


@dataclasses.dataclass(frozen=True)
class Row:
  ours: Callable          # (target, x, y, key, settings) -> x_adv
  reference: str          # whose implementation the row compares with
  prepare_reference: Callable  # references.prepare_*: set-up, then a call that attacks
  slow: bool = False      # run on --slow_num_images
  targeted: bool = False  # success means "classified as settings['targets']"
  overrides: tuple = ()   # (setting, value) pairs for this row, for both implementations
  # Query attacks: ours returns (x_adv, info["queries"]) and the reference's call (x_adv, its
  # per-image counts, references.QueryCounter.stats); `norm` is the distortion the row reports.
  query: bool = False
  norm: str = ""
  num_images: int = 0     # if set, at most this many images (the slowest query rows)


def rows():
  from defenses_jax import attacks
  first = lambda attack: lambda f, x, y, k, s: attack(f, x, y, k, s)[0]
  cw = lambda binary_steps, steps: first(lambda f, x, y, k, s: attacks.cw_l2(
      f, x, y, k, binary_search_steps=binary_steps, max_iterations=steps))
  rows = {}
  for name, ours, kw in (
      ("fgsm", first(lambda f, x, y, k, s: attacks.fgsm(f, x, y, k, eps=EPS)), {}),
      ("pgd40", first(lambda f, x, y, k, s: attacks.pgd(f, x, y, k, eps=EPS, step_size=0.01,
                                                         steps=40, random_start=False)), {}),
      ("deepfool", first(lambda f, x, y, k, s: attacks.deepfool(f, x, y, k, overshoot=0.02,
                                                                max_iter=50)), {}),
      ("cw_l2_5x100", cw(5, 100), {}),
      ("cw_l2_9x1000", cw(9, 1000), {"slow": True})):
    rows[name] = Row(ours, "foolbox 3.3.4", references.prepare_foolbox(name), **kw)
  rows["jsma"] = Row(first(lambda f, x, y, k, s: attacks.jsma(
      f, x, y, k, targets=s["targets"], **{name: s[name] for name in JSMA})),
                     "ART", references.prepare_art_jsma, slow=True, targeted=True)
  rows["jsma_gamma0.3"] = dataclasses.replace(rows["jsma"], overrides=(("gamma", 0.3),))
  universal = lambda f, x, y, k, s: attacks.apply_perturbation(attacks.uap(
      f, x, k, norm="linf", batch_size=len(x), **{name: s[name] for name in UAP})[0], x)
  rows["uap"] = Row(universal, "ART", references.prepare_art_uap, slow=True)
  # ART's DeepFool applies the overshoot once, after its last iteration (the reference code and
  # ours, every iteration), so with the reference's 10 iterations it rarely crosses the boundary.
  rows["uap_df50"] = Row(universal, "ART", references.prepare_art_uap, slow=True,
                         overrides=(("max_iter_df", 50),))
  rows["apgd_ce"] = Row(first(lambda f, x, y, k, s: attacks.apgd(f, x, y, k, eps=s["apgd_eps"],
                                                                 steps=s["steps"])),
                        "AutoAttack", references.prepare_autoattack_apgd(targeted=False))
  rows["apgd_t"] = Row(first(lambda f, x, y, k, s: attacks.apgd_targeted(
      f, x, y, k, eps=s["apgd_eps"], steps=s["steps"],
      num_target_classes=s["num_target_classes"])),
                       "AutoAttack", references.prepare_autoattack_apgd(targeted=True))
  rows.update(query_rows())
  return rows


def query_rows():
  """The query (black-box) attacks, each through an Oracle whose budget is its schedule."""
  from defenses_jax.attacks import query
  from defenses_jax.attacks.query.gen_attack import gen_attack_query_budget
  from defenses_jax.attacks.query.hop_skip_jump import hop_skip_jump_query_budget
  from defenses_jax.attacks.query.square import square_query_budget
  from defenses_jax.attacks.query.zoo import zoo_query_budget

  def queried(access, attack, budget):
    def run(f, x, y, k, s):
      params = attack(s)
      oracle = query.Oracle(f, access, budget(x, params))
      x_adv, info = params.pop("fn")(oracle, x, y, k, **params)
      return x_adv, info["queries"]
    return run

  d = lambda x: int(x[0].size)
  hsj = queried("labels", lambda s: dict(
      fn=query.hop_skip_jump, norm=s["hsj_norm"], steps=s["hsj_steps"], gamma=s["hsj_gamma"],
      init_evals=s["hsj_init_evals"], max_evals=s["hsj_max_evals"]),
      lambda x, p: hop_skip_jump_query_budget(d=d(x), **{k: v for k, v in p.items()
                                                           if k != "fn"}))
  gen = queried("scores", lambda s: dict(
      fn=query.gen_attack, eps=s["gen_eps"], population=s["population"],
      mutation_rate=s["mutation_rate"], alpha=s["alpha"], temperature=s["temperature"],
      max_steps=s["gen_steps"], adaptive=True, target="given", targets=s["targets"]),
      lambda x, p: gen_attack_query_budget(population=p["population"],
                                           max_steps=p["max_steps"]))
  zoo = queried("scores", lambda s: dict(
      fn=query.zoo, binary_search_steps=s["zoo_binary_steps"],
      max_iterations=s["zoo_iterations"], initial_const=s["zoo_const"],
      learning_rate=s["zoo_lr"], coordinates=s["zoo_coordinates"]),
      lambda x, p: zoo_query_budget(**{k: v for k, v in p.items() if k != "fn"}))
  square = queried("scores", lambda s: dict(
      fn=query.square, eps=s["square_eps"], norm="linf", max_queries=s["square_queries"],
      p_init=s["p_init"], rescale_schedule=True),
      lambda x, p: square_query_budget(max_queries=p["max_queries"]))
  common = dict(slow=True, query=True)
  return {
      "hsj_l2": Row(hsj, "foolbox 3.3.4", references.prepare_foolbox_hsj, norm="l2", **common),
      "hsj_linf": Row(hsj, "foolbox 3.3.4", references.prepare_foolbox_hsj, norm="linf",
                      overrides=(("hsj_norm", "linf"),), **common),
      # foolbox's GenAttack spends ~0.25 s a step on 16 images (eager per-image noise draws).
      "genattack_t": Row(gen, "foolbox 3.3.4", references.prepare_foolbox_genattack,
                         norm="linf", targeted=True, num_images=16, **common),
      # 257 queries per iteration per image; ART predicts them one image at a time.
      "zoo": Row(zoo, "ART", references.prepare_art_zoo, norm="l2", num_images=16, **common),
      "square_linf": Row(square, "ART", references.prepare_art_square, norm="linf", **common),
      "square_linf_eps0.1": Row(square, "ART", references.prepare_art_square, norm="linf",
                                overrides=(("square_eps", 0.1),), **common),
  }


_ATTACKS = flags.DEFINE_list("attacks", ["fgsm", "pgd40", "deepfool", "cw_l2_5x100",
                                         "cw_l2_9x1000", "jsma", "jsma_gamma0.3", "uap",
                                         "uap_df50", "apgd_ce", "apgd_t", "hsj_l2",
                                         "hsj_linf", "genattack_t", "zoo", "square_linf",
                                         "square_linf_eps0.1"],
                             "Which rows to run.")


def settings_for(y, num_classes):
  """Shared by both implementations: budgets and, for JSMA, the same random wrong targets."""
  import numpy as np
  rng = np.random.default_rng(0)
  targets = (np.asarray(y) + rng.integers(1, num_classes, size=len(y))) % num_classes
  return dict(targets=targets, apgd_eps=APGD_EPS, steps=100, num_target_classes=9, **JSMA, **UAP,
              **HSJ, **GENATTACK, **ZOO, **SQUARE)


def summarise(logits_fn, x, x_adv, y, seconds, targets=None, queries=None):
  """queries: {name: per-image counts} (query rows), reported as the median over the successful
  images (as the distortions) and the mean over all."""
  import jax.numpy as jnp
  import numpy as np
  x_adv = jnp.asarray(x_adv)
  predicted = np.asarray(jnp.argmax(logits_fn(x_adv), -1))
  success = predicted == targets if targets is not None else predicted != np.asarray(y)
  d = np.asarray(x_adv - x).reshape(len(x), -1)
  l0, l2, linf = (np.abs(d) > 1e-6).sum(axis=1), np.linalg.norm(d, axis=1), np.abs(d).max(axis=1)
  med = lambda v: float(np.median(v[success])) if success.any() else float("nan")
  result = {"seconds": seconds, "images_per_second": len(x) / seconds,
            "success_rate": float(success.mean()), "median_l0": med(l0), "median_l2": med(l2),
            "median_linf": med(linf),
            "in_box": bool((np.asarray(x_adv) >= 0).all() and (np.asarray(x_adv) <= 1).all())}
  for name, counts in (queries or {}).items():
    counts = np.asarray(counts, np.float64)
    result[f"median_{name}"] = med(counts)
    result[f"mean_{name}"] = float(counts.mean())
  return result


def time_ours(row, logits_fn, x, y, settings):
  import jax
  from defenses_jax.attacks import as_target
  key = jax.random.key(0)
  target = as_target(logits_fn)
  start = time.perf_counter()
  # Ahead-of-time compilation, so the timed call is a single run of the attack.
  run = jax.jit(lambda x, y, k: row.ours(target, x, y, k, settings)).lower(x, y, key).compile()
  compile_seconds = time.perf_counter() - start
  x_adv, seconds = _timed(lambda: jax.block_until_ready(run(x, y, key)))
  queries = None
  if row.query:
    x_adv, queries = x_adv[0], {"queries": x_adv[1]}
  result = summarise(logits_fn, x, x_adv, y, seconds, settings["targets"] if row.targeted else None,
                     queries)
  result["compile_seconds"] = compile_seconds
  return result


def time_reference(row, logits_fn, model_variables, x, y, settings):
  call = row.prepare_reference(logits_fn, model_variables, x, y, settings)
  x_adv, seconds = _timed(call)
  queries = None
  if row.query:
    x_adv, queries = x_adv
  return summarise(logits_fn, x, x_adv, y, seconds, settings["targets"] if row.targeted else None,
                   queries)


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


def markdown(results):
  plain = {k: r for k, r in results.items() if "median_queries" not in r["ours"]}
  queried = {k: r for k, r in results.items() if k not in plain}
  return "\n\n".join(t for t in (_markdown(plain) if plain else "",
                                  _markdown_queries(queried) if queried else "") if t)


def _markdown_queries(results):
  """Query rows: success, median distortion in the row's norm and median queries (over the
  successful images, as the distortions). The reference's queries are its model evaluations per
  image, counted by references.QueryCounter: distinct points / all evaluations / distinct
  points up to its first adversarial one."""
  lines = ["| attack | images | reference | norm | ours success | reference success | "
           "ours median dist. | reference median dist. | ours median queries | "
           "reference median queries: distinct / all / to first adv. | ours img/s | "
           "reference img/s |",
           "|---" * 12 + "|"]
  for name, r in results.items():
    o, f = r["ours"], r.get("reference")
    key = "median_l2" if r["norm"] == "l2" else "median_linf"
    theirs = (["-"] * 4 if not f else
              [f"{f['success_rate']:.3f}", f"{f[key]:.3f}",
               f"{f['median_distinct_queries']:.0f} / {f['median_queries']:.0f} / "
               f"{f['median_queries_to_first_adversarial']:.0f}",
               f"{f['images_per_second']:.2f}"])
    lines.append(f"| {name} | {r['num_images']} | {r['reference_name']} | {r['norm']} | "
                 f"{o['success_rate']:.3f} | {theirs[0]} | {o[key]:.3f} | {theirs[1]} | "
                 f"{o['median_queries']:.0f} | {theirs[2]} | {o['images_per_second']:.2f} | "
                 f"{theirs[3]} |")
  return "\n".join(lines)


def _markdown(results):
  lines = ["| attack | images | reference | ours img/s | reference img/s | speed-up | "
           "ours success | reference success | ours median L0 / L2 / Linf | "
           "reference median L0 / L2 / Linf |",
           "|---" * 10 + "|"]
  dist = lambda s: f"{s['median_l0']:.0f} / {s['median_l2']:.3f} / {s['median_linf']:.3f}"
  for name, r in results.items():
    o, f = r["ours"], r.get("reference")
    cells = ([f"{f['images_per_second']:.1f}",
              f"{o['images_per_second'] / f['images_per_second']:.1f}x",
              f"{o['success_rate']:.3f}", f"{f['success_rate']:.3f}"] if f else
             ["-", "-", f"{o['success_rate']:.3f}", "-"])
    lines.append(f"| {name} | {r['num_images']} | {r['reference_name']} | "
                 f"{o['images_per_second']:.1f} | " + " | ".join(cells) +
                 f" | {dist(o)} | {dist(f) if f else '-'} |")
  return "\n".join(lines)


def main(argv):
  del argv
  import jax
  import numpy as np
  if _TORCH_THREADS.value:
    import torch
    torch.set_num_threads(_TORCH_THREADS.value)
  logits_fn, model_variables, x, y = load_model_and_batch(_WORKDIR.value, _NUM_IMAGES.value)
  all_rows = rows()
  unknown = set(_ATTACKS.value) - set(all_rows)
  if unknown:
    raise app.UsageError(f"unknown attacks {sorted(unknown)}; choose from {sorted(all_rows)}")
  settings = settings_for(y, int(np.asarray(logits_fn(x[:1])).shape[-1]))
  results = {}
  print(f"{len(x)} correctly classified test images, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPU cores", flush=True)
  for name in _ATTACKS.value:
    row = all_rows[name]
    n = _SLOW_IMAGES.value if row.slow else len(x)
    n = min(n, row.num_images) if row.num_images else n
    s = dict(settings, targets=settings["targets"][:n], **dict(row.overrides))
    results[name] = {"num_images": n, "reference_name": row.reference,
                     "ours": time_ours(row, logits_fn, x[:n], y[:n], s)}
    if row.query:
      results[name]["norm"] = row.norm
    print(name, "ours", json.dumps(results[name]["ours"]), flush=True)
    if not _SKIP_REFERENCE.value:
      results[name]["reference"] = time_reference(row, logits_fn, model_variables, x[:n], y[:n], s)
      print(name, row.reference, json.dumps(results[name]["reference"]), flush=True)
  print(markdown(results))
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  app.run(main)
