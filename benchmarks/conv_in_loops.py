"""Convolutions inside compiled loops on CPU: flax's nn.Conv against models/conv.py's Conv.

XLA CPU gives a convolution's input gradient its fast (Eigen) kernel layout only outside
loops (see defenses_jax/models/conv.py). This times, on paper 000's MNIST CNN (random weights,
synthetic images: the cost does not depend on them):
- PGD: `steps` signed-gradient steps inside one compiled fori_loop, and the same step compiled
  alone and called `steps` times;
- a Madry adversarial-training step (PGD-7 inside the compiled step, then the weight update);
for both convolutions, and checks that both give the same adversarial examples.

  python -m benchmarks.conv_in_loops                       # batch 128, 28x28, PGD-40
  python -m benchmarks.conv_in_loops --disable_optimizations --batch=8 --size=12 --steps=10
"""

import json
import os

from absl import app, flags

from benchmarks.timing import median_seconds

_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_SIZE = flags.DEFINE_integer("size", 28, "Image height and width (one channel).")
_STEPS = flags.DEFINE_integer("steps", 40, "PGD steps.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per row (the median is reported).")
_DISABLE_OPT = flags.DEFINE_bool("disable_optimizations", False,
                                 "jax_disable_most_optimizations, as the tests run.")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")



def main(argv):
  del argv
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax import lax

  from defenses_jax.models import cnn
  from defenses_jax.models import conv as conv_lib

  jax.config.update("jax_disable_most_optimizations", _DISABLE_OPT.value)
  n, size, steps = _BATCH.value, _SIZE.value, _STEPS.value
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(n, size, size, 1)).astype(np.float32))
  y = jnp.asarray(rng.integers(0, 10, n))
  eps, alpha = 0.3, 0.01
  rows, adversarial = [], {}
  for name, conv in (("flax nn.Conv", nn.Conv), ("models.conv.Conv", conv_lib.Conv)):
    cnn.Conv = conv  # The CNN looks its convolution up when it is traced.
    model = cnn.TargetTrainingMnistCNN(num_outputs=10)
    variables = model.init(jax.random.key(1), x)

    def loss(params, z, labels):
      logits = model.apply({**variables, "params": params}, z)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def pgd_step(params, z, x0, labels):
      z = z + alpha * jnp.sign(jax.grad(loss, 1)(params, z, labels))
      return jnp.clip(jnp.clip(z, x0 - eps, x0 + eps), 0.0, 1.0)

    def pgd(params, x0, labels, k):
      return lax.fori_loop(0, k, lambda i, z: pgd_step(params, z, x0, labels), x0)

    params = variables["params"]
    looped = jax.jit(lambda p, x0, labels: pgd(p, x0, labels, steps))
    one_step = jax.jit(pgd_step)

    def stepwise():
      z = x
      for _ in range(steps):
        z = one_step(params, z, x, y)
      return z.block_until_ready()

    tx = optax.sgd(0.01, momentum=0.9)

    @jax.jit
    def madry_step(p, opt_state, x0, labels):
      x_adv = pgd(p, x0, labels, 7)
      grads = jax.grad(loss)(p, x_adv, labels)
      updates, opt_state = tx.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state

    opt_state = tx.init(params)
    loop_s = median_seconds(lambda: looped(params, x, y).block_until_ready(), _REPEATS.value)
    step_s = median_seconds(stepwise, _REPEATS.value)
    madry_s = median_seconds(
        lambda: jax.block_until_ready(madry_step(params, opt_state, x, y)), _REPEATS.value)
    adversarial[name] = np.asarray(looped(params, x, y))
    rows.append({"convolution": name, "pgd_in_loop_img_per_s": n / loop_s,
                 "pgd_step_by_step_img_per_s": n / step_s, "madry_steps_per_s": 1 / madry_s})
  cnn.Conv = conv_lib.Conv
  base, ours = rows
  result = {
      "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
      "batch": n, "size": size, "pgd_steps": steps,
      "disable_most_optimizations": _DISABLE_OPT.value, "rows": rows,
      "speedup_pgd_in_loop": ours["pgd_in_loop_img_per_s"] / base["pgd_in_loop_img_per_s"],
      "speedup_madry_step": ours["madry_steps_per_s"] / base["madry_steps_per_s"],
      "max_abs_difference_of_examples": float(np.abs(adversarial["flax nn.Conv"] -
                                                     adversarial["models.conv.Conv"]).max()),
  }
  print(f"PGD-{steps}, batch {n}, {size}x{size}, "
        f"{'optimisations off' if _DISABLE_OPT.value else 'XLA defaults'}:")
  print("| convolution | PGD in one loop img/s | PGD step by step img/s | Madry steps/s |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['convolution']} | {r['pgd_in_loop_img_per_s']:.1f} | "
          f"{r['pgd_step_by_step_img_per_s']:.1f} | {r['madry_steps_per_s']:.2f} |")
  print(f"speed-up in the loop {result['speedup_pgd_in_loop']:.2f}x, Madry step "
        f"{result['speedup_madry_step']:.2f}x; largest difference between the two runs' "
        f"examples {result['max_abs_difference_of_examples']:.2g}")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
