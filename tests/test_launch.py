"""The command line: config files, locked configs and overrides, as a user types them."""

import os
import subprocess
import sys

import pytest

from experiments import standard

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(*args, home=None):
  env = None if home is None else {**os.environ, "HOME": str(home)}
  return subprocess.run([sys.executable, "launch.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env)


def test_unknown_config_key_is_rejected_before_anything_runs(tmp_path):
  proc = launch("--config=experiments/standard.py:cpu", f"--workdir={tmp_path}",
                "--config.train.epochz=3")
  assert proc.returncode != 0
  assert "epochz" in proc.stderr
  assert not os.listdir(tmp_path)


def test_unknown_scale_is_rejected():
  with pytest.raises(ValueError, match="scale"):
    standard.get_config("gpu")


def test_launch_trains_then_evaluates_with_overrides(tmp_path):
  # '~' in --workdir is expanded as the shell would (here HOME is tmp_path).
  common = ["--config=experiments/standard.py:cpu", "--workdir=~",
            "--config.train.epochs=1", "--config.dataset.num_train_examples=128",
            "--config.dataset.num_test_examples=50", "--config.experiment_name=smoke",
            "--compilation_cache_dir="]
  proc = launch(*common, home=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # A short summary, not the whole JSON.
  assert "smoke: step 2, test accuracy" in proc.stdout and "results/train.json" in proc.stdout
  # The config's paper attacks, cut to a few images and iterations.
  proc = launch(*common, "--mode=eval", "--config.eval.batch_size=10",
                "--config.eval.num_attack_examples=10", "--config.eval.sanity.num_examples=10",
                "--config.eval.sanity.unbounded_steps=5", "--config.eval.eps_sweep.attack=",
                "--config.eval.attacks.cw_l2_k0.params.max_iterations=5",
                "--config.eval.attacks.cw_l2_k40.params.max_iterations=5",
                "--config.eval.attacks.cw_linf_k0.params.max_total_iterations=10",
                "--config.eval.attacks.uap.fit_examples=20",
                "--config.eval.attacks.uap.params.max_passes=1",
                "--config.eval.attacks.autoattack.params.steps=5",
                "--config.eval.attacks.autoattack.params.square_queries=20",
                "--config.eval.attacks.zoo.params.binary_search_steps=1",
                "--config.eval.attacks.zoo.params.max_iterations=5", home=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "smoke (step 2): clean accuracy" in proc.stdout and "results/eval.md" in proc.stdout
  assert "sanity checks:" in proc.stdout and len(proc.stdout.splitlines()) < 40  # Not 600.
  for name in ("config.json", "metrics.jsonl", "results/train.json", "results/eval.json",
               "results/eval.md", "results/examples.png"):
    assert os.path.exists(tmp_path / "smoke" / name), name
  assert not os.path.exists(os.path.join(ROOT, "~"))  # Not a directory literally named '~'.
