"""robustness.evaluate against AutoAttack's own code (fra31/auto-attack) on the same weights and
images: the paper 000 MNIST CNN undefended (`standard`) and adversarially trained with PGD
(`at_pgd`), the first correctly classified test images of the embedded MNIST, L-inf eps 0.3.

Ours: `robustness.evaluate(..., preset="standard")`: APGD-CE, APGD-T (9 targets), Square (5,000
queries), AutoAttack's budgets, in cascade; its battery time is timed apart from the sanity
checks it also runs. Theirs (benchmarks/autoattack_side.py, on a PyTorch port whose logits match
ours to 1e-4): `custom` with the same three members at the standard version's settings, and
`standard` (adds FAB-T). Robust accuracy is over all the images; per image, the two
evaluations agree or not, and where they differ it is random starts and Square's random
windows, so each side runs under several seeds (--seeds) and the spread shows the noise.

  PYTHONPATH=. /work/benchvenv/bin/python -m benchmarks.evaluate_vs_autoattack --workdir=runs \\
      --num_images=200 --output=benchmarks/results/evaluate_vs_autoattack_cpu.json

/work/benchvenv: this repository's requirements plus torch and AutoAttack (see
benchmarks/requirements.txt and autoattack_side.py).
"""

from __future__ import annotations

import platform
import time

import numpy as np
from absl import app, flags

from benchmarks import autoattack_side, standard_model
from benchmarks.results_json import write_results

_WORKDIR = flags.DEFINE_string("workdir", "runs",
                                "Where the benchmark models are (trained if not).")
_NUM = flags.DEFINE_integer("num_images", 200, "Correctly classified test images to attack.")
_EPS = flags.DEFINE_float("eps", 0.3, "L-inf radius.")
_MODELS = flags.DEFINE_list("models", list(standard_model.MODELS), "Models to evaluate.")
_VERSIONS = flags.DEFINE_list("autoattack_versions", ["custom", "standard"],
                              "AutoAttack versions to run beside ours.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"],
                           "Seeds of both sides: Square's random windows decide the last few "
                           "images, so one seed per side compares noise with noise.")
_OUTPUT = flags.DEFINE_string("output", "", "Results JSON.")


def ours(logits_fn, x, y, eps, seed):
  import jax
  from defenses_jax import robustness
  report = robustness.evaluate(logits_fn, np.asarray(x), np.asarray(y), eps=eps,
                               key=jax.random.key(seed), preset="standard")
  return {"robust_accuracy": report.robust_accuracy,
          "per_example_robust": list(map(bool, report.per_example["robust"])),
          "battery_seconds": sum(r.seconds for r in report.rows),
          "seconds_with_sanity_checks": report.seconds,
          "rows": {r.name: {"broken": r.broken, "robust_accuracy_after": r.robust_accuracy_after,
                            "seconds": r.seconds} for r in report.rows},
          "sanity_passed": report.sanity_passed, "warnings": report.warnings}


def main(argv):
  del argv
  import jax
  results = {"eps": _EPS.value, "num_images": _NUM.value, "machine": platform.node(),
             "jax": jax.__version__, "rows": {}}
  for model in _MODELS.value:
    logits_fn, variables, x, y = standard_model.load_model_and_batch(_WORKDIR.value, _NUM.value,
                                                                      model)
    row = {}
    for seed in map(int, _SEEDS.value):
      row[f"ours_seed{seed}"] = mine = ours(logits_fn, x, y, _EPS.value, seed)
      print(f"{model}, seed {seed}: ours {mine['robust_accuracy']:.3f} "
            f"({mine['battery_seconds']:.0f} s)", flush=True)
      for version in _VERSIONS.value:
        theirs = autoattack_side.run_autoattack(logits_fn, variables, np.asarray(x),
                                                np.asarray(y), eps=_EPS.value, version=version,
                                                seed=seed)
        agree = np.mean(np.asarray(theirs["per_example_robust"]) ==
                        np.asarray(mine["per_example_robust"]))
        row[f"autoattack_{version}_seed{seed}"] = dict(theirs, per_image_agreement=float(agree))
        print(f"{model}, seed {seed}: AutoAttack {version} {theirs['robust_accuracy']:.3f} "
              f"({theirs['seconds']:.0f} s); per-image agreement with ours {agree:.3f}",
              flush=True)
      results["rows"][model] = row
      write_results(_OUTPUT.value, results, complete=False)
  write_results(_OUTPUT.value, results, complete=True)


if __name__ == "__main__":
  app.run(main)
