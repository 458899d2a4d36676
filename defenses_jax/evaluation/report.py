"""Results JSON -> a paper-style markdown table (our number beside the paper's) and figures."""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

from defenses_jax.evaluation import metrics
from defenses_jax.evaluation.results import (AttackResult, EvalSummary, eval_path, read_eval,
                                             write)
from defenses_jax.files import save_figure, write_text


def pct(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{100 * value:.1f}%"


def _count(value) -> str:
  return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:g}"


def _num(value) -> str:
  return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _queries(value) -> str:
  """A query count (a mean or a median of counts): 8,515 or 8,515.5, never 8515.000."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return f"{value:,.1f}".removesuffix(".0")


UNTRUSTED = "(!)"  # A sanity check failed for this row's evaluation.


def threat_label(result: AttackResult) -> str:
  """How an attack reached the model: its threat model, or for a query attack the access its
  Oracle gives (it never sees gradients, whatever system answers), for a universal one that
  it is one perturbation for every image."""
  if result.access in ("scores", "labels"):
    return f"black-box ({result.access})"
  threat = result.threat_model
  if result.source_experiment:
    threat += f" from {result.source_experiment}"
  return f"universal, {threat}" if result.access == "universal" else threat


def differs_marker(ours, paper, tolerance: float = 0.05) -> str:
  """Marks cells where we and the paper disagree by more than `tolerance` (absolute)."""
  if paper is None or ours is None:
    return ""
  return " (differs)" if abs(ours - paper) > tolerance else ""


def markdown_table(summary: EvalSummary) -> str:
  paper = summary.paper or {}
  paper_robust = paper.get("robust_accuracy") or {}
  lines = [f"# {summary.experiment_name}: robustness ({summary.dataset})", ""]
  if summary.total_steps is not None:
    step, total = summary.step, summary.total_steps
    lines.append(f"Checkpoint step {step} of {total}." + (
        "" if step >= total else f" **Training incomplete** ({100 * step / total:.0f}% of the "
        "steps): these numbers are not the trained model's."))
  if paper.get("source"):
    lines.append(f"Paper numbers: {paper['source']}.")
  lines.append(f"Clean accuracy: ours {pct(summary.clean_accuracy)} on "
               f"{summary.num_test_examples} test images; paper "
               f"{pct(paper.get('clean_accuracy'))}. Attacks run on the first "
               f"{summary.num_attack_examples} test images (clean accuracy there "
               f"{pct(summary.clean_accuracy_attacked_subset)}).")
  lines += ["", "| Attack | Threat model | Robust accuracy (ours) | Paper | Attack success | "
            "Median L2 | Median L-inf | Median L0 |", "|---|---|---|---|---|---|---|---|"]
  for key, r in summary.attacks.items():
    # A row run with other settings than its label's is not compared with the paper.
    theirs = None if r.overridden_params else paper_robust.get(key)
    doubt = f" {UNTRUSTED}" if summary.warnings_for(r.label) else ""
    lines.append(f"| {r.label} | {threat_label(r)} | {pct(r.robust_accuracy)}"
                 f"{differs_marker(r.robust_accuracy, theirs)}{doubt} | {pct(theirs)} | "
                 f"{pct(r.attack_success_rate)} | {_num(r.median_l2)} | "
                 f"{_num(r.median_linf)} | {_count(r.median_l0)} |")
  for key, value in paper_robust.items():  # Paper rows we did not run stay visible.
    if key not in summary.attacks:
      lines.append(f"| {key} | - | not run | {pct(value)} | - | - | - | - |")
  queried = {r.label: r.queries for r in summary.attacks.values() if r.queries}
  if queried:
    lines += [""] + [f"{label}: a query budget of {_queries(q.budget)} per image; "
                     f"{_queries(q.mean)} queries on average, median "
                     f"{_queries(q.median_successful)} to succeed."
                     for label, q in queried.items()]
  fitted = {r.label: r.universal for r in summary.attacks.values() if r.universal}
  if fitted:
    lines += [""] + [f"{label}: one perturbation (L2 {_num(u['l2'])}, L-inf {_num(u['linf'])}) "
                     f"fitted on {u['fit_examples']} training images in {u['passes']} passes, "
                     f"fooling {pct(u['fooling_rate'])} of them." for label, u in fitted.items()]
  if summary.detection:
    lines += detection_lines(summary)
  if summary.worst_case_robust_accuracy is not None:
    lines += ["", f"Worst case over all attacks (per example): "
              f"{pct(summary.worst_case_robust_accuracy)}."]
  if summary.sanity:
    verdict = ("all passed" if summary.sanity_passed else "WARNINGS: do not trust the rows "
               f"marked {UNTRUSTED}")
    lines += ["", f"## Sanity checks (Carlini et al. 2019): {verdict}", ""]
    lines += [f"- [{c.status}] {c.check}: {c.detail}" for c in summary.sanity]
  if summary.eps_sweep:
    sweep = summary.eps_sweep
    lines += ["", f"## {sweep['label']}: robust accuracy vs eps ({sweep['num_examples']} images)",
              "", "| eps | " + " | ".join(f"{p['eps']:g}" for p in sweep["points"]) + " |",
              "|---" * (len(sweep["points"]) + 1) + "|",
              "| robust accuracy | " + " | ".join(pct(p["robust_accuracy"])
                                             for p in sweep["points"]) + " |"]
  return "\n".join(lines) + "\n"


def short_summary(summary: EvalSummary, results_dir: str) -> str:
  """A few lines for the end of a run: clean accuracy, each attack's robust accuracy (marked
  where a sanity check doubts it), the worst case and where the full results are."""
  lines = [f"{summary.experiment_name} (step {summary.step}): clean accuracy "
           f"{pct(summary.clean_accuracy)}"]
  for r in summary.attacks.values():
    mark = f" {UNTRUSTED}" if summary.warnings_for(r.label) else ""
    evaded = ("" if not (r.detector_aware and r.detection) else
              f", misclassified and accepted {pct(r.detection.misclassified_and_accepted)}")
    lines.append(f"  {r.label}: {pct(r.robust_accuracy)}{mark}{evaded}")
  if summary.worst_case_robust_accuracy is not None:
    lines.append(f"  worst case over all attacks: {pct(summary.worst_case_robust_accuracy)}")
  if summary.sanity:
    warned = sum(not c.passed for c in summary.sanity)
    lines.append(f"sanity checks: {warned} of {len(summary.sanity)} warn" if warned else
                 f"sanity checks: all {len(summary.sanity)} pass")
  lines.append(f"results: {os.path.join(results_dir, 'eval.md')} (and eval.json, figures)")
  return "\n".join(lines)


def detection_lines(summary: EvalSummary) -> list:
  d = summary.detection
  if d.fixed_threshold:
    how = (f"its own fixed decision rule (threshold {d.threshold:g}); false positives on "
           f"{d.held_out_examples} held-out clean test images: "
           f"{pct(d.held_out_false_positive_rate)}")
  else:
    how = (f"threshold fixed on {d.held_out_examples} held-out clean test images at a "
           f"false-positive rate of {pct(d.target_false_positive_rate)}: "
           f"{pct(d.held_out_false_positive_rate)} there")
  lines = ["", f"## Detector: {d.detector} ({how}, "
           f"{pct(d.attacked_clean_false_positive_rate)} on the attacked images)", "",
           "| Attack | Successful | Detection rate | ROC AUC | Accuracy on accepted | "
           "Misclassified and accepted |", "|---|---|---|---|---|---|"]
  for r in summary.attacks.values():
    m = r.detection
    if m is None:
      lines.append(f"| {r.label} | - | - | - | - | - |")
      continue
    lines.append(f"| {r.label} | {m.num_successful} | {pct(m.detection_rate)} | "
                 f"{_num(m.auc)} | {pct(m.accuracy_on_accepted)} | "
                 f"{pct(m.misclassified_and_accepted)} |")
  return lines


def pyplot():
  import matplotlib
  matplotlib.use("Agg")  # Files only; no display needed (servers, CI, Colab all work).
  import matplotlib.pyplot as plt
  return plt


def plot_eps_sweep(sweep: dict, path: str) -> None:
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  eps = [p["eps"] for p in sweep["points"]]
  ax.plot(eps, [p["robust_accuracy"] for p in sweep["points"]], marker="o")
  ax.set(xlabel="eps", ylabel="robust accuracy", ylim=(-0.02, 1.02), title=sweep["label"])
  ax.grid(alpha=0.3)
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
  plt.close(fig)


def plot_roc(curves: dict, path: str) -> None:
  """curves: label -> (clean_scores, adversarial_scores); one ROC curve per label."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(4, 4))
  for label, (clean, adv) in curves.items():
    fpr, tpr = metrics.roc_curve(clean, adv)
    ax.plot(fpr, tpr, label=f"{label} (AUC {metrics.roc_auc(clean, adv):.3f})")
  ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
  ax.set(xlabel="false positive rate", ylabel="detection rate", xlim=(0, 1), ylim=(0, 1.01))
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  save_figure(fig, path, dpi=120)
  plt.close(fig)


