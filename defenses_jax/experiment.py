"""An experiment resolved from its config: data, model, defense, optimiser, mesh, the TrainState
and its checkpoints, validated before any compute. Shared by training, evaluation, distillation
and the paper suites (which is why it is not part of train.py: evaluation must not import the
training loop, which imports evaluation's robustness monitor).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
from jax import lax

from defenses_jax import artifact_cache, parallel
from defenses_jax import data as data_lib
from defenses_jax.checkpoint import (ExperimentCheckpoints, experiment_dir,
                                     latest_checkpoint_step, step_artifact_path)
from defenses_jax.checksum import fingerprint
from defenses_jax.defenses import Defense, Network, create_defense
from defenses_jax.models import create_model
from defenses_jax.models.precision import with_compute_dtype
from defenses_jax.config import upgrade
from defenses_jax.config_checks import check_config
from defenses_jax.errors import UserError
from defenses_jax.files import read_json, write_json
from defenses_jax.optim import create_optimizer


@flax.struct.dataclass
class TrainState:
  """Everything needed to continue training exactly. The data order is not stored: it is a pure
  function of (seed, step) (see data.train_batches)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  defense_state: Any

  def as_dict(self) -> dict:
    return {f: getattr(self, f) for f in self.__dataclass_fields__}


def variables(params, batch_stats) -> dict:
  return {"params": params, "batch_stats": batch_stats}


