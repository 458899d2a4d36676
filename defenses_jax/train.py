"""The training loop: TrainState, the data-parallel train step, checkpoints, progress, metrics.

Data flow: batches {image, label, index} -> defense.training_batch (inside the compiled step) ->
network -> defense.loss -> gradients averaged over devices -> optimizer. The step is a pure
function of (state, batch, base_key); its randomness is fold_in(base_key, step), so a run resumed
from a checkpoint draws exactly the numbers an uninterrupted run would have drawn.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax import lax

from defenses_jax import data as data_lib
from defenses_jax import parallel
from defenses_jax.checkpoint import ExperimentCheckpoints, experiment_dir
from defenses_jax.defenses import Defense, create_defense
from defenses_jax.models import create_model
from defenses_jax.optim import create_optimizer, l2_penalty
from defenses_jax.progress import MetricsLog, StepTimer, progress_bar


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


def inference_logits_fn(model, params, batch_stats):
  """The network in inference mode (BatchNorm running statistics, no dropout), as attacks see it."""
  return lambda x: model.apply(variables(params, batch_stats), x, train=False)


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
  specs = getattr(defense, "state_specs", lambda: parallel.REPLICATED)()
  return TrainState(step=parallel.REPLICATED, params=parallel.REPLICATED,
                    batch_stats=parallel.REPLICATED, opt_state=parallel.REPLICATED,
                    defense_state=specs)


def make_train_step(model, defense: Defense, tx, l2_weight: float, l2_scope: str):
  """The per-device step; wrap with parallel.data_parallel. Gradients, BatchNorm running
  statistics and metric sums are combined over the `data` axis, so the returned state is the
  same on every device (normalisation itself uses each device's own batch, as under pmap)."""

  def step_fn(state: TrainState, batch: dict, base_key: jax.Array):
    key = jax.random.fold_in(base_key, state.step)
    key = jax.random.fold_in(key, lax.axis_index(parallel.DATA_AXIS))
    batch_key, dropout_key = jax.random.split(key)
    logits_fn = inference_logits_fn(model, state.params, state.batch_stats)
    train_batch, defense_state = defense.training_batch(batch, batch_key, logits_fn,
                                                        state.defense_state)

    def loss_fn(params, images):
      (logits, embedding), mutated = model.apply(
          variables(params, state.batch_stats), images, train=True,
          return_embedding=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"])
      outputs = {"logits": logits, "embedding": embedding}
      loss, sums = defense.loss(outputs, train_batch)
      if l2_weight:
        loss = loss + l2_weight * l2_penalty(params, l2_scope)
      return loss, (sums, mutated.get("batch_stats", {}), outputs)

    # Differentiate a per-device ("varying") copy of the replicated parameters, so that each
    # device gets its own gradient and the average below is explicit, as under pmap. (The
    # gradient with respect to the replicated value itself would already be summed over devices.)
    local_params = lax.pcast(state.params, parallel.DATA_AXIS, to="varying")
    # Free-Adv-style defenses reuse the input gradient of this same backward pass.
    wants_input_gradient = getattr(defense, "needs_input_gradient", False)
    gradients, (sums, batch_stats, outputs) = jax.grad(
        loss_fn, argnums=(0, 1) if wants_input_gradient else (0,), has_aux=True)(
            local_params, train_batch["image"])
    grads = gradients[0]
    input_grad = gradients[1] if wants_input_gradient else None
    if hasattr(defense, "after_step"):
      defense_state = defense.after_step(defense_state, train_batch, outputs, input_grad)
    grads = lax.pmean(grads, parallel.DATA_AXIS)
    batch_stats = lax.pmean(batch_stats, parallel.DATA_AXIS)
    sums = lax.psum(sums, parallel.DATA_AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              batch_stats=batch_stats, opt_state=opt_state,
                              defense_state=defense_state)
    return new_state, sums

  return step_fn


def make_eval_step(model, defense: Defense):
  """Per-device clean-accuracy sums over a (padded, masked) evaluation batch."""

  def eval_fn(params, batch_stats, batch):
    logits = inference_logits_fn(model, params, batch_stats)(batch["image"])
    predictions = jnp.argmax(defense.class_logits(logits), axis=-1)
    sums = {"correct": jnp.sum((predictions == batch["label"]) * batch["mask"]),
            "count": jnp.sum(batch["mask"])}
    return lax.psum(sums, parallel.DATA_AXIS)

  return eval_fn


def evaluate_clean(eval_step, state: TrainState, ds, batch_size: int, mesh) -> float:
  total = {"correct": 0.0, "count": 0.0}
  for batch in data_lib.eval_batches(ds, batch_size, process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    sums = eval_step(state.params, state.batch_stats, parallel.shard_batch(batch, mesh))
    total = jax.tree.map(lambda a, b: a + b, total, sums)
  total = jax.device_get(total)
  return float(total["correct"] / total["count"])


class Experiment:
  """A config resolved into data, model, defense, optimizer and mesh, with inputs validated
  before any compute. Shared by training and evaluation."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               datasets: Optional[tuple] = None):
    self.config = config
    self.exp_dir = experiment_dir(workdir, config.experiment_name)
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
    self.train_ds = train_ds.take(ds_cfg.num_train_examples)
    self.test_ds = test_ds.take(ds_cfg.num_test_examples)
    self.steps_per_epoch = data_lib.steps_per_epoch(len(self.train_ds), config.train.batch_size,
                                                    config.train.replays)
    self.total_steps = self.steps_per_epoch * config.train.epochs
    self.defense = create_defense(config.defense.name, self.train_ds.num_classes,
                                  **config.defense.options.to_dict())
    self.model = create_model(config.model.name, self.defense.output_width(),
                              **config.model.options.to_dict())
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
                                            parallel.SHARDED),
                                  out_specs=parallel.REPLICATED)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       datasets: Optional[tuple] = None,
                       interrupt_at_step: Optional[int] = None) -> dict:
  """Trains (resuming from the latest checkpoint), evaluates clean accuracy every
  `eval.every_epochs`, and returns the final summary (also written to results/train.json).

  `datasets` = (train, test) ArrayDatasets replaces the config's dataset (bring your own data
  from Colab with data.from_arrays); the config's num_*_examples limits still apply.

  `interrupt_at_step` stops abruptly after that global step, with no final checkpoint, as a
  preempted job would; tests use it to check that resuming loses nothing.
  """
  return train(config, workdir, datasets, interrupt_at_step)[1]


def train(config: ml_collections.ConfigDict, workdir: str, datasets: Optional[tuple] = None,
          interrupt_at_step: Optional[int] = None) -> tuple[TrainState, dict]:
  """`train_and_evaluate` that also returns the final TrainState as it is in memory (so that a
  resumed run can be checked against an uninterrupted one without going through the restore
  path under test)."""
  exp = Experiment(config, workdir, datasets)
  ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  start_step = int(state.step)
  specs = state_specs(exp.defense)
  train_step = parallel.data_parallel(
      make_train_step(exp.model, exp.defense, exp.tx, config.train.l2_weight,
                      config.train.l2_scope),
      exp.mesh, in_specs=(specs, parallel.SHARDED, parallel.REPLICATED),
      out_specs=(specs, parallel.REPLICATED), donate_argnums=(0,))
  eval_step = exp.eval_step()
  base_key = parallel.replicate(jax.random.key(config.seed + 1), exp.mesh)
  log = MetricsLog(os.path.join(exp.exp_dir, "metrics.jsonl"))
  bar = progress_bar(exp.total_steps, start_step, enabled=config.train.progress,
                     description=config.experiment_name)
  summary: dict = {"experiment_name": config.experiment_name, "resumed_from_step": start_step}
  step = start_step
  sums = None
  timer = StepTimer()
  monitor = None
  if config.eval.monitor.attack:  # Robust accuracy every epoch (catastrophic overfitting).
    from defenses_jax.evaluate import RobustnessMonitor  # evaluate imports this module.
    monitor = RobustnessMonitor(config, exp)
  for epoch in range(start_step // exp.steps_per_epoch, config.train.epochs):
    for batch in data_lib.train_batches(
        exp.train_ds, config.train.batch_size, config.seed, epoch,
        start_step=step - epoch * exp.steps_per_epoch, process_index=jax.process_index(),
        process_count=jax.process_count(), replays=config.train.replays):
      state, step_sums = train_step(state, parallel.shard_batch(batch, exp.mesh), base_key)
      sums = step_sums if sums is None else jax.tree.map(jnp.add, sums, step_sums)
      step += 1
      timer.after_step(step, state)
      bar.update(1)
      ckpt.save(step, state.as_dict())
      if step % config.train.log_every_steps == 0:
        sums = log.write_train(step, epoch, jax.device_get(sums), bar)
      if interrupt_at_step is not None and step >= interrupt_at_step:
        ckpt.close()
        bar.close()
        return state, {"interrupted_at_step": step}
    if sums is not None:
      sums = log.write_train(step, epoch, jax.device_get(sums), bar)
    if (epoch + 1) % config.eval.every_epochs == 0 or epoch + 1 == config.train.epochs:
      with timer.paused(state):
        accuracy = evaluate_clean(eval_step, state, exp.test_ds, config.eval.batch_size,
                                  exp.mesh)
        robust = {} if monitor is None else {"robust_accuracy": monitor(state)}
      log.write(step=step, epoch=epoch + 1, test_accuracy=accuracy, **robust)
      bar.set_postfix(test_acc=f"{accuracy:.4f}", refresh=False)
      summary["test_accuracy"] = accuracy
  seconds_per_step = timer.seconds_per_step(state)
  if seconds_per_step is None:  # Nothing (or one step) left to train: keep the earlier timing.
    seconds_per_step = _previous_summary(exp.exp_dir).get("seconds_per_step")
  ckpt.save(step, state.as_dict(), force=True)
  ckpt.close()
  bar.close()
  if "test_accuracy" not in summary:  # Training had already finished: just evaluate.
    summary["test_accuracy"] = evaluate_clean(eval_step, state, exp.test_ds,
                                              config.eval.batch_size, exp.mesh)
  summary.update(final_step=step, num_devices=exp.mesh.shape[parallel.DATA_AXIS],
                 num_train_examples=len(exp.train_ds), num_test_examples=len(exp.test_ds),
                 seconds_per_step=seconds_per_step,
                 # Steady-state time of the whole training (compilation and evaluation
                 # excluded), comparable between methods and unaffected by resumption.
                 training_seconds=None if seconds_per_step is None else
                 seconds_per_step * exp.total_steps)
  write_json(os.path.join(exp.exp_dir, "results", "train.json"), summary)
  return state, summary


def _previous_summary(exp_dir: str) -> dict:
  path = os.path.join(exp_dir, "results", "train.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def write_json(path: str, payload: dict) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
