"""A suite's figures (config.figures): computed once per trained member, their data cached
beside the tables (<figure id>.json, reused only when verified: artifact_cache.py), drawn as
PNG.

Kinds:
  rho_steps       paper 001 Figure 3: rho of BIM(n, n) over n        (eps, n_values)
  rho_iteration   paper 001 Figure 4: rho of BIM(n1, n2)'s iterates  (eps, n1, n2)
  training_curves clean and monitored robust accuracy after every epoch (from metrics.jsonl)
  accuracy_vs_eps accuracy under one of each member's eval.attacks over eps (paper 002
                  Figure 3)                                (attack, eps_values, num_examples)
  detection_vs_param  detection metrics of a series of each member's evaluated attacks, e.g.
                  precision and recall over C&W's kappa (paper 003 Figures 5-6); read from
                  results/eval.json, nothing recomputed     (attacks, x_values, x_label, metrics)
  cells_vs_param  table cells over a parameter that changes across members or attacks, e.g.
                  accuracy vs g's steps, one f_a per value (paper 004 Figures 5-7); read from
                  results, nothing recomputed      (series: ((label, (cell, ...)), ...), x_values, x_label)
"""

from __future__ import annotations

import json
import os
from typing import Optional

import jax

from defenses_jax import artifact_cache
from defenses_jax.checkpoint import experiment_dir, latest_checkpoint_step, recorded_step_digest
from defenses_jax.evaluation import results
from defenses_jax.files import save_figure
from defenses_jax.progress import read_records
from defenses_jax.suites import cells, rho
from defenses_jax.evaluation.report import pyplot
from defenses_jax.evaluation.sweep import accuracy_vs_eps
from defenses_jax.experiment import TrainedExperiment

KINDS = ("rho_steps", "rho_iteration", "training_curves", "accuracy_vs_eps",
         "detection_vs_param", "cells_vs_param")
FROM_RESULTS = ("training_curves", "detection_vs_param", "cells_vs_param")  # Read from files; never cached stale.


def _eval_results(workdir: str, name: str) -> Optional[results.EvalSummary]:
  """A member's evaluation, None if missing or damaged (named in a warning)."""
  return results.read_eval(experiment_dir(workdir, name),
                           "the figure leaves this member's points out")


def _training_curve(workdir: str, name: str) -> dict:
  path = os.path.join(os.path.abspath(workdir), name, "metrics.jsonl")
  epochs, clean, robust = [], [], []
  for record in read_records(path) if os.path.exists(path) else []:
    if "test_accuracy" in record:
      epochs.append(record["epoch"])
      clean.append(record["test_accuracy"])
      robust.append(record.get("robust_accuracy"))
  return {"epoch": epochs, "test_accuracy": clean, "robust_accuracy": robust}


def _detection_series(workdir: str, name: str, fig) -> dict:
  summary = _eval_results(workdir, name)
  attacks = {} if summary is None else summary.attacks

  def metric_of(key, metric):
    detection = attacks[key].detection if key in attacks else None
    return None if detection is None else getattr(detection, metric)

  series = {metric: [metric_of(key, metric) for key in fig.attacks] for metric in fig.metrics}
  return {"x": list(fig.x_values), **series}


def _cell_series(workdir: str, fig) -> dict:
  """{series label: [value per x]} of a cells_vs_param figure, looked up as table cells."""
  refs = {label: [cells.parse(cell) for cell in series] for label, series in fig.series}
  members = {ref.member for series in refs.values() for ref in series}
  evaluated = {name: r for name in members if (r := _eval_results(workdir, name)) is not None}
  series = {label: [cells.value(ref, None, evaluated, {})["ours"] for ref in series]
            for label, series in refs.items()}
  return {"x": list(fig.x_values), **series}


def figure_members(fig) -> tuple:
  """The members a figure reads: `members`, or those its series' cells name."""
  if "series" in fig:
    return tuple(sorted({c.partition(":")[0] for _, cells in fig.series for c in cells}))
  return tuple(fig.members)


def _compute(kind: str, fig, member_config, workdir: str, datasets) -> dict:
  if kind == "training_curves":
    return _training_curve(workdir, member_config.experiment_name)
  if kind == "detection_vs_param":
    return _detection_series(workdir, member_config.experiment_name, fig)
  if kind == "accuracy_vs_eps":
    return accuracy_vs_eps(member_config, workdir, fig.attack, fig.eps_values, fig.num_examples,
                           datasets)
  trained = TrainedExperiment(member_config, workdir, datasets)
  batch = member_config.eval.batch_size
  if kind == "rho_steps":
    return rho.rho_vs_steps(trained, fig.eps, fig.n_values, fig.num_examples, batch)
  return rho.rho_vs_iteration(trained, fig.eps, fig.n1, fig.n2, fig.num_examples, batch)


