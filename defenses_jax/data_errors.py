"""The error every data module raises for data that cannot be used as given.

Its own module so that data.py and the loaders it dispatches to (mnist_wheel.py) share one
class without importing each other; callers use it as `data.DataError`.
"""


from defenses_jax.errors import UserError


class DataError(UserError, ValueError):
  """A dataset or batch that cannot be used as given."""
