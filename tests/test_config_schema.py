"""One config schema (config.SCHEMA, config.ATTACK_ENTRY): base_config, check_config, the attack
entries' reading, upgrade() of old configs and docs/config.md all derive from it, so a key
declared there is defaulted, checked, upgraded and documented, and no key is any of these
without being declared."""

import dataclasses
import inspect
import json
import os

import ml_collections
import pytest

from conftest import tiny_config
from defenses_jax import config_schema
from defenses_jax import optim
from defenses_jax import train as train_lib
from defenses_jax.config import ATTACK_ENTRY, SCHEMA, attack, base_config, reference, upgrade
from defenses_jax.config_checks import check_config
from defenses_jax.config_schema import FreeForm, Key, KeyOf, KeysOf, Section
from defenses_jax.defenses import create_defense
from defenses_jax.errors import ConfigError
from defenses_jax.evaluation import evaluate
from defenses_jax.evaluation.threat_models import AttackSpec, parse_attack_specs
from defenses_jax.experiment import Experiment, load_experiment
from defenses_jax.models.precision import COMPUTE_DTYPES
from defenses_jax.suites.runner import evaluation_is_current
from defenses_jax.value_checks import Items, OneOf, Range

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(config, prefix=""):
  """Paths of a config's values, an empty sub-dict counting as a value (a free-form one)."""
  out = set()
  for name in config.keys():
    value = config[name]
    if isinstance(value, (dict, ml_collections.ConfigDict)) and len(value):
      out |= _leaves(value, f"{prefix}{name}.")
    else:
      out.add(prefix + name)
  return out


def test_base_config_has_every_declared_key_and_no_other():
  assert _leaves(base_config()) == set(config_schema.paths(SCHEMA))
  assert "eval.worst_case_groups" in config_schema.paths(SCHEMA)
  assert base_config().eval.worst_case_groups == ml_collections.ConfigDict()
  check_config(base_config())  # The defaults pass their own checks.


def test_the_attack_entry_is_declared_once():
  signature = inspect.signature(attack).parameters
  for name, item in ATTACK_ENTRY.keys.items():
    if name in signature and signature[name].default is not inspect.Parameter.empty:
      assert signature[name].default == item.default, name  # attack()'s are the declared ones.
  assert set(attack("pgd", "PGD", eps=0.3, eot_samples=2, fit_examples=3, detector_aware=True,
                    detector_fpr=0.5, num_examples=4, surface="s")) == set(ATTACK_ENTRY.keys)
  spec_fields = {f.name for f in dataclasses.fields(AttackSpec)}
  assert spec_fields == set(ATTACK_ENTRY.keys) - {"label_params"} | {"key", "overridden"}


def test_choices_declared_in_the_schema_are_the_ones_implemented():
  assert list(config_schema.lookup(SCHEMA, "model.compute_dtype").check.choices) == sorted(
      COMPUTE_DTYPES)
  for optimizer in optim.OPTIMIZERS:
    for schedule in optim.SCHEDULES:
      cfg = ml_collections.ConfigDict({**base_config().train.to_dict(), "optimizer": optimizer,
                                       "schedule": schedule})
      optim.create_optimizer(cfg, steps_per_epoch=10)


def _wrong_type(item):
  kind = item.kind if isinstance(item, Key) else dict
  return {str: 7, bool: "yes", int: "7", float: "x", tuple: 7, dict: 7}[kind]


def _out_of_range(check) -> list:
  """Values `check` refuses (besides those of the wrong type)."""
  if isinstance(check, Range):
    values = [check.low if check.low_open else check.low - 1] if check.low is not None else []
    if check.high is not None:
      values.append(check.high if check.high_open else check.high + 1)
    if check.also:
      values.append(min(check.also) - 1)
    return [v for v in values if v not in check.also]
  if isinstance(check, OneOf):
    return ["not_a_choice"]
  if isinstance(check, Items):
    values = [(bad,) for bad in _out_of_range(check.item)]
    if check.lengths:
      values.append((0,) * (max(check.lengths) + 1))
    if check.increasing:
      values.append((2, 1))
    return values
  if isinstance(check, KeyOf):
    return ["no_such_attack"]
  if isinstance(check, KeysOf):
    return [("no_such_attack",), ()]
  return []


def _bad_cases(section: Section, prefix: str = ""):
  """(path, value) for every value the schema refuses, derived from the declarations."""
  for name, item in section.keys.items():
    path = prefix + name
    if isinstance(item, Section):
      yield from _bad_cases(item, path + ".")
    elif isinstance(item, FreeForm):
      yield path, _wrong_type(item)
      for bad in _out_of_range(item.entry) if not item.checked_in else ():
        yield path, {"g": bad}
    elif not item.checked_in:
      yield path, _wrong_type(item)
      yield from ((path, bad) for bad in _out_of_range(item.check))


