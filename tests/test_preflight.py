"""Bad settings fail before any compute, in one line that names them (issue: "No silent wrong
numbers"): attack parameters out of range (eps -0.3 reported 93.8% "robust accuracy"), every
suite member checked whole before the first one trains, and the mistakes a newcomer makes on
the command line."""

import inspect
import os
import subprocess
import sys

import ml_collections
import pytest

from conftest import tiny_config
from defenses_jax import train as train_lib
from defenses_jax.attacks.registry import ATTACKS
from defenses_jax.defenses import create_defense
from defenses_jax.errors import ConfigError
from defenses_jax.evaluation import evaluate
from defenses_jax.evaluation.threat_models import parse_attack_specs
from defenses_jax.experiment import NoCheckpointError
from defenses_jax.suites import runner as suite
from experiments.common import attack
from experiments.paper_000_target_training import config as paper_000

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not config parameters. The attacked model (a target or an oracle) comes first and is skipped
# by position: some attacks also take `target`, the targeting mode.
NOT_PARAMS = {"evasion", "x", "y", "key", "kwargs"}


def test_every_parameter_of_every_attack_has_a_declared_check():
  for name, info in ATTACKS.items():
    signature = inspect.signature(info.fn).parameters
    own = set(list(signature)[1:]) - NOT_PARAMS
    assert own <= set(info.params), (name, sorted(own - set(info.params)))
    if "kwargs" not in signature:  # Forwarding attacks declare what they forward.
      assert set(info.params) <= own, (name, sorted(set(info.params) - own))


@pytest.mark.parametrize("name,params,message", [
    ("fgsm", {"eps": -0.3}, "fgsm eps must be a number > 0; got -0.3"),
    ("pgd", {"eps": -0.3, "step_size": 0.01, "steps": 40}, "pgd eps must be a number > 0"),
    ("pgd", {"eps": 0.3, "step_size": 0.01, "steps": 0}, "steps must be a whole number >= 1"),
    ("pgd", {"eps": 0.3, "step_size": 0.01, "steps": 2.5}, "steps must be a whole number"),
    ("bim", {"eps": 0.3, "n1": 10, "n2": 10, "restarts": 0}, "bim restarts must be"),
    ("square", {"eps": 0.1, "max_queries": 0}, "square max_queries must be a whole number >= 1"),
    ("square", {"eps": 0.1, "p_init": 1.5}, "p_init must be a number > 0 and <= 1; got 1.5"),
    ("uap", {"eps": 0.1, "delta": 1.0}, "uap delta must be a number >= 0 and < 1"),
    ("cw_l2", {"kappa": -1.0}, "cw_l2 kappa must be a number >= 0"),
    ("deepfool", {"norm": "l3"}, "deepfool norm must be one of"),
    ("jsma", {"theta": 0.0}, "jsma theta must be a number >= -1 and <= 1 and not 0"),
    ("hop_skip_jump", {"eps": 0.0}, "hop_skip_jump eps must be"),
    ("zoo", {"max_iterations": 100, "solver": "sgd"}, "zoo solver must be one of"),
    ("pgd", {"eps": 0.3, "step_size": 0.01, "steps": 4, "stepsize": 1}, "'pgd' does not take"),
])
def test_attack_parameters_are_checked_when_parsed(name, params, message):
  with pytest.raises(ConfigError, match=f"eval.attacks.a: .*{message}"):
    parse_attack_specs({"a": attack(name, "x", **params)}, create_defense("standard", 10))
  good = {**params}  # The same entry with sane values parses.
  for key, value in {"eps": 0.3, "steps": 4, "restarts": 1, "max_queries": 10, "p_init": 0.5,
                     "delta": 0.2, "kappa": 0.0, "norm": "l2", "theta": 1.0,
                     "solver": "adam"}.items():
    if key in good:
      good[key] = value
  good.pop("stepsize", None)
  parse_attack_specs({"a": attack(name, "x", **good)}, create_defense("standard", 10))


def test_a_negative_eps_fails_before_training_starts(tmp_path, blobs):
  config = tiny_config()
  config.eval.attacks = ml_collections.ConfigDict({"fgsm": attack("fgsm", "FGSM", eps=-0.3)})
  with pytest.raises(ConfigError, match="eval.attacks.fgsm: fgsm eps must be a number > 0"):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  assert not os.path.exists(tmp_path / "tiny")


