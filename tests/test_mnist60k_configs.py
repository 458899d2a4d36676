"""The mnist60k scale of papers 000-003 (and the main job): each suite is valid without its data,
trains on all 60,000 MNIST training images and tests on the 10,000, keeps the cpu scale's
architectures and attacks, and spends at least the cpu scale's training steps and attacked
images."""

import pytest

from defenses_jax import data
from defenses_jax.errors import ConfigError
from defenses_jax.suites import publish, runner
from experiments import standard
from experiments.common import steps_per_epoch
from experiments.paper_000_target_training import config as paper_000
from experiments.paper_001_sim_adv import config as paper_001
from experiments.paper_002_pdm import config as paper_002
from experiments.paper_003_collaborative import config as paper_003
from experiments.paper_004_adv_transform import config as paper_004

PAPERS = (paper_000, paper_001, paper_002, paper_003)
# Attack parameters whose larger value is the stronger (or longer) attack.
BUDGETS = ("steps", "max_iterations", "max_total_iterations", "binary_search_steps", "n2",
           "restarts", "max_queries", "square_queries", "num_target_classes", "num_targets",
           "max_iter", "max_passes", "phase1_iterations", "phase2_iterations",
           "phase1_binary_steps", "phase2_binary_steps", "coordinates")


def _pairs(module):
  """(mnist60k member, its cpu-scale counterpart) for every member of the suite."""
  big, cpu = module.get_config("mnist60k"), module.get_config("cpu")
  assert len(big.order) == len(cpu.order)
  for name in big.order:
    yield big.members[name], cpu.members[name.replace("_mnist_mnist60k", "_mnist_cpu")]


def _attacked(member) -> int:
  test = data.split_size(member.dataset.name, member.dataset.test_split,
                         member.dataset.num_test_examples)
  limit = member.eval.num_attack_examples
  return test if limit < 0 else min(test, limit)


@pytest.mark.parametrize("module", PAPERS, ids=lambda m: m.__name__.split(".")[1])
def test_the_suite_is_valid_without_loading_data(module, monkeypatch):
  def no_loading(*args, **kwargs):
    raise AssertionError("validate() loaded a dataset")

  monkeypatch.setattr(data, "load_dataset", no_loading)
  config = module.get_config("mnist60k")
  runner.validate(config)
  # `publish` reads the scale from the suite name's last part.
  assert config.suite_name.endswith("_mnist_mnist60k")
  assert publish._scale(config.suite_name) == "mnist60k"
  for name in config.order:
    assert name.endswith("_mnist60k"), name
  assert config.findings, "the README's findings need at least one per suite"
  for finding in config.findings:
    assert finding["member"] in config.order


@pytest.mark.parametrize("module", PAPERS, ids=lambda m: m.__name__.split(".")[1])
def test_every_member_uses_the_full_mnist(module):
  assert data.split_size("mnist", "train") == 60000
  assert data.split_size("mnist", "test") == 10000
  for member, _ in _pairs(module):
    assert member.dataset.name == "mnist", member.experiment_name
    assert member.dataset.num_train_examples == member.dataset.num_test_examples == -1


@pytest.mark.parametrize("module", PAPERS, ids=lambda m: m.__name__.split(".")[1])
def test_at_least_the_cpu_scale_s_steps_images_and_attacks(module):
  for member, cpu in _pairs(module):
    name = member.experiment_name
    assert member.model.to_dict() == cpu.model.to_dict(), name  # The cpu scale's architecture.
    same_names = lambda c: str(c.to_dict()).replace("_mnist_cpu", "_mnist_mnist60k")
    assert same_names(member.defense) == same_names(cpu.defense), name
    steps = member.train.epochs * steps_per_epoch(member) * member.train.replays
    cpu_steps = cpu.train.epochs * steps_per_epoch(cpu) * cpu.train.replays
    assert steps >= cpu_steps, name
    assert member.train.batch_size >= cpu.train.batch_size, name
    assert _attacked(member) >= _attacked(cpu), name
    assert member.eval.sanity.num_examples >= cpu.eval.sanity.num_examples, name
    assert sorted(member.eval.attacks) == sorted(cpu.eval.attacks), name
    for key, entry in member.eval.attacks.items():
      ours, theirs = entry.params, cpu.eval.attacks[key].params
      for param in set(BUDGETS) & set(theirs):
        assert ours[param] >= theirs[param], (name, key, param)
      for field in ("num_examples", "fit_examples"):
        assert entry.get(field, 0) >= cpu.eval.attacks[key].get(field, 0), (name, key, field)


def test_figures_attack_at_least_the_cpu_scale_s_images():
  for module in (paper_001, paper_002):
    big, cpu = module.get_config("mnist60k"), module.get_config("cpu")
    for fig_id in big.figures.order:
      if "num_examples" in cpu.figures[fig_id]:
        assert big.figures[fig_id].num_examples >= cpu.figures[fig_id].num_examples, fig_id


def test_sim_adv_trains_at_least_one_whole_cycle():
  config = paper_001.get_config("mnist60k")
  for name in config.order:
    member = config.members[name]
    if member.defense.name == "sim_adv":
      assert member.train.epochs >= member.defense.options.n2, name


@pytest.mark.parametrize("module", PAPERS, ids=lambda m: m.__name__.split(".")[1])
def test_every_table_header_says_what_the_scale_departs_in(module):
  config = module.get_config("mnist60k")
  for table_id in config.tables.order:
    assert "mnist60k scale: " in config.tables[table_id].note, table_id
  cpu = module.get_config("cpu")  # The other scales' headers are unchanged.
  assert not any("mnist60k" in cpu.tables[t].note for t in cpu.tables.order)


def test_the_main_job_has_the_scale_too():
  config = standard.get_config("mnist60k")
  assert config.experiment_name == "standard_mnist_mnist60k"
  assert config.dataset.name == "mnist" and config.dataset.num_train_examples == -1
  assert config.model.name == standard.get_config("cpu").model.name


@pytest.mark.parametrize("module,arg", [(paper_000, "cifar10_mnist60k"),
                                        (paper_001, "fashion_mnist_mnist60k"),
                                        (paper_004, "mnist60k")])
def test_mnist60k_is_mnist_only_and_papers_000_to_003_only(module, arg):
  with pytest.raises(ConfigError, match="mnist_cpu"):
    module.get_config(arg)