BAD_CASES = list(_bad_cases(SCHEMA))


def _with(path: str, value) -> ml_collections.ConfigDict:
  """base_config() with `path` set to `value` (through a dict: a ConfigDict keeps its types)."""
  values = base_config().to_dict()
  *sections, name = path.split(".")
  target = values
  for part in sections:
    target = target[part]
  target[name] = value
  return ml_collections.ConfigDict(values)


def test_the_cases_cover_every_declared_check():
  cases = {}
  for path, _ in BAD_CASES:
    cases[path] = cases.get(path, 0) + 1
  for path in config_schema.paths(SCHEMA):
    item = config_schema.lookup(SCHEMA, path)
    if not item.checked_in:  # Its type, and its range where one is declared.
      ranged = item.check if isinstance(item, Key) else item.entry
      assert cases[path] >= 1 + (ranged is not None), path


@pytest.mark.parametrize("path,value", BAD_CASES, ids=[f"{p}={v!r}" for p, v in BAD_CASES])
def test_a_value_the_schema_refuses_fails_check_config_naming_its_key(path, value):
  config = _with(path, value)
  problems = config_schema.problems(SCHEMA, config)
  assert len(problems) == 1 and problems[0].startswith(path), problems
  with pytest.raises(ConfigError, match=f"^bad config: {path.replace('.', '[.]')}"):
    check_config(config)


@pytest.mark.parametrize("path,value,message", [
    ("train.epochs", 0, "train.epochs must be a positive integer; got 0"),
    ("train.batch_size", 2.5, "train.batch_size must be a positive integer; got 2.5"),
    ("seed", -1, "seed must be a non-negative integer; got -1"),
    ("train.learning_rate", -1e-3, "train.learning_rate must be positive; got -0.001"),
    ("train.divergence_factor", 0.5,
     "train.divergence_factor must be 0 (no check) or above 1; got 0.5"),
    ("train.profile_steps", (5, 2),
     "train.profile_steps must be (first, last) with 0 <= first < last, or (); got (5, 2)"),
    ("dataset.num_test_examples", -2,
     "dataset.num_test_examples must be positive or -1 (all); got -2"),
    ("eval.eps_sweep.eps_values", (0.1, -0.1),
     "eval.eps_sweep.eps_values must be numbers >= 0 (0: clean); got (0.1, -0.1)"),
    ("eval.monitor.attack", "pgdd", "eval.monitor.attack 'pgdd' is not one of eval.attacks ([])"),
    ("eval.worst_case_groups", {"all": ("pgd",)},
     "eval.worst_case_groups.all must name attacks of eval.attacks ([]); got ['pgd']"),
    ("model.compute_dtype", "float16",
     "model.compute_dtype must be one of ['bfloat16', 'float32']; got 'float16'"),
    ("train.optimizer", "adamw", "train.optimizer must be one of ['adam', 'sgd']; got 'adamw'"),
    ("train.epoch", 3, "train.epoch is not a config key (did you mean train.epochs?)"),
])
def test_problems_are_named_in_words(path, value, message):
  with pytest.raises(ConfigError) as e:
    check_config(_with(path, value))
  assert str(e.value) == f"bad config: {message}."


def test_every_problem_is_reported_at_once_and_a_missing_key_says_what_to_do():
  values = _with("seed", -1).to_dict()
  values["train"]["epochs"] = 0
  del values["model"]["compute_dtype"]
  with pytest.raises(ConfigError) as e:
    check_config(ml_collections.ConfigDict(values))
  assert str(e.value) == (
      "bad config: seed must be a non-negative integer; got -1; model.compute_dtype is missing "
      "(a config saved by an earlier version: read it with defenses_jax.config.upgrade); "
      "train.epochs must be a positive integer; got 0.")


def _attack_entry_cases():
  for name, item in ATTACK_ENTRY.keys.items():
    if isinstance(item, Key):
      yield name, _wrong_type(item)
      yield from ((name, bad) for bad in _out_of_range(item.check))
    else:
      yield name, 7


ENTRY_CASES = list(_attack_entry_cases())


@pytest.mark.parametrize("field,value", ENTRY_CASES, ids=[f"{f}={v!r}" for f, v in ENTRY_CASES])
def test_an_attack_entry_field_out_of_its_declared_range_is_refused(field, value):
  entry = {**attack("fgsm", "FGSM", eps=0.3), field: value}
  with pytest.raises(ConfigError, match=f"^eval[.]attacks[.]a: {field} must"):
    parse_attack_specs({"a": entry}, create_defense("standard", 10))


