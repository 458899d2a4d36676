"""Publishing a suite's results into the repository: results/<suite>/ receives the suite's
tables.md (under a provenance header), tables.json and figures exactly as the suite wrote them,
and its provenance.json; the README's findings table is then regenerated from every published
results/*/tables.json. Run through `launch.py --mode=publish` (same --config and --workdir as the
suite), never by hand: publishing the same workdir again changes nothing.

Refused (PublishError) when the suite's output is not the current one: a member whose evaluation
is missing or older than its checkpoint or eval config, tables that differ from what the members'
results give now, or no recorded run.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import textwrap

import ml_collections

from defenses_jax import files
from defenses_jax.checkpoint import experiment_dir
from defenses_jax.errors import UserError
from defenses_jax.evaluation import results
from defenses_jax.suites import findings as suite_findings
from defenses_jax.suites import provenance
from defenses_jax.suites import tables as paper_tables

REPOSITORY = provenance.REPOSITORY
BEGIN, END = "<!-- findings:begin -->", "<!-- findings:end -->"
FIGURE = "findings.png"
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)/]+\.png)\)")


class PublishError(UserError):
  """The suite's output cannot be published as it stands (the message says what to run)."""


def _scale(suite_name: str) -> str:
  return suite_name.rsplit("_", 1)[-1]


def provenance_header(suite_name: str, runs: list[dict]) -> str:
  """Markdown: what produced these tables, one line per recorded run of the suite."""
  lines = [f"<!-- Published by `launch.py --mode=publish`; do not edit. -->",
           f"**Provenance of {suite_name}** ({len(runs)} recorded run"
           f"{'s' if len(runs) != 1 else ''}; provenance.json has every field):", ""]
  for i, run in enumerate(runs, 1):
    commit = (run["commit"] or "unknown")[:12]
    if run["uncommitted_changes"]:
      commit += " with uncommitted changes"
    versions = ", ".join(f"{k} {v}" for k, v in run["versions"].items() if v)
    stages = "; ".join(f"{s['stage']} {s['seconds']:,.0f} s"
                       + (" (interrupted)" if s.get("interrupted") else "")
                       for s in run["stages"]) or "none"
    total = sum(s["seconds"] for s in run["stages"])
    ended = run["finished"] or "interrupted"
    lines += [f"{i}. `{run['command']}` (mode {run['mode']}), commit {commit}, "
              f"{run['started']} to {ended}, on {run['machine']['platform']} with "
              f"{run['machine']['cpu_count']} cores and {run['machine']['devices']}; {versions}.",
              f"   Stages ({total:,.0f} s): {stages}."]
  return "\n".join(lines) + "\n\n"


def _check_current(config: ml_collections.ConfigDict, workdir: str, out_dir: str) -> None:
  """PublishError unless every member's evaluation and the suite's tables are current."""
  from defenses_jax.suites import runner  # noqa: PLC0415 (runner imports this module's users)
  stale = [name for name in config.order
           if not runner.evaluation_is_current(config.members[name], workdir)]
  if stale:
    raise PublishError(f"the evaluation of {stale} is missing or older than its checkpoint or "
                       "eval config; run the suite (--mode=train or --mode=eval) before "
                       "publishing.")
  path = os.path.join(out_dir, "tables.json")
  if not os.path.exists(path):
    raise PublishError(f"no {path}; run the suite first.")
  written = files.read_json(path)
  evaluated = {n: results.read_eval(experiment_dir(workdir, n)) for n in config.order}
  training = {n: results.read_train(experiment_dir(workdir, n)) for n in config.order}
  now = paper_tables.fill_tables(config.tables, evaluated, training)
  if json.loads(json.dumps(now)) != written["tables"]:
    raise PublishError(f"{path} differs from the members' results; run --mode=report to "
                       "rewrite the tables, then publish.")


def publish_suite(config: ml_collections.ConfigDict, workdir: str,
                  results_root: str = os.path.join(REPOSITORY, "results"),
                  readme: str = os.path.join(REPOSITORY, "README.md")) -> str:
  """Copies the suite's output into results_root/<suite>/ and regenerates the README's findings
  table and figure; returns the folder."""
  out_dir = os.path.join(os.path.abspath(workdir), config.suite_name)
  _check_current(config, workdir, out_dir)
  runs = provenance.read(out_dir)
  if not runs:
    raise PublishError(f"no recorded run in {os.path.join(out_dir, provenance.FILENAME)}: "
                       "the suite was run by a version that did not record its provenance; run "
                       "it again (members already trained and evaluated are skipped).")
  with open(os.path.join(out_dir, "tables.md")) as f:
    tables_md = f.read()
  dest = os.path.join(results_root, config.suite_name)
  os.makedirs(dest, exist_ok=True)
  _write_if_changed(os.path.join(dest, "tables.md"),
                    (provenance_header(config.suite_name, runs) + tables_md).encode())
  for name in ("tables.json", provenance.FILENAME, *_IMAGE.findall(tables_md)):
    _copy_if_changed(os.path.join(out_dir, name), os.path.join(dest, name))
  write_findings(results_root, readme)
  return dest


