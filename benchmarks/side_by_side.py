"""JAX (this library) against PyTorch on the same networks, weights, batch and precision.

Networks (--networks): paper 000's MNIST CNN (models/cnn.py, 28x28x1), the CIFAR ResNet-20 and
ResNet-18 (models/resnet.py, built through the model registry, 32x32x3), 10 classes, on
synthetic images (the cost does not depend on the values) at random weights with random
BatchNorm scales and statistics, so that the parity check covers every layer. Each is ported to
PyTorch with the same weights (benchmarks/references.py, benchmarks/torch_resnet.py); the port
must give our logits to 1e-4 in inference mode (and, for the ResNets, which have no dropout,
in training mode, with batch statistics) on the first 32 images, checked in float32 on the CPU.

Rows, each timed as the median of `repeats` calls after a warm-up (compilation excluded on
both sides):
- PGD-20 and PGD-40, images/s (L-inf; MNIST eps 0.3, step 0.01; CIFAR eps 8/255, step 2/255;
  no random start): ours is `attacks.pgd` under jit (which also keeps each example's best
  iterate); PyTorch's the usual hand-written loop (cross-entropy gradient, signed step,
  projection), eager, eager with channels_last, and with the model under `torch.compile`
  (which also compiles its backward pass); and torchattacks.PGD (same eps, alpha, steps,
  random_start=False: the same loop), eager;
- a Madry adversarial-training step, steps/s: PGD-7 on the network in inference mode, then one
  SGD (momentum 0.9) step in training mode (BatchNorm batch statistics, dropout);
- a clean training step, steps/s.
For ours also: the FLOPs of each compiled function from XLA's cost analysis (loops corrected,
see benchmarks/flops.py), achieved FLOP/s and % of the device's peak at the chosen precision,
and memory (XLA's buffer assignment; on GPU also the allocator's high-water mark). On CUDA,
PyTorch's rows record torch.cuda.max_memory_allocated per row.

Precision (--precision): float32 everywhere (jax 'highest', torch without TF32), tf32 on GPU
(jax 'tensorfloat32', torch's TF32 for matmuls and cuDNN), or bf16: ours with the library's
switch (config.model.compute_dtype=bfloat16, models/precision.py: bfloat16 compute, float32
parameters, optimiser state and logits), PyTorch under torch.autocast(bfloat16) (float32
parameters, bfloat16 convolutions and matmuls). Both sides use every CPU core.

  pip install -r benchmarks/requirements.txt
  python -m benchmarks.side_by_side --networks=mnist_cnn --output=/tmp/side_by_side.json
  python -m benchmarks.run_all --machine=cpu   # every network, sizes for this machine
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import resource
from typing import Callable

from absl import app, flags

from benchmarks import flops as flops_lib
from benchmarks.results_json import write_results
from benchmarks.timing import median_seconds

_NETWORKS = flags.DEFINE_list("networks", ["mnist_cnn", "resnet20", "resnet18"],
                              "Networks to benchmark.")
_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch (every network).")
_BATCH_FOR = flags.DEFINE_list("batch_for", [], "Per-network batch, e.g. resnet18=32.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per row (the median is reported).")
_COMPILE = flags.DEFINE_bool("torch_compile", True, "Also time the model under torch.compile.")
_TORCHATTACKS = flags.DEFINE_bool("torchattacks", True, "Also time torchattacks.PGD.")
_CHANNELS_LAST = flags.DEFINE_bool("channels_last", True, "Also time PyTorch eager channels_last.")
_METRICS = flags.DEFINE_list("metrics", ["pgd20", "pgd40", "madry", "clean"],
                             "The rows to time (a time-limited run can leave some out).")
_PRECISION = flags.DEFINE_enum("precision", "float32", ["float32", "tf32", "bf16"],
                               "float32 on both sides, TF32 tensor cores (GPU), or bfloat16 "
                               "compute (ours: compute_dtype; PyTorch: autocast).")
_CPU_PEAK = flags.DEFINE_float("cpu_peak_gflops", 0.0,
                               "CPU peak GFLOP/s for % of peak; 0: measure an XLA matmul.")
_FLOPS = flags.DEFINE_bool("flops", True, "Cost analysis of our functions (extra compiles).")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch intra-op threads; 0: its default.")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "", "cpu or cuda; empty: cuda if available.")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")

PGD_STEPS, MADRY_STEPS, LR, PARITY_IMAGES = (20, 40), 7, 0.01, 32
METRICS = ("pgd20_img_per_s", "pgd40_img_per_s", "madry_steps_per_s", "clean_steps_per_s")
METRIC_NAMES = {m.split("_")[0]: m for m in METRICS}  # --metrics=pgd20,madry,...
OURS, EAGER, CHANNELS_LAST, COMPILED, TORCHATTACKS = (
    "ours (JAX, jit)", "PyTorch eager", "PyTorch eager, channels_last",
    "PyTorch, torch.compile(model)", "torchattacks.PGD (eager)")


@dataclasses.dataclass(frozen=True)
class Network:
  title: str
  registry_name: str  # models.MODELS
  image_shape: tuple
  eps: float
  step: float
  train_parity: bool  # whether training-mode logits are deterministic (no dropout)


NETWORKS = {
    "mnist_cnn": Network("paper 000 MNIST CNN", "tt_mnist_cnn", (28, 28, 1), 0.3, 0.01, False),
    "resnet20": Network("CIFAR ResNet-20", "resnet20", (32, 32, 3), 8 / 255, 2 / 255, True),
    "resnet18": Network("ResNet-18 (CIFAR stem)", "resnet18", (32, 32, 3), 8 / 255, 2 / 255,
                        True),
}


def torch_builder(name: str, module) -> Callable:
  from benchmarks import references, torch_resnet
  if name == "mnist_cnn":
    return references.torch_mnist_cnn
  return lambda variables: torch_resnet.torch_resnet(module, variables)


def randomize_batchnorm(variables, seed: int = 0):
  """BatchNorm scales U(0.5, 1.5), biases N(0, 0.1), running means N(0, 0.1) and variances
  U(0.5, 1.5): the ResNets' last BN of each block starts at scale 0, which would hide the
  block's residual branch from the parity check."""
  import numpy as np
  from flax import traverse_util
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(variables)
  draw = {"scale": lambda s: rng.uniform(0.5, 1.5, s), "bias": lambda s: rng.normal(0, 0.1, s),
          "mean": lambda s: rng.normal(0, 0.1, s), "var": lambda s: rng.uniform(0.5, 1.5, s)}
  for path, value in flat.items():
    if any(p.startswith("BatchNorm") for p in path) and path[-1] in draw:
      flat[path] = draw[path[-1]](value.shape).astype(np.float32)
  return traverse_util.unflatten_dict(flat)


