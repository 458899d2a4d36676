"""The training loop: the data-parallel train step, checkpoints, progress, metrics.

Data flow: batches {image, label, index} -> defense.training_batch (inside the compiled step) ->
network -> defense.loss -> gradients averaged over devices -> optimizer. The step is a pure
function of (state, batch, base_key); its randomness is fold_in(base_key, step), so a run resumed
from a checkpoint draws exactly the numbers an uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from defenses_jax import data as data_lib
from defenses_jax import parallel
from defenses_jax.checkpoint import ExperimentCheckpoints, experiment_lock, resume_changes
from defenses_jax.defenses import Defense, Network
from defenses_jax.evaluation.monitor import RobustnessMonitor
from defenses_jax.evaluation.report import mark_if_stale
from defenses_jax.evaluation.preflight import check_evaluation
from defenses_jax.preemption import PreemptionWatch, Preempted
from defenses_jax.experiment import (Experiment, TrainState, evaluate_clean, record_data,
                                     state_specs, variables)
from defenses_jax.evaluation import results
from defenses_jax.evaluation.results import TrainSummary
from defenses_jax.optim import l2_penalty, learning_rate_schedule
from defenses_jax.progress import MetricsLog, StepTimer, TrainingDiverged, progress_bar


def make_train_step(model, defense: Defense, tx, l2_weight: float, l2_scope: str):
  """The per-device step; wrap with parallel.data_parallel. Gradients, BatchNorm running
  statistics and metric sums are combined over the `data` axis, so the returned state is the
  same on every device (normalisation itself uses each device's own batch, as under pmap)."""

  def step_fn(state: TrainState, batch: dict, base_key: jax.Array):
    key = jax.random.fold_in(base_key, state.step)
    key = jax.random.fold_in(key, lax.axis_index(parallel.DATA_AXIS))
    batch_key, dropout_key = jax.random.split(key)
    # The network in inference mode, for defenses that craft examples during training.
    logits_fn = Network(model, variables(state.params, state.batch_stats))
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
    wants_input_gradient = defense.needs_input_gradient
    gradients, (sums, batch_stats, outputs) = jax.grad(
        loss_fn, argnums=(0, 1) if wants_input_gradient else (0,), has_aux=True)(
            local_params, train_batch["image"])
    grads = gradients[0]
    input_grad = gradients[1] if wants_input_gradient else None
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       datasets: Optional[tuple] = None,
                       interrupt_at_step: Optional[int] = None) -> TrainSummary:
  """Trains (resuming from the latest checkpoint), evaluates clean accuracy every
  `eval.every_epochs`, and returns the final summary (also written to results/train.json).

  `datasets` = (train, test) ArrayDatasets replaces the config's dataset (bring your own data
  from Colab with data.from_arrays); the config's num_*_examples limits still apply.

  `interrupt_at_step` stops abruptly after that global step, with no final checkpoint, as a
  preempted job would; tests use it to check that resuming loses nothing.
  """
  return train(config, workdir, datasets, interrupt_at_step)[1]


def train(config: ml_collections.ConfigDict, workdir: str, datasets: Optional[tuple] = None,
          interrupt_at_step: Optional[int] = None, sigterm_at_step: Optional[int] = None
          ) -> tuple[TrainState, TrainSummary]:
  """`train_and_evaluate` that also returns the final TrainState as it is in memory (so that a
  resumed run can be checked against an uninterrupted one without going through the restore
  path under test). On SIGTERM it saves the current step and raises preemption.Preempted;
  `sigterm_at_step` (tests) sends this process SIGTERM after that step."""
  with PreemptionWatch() as preemption, contextlib.ExitStack() as held:
    return _train(config, workdir, datasets, interrupt_at_step, sigterm_at_step, preemption,
                  held)


@dataclasses.dataclass
class _Run:
  """What one training run holds while it trains (the stages of _train share it)."""
  config: ml_collections.ConfigDict
  exp: Experiment
  ckpt: ExperimentCheckpoints
  log: MetricsLog
  train_step: Callable
  eval_step: Callable
  base_key: jax.Array
  learning_rate: Callable
  monitor: Optional[RobustnessMonitor]
  bar: Any = None
  timer: StepTimer = dataclasses.field(default_factory=StepTimer)

  def log_train(self, step: int, epoch: int, sums):
    """Logs the mean loss since the last log (raises TrainingDiverged); returns None."""
    return self.log.write_train(step, epoch, jax.device_get(sums), self.bar,
                                learning_rate=float(self.learning_rate(step - 1)))

  def test_accuracy(self, state) -> float:
    return evaluate_clean(self.eval_step, state, self.exp.test_ds, self.config.eval.batch_size,
                          self.exp.mesh)


