"""The five papers' suites at test size, their tables written to one JSON file: a refactor that
changes no behaviour must leave it identical (wall-clock cells left out). Not part of the pytest
run (it trains and evaluates every member of five tiny suites):

    .venv/bin/python tests/tiny_suite_tables.py --out=/tmp/before.json    # on the old code
    .venv/bin/python tests/tiny_suite_tables.py --out=/tmp/after.json     # on the new code
    .venv/bin/python tests/tiny_suite_tables.py --compare /tmp/before.json /tmp/after.json

The suites run as their tests run them (tests/test_*suite.py: conftest's XLA settings, blob
data, every member shrunk by test_suite.tiny_suite), each in a fresh temporary workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import conftest  # noqa: E402  (sets the tests' XLA flags before JAX starts)
from conftest import blob_dataset  # noqa: E402
from test_suite import tiny_suite  # noqa: E402

from defenses_jax.suites import runner as suite  # noqa: E402
from experiments.paper_000_target_training import config as paper_000  # noqa: E402
from experiments.paper_001_sim_adv import config as paper_001  # noqa: E402
from experiments.paper_002_pdm import config as paper_002  # noqa: E402
from experiments.paper_003_collaborative import config as paper_003  # noqa: E402
from experiments.paper_004_adv_transform import config as paper_004  # noqa: E402

del conftest


def _blobs(train: int, test: int, size: int = 12) -> tuple:
  return (blob_dataset(train, size=size, num_classes=10, seed=0),
          blob_dataset(test, size=size, num_classes=10, seed=1))


# As tests/test_*suite.py run them: (module, data).
SUITES = {"000": (paper_000, lambda: _blobs(64, 16)), "001": (paper_001, lambda: _blobs(64, 16)),
          "002": (paper_002, lambda: _blobs(96, 48)), "003": (paper_003, lambda: _blobs(96, 48)),
          "004": (paper_004, lambda: _blobs(64, 32, size=16))}
WALL_CLOCK = ("time", "time_ratio")


def _without_wall_clock(tables: list) -> list:
  for table in tables:
    for row in table["rows"]:
      for cell in row["cells"]:
        key = cell.get("source", "").partition(":")[2]
        if key.startswith(WALL_CLOCK):
          cell["ours"] = "(wall clock)"
  return tables


def run(out: str) -> None:
  results = {}
  for paper, (module, data) in SUITES.items():
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"tiny_suite_{paper}_") as workdir:
      config = tiny_suite("cpu", module)
      suite.run_suite(config, workdir, "train", data())
      with open(os.path.join(workdir, config.suite_name, "tables.json")) as f:
        results[paper] = _without_wall_clock(json.load(f)["tables"])
    print(f"paper {paper}: {time.monotonic() - start:.0f} s", flush=True)
  with open(out, "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)


def compare(before: str, after: str) -> int:
  with open(before) as f:
    old = json.load(f)
  with open(after) as f:
    new = json.load(f)
  differences = 0
  for paper in sorted(set(old) | set(new)):
    if old.get(paper) != new.get(paper):
      differences += 1
      print(f"paper {paper}: tables differ")
  print("identical" if not differences else f"{differences} papers differ")
  return 1 if differences else 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="write the tables here")
  parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
  args = parser.parse_args()
  if args.compare:
    return compare(*args.compare)
  if not args.out:
    parser.error("give --out or --compare")
  run(args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