def parity(name, net, module, variables, x_np):
  """The PyTorch port (on the CPU) after checking its logits, and the gaps measured."""
  import jax
  import jax.numpy as jnp
  from benchmarks import references
  x = x_np[:PARITY_IMAGES]
  build = torch_builder(name, module)
  # Both sides on the CPU in float32 (the port runs there), whatever the default device.
  with jax.default_matmul_precision("highest"), jax.default_device(jax.devices("cpu")[0]):
    model = references.torch_port(lambda z: module.apply(variables, jnp.asarray(z)), variables, x,
                                  build)
    gaps = {"eval_max_abs_logit_gap": references.logits_gap(
        model, lambda z: module.apply(variables, jnp.asarray(z)), x)}
    if net.train_parity:
      train_model = copy.deepcopy(model).train()  # its running statistics get updated
      ours = lambda z: module.apply(variables, jnp.asarray(z), train=True,
                                    mutable=["batch_stats"])[0]
      gaps["train_max_abs_logit_gap"] = references.logits_gap(train_model, ours, x)
      if gaps["train_max_abs_logit_gap"] > references.PARITY_TOLERANCE:
        raise RuntimeError(f"{name}: training-mode logits differ by "
                           f"{gaps['train_max_abs_logit_gap']:.2e}")
  return build, gaps


# ----------------------------------------------------------------------------- ours


