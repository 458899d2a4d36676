"""Launches an experiment: absl flags + an ml_collections config file -> a library call.

  python launch.py --config=experiments/standard.py:cpu --workdir=runs
  python launch.py --config=experiments/standard.py:cpu --workdir=runs --mode=eval
  python launch.py --config=experiments/paper_000_target_training/config.py:cpu --workdir=runs  # tables
  python launch.py --config=experiments/paper_000_target_training/config.py:cpu --workdir=runs \
      --mode=publish  # into results/ and the README's findings
  python launch.py --config=experiments/standard.py:full --workdir=gs://bucket/runs \
      --config.train.epochs=30 --jax_distributed

Outputs go to <workdir>/<config.experiment_name>/: checkpoints/, config.json, metrics.jsonl,
results/. A run that finds checkpoints there resumes from the latest one.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/standard.py:cpu", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "runs", "Root directory of all experiments.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval", "report", "publish"],
    "train: train (resuming) then evaluate clean accuracy (a paper suite: also the attacks and "
    "tables); eval: evaluate checkpoints under the config's attacks; report: a suite's tables "
    "from existing results; publish: copy a suite's tables, figures and provenance into "
    "--results_dir and regenerate the README's findings table.")
_RESULTS_DIR = flags.DEFINE_string(
    "results_dir", os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
    "Where --mode=publish puts a suite's results (the README beside it gets the findings).")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (multi-host GPU/TPU).")
_PROFILE_STEPS = flags.DEFINE_string(
    "profile_steps", "", "FIRST,LAST: write a JAX profiler trace of training steps FIRST+1 .. "
    "LAST to <experiment>/profile/ (TensorBoard's profile tab); sets train.profile_steps of the "
    "experiment (of every member of a suite).")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", os.path.expanduser("~/.cache/defenses_jax/xla"),
    "Persistent XLA compilation cache ('' to disable): re-runs skip recompiling.")


def _fail(message: str) -> None:
  """One line on stderr and exit status 1: the user's mistake, not a bug to trace."""
  sys.exit(f"error: {message}")


def _config_argument(argv) -> str:
  """The value of the last --config=FILE[:ARG] in argv ('' if none)."""
  value = ""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value = arg.partition("=")[2]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _parse_flags(argv):
  """absl's flag parsing, with the mistakes a newcomer makes reported in one line before JAX
  starts: a config file that does not exist, an override of a key the config lacks, a config
  argument (scale) the file does not know."""
  config_file = _config_argument(argv).partition(":")[0]
  if config_file and not os.path.isfile(config_file):
    _fail(f"--config: no such file {config_file!r} (e.g. --config=experiments/standard.py:cpu).")
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # An override naming a key the config lacks.
    cause = e.args[0] if e.args else e
    detail = (cause.args[0] if isinstance(cause, KeyError) and cause.args else str(cause))
    overrides = [a.partition("=")[0] for a in argv if a.startswith("--config.")]
    _fail(f"{', '.join(overrides) or '--config'}: the config has no key "
          f"{str(detail).replace(chr(10), '. ')}")
  except flags.Error as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    user = [line for line in lines if line.startswith(("defenses_jax.errors.",
                                                       "defenses_jax.data.DataError"))]
    if user:  # The config file refused its argument: its message, not the traceback.
      _fail(f"--config={_config_argument(argv)}: {user[-1].partition(': ')[2]}")
    raise


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  workdir = os.path.expanduser(_WORKDIR.value)  # '~/runs' as the shell would expand it.
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    _fail(f"--workdir={_WORKDIR.value} is a file, not a directory.")
  import jax  # After flag parsing, so --help stays fast.
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  if _CACHE_DIR.value:
    jax.config.update("jax_compilation_cache_dir", _CACHE_DIR.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  from defenses_jax import distill, evaluation, train
  from defenses_jax.errors import UserError
  from defenses_jax.preemption import Preempted
  from defenses_jax.suites import runner as suite
  config = _CONFIG.value
  if _PROFILE_STEPS.value:
    try:
      first, last = (int(v) for v in _PROFILE_STEPS.value.split(","))
    except ValueError:
      raise app.UsageError(f"--profile_steps takes FIRST,LAST; got {_PROFILE_STEPS.value!r}.")
    for experiment in (config.members.values() if suite.is_suite(config) else [config]):
      experiment.train.profile_steps = (first, last)
  logging.info("config:\n%s", config)
  try:
    result = _run(config, workdir, distill, evaluation, train, suite)
  except Preempted as e:  # SIGTERM: the step's checkpoint is saved; the relaunch resumes.
    logging.warning("%s", e)
    sys.exit(143)  # 128 + SIGTERM, what the scheduler expects of a terminated job.
  except UserError as e:  # A config, data or workdir problem: its message says what to do.
    _fail(str(e))
  if jax.process_index() == 0:
    print(_short_summary(result, workdir))


def _short_summary(result, workdir: str) -> str:
  """What a run ends with: a few lines and where the full results are (not the whole JSON)."""
  from defenses_jax.evaluation import report, results
  if isinstance(result, results.EvalSummary):
    return report.short_summary(result, os.path.join(workdir, result.experiment_name, "results"))
  if isinstance(result, results.TrainSummary):
    seconds = ("" if result.seconds_per_step is None
               else f", {result.seconds_per_step:.3f} s per step")
    return (f"{result.experiment_name}: step {result.final_step}, test accuracy "
            f"{report.pct(result.test_accuracy)}{seconds}\nresults: "
            f"{os.path.join(workdir, result.experiment_name, 'results', 'train.json')}")
  return f"{result['suite']}: tables in {result['tables']}"


def _run(config, workdir, distill, evaluation, train, suite):
  if _MODE.value == "publish":
    if not suite.is_suite(config):
      raise app.UsageError("--mode=publish is for paper suites "
                           "(experiments/paper_00N_<name>/config.py)")
    from defenses_jax.suites import publish
    readme = os.path.join(os.path.dirname(os.path.abspath(_RESULTS_DIR.value)), "README.md")
    folder = publish.publish_suite(config, workdir, _RESULTS_DIR.value, readme)
    return {"suite": config.suite_name, "tables": os.path.join(folder, "tables.md")}
  if suite.is_suite(config):
    result = suite.run_suite(config, workdir, _MODE.value)
  elif _MODE.value == "report":
    raise app.UsageError("--mode=report is for paper suites (experiments/paper_00N_<name>/config.py)")
  elif _MODE.value == "train" and config.distill.teacher:
    result = distill.distill_proxy(config, workdir)
  elif _MODE.value == "train":
    result = train.train_and_evaluate(config, workdir)
  else:
    result = evaluation.evaluate(config, workdir)
  return result


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main, flags_parser=_parse_flags)
