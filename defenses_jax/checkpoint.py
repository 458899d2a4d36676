"""Orbax checkpoints of an experiment under <workdir>/<experiment_name>/checkpoints.

The config that produced the checkpoints is kept beside them as config.json. Restarting with a
config whose model, dataset or defense differ would silently mix two experiments, so it is
refused before anything is restored; config.json is rewritten only once the run has been
accepted (a refused run must not leave its config behind to refuse the correct one).

Each saved step's checksum (checksums.json) is verified on restore: a damaged step is moved
aside to checkpoints/corrupt-<step> and the newest intact step is restored instead.

Saves are synchronous: a failed save raises CheckpointSaveError at the step it was due, and the
process can exit at once. (orbax 0.12's asynchronous writer reports a failure only at the next
save, and leaves non-daemon threads waiting 300 s for signals that never come, so the process
hung for five minutes at exit.) The cost is one blocking write per checkpoint interval.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from defenses_jax.checksum import state_checksums
from defenses_jax.config import upgrade
from defenses_jax.errors import UserError

# Config sections that fix the shape and meaning of the saved state. Changing anything else
# (epochs, logging, evaluation) keeps the checkpoints usable.
IDENTITY_SECTIONS = ("model", "dataset", "defense", "seed", "distill")
# Keys of those sections that say how the state is computed with, not what it is: the saved
# parameters are float32 whatever model.compute_dtype the run used.
_RUNTIME_KEYS = {"model": ("compute_dtype",)}


def _identity(config: dict, section: str):
  value = config.get(section)
  if isinstance(value, dict) and section in _RUNTIME_KEYS:
    value = {k: v for k, v in value.items() if k not in _RUNTIME_KEYS[section]}
  return value


def _optimizer_state_kind(config: dict) -> str:
  """What fixes the shape of the saved optimiser state: the optimiser, and for SGD whether it
  keeps a momentum trace (optim.create_optimizer)."""
  train = config["train"]
  if train["optimizer"] == "sgd":
    return f"train.optimizer='sgd' {'with' if train['momentum'] else 'without'} momentum"
  return f"train.optimizer={train['optimizer']!r}"


class CheckpointMismatchError(UserError, ValueError):
  """The checkpoints on disk belong to a different experiment."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written (disk full, directory read-only, ...)."""


def experiment_dir(workdir: str, experiment_name: str) -> str:
  if not experiment_name or os.sep in experiment_name:
    raise ValueError(f"experiment_name must be a plain directory name; got {experiment_name!r}.")
  return os.path.join(os.path.abspath(workdir), experiment_name)


def step_artifact_path(exp_dir: str, folder: str, name: str, settings: dict, step: int) -> str:
  """<exp_dir>/<folder>/<name>-<settings hash>-step<step>.npz: something computed once from one
  checkpoint step with these settings and cached (a fitted detector, a universal perturbation)."""
  digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
  return os.path.join(exp_dir, folder, f"{name}-{digest[:10]}-step{step}.npz")


def latest_checkpoint_step(workdir: str, experiment_name: str) -> Optional[int]:
  """The newest saved step of an experiment, read from the directory names (no restore)."""
  directory = os.path.join(experiment_dir(workdir, experiment_name), "checkpoints")
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()] if os.path.isdir(
      directory) else []
  return max(steps) if steps else None


def recorded_step_digest(exp_dir: str, step: Optional[int]) -> Optional[str]:
  """A digest of the checksums recorded when checkpoint `step` was saved (checksums.json):
  which saved state this is, read without restoring it. None if none was recorded."""
  path = os.path.join(exp_dir, "checksums.json")
  if step is None or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      recorded = json.load(f).get(str(step))
  except (json.JSONDecodeError, AttributeError):
    return None
  if recorded is None:
    return None
  return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]


# Fixed for the life of an experiment: they define what a step is (which examples, how many per
# epoch), so a run resumed with another value would count epochs and draw batches inconsistently.
FIXED_ON_RESUME = ("batch_size", "replays")


# Output settings: changing them changes nothing about the trained model.
_NOT_TRAINING = ("progress", "tensorboard", "profile_steps", "log_every_steps",
                 "checkpoint_every_steps")


class ExperimentLockedError(UserError, RuntimeError):
  """Another process is training the same experiment in the same workdir."""


