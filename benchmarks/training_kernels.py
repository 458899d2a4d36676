"""The kernels of a training step on XLA CPU: XLA's own rules against models/conv.py's chunked
weight gradient and models/pooling.py's max pool.

Rows (synthetic data and random weights: the cost does not depend on them), each the median of
`repeats` calls of a compiled function:
- the weight gradient of every convolution of paper 000's MNIST CNN and of CIFAR ResNet-20
  (its 3x3 layers; batch 128): XLA's rule (jax.vjp of lax.conv_general_dilated) against ours,
  beside the bare matmul the contraction amounts to;
- for the CNN's second convolution, ours at every chunk size from 1 to 128 images (what
  `_WEIGHT_GRADIENT_CHUNK_FLOATS` was chosen from);
- the gradient of the CNN's 2x2 max pool: nn.max_pool (select-and-scatter) against ours;
- training-mode BatchNorm of the CNN's second layer, forward and gradient, and its 0.25 dropout:
  flax's against models/batch_norm.py's and models/dropout.py's;
- a clean training step (SGD with momentum, BatchNorm batch statistics, dropout) and PGD-20 in
  one compiled loop on the CNN, from flax's kernels only to the library's four, one at a time.

  python -m benchmarks.training_kernels --output=benchmarks/results/training_kernels_cpu.json
"""

from __future__ import annotations

import os

from absl import app, flags

from benchmarks.results_json import write_results
from benchmarks.timing import median_seconds

_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per row (the median is reported).")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")

# (name, input size, in channels, out channels, stride, padding), kernel 3x3.
LAYERS = (
    ("mnist_cnn conv 1", 28, 1, 32, 1, "VALID"),
    ("mnist_cnn conv 2", 26, 32, 64, 1, "VALID"),
    ("resnet20 stage 1", 32, 16, 16, 1, "SAME"),
    ("resnet20 stage 2 (stride 2)", 32, 16, 32, 2, "SAME"),
    ("resnet20 stage 2", 16, 32, 32, 1, "SAME"),
    ("resnet20 stage 3 (stride 2)", 16, 32, 64, 2, "SAME"),
    ("resnet20 stage 3", 8, 64, 64, 1, "SAME"),
)


def _ms(fn, *args):
  import jax
  return 1000 * median_seconds(lambda: jax.block_until_ready(fn(*args)), _REPEATS.value)


