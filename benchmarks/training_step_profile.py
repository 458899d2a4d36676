"""Where a clean training step of paper 000's MNIST CNN spends its time: ours against PyTorch.

Both sides run the same step (batch 128, SGD with momentum, BatchNorm batch statistics, both
dropouts) `steps` times under their profilers, on the CPU, and print the time per step of each
layer and direction:
- ours: jax.profiler's trace of the compiled step; each XLA op is attributed, through the
  compiled HLO's metadata, to the flax module it came from (Conv_1, BatchNorm_0, ...) and to
  the forward or backward pass (autodiff's `transpose(jvp(...))`);
- PyTorch (eager): torch.profiler's self time per aten op.

  python -m benchmarks.training_step_profile --output=benchmarks/results/training_step_profile_cpu.json

The totals are op time; a step's wall time adds dispatch and, for XLA, waiting between ops.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile

from absl import app, flags

from benchmarks.results_json import write_results

_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_STEPS = flags.DEFINE_integer("steps", 10, "Profiled steps (after 3 warm-up steps).")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")
_TORCH = flags.DEFINE_bool("torch", True, "Profile the PyTorch port as well.")

_PART = re.compile(r"/((?:Conv|BatchNorm|Dropout|Dense)_\d|max_pool)/")


def _layer(op_name: str) -> str:
  """'Conv_1 backward' from an HLO op's metadata op_name; the optimizer and loss otherwise."""
  where = "backward" if "transpose(" in op_name else "forward"
  if "relu" in op_name:
    return f"ReLU {where}"
  part = _PART.search(op_name)
  return f"{part.group(1)} {where}" if part else "loss, optimizer, other"


def _ours(x_np, y_np, steps):
  import jax
  import jax.numpy as jnp
  import optax

  from defenses_jax.models import cnn
  model = cnn.TargetTrainingMnistCNN(num_outputs=10)
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  tx = optax.sgd(0.01, momentum=0.9)
  variables = model.init(jax.random.key(1), x)

  def step(params, stats, opt_state, images, labels, key):
    def loss(p):
      logits, new = model.apply({"params": p, "batch_stats": stats}, images, train=True,
                                rngs={"dropout": key}, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new
    grads, new = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new["batch_stats"], opt_state

  args = (variables["params"], variables["batch_stats"], tx.init(variables["params"]), x, y,
          jax.random.key(2))
  compiled = jax.jit(step).lower(*args).compile()
  op_names = dict(re.findall(r"%([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]+)\"",
                             compiled.as_text()))
  for _ in range(3):
    jax.block_until_ready(compiled(*args))
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      jax.block_until_ready(compiled(*args))
    jax.profiler.stop_trace()
    trace = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    with gzip.open(trace[-1]) as f:
      events = json.load(f)["traceEvents"]
  totals = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event.get("name") in op_names:
      totals[_layer(op_names[event["name"]])] += event["dur"] / 1000 / steps
  return dict(totals.most_common())


def _pytorch(x_np, y_np, steps):
  import jax
  import torch
  import torch.nn.functional as F

  from benchmarks import references
  from defenses_jax.models import cnn
  variables = cnn.TargetTrainingMnistCNN(num_outputs=10).init(jax.random.key(1), x_np)
  model = references.torch_mnist_cnn(variables).train()
  x, y = references.to_nchw(x_np), torch.as_tensor(y_np, dtype=torch.long)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

  def step():
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()

  for _ in range(3):
    step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
    for _ in range(steps):
      step()
  totals = {e.key: e.self_cpu_time_total / 1000 / steps for e in profiler.key_averages()}
  return dict(sorted(((k, v) for k, v in totals.items() if v >= 0.05), key=lambda kv: -kv[1]))


def main(argv):
  del argv
  import jax
  import numpy as np
  rng = np.random.default_rng(0)
  n = _BATCH.value
  x = rng.uniform(size=(n, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, n)
  results = {"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
             "jax": jax.__version__, "batch": n, "steps": _STEPS.value,
             "ours_ms_per_step": _ours(x, y, _STEPS.value)}
  print(f"ours (JAX {jax.__version__}), op time per step by layer:")
  for name, ms in results["ours_ms_per_step"].items():
    print(f"  {ms:7.2f} ms  {name}")
  print(f"  {sum(results['ours_ms_per_step'].values()):7.2f} ms  total")
  if _TORCH.value:
    import torch
    results["torch"] = torch.__version__
    results["pytorch_ms_per_step"] = _pytorch(x, y, _STEPS.value)
    print(f"PyTorch {torch.__version__} eager, self time per step by op:")
    for name, ms in results["pytorch_ms_per_step"].items():
      print(f"  {ms:7.2f} ms  {name}")
    print(f"  {sum(results['pytorch_ms_per_step'].values()):7.2f} ms  total")
  write_results(_OUTPUT.value, results, complete=True)


if __name__ == "__main__":
  app.run(main)