def test_an_unknown_attack_entry_field_is_refused_naming_the_entry():
  entry = {**attack("pgd", "PGD", eps=0.3, step_size=0.1, steps=2), "eot_sample": 4}
  with pytest.raises(ConfigError, match=r"^eval\.attacks\.pgd_x: unknown fields \['eot_sample'\]; "
                                        r"an entry takes \['attack', 'label', "):
    parse_attack_specs({"pgd_x": entry}, create_defense("standard", 10))


def test_an_entry_without_its_optional_fields_reads_with_the_declared_defaults():
  spec, = parse_attack_specs({"fgsm": {"params": {"eps": 0.3}}}, create_defense("standard", 10))
  assert (spec.attack, spec.label, spec.threat_model, spec.eot_samples, spec.detector_weight,
          spec.overridden) == ("fgsm", "fgsm", "white_box", 1, 1.0, {})
  uap, = parse_attack_specs({"uap": attack("uap", "UAP", eps=0.1)}, None)
  assert uap.fit_examples == 1000  # 0: the default of a universal attack.


def test_upgrade_fills_what_an_old_config_lacks_and_keeps_the_rest():
  old = base_config().to_dict()
  for section, key in (("model", "compute_dtype"), ("eval", "slot_refill"),
                       ("eval", "worst_case_groups"), ("train", "divergence_factor")):
    del old[section][key]
  del old["distill"]
  old["train"]["epochs"] = 3
  old["extra"] = 1  # Unknown keys are kept, for check_config to name.
  before = json.dumps(old, sort_keys=True)
  new = upgrade(old)
  assert json.dumps(old, sort_keys=True) == before  # The given config is not changed.
  assert new == {**base_config().to_dict(), "train": {**base_config().train.to_dict(),
                                                       "epochs": 3}, "extra": 1}
  assert upgrade(new) == new
  as_config = upgrade(ml_collections.ConfigDict(old))
  assert isinstance(as_config, ml_collections.ConfigDict) and as_config.to_dict() == new
  assert upgrade({}) == base_config().to_dict()


def test_an_old_config_json_loads_upgraded_and_evaluates_as_before(tmp_path, blobs):
  """config.json and eval.json as a version before model.compute_dtype, eval.slot_refill,
  eval.worst_case_groups, train.divergence_factor, train.fail_at_chance and distill existed
  wrote them: the experiment loads (as a transfer source or from Colab), evaluates to the same
  numbers, its checkpoints accept the current config, and a suite keeps its evaluation."""
  workdir = str(tmp_path)
  config = tiny_config(epochs=1)
  config.eval.attacks = ml_collections.ConfigDict({
      "fgsm": attack("fgsm", "FGSM", eps=0.3), "deepfool": attack("deepfool", "DF", max_iter=5)})
  config.eval.num_attack_examples = 16
  config.eval.sanity.enabled = False
  config.train.fail_at_chance = True  # The default, which an old config.json held implicitly.
  train_lib.train_and_evaluate(config, workdir, datasets=blobs)
  first = evaluate(config, workdir, datasets=blobs)
  newer = (("model", "compute_dtype"), ("eval", "slot_refill"), ("eval", "worst_case_groups"),
           ("train", "divergence_factor"), ("train", "fail_at_chance"))
  saved_path, eval_path = (os.path.join(workdir, "tiny", name)
                           for name in ("config.json", "results/eval.json"))
  with open(saved_path) as f:
    saved = json.load(f)
  with open(eval_path) as f:
    summary = json.load(f)
  for section, key in newer:
    del saved[section][key]
  del saved["distill"]
  for key in ("slot_refill", "worst_case_groups"):
    del summary["eval_config"][key]
  del summary["compute_dtype"]
  with open(saved_path, "w") as f:
    json.dump(saved, f)
  with open(eval_path, "w") as f:
    json.dump(summary, f)

  assert evaluation_is_current(config, workdir)
  Experiment(config, workdir, blobs).checkpoints().close()  # The resume check accepts it.
  loaded = load_experiment(workdir, "tiny", datasets=blobs).exp.config
  assert [loaded[s][k] for s, k in newer] == [base_config()[s][k] for s, k in newer]
  assert loaded.distill.teacher == ""
  again = evaluate(loaded, workdir, datasets=blobs)
  assert again.clean_accuracy == first.clean_accuracy
  assert ({k: r.robust_accuracy for k, r in again.attacks.items()}
          == {k: r.robust_accuracy for k, r in first.attacks.items()})


def test_the_config_reference_is_generated_and_current():
  with open(os.path.join(ROOT, "docs", "config.md")) as f:
    committed = f.read()
  assert committed == reference(), ("docs/config.md is out of date: "
                                    "python -m defenses_jax.config > docs/config.md")
  for path in config_schema.paths(SCHEMA):
    assert f"| `{path}` |" in committed, path
