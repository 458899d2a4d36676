"""The errors that are the user's to fix (a config, the data, a workdir, a run that diverged),
as opposed to bugs. Each says what is wrong and what to do; launch.py prints them as one line,
without a traceback. Library code raises the specific subclass (ConfigError, data.DataError,
checkpoint.CheckpointMismatchError, ...); all are ValueError or OSError as well, so existing
`except ValueError` code keeps working.
"""


class UserError(Exception):
  """Base of the errors a user fixes by changing the command, config, data or workdir."""


class ConfigError(UserError, ValueError):
  """A config (or its command-line override) that cannot work: unknown names, values out of
  range, sizes that do not fit the data."""


class DataError(UserError, ValueError):
  """A dataset or batch that cannot be used as given (raised by data.py, which re-exports it
  as data.DataError, and by the loaders it dispatches to, e.g. mnist_wheel.py)."""


class EvaluationInputError(UserError, ValueError):
  """What robustness.evaluate was given and cannot use: images outside [0, 1], labels that do
  not fit the model, an eps out of range, a model called the wrong way, a detector without
  its threshold."""
