"""FLOPs, peak FLOP/s and memory for the benchmarks' compiled JAX functions.

FLOPs come from XLA's cost analysis of the compiled executable
(`jax.jit(f).lower(...).compile().cost_analysis()`; in jax 0.10 a dict with 'flops',
'transcendentals', 'bytes accessed' and per-operand entries). XLA counts a while loop's body
once, not times its trip count: a fori_loop of 2 and of 40 matmuls report the same flops, one
matmul's (tests/test_benchmarks_side_by_side.py), and our PGD-40 reports PGD-1's flops (paper
000's CNN, batch 4: 2.93e8 for PGD-1, 2.93e8 for PGD-40 instead of about 7.9e9). `loop_flops`
corrects it: it compiles the same function with its fori_loops unrolled (`unrolled_fori_loops`
passes unroll=True to jax.lax.fori_loop while tracing, so no while loop is left) for 1, 2 and 3
iterations, takes flops(2) - flops(1) as one iteration's flops (checking that flops(3) -
flops(2) agrees: the cost is linear in the iterations) and returns flops(1) + (k - 1) *
(flops(2) - flops(1)). (With 0 iterations XLA drops the whole attack: x_adv is then x, so
flops(0) is no baseline.) It also says how XLA counted the k-iteration loop: 'body once' if its
report equals flops(1), 'trip count' if it equals the corrected number. Loops left rolled
elsewhere (jax's threefry on CPU, for dropout masks: a few integer ops per element) are
counted once; they are negligible beside the convolutions.

Peak FLOP/s: a table of dense peaks by device kind and precision (NVIDIA's data sheets, no
sparsity), or for the CPU a flag, or when the flag is 0 a measured XLA float32 matmul (a lower
bound on the peak, as it is XLA's own matmul speed on a machine that may be shared).

Memory: `compiled_bytes` is XLA's buffer assignment for the executable (arguments + outputs +
temporaries - aliased), the same on every backend; on GPU `device_peak_bytes` is also the
device allocator's high-water mark (memory_stats()['peak_bytes_in_use']), which jax cannot
reset, so it is the peak of everything the process ran so far.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional

# Dense peak TFLOP/s by device kind (lower-case substrings of jax's device_kind, most specific
# first) and precision: float32 = the CUDA cores (no tensor cores), tf32 / bf16 = tensor cores.
GPU_PEAK_TFLOPS = (
    ("h100 pcie", {"float32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    ("h100 nvl", {"float32": 60.0, "tf32": 417.5, "bf16": 835.0}),
    ("h100", {"float32": 66.9, "tf32": 494.7, "bf16": 989.4}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("h200", {"float32": 66.9, "tf32": 494.7, "bf16": 989.4}),  # the H100 SXM's compute
    ("a100", {"float32": 19.5, "tf32": 156.0, "bf16": 312.0}),
)


def xla_flops(compiled) -> float:
  """The 'flops' of a compiled executable's XLA cost analysis (a dict, or a list of one dict in
  some jax versions)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


@contextlib.contextmanager
def unrolled_fori_loops():
  """While tracing inside, jax.lax.fori_loop unrolls its loop fully (the trip count must be
  static): for counting FLOPs only. It patches the attribute that `from jax import lax; lax.
  fori_loop(...)` looks up (as defenses_jax.attacks does), nothing else."""
  import jax
  original = jax.lax.fori_loop

  def unrolled(lower, upper, body_fun, init_val, *, unroll=None):
    del unroll
    return original(lower, upper, body_fun, init_val, unroll=True)

  jax.lax.fori_loop = unrolled
  try:
    yield
  finally:
    jax.lax.fori_loop = original


def loop_flops(compile_with: Callable[[int], object], steps: int, compiled=None,
               cache: Optional[dict] = None) -> dict:
  """FLOPs of a function with one fori_loop of `steps` iterations (see the module docstring).
  compile_with(k) traces, lowers and compiles the function with k iterations; `compiled`, if
  given, is compile_with(steps) already built (for the flops XLA reports for it). `cache`
  keeps the unrolled counts per compile_with, for several `steps` of one function."""
  cache = {} if cache is None else cache
  if compile_with not in cache:
    with unrolled_fori_loops():
      cache[compile_with] = tuple(xla_flops(compile_with(k)) for k in (1, 2, 3))
  f1, f2, f3 = cache[compile_with]
  reported = xla_flops(compiled if compiled is not None else compile_with(steps))
  per_iteration = f2 - f1
  corrected = f1 + (steps - 1) * per_iteration
  close = lambda a, b: abs(a - b) <= 1e-3 * max(abs(b), 1.0)
  counting = ("trip count" if close(reported, corrected) else
              "body once" if close(reported, f1) else "unclear")
  return {"flops": corrected, "xla_reported_flops": reported, "flops_1_iteration": f1,
          "flops_per_iteration": per_iteration, "linear_in_iterations": close(f3 - f2,
                                                                              per_iteration),
          "xla_loop_counting": counting}


def compiled_bytes(compiled) -> Optional[int]:
  """XLA's buffer assignment for the executable: arguments + outputs + temporaries - aliased."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def device_peak_bytes(device) -> Optional[int]:
  """The device allocator's high-water mark (GPU/TPU), None where there is none (CPU)."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def measure_matmul_flops(n: int = 2048, repeats: int = 3) -> float:
  """FLOP/s of a jitted float32 n x n matmul on the default device (median of repeats)."""
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / sorted(times)[len(times) // 2]


def peak_flops(device, precision: str, cpu_peak_gflops: float = 0.0) -> dict:
  """{'flops_per_s', 'source'} for the device at this precision ('float32', 'tf32' or 'bf16';
  on the CPU the one measured or given number, whatever the precision)."""
  kind = device.device_kind.lower()
  if device.platform == "cpu":
    if cpu_peak_gflops > 0:
      return {"flops_per_s": cpu_peak_gflops * 1e9, "source": "--cpu_peak_gflops"}
    return {"flops_per_s": measure_matmul_flops(),
            "source": "measured: XLA float32 2048x2048 matmul on this machine (a lower bound "
                      "on the peak; the machine may be shared)"}
  for key, peaks in GPU_PEAK_TFLOPS:
    if key in kind:
      return {"flops_per_s": peaks[precision] * 1e12,
              "source": f"data sheet, {key} dense {precision}",
              "table_tflops": peaks}
  return {"flops_per_s": None, "source": f"no peak known for {device.device_kind!r}"}