def _jax_rows(net, module, variables, x_np, y_np, repeats, peak, with_flops, metrics, rows,
              cost, progress):
  """Fills rows[metric] (units per second) and cost[metric], calling progress() after each."""
  import jax
  import jax.numpy as jnp
  import optax

  from defenses_jax import attacks, parallel

  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  tx = optax.sgd(LR, momentum=0.9)
  device = jax.devices()[0]

  def pgd(variables, x0, labels, steps):
    logits_fn = lambda z: module.apply(variables, z)
    x_adv, _ = attacks.pgd(attacks.as_target(logits_fn), x0, labels, jax.random.key(1),
                           eps=net.eps, step_size=net.step, steps=steps, random_start=False)
    return x_adv

  def train_update(params, batch_stats, opt_state, images, labels, key):
    def loss(p):
      logits, updates = module.apply({"params": p, "batch_stats": batch_stats}, images,
                                     train=True, rngs={"dropout": key}, mutable=["batch_stats"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return ce, updates["batch_stats"]
    grads, new_stats = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  def madry_step(steps):
    def step(params, batch_stats, opt_state, images, labels, key):
      x_adv = pgd({"params": params, "batch_stats": batch_stats}, images, labels, steps)
      return train_update(params, batch_stats, opt_state, x_adv, labels, key)
    return step

  params, stats = variables["params"], variables["batch_stats"]
  train_args = (params, stats, tx.init(params), x, y, jax.random.key(2))
  pgd_args = (variables, x, y)
  # As the library compiles its steps (parallel.data_parallel): a no-op in float32, and in
  # bfloat16 every value rounded where the program says so.
  jit = functools.partial(jax.jit, compiler_options=parallel.COMPILER_OPTIONS)
  compile_pgd = lambda k: jit(lambda v, x0, labels: pgd(v, x0, labels, k)).lower(
      *pgd_args).compile()
  compile_madry = lambda k: jit(madry_step(k)).lower(*train_args).compile()
  n = len(x_np)
  # metric: (compile_with(k) or a compiled function, loop iterations or None, args, units)
  plan = {"pgd20_img_per_s": (compile_pgd, PGD_STEPS[0], pgd_args, n),
          "pgd40_img_per_s": (compile_pgd, PGD_STEPS[1], pgd_args, n),
          "madry_steps_per_s": (compile_madry, MADRY_STEPS, train_args, 1),
          "clean_steps_per_s": (lambda k: jit(train_update).lower(*train_args).compile(),
                                None, train_args, 1)}
  unrolled_counts = {}
  for metric, (compile_with, steps, args, units) in plan.items():
    if metric not in metrics:
      continue
    compiled = compile_with(steps)
    seconds = median_seconds(lambda: jax.block_until_ready(compiled(*args)), repeats)
    rows[metric] = units / seconds
    c = {"seconds": seconds, "compiled_bytes": flops_lib.compiled_bytes(compiled),
         "device_peak_bytes_so_far": flops_lib.device_peak_bytes(device),
         "while_loops_in_hlo": compiled.as_text().count(" while(")}
    if with_flops:
      c.update({"flops": flops_lib.xla_flops(compiled)} if steps is None else
               flops_lib.loop_flops(compile_with, steps, compiled, unrolled_counts))
      c["achieved_flops_per_s"] = c["flops"] / seconds
      if peak.get("flops_per_s"):
        c["pct_of_peak"] = 100 * c["achieved_flops_per_s"] / peak["flops_per_s"]
    cost[metric] = c
    progress()


# ----------------------------------------------------------------------------- PyTorch


def _torch_rows(model, net, x_np, y_np, repeats, device, metrics=METRICS, channels_last=False,
                compiled=False, torchattacks=False, bf16=False):
  import torch
  import torch.nn.functional as F

  from benchmarks import references

  model = model.to(device)
  x = references.to_nchw(x_np).to(device)
  y = torch.as_tensor(y_np, dtype=torch.long, device=device)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  cuda = device.startswith("cuda")
  # bf16: autocast's bfloat16 convolutions and matmuls, float32 parameters and loss.
  precision = lambda: (torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16) if bf16
                       else contextlib.nullcontext())

  def synced(fn):
    def call():
      with precision():
        fn()
      if cuda:
        torch.cuda.synchronize()
    return call
  eps, step = net.eps, net.step
  net_fn = torch.compile(model) if compiled else model

  def pgd_step(z, x0, labels):
    z = z.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net_fn(z), labels), z)
    z = z.detach() + step * grad.sign()
    return torch.min(torch.max(z, x0 - eps), x0 + eps).clamp(0.0, 1.0)

  def pgd(x0, labels, steps):
    model.eval()
    z = x0
    for _ in range(steps):
      z = pgd_step(z, x0, labels)
    return z

  optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)

  def train_update(images, labels):
    model.train()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(net_fn(images), labels).backward()
    optimizer.step()

  n = len(x_np)
  if torchattacks:
    import torchattacks as ta
    attack = lambda k: ta.PGD(model, eps=eps, alpha=step, steps=k, random_start=False)
    plan = {f"pgd{k}_img_per_s": (lambda a=attack(k): a(x, y), n) for k in PGD_STEPS}
  else:
    plan = {f"pgd{k}_img_per_s": (lambda k=k: pgd(x, y, k), n) for k in PGD_STEPS}
    plan["madry_steps_per_s"] = (lambda: train_update(pgd(x, y, MADRY_STEPS), y), 1)
    plan["clean_steps_per_s"] = (lambda: train_update(x, y), 1)
  rows, memory = {}, {}
  for metric, (fn, units) in plan.items():
    if metric not in metrics:
      continue
    if cuda:
      torch.cuda.reset_peak_memory_stats()
    rows[metric] = units / median_seconds(synced(fn), repeats)
    if cuda:
      memory[metric] = torch.cuda.max_memory_allocated()
  return rows, memory