def _tiles(images: np.ndarray, cmap, pad: int = 2) -> np.ndarray:
  """A row of images as one RGB strip, `pad` white pixels between them; values in [0, 1].
  Grayscale images go through `cmap`, colour images are shown as they are (alpha dropped)."""
  if images.shape[-1] == 1:
    rgb = cmap(np.clip(images[..., 0], 0, 1))[..., :3]
  else:
    rgb = np.clip(images[..., :3], 0, 1)
  n, h, w, _ = rgb.shape
  strip = np.ones((h, n * (w + pad) - pad, 3))
  for j in range(n):
    strip[:, j * (w + pad):j * (w + pad) + w] = rgb[j]
  return strip


def plot_examples(clean: np.ndarray, adversarial: dict, path: str) -> None:
  """One row of clean images, then per attack a row of adversarial images and a row of
  (amplified) differences (red: brighter, blue: darker). The rows are composed into one image
  and drawn on one axis: a grid of per-image axes cost matplotlib seconds per member."""
  plt = pyplot()
  gray, seismic = plt.get_cmap("gray"), plt.get_cmap("seismic")
  pad = 2
  if clean.ndim == 3:  # (N, H, W): one channel.
    clean, adversarial = clean[..., None], {k: v[..., None] for k, v in adversarial.items()}
  rows, labels = [_tiles(clean, gray, pad)], ["clean"]
  for label, x_adv in adversarial.items():
    diff = x_adv - clean
    scale = max(float(np.abs(diff).max()), 1e-8)
    if diff.shape[-1] != 1:  # Colour: each pixel's largest change, with its sign.
      largest = np.abs(diff).argmax(-1)[..., None]
      diff = np.take_along_axis(diff, largest, -1)
    shown = (diff / scale + 1) / 2
    rows += [_tiles(x_adv, gray, pad), _tiles(shown, seismic, pad)]
    labels += [label[:18], "no change" if scale < 1e-6 else f"diff x{1 / scale:.0f}"]
  h = rows[0].shape[0]
  mosaic = np.ones((len(rows) * (h + pad) - pad, rows[0].shape[1], 3))
  for i, row in enumerate(rows):
    mosaic[i * (h + pad):i * (h + pad) + h] = row
  n = len(clean)
  fig, ax = plt.subplots(figsize=(1.3 * n, 1.35 * len(rows)))
  ax.imshow(mosaic, interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([i * (h + pad) + h / 2 for i in range(len(rows))], labels, fontsize=6)
  for side in ax.spines.values():
    side.set_visible(False)
  fig.tight_layout()
  save_figure(fig, path, dpi=110)
  plt.close(fig)


def write_report(summary: EvalSummary, results_dir: str, clean_images=None,
                 adversarial_images: Optional[dict] = None) -> dict:
  """Writes eval.md and the figures next to eval.json; returns {artifact: path}."""
  os.makedirs(results_dir, exist_ok=True)
  paths = {"table": os.path.join(results_dir, "eval.md")}
  write_text(paths["table"], markdown_table(summary))
  if summary.eps_sweep:
    paths["eps_sweep"] = os.path.join(results_dir, "robust_accuracy_vs_eps.png")
    plot_eps_sweep(summary.eps_sweep, paths["eps_sweep"])
  if clean_images is not None and adversarial_images:
    paths["examples"] = os.path.join(results_dir, "examples.png")
    plot_examples(np.asarray(clean_images), adversarial_images, paths["examples"])
  return paths


STALE_MARK = "> **Stale:**"


def mark_if_stale(results_dir: str, step: int) -> bool:
  """After training reaches `step`: an evaluation of an older checkpoint is marked stale, in
  eval.json (`stale_since_step`) and at the top of eval.md, until --mode=eval runs again."""
  exp_dir = os.path.dirname(results_dir)
  summary = read_eval(exp_dir, "re-run --mode=eval to evaluate the trained model")
  if summary is None or summary.step == step:
    return False
  summary.stale_since_step = step
  write(eval_path(exp_dir), summary)
  md = os.path.join(results_dir, "eval.md")
  if os.path.exists(md):
    with open(md) as f:
      text = f.read()
    if not text.startswith(STALE_MARK):
      write_text(md, f"{STALE_MARK} evaluated at step {summary.step}; training has "
                 f"since reached step {step}. Re-run with --mode=eval.\n\n" + text)
  return True