def _plot(kind: str, title: str, data: dict, path: str, x_label: str = "",
          x_log: bool = False) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, d in data.items():
    if kind == "training_curves":
      ax.plot(d["epoch"], d["test_accuracy"], "--", label=f"{name} clean")
      if any(r is not None for r in d["robust_accuracy"]):
        ax.plot(d["epoch"], d["robust_accuracy"], "-o", ms=3, label=f"{name} robust")
    elif kind == "accuracy_vs_eps":
      ax.plot([p["eps"] for p in d["points"]], [p["robust_accuracy"] for p in d["points"]],
              "-o", ms=3, label=name)
    elif kind in ("detection_vs_param", "cells_vs_param"):
      for metric in (k for k in d if k != "x"):
        points = [(x, v) for x, v in zip(d["x"], d[metric]) if v is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], "-o", ms=3,
                label=f"{name} {metric}".strip())
    else:
      x = d["n"] if kind == "rho_steps" else d["iteration"]
      ax.plot(x, d["rho"], "-o", ms=3, label=name)
  ax.set_xlabel(x_label or {"rho_steps": "n1 = n2", "rho_iteration": "iteration",
                            "training_curves": "epoch", "accuracy_vs_eps": "eps (perturbation)",
                            "detection_vs_param": "parameter", "cells_vs_param": "parameter"
                            }[kind])
  ax.set_ylabel("rho" if kind.startswith("rho") else
                "rate" if kind == "detection_vs_param" else "accuracy")
  if kind == "cells_vs_param":
    if x_log:
      ax.set_xscale("log")
    ax.set_xticks(next(iter(data.values()))["x"])
    ax.set_xticklabels([f"{x:g}" for x in next(iter(data.values()))["x"]])
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
  plt.close(fig)


def _identity(config, fig, workdir: str) -> dict:
  """What a figure's cached data depends on: its spec (and its attack's settings), and each
  member's checkpoint (step and the checksums recorded when it was saved)."""
  spec = json.loads(json.dumps(fig.to_dict()))
  if "attack" in fig:  # The attack's settings too: a changed attack makes the figure stale.
    spec["attack_entries"] = json.loads(json.dumps(
        {name: config.members[name].eval.attacks[fig.attack].to_dict() for name in fig.members}))
  checkpoints = {}
  for name in figure_members(fig):
    step = latest_checkpoint_step(workdir, name)
    checkpoints[name] = [step, recorded_step_digest(experiment_dir(workdir, name), step)]
  return {"spec": spec, "checkpoints": checkpoints}


def make_figures(config, workdir: str, out_dir: str, datasets=None, compute: bool = True) -> dict:
  """{figure id: png path}. Cached results are reused while the spec and the members'
  checkpoints are unchanged; with compute=False only cached ones are drawn."""
  drawn = {}
  for fig_id in config.figures.order:
    fig = config.figures[fig_id]
    if fig.kind not in KINDS:
      raise ValueError(f"figures.{fig_id}: unknown kind {fig.kind!r}; choose one of {KINDS}.")
    cache = os.path.join(out_dir, f"{fig_id}.json")
    identity = _identity(config, fig, workdir)
    cached = None
    if fig.kind not in FROM_RESULTS:
      if not compute and not os.path.exists(cache):
        continue
      cached = artifact_cache.load_json(cache, identity)
      if cached is None and not compute:
        continue
    if cached is not None:
      data = cached.info
    elif fig.kind == "cells_vs_param":  # One plot of several members' results.
      data = {"": _cell_series(workdir, fig)}
    else:
      data = {name: _compute(fig.kind, fig, config.members[name], workdir, datasets)
              for name in fig.members}
    if jax.process_index() == 0:
      if cached is None:  # The figure's data beside it, whatever its kind.
        artifact_cache.save_json(cache, data, identity)
      path = os.path.join(out_dir, f"{fig_id}.png")
      _plot(fig.kind, fig.title, data, path, fig.get("x_label", ""), fig.get("x_log", False))
      drawn[fig_id] = path
  return drawn