def _break_square(member):
  member.eval.attacks.zoo.params.max_queries = 0


@pytest.mark.parametrize("member,change,message", [
    ("tt_mnist_cpu", lambda m: setattr(m.eval.detection, "detector", "kde_typo"),
     "unknown detector 'kde_typo'"),
    ("at_pgd_mnist_cpu", lambda m: m.eval.attacks.pgd_wb.params.update(eps=-0.3),
     "eval.attacks.pgd_wb: pgd eps must be a number > 0"),
    ("at_fgsm_mnist_cpu", lambda m: setattr(m.eval, "num_attack_examples", 0),
     "eval.num_attack_examples must be positive or -1"),
    ("tt_fgsm_mnist_cpu", lambda m: (setattr(m.eval.detection, "detector", "class_mean"),
                                     setattr(m.eval, "num_attack_examples", 990)),
     "needs clean held-out test images .* at least 20, but only 10"),
    ("tt_fgsm_mnist_cpu", lambda m: (setattr(m.eval.detection, "detector", "class_mean"),
                                     setattr(m.eval.detection, "false_positive_rate", 1.5)),
     "false_positive_rate must be in \\(0, 1\\); got 1.5"),
    ("standard_mnist_cpu", lambda m: m.eval.attacks.zoo.params.update(max_queries=0),
     "eval.attacks.zoo: zoo max_queries must be a whole number >= 1"),
    ("at_cw40_mnist_cpu", lambda m: setattr(m.eval.attacks.cw_l2_k40_wb, "attack", "cw_l3"),
     "eval.attacks.cw_l2_k40_wb: unknown attack 'cw_l3'"),
])
def test_a_suite_checks_every_member_whole_before_the_first_trains(tmp_path, monkeypatch, member,
                                                                   change, message):
  config = paper_000.get_config("cpu")
  with config.unlocked():
    change(config.members[member])

  def trains(*args, **kwargs):  # What must not happen first (and would take many minutes).
    raise AssertionError("a member was trained before every member was checked")

  monkeypatch.setattr(suite.train, "train_and_evaluate", trains)
  with pytest.raises(ConfigError, match=f"member '{member}': .*{message}"):
    suite.run_suite(config, str(tmp_path))
  assert os.listdir(tmp_path) == []  # Refused before anything was trained or written.


def test_evaluating_an_untrained_experiment_leaves_nothing_behind(tmp_path, blobs):
  with pytest.raises(NoCheckpointError, match="train first"):
    evaluate(tiny_config(), str(tmp_path), datasets=blobs)
  assert os.listdir(tmp_path) == []


def launch(*args, cwd=REPO):
  return subprocess.run([sys.executable, os.path.join(REPO, "launch.py"), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_command_line_mistakes_get_one_line_before_jax_starts(tmp_path):
  config = "--config=experiments/standard.py:cpu"
  cases = [
      ([config, "--config.train.epoch=3", f"--workdir={tmp_path}"],
       "error: --config.train.epoch: the config has no key 'epoch'. Did you mean \"epochs\""),
      (["--config=experiments/standrd.py:cpu", f"--workdir={tmp_path}"],
       "error: --config: no such file 'experiments/standrd.py'"),
      (["--config=experiments/paper_001_sim_adv/config.py:cpux", f"--workdir={tmp_path}"],
       "e.g. --config=experiments/paper_001_sim_adv/config.py:mnist_cpu"),
  ]
  (tmp_path / "afile").write_text("")
  cases.append(([config, f"--workdir={tmp_path / 'afile'}"], "is a file, not a directory"))
  for args, message in cases:
    run = launch(*args)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert "Traceback" not in run.stderr
  assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_a_library_error_in_a_run_is_one_line_with_exit_status_1(tmp_path):
  run = launch("--config=experiments/standard.py:cpu", f"--workdir={tmp_path}", "--mode=eval")
  assert run.returncode == 1
  assert run.stderr.strip().splitlines()[-1].startswith("error: no checkpoint under ")
  assert "Traceback" not in run.stderr
  assert os.listdir(tmp_path) == []