def _write_if_changed(path: str, content: bytes) -> None:
  """Writes `content` unless the file already holds it (publishing again changes nothing)."""
  if os.path.exists(path):
    with open(path, "rb") as f:
      if f.read() == content:
        return
  files.write_with(path, lambda out: out.write(content), mode="wb")


def _copy_if_changed(source: str, dest: str) -> None:
  with open(source, "rb") as f:
    _write_if_changed(dest, f.read())


def published(results_root: str) -> list[tuple[str, dict]]:
  """(suite name, its tables.json) of every published suite, sorted by name."""
  out = []
  for path in sorted(glob.glob(os.path.join(results_root, "*", "tables.json"))):
    out.append((os.path.basename(os.path.dirname(path)), files.read_json(path)))
  return out


def findings_markdown(results_root: str, readme_dir: str) -> str:
  """The README's findings block: one row per finding of every published suite."""
  rows = []
  for suite, tables in published(results_root):
    link = os.path.relpath(os.path.join(results_root, suite, "tables.md"), readme_dir)
    rows += suite_findings.markdown_rows(suite, _scale(suite), link, tables.get("findings", []))
  if not rows:
    return "No suite published yet (`launch.py --mode=publish`).\n"
  figure = os.path.relpath(os.path.join(results_root, FIGURE), readme_dir)
  rule = (f"Verdict: our lowest number under any attack we ran against the claim, "
          f"{suite_findings.TOLERANCE * 100:.0f} points either way; \"broken\" where the "
          f"paper's protocol still gives the claim. \"{paper_tables.UNTRUSTED}\": a sanity check "
          "failed for that number.")
  return "\n".join(suite_findings.HEADER + rows + ["", rule, "", f"![claimed vs measured]"
                                                   f"({figure})", ""])


def write_findings(results_root: str, readme: str) -> None:
  """Regenerates the README's block between the findings markers and the findings figure."""
  with open(readme) as f:
    text = f.read()
  if text.count(BEGIN) != 1 or text.count(END) != 1:
    raise PublishError(f"{readme} needs one {BEGIN} and one {END} line around its findings.")
  head, rest = text.split(BEGIN)
  _, tail = rest.split(END)
  block = findings_markdown(results_root, os.path.dirname(os.path.abspath(readme)))
  _write_if_changed(readme, f"{head}{BEGIN}\n{block}{END}{tail}".encode())
  suites = published(results_root)
  if any(t.get("findings") for _, t in suites):
    _draw(suites, os.path.join(results_root, FIGURE))


def _draw(suites: list, path: str) -> None:
  """Claimed vs measured (strongest attack) per defense, as grouped bars."""
  from defenses_jax.evaluation.report import pyplot  # noqa: PLC0415 (matplotlib on demand)
  plt = pyplot()
  entries = [f for _, t in suites for f in t.get("findings", [])]
  # Long defense names wrapped so that neighbouring labels do not overlap.
  labels = ["\n".join(textwrap.wrap(f["defense"], 16) + [f"({f['member']})"]) for f in entries]
  claimed = [f["claim"] for f in entries]
  measured = [(f["strongest"] or {}).get("value") or 0.0 for f in entries]
  fig, ax = plt.subplots(figsize=(max(6.0, 1.45 * len(entries)), 4.2))
  xs = range(len(entries))
  for offset, values, name in ((-0.2, claimed, "paper's claim"),
                               (0.2, measured, "ours, strongest attack")):
    bars = ax.bar([x + offset for x in xs], values, 0.4, label=name)
    # The value over each bar: a measured 0% is otherwise no bar at all.
    ax.bar_label(bars, [f"{100 * v:.0f}%" for v in values], fontsize=6, padding=1)
  ax.set_xticks(list(xs), labels, fontsize=6)
  ax.set_ylim(0, 1.08)
  ax.set_ylabel("robust accuracy / stopped")
  ax.legend(fontsize=8)
  fig.tight_layout()
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=100, metadata={"Software": None})  # Same bytes each time.
  plt.close(fig)
  _write_if_changed(path, png.getvalue())