def init_train_state(model, defense: Defense, tx, key, image_shape, num_train_examples,
                     batch_size):
  v = model.init({"params": key}, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = v["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=v.get("batch_stats", {}), opt_state=tx.init(params),
                    defense_state=defense.init_state(num_train_examples, image_shape,
                                                     batch_size))


def state_specs(defense: Defense) -> TrainState:
  """How the train state lies on the devices: replicated, except defense state a defense shards
  over the data axis (per-example buffers: each device holds a block of rows)."""
  return TrainState(step=parallel.REPLICATED, params=parallel.REPLICATED,
                    batch_stats=parallel.REPLICATED, opt_state=parallel.REPLICATED,
                    defense_state=defense.state_specs())


def make_eval_step(model, defense: Defense):
  """Per-device clean-accuracy sums of the deployed classifier over a (padded, masked)
  evaluation batch; `key` feeds a randomised defense (each device folds in its index)."""

  def eval_fn(params, batch_stats, batch, key):
    key = jax.random.fold_in(key, lax.axis_index(parallel.DATA_AXIS))
    net = Network(model, variables(params, batch_stats))
    predictions = jnp.argmax(defense.deployed(net, batch["image"], key).class_logits, axis=-1)
    sums = {"correct": jnp.sum((predictions == batch["label"]) * batch["mask"]),
            "count": jnp.sum(batch["mask"])}
    return lax.psum(sums, parallel.DATA_AXIS)

  return eval_fn


def evaluate_clean(eval_step, state: TrainState, ds, batch_size: int, mesh,
                   key: Optional[jax.Array] = None) -> float:
  """Clean accuracy of the deployed classifier on ds (`key`: a randomised defense's draws)."""
  key = jax.random.key(0) if key is None else key
  total = {"correct": 0.0, "count": 0.0}
  for number, batch in enumerate(data_lib.eval_batches(ds, batch_size,
                                                       process_index=jax.process_index(),
                                                       process_count=jax.process_count())):
    sums = eval_step(state.params, state.batch_stats, parallel.shard_batch(batch, mesh),
                     jax.random.fold_in(key, number))
    total = jax.tree.map(lambda a, b: a + b, total, sums)
  total = jax.device_get(total)
  return float(total["correct"] / total["count"])


class Experiment:
  """A config resolved into data, model, defense, optimizer and mesh, with inputs validated
  before any compute. Shared by training and evaluation."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               datasets: Optional[tuple] = None, other_test_data: bool = False):
    check_config(config)
    self.config = config
    self.exp_dir = experiment_dir(workdir, config.experiment_name)
    given_arrays = datasets is not None
    self.mesh = parallel.make_mesh(None if config.num_devices < 0 else config.num_devices)
    parallel.check_batch_divisible(config.train.batch_size, self.mesh, "train.batch_size")
    parallel.check_batch_divisible(config.eval.batch_size, self.mesh, "eval.batch_size")
    ds_cfg = config.dataset
    if datasets is None:
      datasets = tuple(data_lib.load_dataset(ds_cfg.name, split, ds_cfg.data_dir or None)
                       for split in (ds_cfg.train_split, ds_cfg.test_split))
    train_ds, test_ds = datasets
    if train_ds.image_shape != test_ds.image_shape or train_ds.num_classes != test_ds.num_classes:
      raise data_lib.DataError(
          f"train and test data disagree: images {train_ds.image_shape} vs "
          f"{test_ds.image_shape}, classes {train_ds.num_classes} vs {test_ds.num_classes}.")
    self.data_identity = {"source": "arrays" if given_arrays else "config",
                          "train": train_ds.identity(), "test": test_ds.identity()}
    check_recorded_data(self.exp_dir, self.data_identity, other_test_data,
                        relabelled=bool(config.distill.teacher))
    self.train_ds = train_ds.take(ds_cfg.num_train_examples)
    self.test_ds = test_ds.take(ds_cfg.num_test_examples)
    self.steps_per_epoch = data_lib.steps_per_epoch(len(self.train_ds), config.train.batch_size,
                                                    config.train.replays)
    self.total_steps = self.steps_per_epoch * config.train.epochs
    load_trained = lambda name: load_experiment(workdir, name, like=config, datasets=datasets)
    defense = create_defense(config.defense.name, self.train_ds.num_classes,
                             **config.defense.options.to_dict())
    self.defense = defense.resolve(load_trained, self.train_ds.image_shape,
                                   config.eval.batch_size)
    self.config = config = _with_resolved_options(config, defense, self.defense)
    model = self.defense.wrap_model(create_model(config.model.name, self.defense.output_width(),
                                                 **config.model.options.to_dict()))
    # Wrapped last, around the defense's heads too: every apply (train step, Network, attacks)
    # then computes in the configured dtype.
    self.model = with_compute_dtype(model, config.model.compute_dtype)
    self.tx = create_optimizer(config.train, self.steps_per_epoch)

  def initial_state(self) -> TrainState:
    devices = self.mesh.shape[parallel.DATA_AXIS]
    # Per-example buffers are split into equal blocks over the devices: round the rows up.
    rows = -(-len(self.train_ds) // devices) * devices
    state = init_train_state(self.model, self.defense, self.tx,
                             jax.random.key(self.config.seed), self.train_ds.image_shape,
                             rows, self.config.train.batch_size)
    return parallel.place(state, state_specs(self.defense), self.mesh)

  def checkpoints(self) -> ExperimentCheckpoints:
    return ExperimentCheckpoints(self.exp_dir, self.config.to_dict(),
                                 self.config.train.checkpoint_every_steps)

  def restore_or_init(self, ckpt: ExperimentCheckpoints) -> TrainState:
    state = self.initial_state()
    restored = ckpt.restore_latest(state.as_dict())
    return state if restored is None else TrainState(**restored)

  def eval_step(self):
    return parallel.data_parallel(make_eval_step(self.model, self.defense), self.mesh,
                                  in_specs=(parallel.REPLICATED, parallel.REPLICATED,
                                            parallel.SHARDED, parallel.REPLICATED),
                                  out_specs=parallel.REPLICATED)


def _with_resolved_options(config, defense: Defense, resolved: Defense):
  """config with the options Defense.resolve derived filled in (e.g. paper 003's Classmap from
  its oracle: the fields it changed, parts with compare=False aside), as a new config when any
  changed."""
  derived = {f.name: getattr(resolved, f.name) for f in dataclasses.fields(resolved)
             if f.compare and getattr(resolved, f.name) != getattr(defense, f.name)}
  if not derived:
    return config
  options = config.defense.options.to_dict()
  for name, value in derived.items():  # Tuples as lists: as config.json stores them.
    options[name] = list(value) if isinstance(value, tuple) else value
  config = ml_collections.ConfigDict(config.to_dict())
  config.defense.options = ml_collections.ConfigDict(options)
  return config


DATA_RECORD = "data.json"


def check_recorded_data(exp_dir: str, identity: dict, other_test_data: bool = False,
                        relabelled: bool = False) -> None:
  """Refuses data other than what the experiment was trained on (recorded in <exp_dir>/data.json
  when training was accepted): a model trained on your own arrays must not be evaluated on the
  config's dataset without a word, nor on other arrays. `other_test_data` allows another test
  set, knowingly; `relabelled` (a distilled proxy, trained on its teacher's labels and loaded
  with the true ones) compares the training images only."""
  path = os.path.join(exp_dir, DATA_RECORD)
  if not os.path.exists(path):
    return
  recorded = read_json(path)
  described = lambda d: (f"{d['examples']} images of shape {tuple(d['image_shape'])}, "
                         f"{d['num_classes']} classes, fingerprint {d['fingerprint']}")
  # (A distilled proxy always trains on arrays, its teacher's labels: its images decide.)
  if recorded.get("source") == "arrays" and identity["source"] != "arrays" and not relabelled:
    raise data_lib.DataError(
        f"{exp_dir} was trained on arrays you passed in (train: {described(recorded['train'])}), "
        f"not on the config's dataset {identity['train']['name']!r}. Pass the same data: "
        "load_experiment(workdir, name, datasets=(train, test)), or evaluate(config, workdir, "
        "datasets=(train, test)).")
  for split in ("train", "test"):
    before, now = recorded[split], identity[split]
    key = "images_fingerprint" if split == "train" and relabelled else "fingerprint"
    if before.get(key) == now[key] or (split == "test" and other_test_data):
      continue
    advice = ("Pass the data it was trained on; a model trained on other data is another "
              "experiment (another experiment_name)." if split == "train" else
              "Pass the test set it was evaluated on, or other_test_data=True to evaluate it "
              "on this one knowingly.")
    raise data_lib.DataError(
        f"{exp_dir} was trained with {split} data {described(before)}, but this run has "
        f"{described(now)}. {advice}")


def record_data(exp_dir: str, identity: dict) -> None:
  """Records which data an accepted training run uses (see check_recorded_data)."""
  path = os.path.join(exp_dir, DATA_RECORD)
  if jax.process_index() == 0 and not os.path.exists(path):
    write_json(path, identity)


# Trained experiments restored from their checkpoints: the model under evaluation, a transfer
# source, or the teacher a proxy is distilled from.

class NoCheckpointError(UserError, FileNotFoundError):
  """An experiment was needed that has not been trained."""


class TrainedExperiment:
  """An Experiment and its latest checkpointed TrainState."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               datasets: Optional[tuple] = None, other_test_data: bool = False):
    # Checked before anything is built or created on disk: evaluating an untrained experiment
    # must leave nothing behind.
    if latest_checkpoint_step(workdir, config.experiment_name) is None:
      raise NoCheckpointError(
          f"no checkpoint under {experiment_dir(workdir, config.experiment_name)}/checkpoints;"
          " train first with --mode=train (same --config and --workdir).")
    self.exp = Experiment(config, workdir, datasets, other_test_data)
    ckpt = self.exp.checkpoints()
    self.state = self.exp.restore_or_init(ckpt)
    ckpt.close()

  def network(self) -> Network:
    """The trained network in inference mode: `net(x)` gives logits (what attacks take)."""
    return Network(self.exp.model, variables(self.state.params, self.state.batch_stats))

  @functools.cached_property
  def fingerprint(self) -> str:
    """Which trained model this is (a digest of its parameters and BatchNorm statistics): part
    of the identity of everything cached from it (detector states, perturbations, examples)."""
    return fingerprint(variables(self.state.params, self.state.batch_stats))

  def cached(self, folder: str, name: str, settings: dict, compute: Callable[[], tuple],
             contract: Callable, **identity) -> dict:
    """Arrays computed from this trained model, `compute() -> (arrays, info)`, cached beside
    its checkpoint (<exp_dir>/<folder>/<name>-<settings hash>-step<N>.npz) and reused only when
    verified (artifact_cache.py: checksum; the settings, checkpoint step, model fingerprint
    and the extra `identity` that produced them; `contract(arrays, info)` -> a problem or
    None); saved by process 0."""
    step = int(self.state.step)
    path = step_artifact_path(self.exp.exp_dir, folder, name, settings, step)
    identity = {**settings, "step": step, "model": self.fingerprint, **identity}
    found = artifact_cache.load(path, identity, contract)
    if found is not None:
      return found.arrays
    arrays, info = compute()
    if jax.process_index() == 0:
      artifact_cache.save(path, arrays, identity, info)
    return arrays


def load_experiment(workdir: str, name: str, like: Optional[ml_collections.ConfigDict] = None,
                    datasets: Optional[tuple] = None,
                    other_test_data: bool = False) -> TrainedExperiment:
  """The experiment `name` of `workdir`, from its saved config.json, upgraded (e.g. in Colab:
  `trained = load_experiment("runs", "standard_mnist_cpu")`, then `trained.network()`). An
  experiment trained on your own arrays needs them again: `datasets=(train, test)`. With
  `like` (the experiment that needs it), it must use the same dataset and takes like's
  number of examples."""
  path = os.path.join(os.path.abspath(workdir), name, "config.json")
  if not os.path.exists(path):
    raise NoCheckpointError(f"experiment {name!r} not found at {path}; train it first.")
  # Saved by the version that trained it: the keys added since are read at their defaults.
  config = ml_collections.ConfigDict(upgrade(read_json(path)))
  if like is None:
    return TrainedExperiment(config, workdir, datasets, other_test_data)
  if config.dataset.name != like.dataset.name:
    raise ValueError(f"experiment {name!r} was trained on {config.dataset.name}, but "
                     f"{like.experiment_name} uses {like.dataset.name}.")
  config.dataset.num_train_examples = like.dataset.num_train_examples
  config.dataset.num_test_examples = like.dataset.num_test_examples
  # A transfer source, teacher or frozen f_b runs in this run's precision (a runtime choice, not
  # part of the trained model).
  config.model.compute_dtype = like.model.compute_dtype
  return TrainedExperiment(config, workdir, datasets)