def _train(config, workdir, datasets, interrupt_at_step, sigterm_at_step, preemption, held):
  """Training in stages: check and accept the run, resume or initialise, train epoch by epoch,
  then check the outcome and write results/train.json. A diverged run writes train.json with
  `diverged` and raises TrainingDiverged."""
  run, state = _start(config, workdir, datasets, held)
  summary = TrainSummary(config.experiment_name, resumed_from_step=int(state.step))
  try:
    state, interrupted = _train_epochs(run, state, summary, interrupt_at_step, sigterm_at_step,
                                       preemption)
    if interrupted:
      summary.interrupted_at_step = int(state.step)
      return state, summary
    return state, _finish(run, state, summary)
  except TrainingDiverged as e:
    if summary.final_step is None:
      summary.final_step = run.log.last_step
    summary.diverged = str(e)
    results.write(results.train_path(run.exp.exp_dir), summary)
    run.log.write(step=summary.final_step, diverged=str(e))
    run.ckpt.close()
    run.bar.close()
    raise


def _start(config, workdir, datasets, held) -> tuple[_Run, TrainState]:
  """Checks everything before any compute (config, data, attacks), takes the experiment's
  lock, restores the newest intact checkpoint (or initialises) and records the accepted run."""
  exp = Experiment(config, workdir, datasets)
  # The evaluation's settings are checked before training: a typo must not wait for the end.
  check_evaluation(config, exp.defense, len(exp.test_ds))
  # Validated: now the experiment directory is ours until training returns or fails.
  held.enter_context(experiment_lock(exp.exp_dir))
  ckpt = exp.checkpoints()
  state = exp.restore_or_init(ckpt)
  start_step = int(state.step)
  changed = resume_changes(ckpt.saved_config, ckpt.config, start_step)
  ckpt.write_config()  # Only now: the run is accepted.
  record_data(exp.exp_dir, exp.data_identity)
  specs = state_specs(exp.defense)
  train_step = parallel.data_parallel(
      make_train_step(exp.model, exp.defense, exp.tx, config.train.l2_weight,
                      config.train.l2_scope),
      exp.mesh, in_specs=(specs, parallel.SHARDED, parallel.REPLICATED),
      out_specs=(specs, parallel.REPLICATED), donate_argnums=(0,))
  log = MetricsLog(os.path.join(exp.exp_dir, "metrics.jsonl"),
                   tensorboard_dir=os.path.join(exp.exp_dir, "tensorboard")
                   if config.train.tensorboard else None,
                   divergence_factor=config.train.divergence_factor)
  log.forget_after(start_step)  # Steps logged after the checkpoint are about to be re-run.
  if changed:
    log.write(step=start_step, resumed_with_changes=changed)
  run = _Run(config, exp, ckpt, log, train_step, exp.eval_step(),
             parallel.replicate(jax.random.key(config.seed + 1), exp.mesh),
             learning_rate_schedule(config.train, exp.steps_per_epoch),
             # Robust accuracy every epoch (catastrophic overfitting).
             RobustnessMonitor(config, exp) if config.eval.monitor.attack else None)
  run.bar = progress_bar(exp.total_steps, start_step, enabled=config.train.progress,
                         description=config.experiment_name)
  return run, state


