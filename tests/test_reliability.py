"""The reliability defects a new user hit (issue 11), one test each: a failed checkpoint save, a
damaged checkpoint, two launches of one experiment, a resume with a changed batch size,
evaluating an unfinished run, a table label that no longer fits its attack, and a log that
repeated steps after a resume."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import tiny_config
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.checkpoint import (CheckpointMismatchError, ExperimentLockedError,
                                     experiment_lock)
from defenses_jax.evaluation import evaluate
from defenses_jax.evaluation.threat_models import parse_attack_specs
from defenses_jax.defenses import create_defense
from defenses_jax.evaluation.results import AttackDetection, AttackResult, EvalSummary
from defenses_jax.suites import cells, tables
from experiments.common import attack

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_records(workdir):
  with open(os.path.join(workdir, "tiny", "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_a_failed_save_stops_the_run_at_once_and_the_process_exits(tmp_path):
  # The checkpoint directory is replaced by a plain file after the step-2 save (root ignores
  # read-only permissions, so this is how the test makes the disk refuse). The next save (step
  # 4) fails; the run must stop there with a clear error and the process must exit at once
  # (orbax's shutdown wait on a failed writer used to hang for about five minutes).
  script = textwrap.dedent(f"""
      import os, sys
      sys.path[:0] = [{REPO!r}, {os.path.join(REPO, "tests")!r}]
      from conftest import tiny_config, blob_dataset
      from defenses_jax import train as train_lib
      from defenses_jax.checkpoint import CheckpointSaveError, ExperimentCheckpoints
      real_save = ExperimentCheckpoints.save
      def save(self, step, state, force=False):
        if step == 3:
          self.wait()
          os.rename(self.checkpoint_dir, self.checkpoint_dir + ".moved")
          open(self.checkpoint_dir, "w").close()
        return real_save(self, step, state, force)
      ExperimentCheckpoints.save = save
      data = blob_dataset(96, seed=0), blob_dataset(40, seed=1)
      try:
        train_lib.train(tiny_config(epochs=2), {str(tmp_path)!r}, datasets=data)
      except CheckpointSaveError as e:
        print("STOPPED:", e, flush=True)
        sys.exit(3)
      """)
  start = time.monotonic()
  run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=240)
  assert run.returncode == 3, run.stdout + run.stderr
  assert "saving checkpoint step" in run.stdout and "relaunch" in run.stdout
  assert time.monotonic() - start < 120  # Seconds of compilation, not minutes of waiting.
  steps = [r["step"] for r in train_records(tmp_path) if "train_loss" in r]
  assert max(steps) <= 6, steps  # Stopped within a step or two of the failure, not at the end.


def _train_then_damage_latest(tmp_path, blobs):
  config = tiny_config(epochs=2, checkpoint_every_steps=3)
  final, _ = train_lib.train(config, str(tmp_path), datasets=blobs)
  ckpt_dir = tmp_path / "tiny" / "checkpoints"
  assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [9, 12]
  return config, jax.device_get(final.as_dict()), ckpt_dir


def test_a_silently_altered_checkpoint_is_caught_and_the_older_step_resumes(tmp_path, blobs):
  config, final, ckpt_dir = _train_then_damage_latest(tmp_path, blobs)
  # Step 12 rewritten with one weight changed: orbax restores it without complaint (as it did
  # a bit-flipped file, whose Adam moments came back as 1e38).
  manager = ocp.CheckpointManager(str(ckpt_dir))
  template = experiment_lib.Experiment(config, str(tmp_path / "unused"), blobs).initial_state()
  state = jax.device_get(manager.restore(12, args=ocp.args.StandardRestore(
      jax.tree.map(ocp.utils.to_shape_dtype_struct, template.as_dict()))))
  manager.close()
  shutil.rmtree(ckpt_dir / "12")
  kernel = np.array(state["params"]["Dense_2"]["kernel"])
  kernel[0, 0] = 1e38
  state["params"]["Dense_2"]["kernel"] = kernel
  manager = ocp.CheckpointManager(str(ckpt_dir))
  manager.save(12, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  manager.close()
  resumed, summary = train_lib.train(config, str(tmp_path), datasets=blobs)
  assert summary.resumed_from_step == 9
  assert (ckpt_dir / "corrupt-12").is_dir()
  # Re-training steps 10-12 from the intact step gives back exactly the original final state.
  for field, value in final.items():
    chex.assert_trees_all_equal(value, jax.device_get(resumed.as_dict())[field],
                                custom_message=field)


def test_an_unreadable_latest_checkpoint_falls_back_and_names_the_step(tmp_path, blobs, capsys):
  config, _, ckpt_dir = _train_then_damage_latest(tmp_path, blobs)
  for root, _, files in os.walk(ckpt_dir / "12"):  # Every file of step 12 cut to nothing.
    for name in files:
      open(os.path.join(root, name), "w").close()
  _, summary = train_lib.train(config, str(tmp_path), datasets=blobs)
  assert summary.resumed_from_step == 9
  assert "checkpoint step 12 is damaged" in capsys.readouterr().out
  assert latest_step_dirs(ckpt_dir) == [9, 12]  # Step 12 written again by the resumed run.


def latest_step_dirs(ckpt_dir):
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def test_a_second_launch_of_a_running_experiment_is_refused_at_once(tmp_path, blobs):
  exp_dir = os.path.join(str(tmp_path), "tiny")
  with experiment_lock(exp_dir):  # What a first launch holds while it trains.
    with pytest.raises(ExperimentLockedError, match=f"pid {os.getpid()}"):
      train_lib.train(tiny_config(epochs=1), str(tmp_path), datasets=blobs)
  assert not os.path.exists(os.path.join(exp_dir, "checkpoints"))  # Refused before any work.
  out = train_lib.train_and_evaluate(tiny_config(epochs=1), str(tmp_path), datasets=blobs)
  assert out.final_step == 6  # Released: the next launch runs.


def test_resuming_with_another_batch_size_is_refused_and_leaves_the_config(tmp_path, blobs):
  train_lib.train_and_evaluate(tiny_config(epochs=1), str(tmp_path), datasets=blobs)
  saved = (tmp_path / "tiny" / "config.json").read_text()
  with pytest.raises(CheckpointMismatchError, match="batch_size=16"):
    train_lib.train_and_evaluate(tiny_config(epochs=2, batch_size=32), str(tmp_path),
                                 datasets=blobs)
  assert (tmp_path / "tiny" / "config.json").read_text() == saved  # The refused run left none.
  # More epochs are a legitimate change: the run resumes and the log records it.
  out = train_lib.train_and_evaluate(tiny_config(epochs=2), str(tmp_path), datasets=blobs)
  assert out.resumed_from_step == 6 and out.final_step == 12
  changes = [r for r in train_records(tmp_path) if "resumed_with_changes" in r]
  assert changes == [{"step": 6, "resumed_with_changes": {"train.epochs": [1, 2]},
                      "time": changes[0]["time"]}]


def test_a_resumed_run_logs_every_step_once(tmp_path, blobs):
  config = tiny_config(epochs=2, checkpoint_every_steps=3)  # log_every_steps 2.
  train_lib.train(config, str(tmp_path), datasets=blobs, interrupt_at_step=5)
  # Step 4: after checkpoint 3; step 0: the initial loss (the divergence check's reference).
  assert [r["step"] for r in train_records(tmp_path)] == [0, 2, 4]
  train_lib.train(config, str(tmp_path), datasets=blobs)
  steps = [r["step"] for r in train_records(tmp_path) if "train_loss" in r]
  assert steps == sorted(set(steps)) and 4 in steps, steps


def test_evaluating_an_unfinished_run_says_so_and_goes_stale_after_more_training(tmp_path, blobs):
  config = tiny_config(epochs=2)
  train_lib.train(config, str(tmp_path), datasets=blobs, interrupt_at_step=6)
  evaluate(config, str(tmp_path), datasets=blobs)
  results = tmp_path / "tiny" / "results"
  assert "Checkpoint step 6 of 12. **Training incomplete**" in (results / "eval.md").read_text()
  train_lib.train(config, str(tmp_path), datasets=blobs)
  assert (results / "eval.md").read_text().startswith(
      "> **Stale:** evaluated at step 6; training has since reached step 12.")
  assert json.loads((results / "eval.json").read_text())["stale_since_step"] == 12
  evaluate(config, str(tmp_path), datasets=blobs)
  text = (results / "eval.md").read_text()
  assert "Stale" not in text and "Checkpoint step 12 of 12." in text
  assert "incomplete" not in text


def test_an_overridden_attack_param_shows_in_the_label_and_is_not_compared_with_the_paper():
  entry = attack("cw_l2", "CW-L2 (4 x 100 iter.)", binary_search_steps=4, max_iterations=100)
  entry["params"]["max_iterations"] = 5  # As --config...params.max_iterations=5 does.
  defense = create_defense("standard", 10)
  (spec,) = parse_attack_specs({"cw": entry}, defense)
  assert spec.label == "CW-L2 (4 x 100 iter.) [run with max_iterations=5]"
  assert spec.overridden == {"max_iterations": [100, 5]}
  (unchanged,) = parse_attack_specs({"cw": attack("cw_l2", "CW-L2", max_iterations=100)}, defense)
  assert unchanged.label == "CW-L2" and unchanged.overridden == {}
  summary = EvalSummary("m", 10, "d", 100, 100, 1.0, 1.0, {"cw": AttackResult(
      spec.label, "cw_l2", "white_box", spec.params, robust_accuracy=0.5,
      attack_success_rate=0.5, num_examples=100, mean_l2=1.0, median_l2=1.0, mean_linf=0.1,
      median_linf=0.1, overridden_params=spec.overridden)})
  cell = cells.value(cells.parse("m:cw"), 0.2, {"m": summary}, {})
  assert cell["status"] == cells.OTHER_SETTINGS
  assert tables._ours(cell) == "50.0% (other settings)"  # No "(differs)" against 20.0%.
  np.testing.assert_equal(cell["ours"], 0.5)


@pytest.mark.parametrize("num_successful, shown", [
    (2, "0.974 (n=2)"),  # An AUC over 2 fooled images: counted, not compared with 0.994.
    (0, "- (n=0)"),  # No fooled image: no AUC at all.
    (20, "0.974"),  # Enough to compare: within 5% of 0.994, so no "(differs)" either.
])
def test_a_detection_number_over_few_successful_examples_shows_its_count(num_successful,
                                                                         shown):
  auc = 0.974 if num_successful else None
  detection = AttackDetection(num_successful=num_successful, flagged_rate=0.0,
                              flagged_precision=None, misclassified_and_accepted=0.0, auc=auc)
  summary = EvalSummary("m", 10, "d", 100, 100, 1.0, 1.0, {"cw": AttackResult(
      "CW", "cw_l2", "white_box", {}, robust_accuracy=0.98, attack_success_rate=0.02,
      num_examples=100, mean_l2=1.0, median_l2=1.0, mean_linf=0.1, median_linf=0.1,
      detection=detection)})
  cell = cells.value(cells.parse("m:cw:auc"), 0.994, {"m": summary}, {})
  assert tables._ours(cell, "number") == shown
  # Robust accuracy is over every attacked image: no count beside it.
  accuracy = cells.value(cells.parse("m:cw"), 0.5, {"m": summary}, {})
  assert tables._ours(accuracy) == "98.0% (differs)"