def _weight_gradient_rows(n, rng):
  import jax
  import jax.numpy as jnp
  from jax import lax

  from defenses_jax.models import conv as conv_lib
  numbers = ("NHWC", "HWIO", "NHWC")
  rows = []
  for name, size, c_in, c_out, stride, padding in LAYERS:
    x = jnp.asarray(rng.normal(size=(n, size, size, c_in)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, c_in, c_out)), jnp.float32)
    conv = lambda z, k: lax.conv_general_dilated(z, k, (stride, stride), padding,
                                                 dimension_numbers=numbers)
    g = jnp.ones(conv(x, w).shape, jnp.float32)
    xla = jax.jit(lambda z, k, t: jax.vjp(lambda q: conv(z, q), k)[1](t)[0])
    ours = jax.jit(lambda z, k, t: jax.vjp(lambda q: conv_lib._eigen_friendly_conv(
        z, q, (stride, stride), padding, None), k)[1](t)[0])
    gap = float(jnp.abs(xla(x, w, g) - ours(x, w, g)).max() / jnp.abs(xla(x, w, g)).max())
    patches = jnp.asarray(rng.normal(size=(9 * c_in, g.size // c_out)), jnp.float32)
    matmul = jax.jit(lambda a, b: a @ b)
    row = {"layer": name, "xla_ms": _ms(xla, x, w, g), "ours_ms": _ms(ours, x, w, g),
           "bare_matmul_ms": _ms(matmul, patches, g.reshape(-1, c_out)),
           "max_relative_difference": gap}
    row["speedup"] = row["xla_ms"] / row["ours_ms"]
    rows.append(row)
    print(f"weight gradient, {name}: XLA {row['xla_ms']:.1f} ms, ours {row['ours_ms']:.1f} ms "
          f"({row['speedup']:.2f}x), bare matmul {row['bare_matmul_ms']:.1f} ms", flush=True)
  return rows


def _chunk_sweep(n, rng):
  import jax
  import jax.numpy as jnp

  from defenses_jax.models import conv as conv_lib
  x = jnp.asarray(rng.normal(size=(n, 26, 26, 32)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 32, 64)), jnp.float32)
  g = jnp.ones((n, 24, 24, 64), jnp.float32)
  per_image = 26 * 26 * 32 + 24 * 24 * 64
  saved, sweep = conv_lib._WEIGHT_GRADIENT_CHUNK_FLOATS, {}
  try:
    for images in (1, 2, 4, 8, 16, 32, 64, 128):
      conv_lib._WEIGHT_GRADIENT_CHUNK_FLOATS = images * per_image
      f = jax.jit(lambda z, k, t: jax.vjp(lambda q: conv_lib._eigen_friendly_conv(
          z, q, (1, 1), "VALID", None), k)[1](t)[0])
      sweep[images] = _ms(f, x, w, g)
  finally:
    conv_lib._WEIGHT_GRADIENT_CHUNK_FLOATS = saved
  print("chunk sweep (images per chunk: ms): "
        + ", ".join(f"{k}: {v:.1f}" for k, v in sweep.items()) + f"; the default chunk is "
        f"{max(1, saved // per_image)} images", flush=True)
  return {"per_image_floats": per_image, "default_images_per_chunk": max(1, saved // per_image),
          "ms_by_images_per_chunk": sweep}


def _pool_rows(n, rng):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from defenses_jax.models import pooling
  x = jnp.asarray(rng.normal(size=(n, 24, 24, 64)), jnp.float32)
  g = jnp.ones((n, 12, 12, 64), jnp.float32)
  rows = {}
  for name, pool in (("flax nn.max_pool", lambda z: nn.max_pool(z, (2, 2), strides=(2, 2))),
                     ("models.pooling.max_pool", lambda z: pooling.max_pool(z, (2, 2), (2, 2)))):
    backward = jax.jit(lambda z, t, p=pool: jax.vjp(p, z)[1](t)[0])
    rows[name] = {"forward_ms": _ms(jax.jit(pool), x), "gradient_ms": _ms(backward, x, g)}
    print(f"2x2 max pool of {n}x24x24x64, {name}: forward {rows[name]['forward_ms']:.1f} ms, "
          f"gradient {rows[name]['gradient_ms']:.1f} ms", flush=True)
  return rows


def _batch_norm_rows(n, rng):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from defenses_jax.models import batch_norm
  x = jnp.asarray(rng.normal(size=(n, 24, 24, 64)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(n, 24, 24, 64)), jnp.float32)
  rows = {}
  for name, cls in (("flax nn.BatchNorm", nn.BatchNorm),
                    ("models.batch_norm.BatchNorm", batch_norm.BatchNorm)):
    module = cls(use_running_average=False, momentum=0.99)
    variables = module.init(jax.random.key(0), x)
    apply = lambda p, z, m=module, v=variables: m.apply(
        {"params": p, "batch_stats": v["batch_stats"]}, z, mutable=["batch_stats"])
    both = jax.jit(lambda p, z, t, a=apply: jax.vjp(a, p, z, has_aux=True)[1](t))
    rows[name] = {"forward_ms": _ms(jax.jit(apply), variables["params"], x),
                  "forward_and_gradient_ms": _ms(both, variables["params"], x, g)}
    print(f"BatchNorm (training mode) of {n}x24x24x64, {name}: forward "
          f"{rows[name]['forward_ms']:.1f} ms, forward and gradient "
          f"{rows[name]['forward_and_gradient_ms']:.1f} ms", flush=True)
  return rows


def _dropout_rows(n, rng):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from defenses_jax.models import dropout
  x = jnp.asarray(rng.normal(size=(n, 12, 12, 64)), jnp.float32)
  rows = {}
  for name, cls in (("flax nn.Dropout", nn.Dropout), ("models.dropout.Dropout", dropout.Dropout)):
    module = cls(0.25, deterministic=False)
    apply = jax.jit(lambda z, k, m=module: m.apply({}, z, rngs={"dropout": k}))
    rows[name] = {"forward_ms": _ms(apply, x, jax.random.key(0))}
    print(f"dropout 0.25 of {n}x12x12x64, {name}: {rows[name]['forward_ms']:.1f} ms", flush=True)
  return rows


def _step_rows(n, rng):
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import optax

  from defenses_jax.models import batch_norm, cnn, dropout, pooling
  from defenses_jax.models import conv as conv_lib
  x = jnp.asarray(rng.uniform(size=(n, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, n))
  tx = optax.sgd(0.01, momentum=0.9)
  rows = {}
  flax_pool = lambda z, window, strides: nn.max_pool(z, window, strides=strides)
  ours = (conv_lib.Conv, pooling.max_pool, batch_norm.BatchNorm, dropout.Dropout)
  try:
    for name, kernels in (
        ("flax nn.Conv, nn.max_pool, nn.BatchNorm, nn.Dropout",
         (nn.Conv, flax_pool, nn.BatchNorm, nn.Dropout)),
        ("models.conv.Conv, flax's others", (conv_lib.Conv, flax_pool, nn.BatchNorm, nn.Dropout)),
        ("models' Conv and max_pool, flax's others", ours[:2] + (nn.BatchNorm, nn.Dropout)),
        ("models' Conv, max_pool, BatchNorm, flax's Dropout", ours[:3] + (nn.Dropout,)),
        ("models' Conv, max_pool, BatchNorm, Dropout", ours)):
      # The CNN looks them up when it is traced.
      cnn.Conv, cnn.max_pool, cnn.BatchNorm, cnn.Dropout = kernels
      model = cnn.TargetTrainingMnistCNN(num_outputs=10)
      variables = model.init(jax.random.key(1), x)

      def step(params, stats, opt_state, images, labels, key):
        def loss(p):
          logits, new = model.apply({"params": p, "batch_stats": stats}, images, train=True,
                                    rngs={"dropout": key}, mutable=["batch_stats"])
          ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
          return ce, new["batch_stats"]
        grads, stats = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state

      def pgd(v, x0, labels):
        ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(
            model.apply(v, z), labels).mean()
        body = lambda i, z: jnp.clip(jnp.clip(z + 0.01 * jnp.sign(jax.grad(ce)(z)), x0 - 0.3,
                                              x0 + 0.3), 0.0, 1.0)
        return jax.lax.fori_loop(0, 20, body, x0)

      params, stats = variables["params"], variables["batch_stats"]
      step_ms = _ms(jax.jit(step), params, stats, tx.init(params), x, y, jax.random.key(2))
      pgd_ms = _ms(jax.jit(pgd), variables, x, y)
      rows[name] = {"clean_step_ms": step_ms, "clean_steps_per_s": 1000 / step_ms,
                    "pgd20_img_per_s": n * 1000 / pgd_ms}
      print(f"paper 000 CNN, {name}: clean step {step_ms:.1f} ms, PGD-20 "
            f"{rows[name]['pgd20_img_per_s']:.0f} img/s", flush=True)
  finally:
    cnn.Conv, cnn.max_pool, cnn.BatchNorm, cnn.Dropout = ours
  return rows


def main(argv):
  del argv
  import jax
  import numpy as np
  rng = np.random.default_rng(0)
  n = _BATCH.value
  results = {"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
             "jax": jax.__version__, "batch": n, "repeats": _REPEATS.value}
  results["weight_gradients"] = _weight_gradient_rows(n, rng)
  write_results(_OUTPUT.value, results, complete=False)
  results["chunk_sweep_mnist_cnn_conv_2"] = _chunk_sweep(n, rng)
  results["max_pool"] = _pool_rows(n, rng)
  results["batch_norm"] = _batch_norm_rows(n, rng)
  results["dropout"] = _dropout_rows(n, rng)
  write_results(_OUTPUT.value, results, complete=False)
  results["mnist_cnn_step"] = _step_rows(n, rng)
  steps = list(results["mnist_cnn_step"].values())
  base, ours = steps[0], steps[-1]
  results["speedup_clean_step"] = base["clean_step_ms"] / ours["clean_step_ms"]
  results["speedup_pgd20"] = ours["pgd20_img_per_s"] / base["pgd20_img_per_s"]
  print(f"clean step {results['speedup_clean_step']:.2f}x, PGD-20 "
        f"{results['speedup_pgd20']:.2f}x")
  write_results(_OUTPUT.value, results, complete=True)


if __name__ == "__main__":
  app.run(main)