def _train_epochs(run: _Run, state, summary: TrainSummary, interrupt_at_step, sigterm_at_step,
                  preemption) -> tuple[TrainState, bool]:
  """The epochs left to train: steps, checkpoints, logs and a clean test accuracy every
  eval.every_epochs (in summary). Returns (state, interrupted)."""
  config, exp = run.config, run.exp
  profile, tracing = tuple(config.train.profile_steps), False
  step = int(state.step)
  sums = None
  for epoch in range(step // exp.steps_per_epoch, config.train.epochs):
    for batch in data_lib.train_batches(
        exp.train_ds, config.train.batch_size, config.seed, epoch,
        start_step=step - epoch * exp.steps_per_epoch, process_index=jax.process_index(),
        process_count=jax.process_count(), replays=config.train.replays):
      if profile and step == profile[0]:  # A trace of steps first+1 .. last, for TensorBoard.
        jax.profiler.start_trace(os.path.join(exp.exp_dir, "profile"))
        tracing = True
      state, step_sums = run.train_step(state, parallel.shard_batch(batch, exp.mesh),
                                        run.base_key)
      sums = step_sums if sums is None else jax.tree.map(jnp.add, sums, step_sums)
      if step == 0:  # The initial parameters' loss: the divergence check's reference.
        run.log.write_initial_loss(jax.device_get(step_sums))
      step += 1
      if tracing and step == profile[1]:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        tracing = False
      run.timer.after_step(step, state)
      run.bar.update(1)
      run.ckpt.save(step, state.as_dict())
      if step % config.train.log_every_steps == 0:
        sums = run.log_train(step, epoch, sums)
      if interrupt_at_step is not None and step >= interrupt_at_step:
        run.ckpt.close()
        run.bar.close()
        return state, True
      if sigterm_at_step is not None and step == sigterm_at_step:
        os.kill(os.getpid(), signal.SIGTERM)
      if preemption.requested(step):
        run.ckpt.save(step, state.as_dict(), force=True)
        run.ckpt.close()  # Waits for the save to finish.
        run.bar.close()
        run.log.write(step=step, epoch=epoch, preempted=True)
        raise Preempted(step)
    if sums is not None:
      sums = run.log_train(step, epoch, sums)
    if (epoch + 1) % config.eval.every_epochs == 0 or epoch + 1 == config.train.epochs:
      with run.timer.paused(state):
        accuracy = run.test_accuracy(state)
        robust = {} if run.monitor is None else {"robust_accuracy": run.monitor(state)}
      run.log.write(step=step, epoch=epoch + 1, test_accuracy=accuracy, **robust)
      run.bar.set_postfix(test_acc=f"{accuracy:.4f}", refresh=False)
      summary.test_accuracy = accuracy
  return state, False


def _finish(run: _Run, state, summary: TrainSummary) -> TrainSummary:
  """The final checkpoint and results/train.json; raises TrainingDiverged (after writing it)
  if the trained model is no better than chance."""
  exp, step = run.exp, int(state.step)
  seconds_per_step = run.timer.seconds_per_step(state)
  if seconds_per_step is None:  # Nothing (or one step) left to train: keep the earlier timing.
    previous = results.read_train(exp.exp_dir, "its training time is not carried over")
    seconds_per_step = None if previous is None else previous.seconds_per_step
  run.ckpt.save(step, state.as_dict(), force=True)
  run.ckpt.close()
  run.bar.close()
  if summary.test_accuracy is None:  # Training had already finished: just evaluate.
    summary.test_accuracy = run.test_accuracy(state)
  summary.final_step, summary.num_devices = step, exp.mesh.shape[parallel.DATA_AXIS]
  summary.num_train_examples, summary.num_test_examples = len(exp.train_ds), len(exp.test_ds)
  summary.seconds_per_step = seconds_per_step
  # Steady-state time of the whole training (compilation and evaluation excluded),
  # comparable between methods and unaffected by resumption.
  summary.training_seconds = (None if seconds_per_step is None
                              else seconds_per_step * exp.total_steps)
  if run.config.train.fail_at_chance:
    problem = chance_level(summary.test_accuracy, exp.test_ds.labels,
                           exp.test_ds.num_classes)
    if problem:
      raise TrainingDiverged(
          f"{exp.exp_dir}: after {step} steps the test accuracy is {problem}: the model "
          "learnt nothing (a learning rate too high or too low, labels that do not match the "
          "images, ...). Fix the cause and train again in a fresh experiment directory "
          "(train.fail_at_chance=False keeps such a model without this error).")
  results.write(results.train_path(exp.exp_dir), summary)
  if jax.process_index() == 0:
    mark_if_stale(os.path.join(exp.exp_dir, "results"), step)
  return summary


def chance_level(accuracy: float, labels: np.ndarray, num_classes: int) -> Optional[str]:
  """A sentence if `accuracy` on a test set with these labels is within noise of what always
  predicting its most frequent class gives (3 binomial standard errors above it), else None."""
  counts = np.bincount(np.asarray(labels), minlength=num_classes)
  share = float(counts.max() / counts.sum())
  limit = share + 3 * math.sqrt(share * (1 - share) / counts.sum())
  if accuracy > limit:
    return None
  return (f"{accuracy:.4f}, no better than chance ({share:.4f} by always predicting the most "
          f"frequent class; {limit:.4f} is 3 standard errors above it on {counts.sum()} test "
          "images)")
