"""Mutation check: does the test suite notice when the library is wrong?

Each mutation below is a small semantic bug (a sign flip, a dropped projection, a wrong label
offset, a state field that is not restored, a sanity check that cannot fail, ...), applied to a
scratch copy of the repository; the tests that should catch it run against that copy. A
mutation is *caught* when those tests fail, *survived* when they pass. The score is the fraction
caught. This is not part of the pytest run (it runs the tests of every mutation in turn):

    .venv/bin/python tests/mutation_check.py                 # all mutations, 2 at a time
    .venv/bin/python tests/mutation_check.py --only pgd,eot  # names containing these
    .venv/bin/python tests/mutation_check.py --shard 1/3     # every third, from the first
    .venv/bin/python tests/mutation_check.py --list

First the selected tests run on the unmutated copy: they must pass, or the score would mean
nothing. A mutation whose text no longer occurs exactly once in its file is reported as stale
(the code moved: update the mutation), and makes the run exit non-zero.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IGNORED = shutil.ignore_patterns(".git", ".venv*", "runs", "__pycache__", ".pytest_cache", "*.pyc")


from mutations import MUTATIONS, Mutation  # noqa: E402  (beside this script)


def _copy_repo(destination: str) -> None:
  shutil.copytree(ROOT, destination, ignore=IGNORED)


def _apply(root: str, m: Mutation) -> str:
  """Applies `m` in the copy at `root`; returns the original text of the file."""
  path = os.path.join(root, m.path)
  with open(path) as f:
    text = f.read()
  if text.count(m.old) != 1:
    raise LookupError(f"{m.name}: the text to mutate occurs {text.count(m.old)} times in "
                      f"{m.path}; the code moved, update the mutation.")
  with open(path, "w") as f:
    f.write(text.replace(m.old, m.new))
  return text


def _pytest(root: str, tests: tuple, timeout: int, workers: int = 1) -> tuple[str, float, str]:
  """('passed' | 'failed' | 'timeout', seconds, last output lines); workers > 1 spreads the
  test files over that many pytest-xdist workers."""
  spread = ("-n", str(workers), "--dist", "loadfile") if workers > 1 else ()
  start = time.time()
  env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
  try:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           *spread, *tests], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", time.time() - start, ""
  tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
  return ("passed" if proc.returncode == 0 else "failed"), time.time() - start, tail


def _run_one(m: Mutation, scratch: str, timeout: int) -> dict:
  root = os.path.join(scratch, m.name)
  _copy_repo(root)
  try:
    _apply(root, m)
  except LookupError as e:
    return {"name": m.name, "status": "stale", "seconds": 0.0, "detail": str(e)}
  outcome, seconds, tail = _pytest(root, m.tests, timeout)
  shutil.rmtree(root, ignore_errors=True)
  status = {"failed": "caught", "passed": "survived", "timeout": "timeout"}[outcome]
  return {"name": m.name, "status": status, "seconds": round(seconds, 1), "tests": m.tests,
          "detail": tail.splitlines()[-1] if tail else ""}


def select(mutations: list, only: str = "", shard: str = "") -> list:
  """The mutations whose names contain a comma-separated part of `only` (all when empty), then
  of those shard "K/N" (1 <= K <= N): the K-th of every N, so that N runs in turn, e.g. on
  machines that do not stay up for the whole check, cover each mutation exactly once."""
  chosen = [m for m in mutations if not only or any(part in m.name for part in only.split(","))]
  if not shard:
    return chosen
  try:
    k, n = (int(v) for v in shard.split("/"))
  except ValueError:
    k = n = 0
  if not 1 <= k <= n:
    raise SystemExit(f"--shard takes K/N with 1 <= K <= N; got {shard!r}.")
  return chosen[k - 1::n]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", default="", help="comma-separated parts of mutation names")
  parser.add_argument("--jobs", type=int, default=2)
  parser.add_argument("--timeout", type=int, default=1200, help="seconds per mutation")
  parser.add_argument("--json", default="", help="also write the results here")
  parser.add_argument("--shard", default="", help="K/N: the K-th of every N selected")
  parser.add_argument("--list", action="store_true")
  args = parser.parse_args()
  chosen = select(MUTATIONS, args.only, args.shard)
  if args.list or not chosen:
    for m in MUTATIONS:
      print(f"{m.name:45s} {m.path}  ->  {' '.join(m.tests)}")
    return 0 if chosen else 2
  with tempfile.TemporaryDirectory(prefix="mutation_check_") as scratch:
    baseline_root = os.path.join(scratch, "baseline")
    _copy_repo(baseline_root)
    tests = tuple(sorted({t for m in chosen for t in m.tests}))
    print(f"baseline: {' '.join(tests)} on the unmutated copy ...", flush=True)
    # The baseline runs alone, so it may use every job's core.
    outcome, seconds, tail = _pytest(baseline_root, tests, args.timeout * 2, args.jobs)
    if outcome != "passed":
      print(f"the unmutated tests do not pass ({outcome}, {seconds:.0f} s):\n{tail}")
      return 2
    print(f"baseline passed in {seconds:.0f} s; {len(chosen)} mutations, {args.jobs} at a time",
          flush=True)
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      futures = [pool.submit(_run_one, m, scratch, args.timeout) for m in chosen]
      for future in concurrent.futures.as_completed(futures):
        r = future.result()
        results.append(r)
        print(f"  {r['status']:9s} {r['name']:45s} {r['seconds']:6.0f} s  {r.get('detail', '')}",
              flush=True)
  order = {m.name: i for i, m in enumerate(MUTATIONS)}
  results.sort(key=lambda r: order[r["name"]])
  caught = sum(r["status"] in ("caught", "timeout") for r in results)
  survived = [r["name"] for r in results if r["status"] == "survived"]
  stale = [r["name"] for r in results if r["status"] == "stale"]
  print(f"\nmutation score: {caught}/{len(results)} caught"
        + (f"; survived: {', '.join(survived)}" if survived else "")
        + (f"; stale (update them): {', '.join(stale)}" if stale else ""))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"caught": caught, "total": len(results), "results": results}, f, indent=2)
  return 1 if stale else 0


if __name__ == "__main__":
  sys.exit(main())
