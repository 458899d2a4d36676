"""Shared fixtures: tiny configs and data so every test runs in seconds on two CPU cores.

Tests under tests/multidevice/ need 8 fake CPU devices, which must be configured before JAX
starts; test_parallel.py runs them in their own pytest process, so they are not collected here.
"""

import importlib.metadata
import os

import numpy as np
import pytest

# The repository root is on sys.path through pyproject.toml's [tool.pytest.ini_options].
collect_ignore = [] if os.environ.get("DEFENSES_JAX_MULTIDEVICE") else ["multidevice"]

# Test models are tiny: XLA's optimisation passes cost more than they save here. Set in the
# environment (JAX reads it when it is imported), so that the processes tests start (launch.py,
# the notebook's kernel, the multi-device and multi-host runs) compile the same way; an explicit
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 turns the optimisations back on everywhere.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# For the same reason, XLA CPU's older kernel emitters: its MLIR fusion emitters take 2-3x the
# backend compile time, and compiling is most of what these tests do. An XLA_FLAGS that already
# names the option wins. XLA aborts on a flag it does not know, and the option is gone from
# jaxlib 0.11: it is set on the 0.10 series only.
if (importlib.metadata.version("jaxlib").startswith("0.10.")
    and "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", "")):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_cpu_use_fusion_emitters=false").strip()

import jax  # noqa: E402

# The same here, in case a plugin imported JAX before this file ran.
jax.config.update("jax_disable_most_optimizations",
                  os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true"))

from defenses_jax import data as data_lib  # noqa: E402
from experiments.common import base_config  # noqa: E402


def blob_dataset(n: int, size: int = 12, num_classes: int = 4, seed: int = 0,
                 name: str = "blobs") -> data_lib.ArrayDataset:
  """Images whose class is written as a bright square in one quadrant: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, n).astype(np.int32)
  images = rng.uniform(0.0, 0.3, (n, size, size, 1)).astype(np.float32)
  half = size // 2
  for i, label in enumerate(labels):
    r, c = divmod(int(label), 2)
    images[i, r * half:(r + 1) * half, c * half:(c + 1) * half, 0] += 0.6
  return data_lib.ArrayDataset(np.clip(images, 0, 1), labels, num_classes, name)


@pytest.fixture
def blobs():
  return blob_dataset(96, seed=0), blob_dataset(40, seed=1)


def tiny_config(model: str = "lenet", epochs: int = 2, batch_size: int = 16, **train):
  c = base_config()
  c.experiment_name = "tiny"
  c.model.name = model
  c.train.epochs = epochs
  c.train.batch_size = batch_size
  c.train.checkpoint_every_steps = 2
  c.train.log_every_steps = 2
  c.train.progress = False
  # A few steps on toy data may leave a model near chance; the check has its own tests.
  c.train.fail_at_chance = False
  c.eval.batch_size = 16
  for k, v in train.items():
    setattr(c.train, k, v)
  return c


def predicted_other_than_when_rescored(fn, x_adv, reference):
  """Per example, does `fn` predict a class other than `reference` on x_adv when scored as an
  evaluation may score it: one image per call, the whole batch at once, padded to a larger
  batch with copies of the last row (as run_over_dataset pads its last batch), and in reverse
  order. XLA compiles each batch shape to its own program, which may round the same logits
  differently (~1e-6 relative); a reported success must hold in all of them."""
  import jax.numpy as jnp
  f = jax.jit(fn)
  n = x_adv.shape[0]
  logits = {"one per call": jnp.concatenate([f(x_adv[i:i + 1]) for i in range(n)]),
            "whole batch": f(x_adv),
            "padded to 64": f(jnp.concatenate([x_adv, jnp.repeat(x_adv[-1:], 64 - n, 0)]))[:n],
            "reversed": f(x_adv[::-1])[::-1]}
  return {name: np.asarray(jnp.argmax(v, -1) != reference) for name, v in logits.items()}