# ----------------------------------------------------------------------------- driver


def batch_sizes(networks, batch, overrides):
  sizes = {name: batch for name in networks}
  for item in overrides:
    name, value = item.split("=")
    if name not in sizes:
      raise ValueError(f"--batch_for names {name!r}, not among --networks {networks}")
    sizes[name] = int(value)
  return sizes


def run(networks, batches, repeats, precision="float32", torch_compile=True, torchattacks=True,
        cpu_peak_gflops=0.0, with_flops=True, torch_threads=0, torch_device="", log=print,
        progress=lambda result: None, metrics=METRICS, channels_last=True):
  """The results dict; `progress(result)` is called with the results so far after each
  implementation's rows (main writes them out: a run cut short by a time limit keeps them)."""
  # On GPU, JAX and PyTorch share the device: JAX allocates as it goes instead of taking 75%.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax
  import numpy as np
  import torch

  from defenses_jax.models import create_model
  from defenses_jax.models.precision import with_compute_dtype

  jax.config.update("jax_default_matmul_precision",
                    {"float32": "highest", "tf32": "tensorfloat32", "bf16": "default"}[precision])
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
  if torch_threads:
    torch.set_num_threads(torch_threads)
  torch_device = torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
  device = jax.devices()[0]
  peak = flops_lib.peak_flops(device, precision, cpu_peak_gflops) if with_flops else {}
  result = {"device": device.device_kind, "platform": device.platform,
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
            "torch_device": torch_device, "torch_threads": torch.get_num_threads(),
            "precision": precision, "repeats": repeats, "peak": peak, "networks": {},
            "metrics": [m for m in METRICS if m in metrics],
            "memory_note": "ours: compiled_bytes = XLA buffer assignment (arguments + outputs "
                           "+ temporaries - aliased); device_peak_bytes_so_far = allocator "
                           "high-water mark of the whole process so far (GPU only). PyTorch: "
                           "torch.cuda.max_memory_allocated per row (CUDA only)."}
  for name in networks:
    net, batch = NETWORKS[name], batches[name]
    log(f"{net.title}, batch {batch} ...")
    module = create_model(net.registry_name, num_outputs=10)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch, *net.image_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    variables = randomize_batchnorm(module.init(jax.random.key(0), x[:1]))
    build, gaps = parity(name, net, module, variables, x)
    timed = with_compute_dtype(module, "bfloat16" if precision == "bf16" else "float32")
    rows, cost, torch_memory = {OURS: {}}, {}, {}
    result["networks"][name] = {
        "title": net.title, "batch": batch, "image_shape": list(net.image_shape),
        "eps": net.eps, "step": net.step, "pgd_steps": list(PGD_STEPS),
        "madry_pgd_steps": MADRY_STEPS, "parity": gaps, "rows": rows, "ours_cost": cost,
        "torch_cuda_peak_bytes": torch_memory if torch_device == "cuda" else None}
    _jax_rows(net, timed, variables, x, y, repeats, peak, with_flops, metrics, rows[OURS], cost,
              lambda: progress(result))
    # The targets' comparisons (eager, compiled) first, for a run cut short by a time limit.
    variants = [(EAGER, {})]
    if torch_compile:
      variants.append((COMPILED, {"compiled": True}))
    if channels_last:
      variants.append((CHANNELS_LAST, {"channels_last": True}))
    if torchattacks:
      variants.append((TORCHATTACKS, {"torchattacks": True}))
    for label, options in variants:
      rows[label], torch_memory[label] = _torch_rows(build(variables), net, x, y, repeats,
                                                     torch_device, metrics,
                                                     bf16=precision == "bf16", **options)
      progress(result)
    log(markdown(result, name))
  # Linux: kilobytes. The whole process (JAX, PyTorch, every network so far).
  result["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return result


HEADS = {"pgd20_img_per_s": "PGD-20 img/s", "pgd40_img_per_s": "PGD-40 img/s",
         "madry_steps_per_s": "Madry-AT steps/s (PGD-7)",
         "clean_steps_per_s": "clean train steps/s"}


def _fmt(value):
  return "" if value is None else f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _mib(b):
  return "" if b is None else f"{b / 2 ** 20:.0f} MiB"


def markdown(result, name) -> str:
  """One table for one network: a row per implementation, its speed (and ours / it), then for
  ours the % of peak and memory per column."""
  r = result["networks"][name]
  rows, cost, ours = r["rows"], r["ours_cost"], r["rows"][OURS]
  metrics = [m for m in result.get("metrics", METRICS) if m in cost]
  heads = [HEADS[m] for m in metrics]
  lines = [f"{r['title']}, batch {r['batch']}, {result['precision']}, {result['device']} "
           f"(logits gap {r['parity']['eval_max_abs_logit_gap']:.1e}):", "",
           "| implementation | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
  for label, row in rows.items():
    cells = []
    for m in metrics:
      v = row.get(m)
      ratio = "" if v is None or row is ours else f" (ours {ours[m] / v:.2f}x)"
      cells.append(_fmt(v) + ratio)
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  if any("pct_of_peak" in c for c in cost.values()):
    lines.append("| ours, % of peak | " + " | ".join(
        f"{cost[m]['pct_of_peak']:.2f}% ({cost[m]['achieved_flops_per_s'] / 1e9:.3g} GFLOP/s)"
        for m in metrics) + " |")
  lines.append("| ours, memory (XLA buffers) | " + " | ".join(
      _mib(cost[m]["compiled_bytes"]) for m in metrics) + " |")
  if any(cost[m]["device_peak_bytes_so_far"] for m in metrics):
    lines.append("| ours, device peak so far | " + " | ".join(
        _mib(cost[m]["device_peak_bytes_so_far"]) for m in metrics) + " |")
  for label, memory in (r["torch_cuda_peak_bytes"] or {}).items():
    lines.append(f"| {label}, CUDA peak | " + " | ".join(_mib(memory.get(m)) for m in metrics)
                 + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  networks = _NETWORKS.value
  unknown = sorted(set(networks) - set(NETWORKS))
  if unknown:
    raise app.UsageError(f"unknown networks {unknown}; choose from {sorted(NETWORKS)}")
  unknown = sorted(set(_METRICS.value) - set(METRIC_NAMES))
  if unknown or not _METRICS.value:
    raise app.UsageError(f"--metrics: unknown {unknown}; choose from {sorted(METRIC_NAMES)}")
  metrics = tuple(METRIC_NAMES[m] for m in _METRICS.value)
  write = lambda result, complete=False: write_results(_OUTPUT.value, result, complete)
  result = run(networks, batch_sizes(networks, _BATCH.value, _BATCH_FOR.value), _REPEATS.value,
               _PRECISION.value, _COMPILE.value, _TORCHATTACKS.value, _CPU_PEAK.value,
               _FLOPS.value, _TORCH_THREADS.value, _TORCH_DEVICE.value, progress=write,
               metrics=metrics, channels_last=_CHANNELS_LAST.value)
  peak = result["peak"]
  if peak.get("flops_per_s"):
    print(f"peak: {peak['flops_per_s'] / 1e9:.4g} GFLOP/s ({peak['source']})")
  elif peak:
    print(f"peak: {peak['source']}")
  write(result, complete=True)
  if _OUTPUT.value:
    print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