@contextlib.contextmanager
def experiment_lock(exp_dir: str):
  """Held while an experiment trains: a second launch of it fails at once with the holder's pid
  instead of racing it for the checkpoints. An advisory flock, released by the kernel when the
  holder exits, however it exits; taken by the first process of a multi-host job only."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(exp_dir, exist_ok=True)
  path = os.path.join(exp_dir, "train.lock")
  with open(path, "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "unknown"
      raise ExperimentLockedError(
          f"{exp_dir} is being trained by another process ({holder}). Wait for it to finish, "
          "or give this run another experiment_name or workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def resume_changes(saved: Optional[dict], config: dict, step: int) -> dict:
  """{'train.<field>': [saved, now]} for the training settings a run resumed at `step` changes.
  Changing a FIXED_ON_RESUME field after step 0 is refused; the others (more epochs, another
  schedule) are allowed and returned, to be recorded with the run."""
  if saved is None or step == 0:
    return {}
  # Through JSON, as the saved config went: a tuple and the list it became compare equal.
  saved, config = (json.loads(json.dumps(upgrade(c))) for c in (saved, config))
  before, now = saved["train"], config["train"]
  changes = {f"train.{k}": [before[k], now[k]] for k in sorted(set(before) & set(now))
             if before[k] != now[k] and k not in _NOT_TRAINING}
  # Not part of the checkpoint's identity (the state is float32 either way), but the steps
  # after it ran in another precision: recorded with the run, allowed.
  dtypes = [c["model"]["compute_dtype"] for c in (saved, config)]
  if dtypes[0] != dtypes[1]:
    changes["model.compute_dtype"] = dtypes
  fixed = [k for k in changes if k.split(".", 1)[1] in FIXED_ON_RESUME]
  if fixed:
    raise CheckpointMismatchError(
        "this experiment has checkpoints up to step " + str(step) + " made with " +
        ", ".join(f"{k}={changes[k][0]!r}" for k in fixed) + "; resuming with " +
        ", ".join(f"{changes[k][1]!r}" for k in fixed) + " would change what a step is (epochs "
        "would be counted wrongly and batches drawn inconsistently). Resume with the old value, "
        "or train under another experiment_name.")
  return changes


class ExperimentCheckpoints:
  """Saves every `save_every_steps` and on request; restores the newest intact step."""

  def __init__(self, exp_dir: str, config: dict, save_every_steps: int, max_to_keep: int = 2):
    self.exp_dir = exp_dir
    self.config = config
    os.makedirs(exp_dir, exist_ok=True)
    self.saved_config = self._read_and_check_config(config)
    self.checkpoint_dir = os.path.join(exp_dir, "checkpoints")
    self._checksums_path = os.path.join(exp_dir, "checksums.json")
    options = ocp.CheckpointManagerOptions(save_interval_steps=max(1, save_every_steps),
                                           max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)  # See above.
    self._manager = ocp.CheckpointManager(self.checkpoint_dir, options=options)
    self._failed = self._closed = False

  def _read_and_check_config(self, config: dict) -> Optional[dict]:
    path = os.path.join(self.exp_dir, "config.json")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      try:
        saved = json.load(f)
      except json.JSONDecodeError as e:
        raise CheckpointMismatchError(
            f"{path} is not valid JSON ({e}); it may have been cut off when a run was "
            "killed. Restore it from the experiment's config, or delete it if the "
            "checkpoints are to be kept with the config of this run.") from e
    # Saved by an earlier version, it lacks the keys added since: they held their defaults.
    saved = upgrade(saved)
    before, now = _optimizer_state_kind(saved), _optimizer_state_kind(config)
    if before != now:
      raise CheckpointMismatchError(
          f"{self.exp_dir} holds checkpoints with the optimiser state of {before}, but this "
          f"run uses {now}: their states differ, so the checkpoints cannot be restored. Use "
          "the optimiser the experiment was trained with, or train under another "
          "experiment_name.")
    for section in IDENTITY_SECTIONS:
      before, now = _identity(saved, section), _identity(config, section)
      if before != now:
        raise CheckpointMismatchError(
            f"{self.exp_dir} holds an experiment with {section}={before!r}, but this run has "
            f"{section}={now!r}. Use another experiment_name or workdir, or delete the old "
            "directory.")
    return saved

  def write_config(self) -> None:
    """Records this run's config beside the checkpoints (call once the run is accepted)."""
    if jax.process_index() == 0:
      _write_json_atomically(os.path.join(self.exp_dir, "config.json"), self.config)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore_latest(self, template: dict) -> Optional[dict]:
    """The newest intact saved state, shaped and sharded like `template`; None if nothing is
    saved. A step whose checksum does not match (or that cannot be read while an older step
    can) is moved to checkpoints/corrupt-<step>, with a warning naming it."""
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    recorded = self._read_checksums()
    failures = []
    for step in steps:
      try:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # noqa: BLE001 - unreadable however it fails, or another model's.
        # Damage inside compressed data surfaces as tensorstore's bare Exception; a state of
        # another shape as ValueError / KeyError. Either way the older step is tried next.
        failures.append((step, f"{type(e).__name__}: {_first_line(e)}"))
        continue
      problem = self._verify(step, state, recorded.get(str(step)))
      if problem is None:
        if failures:
          self._set_aside(failures)
        return state
      failures.append((step, problem))
    if all(reason.startswith(("ValueError", "KeyError")) for _, reason in failures):
      raise CheckpointMismatchError(
          f"no checkpoint step in {self.checkpoint_dir} fits this model: " +
          "; ".join(f"step {s}: {r}" for s, r in failures))
    raise CheckpointMismatchError(
        f"no intact checkpoint in {self.checkpoint_dir}: " +
        "; ".join(f"step {s}: {r}" for s, r in failures) +
        ". Delete the directory to start over.")

  def _verify(self, step: int, state: dict, expected: Optional[dict]) -> Optional[str]:
    if int(state["step"]) != step:
      return f"holds step {int(state['step'])}, not {step}"
    if expected is None:  # Saved before checksums were kept: at least refuse NaN / inf.
      finite = all(bool(np.isfinite(np.asarray(leaf)).all()) for leaf in jax.tree.leaves(state)
                   if np.issubdtype(np.asarray(leaf).dtype, np.floating))
      return None if finite else "non-finite values in the restored state"
    found = state_checksums(state)
    damaged = sorted(path for path in expected if found.get(path) != expected[path])
    return None if not damaged else f"checksum mismatch in {damaged[:3]}"

  def _set_aside(self, failures) -> None:
    """Moves damaged steps out of orbax's sight, so that training re-saves them."""
    for step, reason in failures:
      logging.warning("checkpoint step %d in %s is damaged (%s); restored the newest intact "
                      "step instead and moved it to corrupt-%d.", step, self.checkpoint_dir,
                      reason, step)
      print(f"warning: checkpoint step {step} is damaged ({reason}); resuming from an older "
            f"step. The damaged one is kept at {self.checkpoint_dir}/corrupt-{step}.",
            flush=True)
    if jax.process_index() == 0:
      for step, _ in failures:
        os.replace(os.path.join(self.checkpoint_dir, str(step)),
                   os.path.join(self.checkpoint_dir, f"corrupt-{step}"))
    self._manager.reload()

  def _read_checksums(self) -> dict:
    if not os.path.exists(self._checksums_path):
      return {}
    with open(self._checksums_path) as f:
      try:
        return json.load(f)
      except json.JSONDecodeError:
        return {}  # Cut off by a kill: verify what can be verified (finiteness).

  def save(self, step: int, state: dict, force: bool = False) -> bool:
    """Saves if `step` is due (every save_every_steps) or `force`; a step already on disk is
    never written twice. Raises CheckpointSaveError if the write fails."""
    try:
      if step in self._manager.all_steps() or not (force or self._manager.should_save(step)):
        return False
      checksums = state_checksums(state)  # Of the state in memory, before it is written.
      saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    except Exception as e:  # noqa: BLE001 - any failure to write is reported the same way.
      self._fail(step, e)
    if saved and jax.process_index() == 0:
      recorded = self._read_checksums()
      recorded = {s: c for s, c in recorded.items() if int(s) in self._manager.all_steps()}
      recorded[str(step)] = checksums
      _write_json_atomically(self._checksums_path, recorded)
    return saved

  def _fail(self, step, error) -> None:
    self._failed = True
    raise CheckpointSaveError(
        f"saving checkpoint step {step} to {self.checkpoint_dir} failed: {error}. Training "
        "stopped so that no more steps are lost; fix the directory (space, permissions) and "
        "relaunch to resume from the last saved step.") from error

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    if self._failed or self._closed:  # Nothing more will be written: let go without waiting.
      return
    self._closed = True
    self._manager.wait_until_finished()
    self._manager.close()


def _first_line(error: Exception, limit: int = 300) -> str:
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _write_json_atomically(path: str, value) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)
