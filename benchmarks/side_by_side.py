"""JAX (this library) against PyTorch on the same network, weights, batch and precision.

The network is paper 000's MNIST CNN (models/cnn.py; benchmarks/references.py ports it to
PyTorch and checks that the logits agree), at random initial weights on 28x28 synthetic images:
the cost does not depend on the values. Rows, each timed as the median of `repeats` calls
after a warm-up (compilation excluded on both sides):
- PGD-40 (L-inf 0.3, step 0.01, no random start): ours is `attacks.pgd` under jit; PyTorch's
  the usual hand-written loop (cross-entropy gradient, signed step, projection), eager, eager
  with channels_last, and with the model under `torch.compile` (which also compiles its
  backward pass). Ours also keeps each example's best iterate, which the PyTorch loop does not;
- a Madry adversarial-training step: PGD-7 on the network in inference mode, then one SGD
  (momentum 0.9) step in training mode (BatchNorm batch statistics, dropout);
- a clean training step.
Both sides use float32 and every CPU core (torch's intra-op threads: its default).

  pip install -r benchmarks/requirements.txt
  python -m benchmarks.side_by_side --output=benchmarks/results/side_by_side_cpu.json
"""

import json
import os

from absl import app, flags

from benchmarks.timing import median_seconds

_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per row (the median is reported).")
_COMPILE = flags.DEFINE_bool("torch_compile", True, "Also time the model under torch.compile.")
_OUTPUT = flags.DEFINE_string("output", "", "Write the results JSON here as well.")

EPS, STEP, PGD_STEPS, MADRY_STEPS, LR = 0.3, 0.01, 40, 7, 0.01



def _jax_rows(x_np, y_np, repeats):
  import jax
  import jax.numpy as jnp
  import optax

  from defenses_jax import attacks
  from defenses_jax.models import cnn

  model = cnn.TargetTrainingMnistCNN(num_outputs=10)
  variables = model.init(jax.random.key(0), x_np[:1])
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  tx = optax.sgd(LR, momentum=0.9)

  def pgd(variables, x0, labels, steps):
    logits_fn = lambda z: model.apply(variables, z)
    x_adv, _ = attacks.pgd(logits_fn, x0, labels, jax.random.key(1), eps=EPS, step_size=STEP,
                           steps=steps, random_start=False)
    return x_adv

  def train_update(params, batch_stats, opt_state, images, labels, key):
    def loss(p):
      logits, updates = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                    train=True, rngs={"dropout": key}, mutable=["batch_stats"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return ce, updates["batch_stats"]
    grads, new_stats = jax.grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state

  pgd40 = jax.jit(lambda v, x0, labels: pgd(v, x0, labels, PGD_STEPS))

  @jax.jit
  def madry_step(params, batch_stats, opt_state, images, labels, key):
    x_adv = pgd({"params": params, "batch_stats": batch_stats}, images, labels, MADRY_STEPS)
    return train_update(params, batch_stats, opt_state, x_adv, labels, key)

  clean_step = jax.jit(train_update)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  key = jax.random.key(2)
  n = len(x_np)
  return variables, {
      "pgd40_img_per_s": n / median_seconds(
          lambda: pgd40(variables, x, y).block_until_ready(), repeats),
      "madry_steps_per_s": 1 / median_seconds(
          lambda: jax.block_until_ready(madry_step(params, stats, opt_state, x, y, key)),
          repeats),
      "clean_steps_per_s": 1 / median_seconds(
          lambda: jax.block_until_ready(clean_step(params, stats, opt_state, x, y, key)),
          repeats),
  }


def _torch_rows(model, x_np, y_np, repeats, channels_last=False, compiled=False):
  import torch
  import torch.nn.functional as F

  from benchmarks import references

  x, y = references.to_nchw(x_np), torch.as_tensor(y_np, dtype=torch.long)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)

  def pgd_step(z, x0, labels):
    z = z.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(z), labels), z)
    z = z.detach() + STEP * grad.sign()
    return torch.min(torch.max(z, x0 - EPS), x0 + EPS).clamp(0.0, 1.0)

  net = torch.compile(model) if compiled else model

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
    F.cross_entropy(net(images), labels).backward()
    optimizer.step()

  n = len(x_np)
  return {
      "pgd40_img_per_s": n / median_seconds(lambda: pgd(x, y, PGD_STEPS), repeats),
      "madry_steps_per_s": 1 / median_seconds(
          lambda: train_update(pgd(x, y, MADRY_STEPS), y), repeats),
      "clean_steps_per_s": 1 / median_seconds(lambda: train_update(x, y), repeats),
  }


def main(argv):
  del argv
  import jax
  import numpy as np
  import torch

  from benchmarks import references

  rng = np.random.default_rng(0)
  x = rng.uniform(size=(_BATCH.value, 28, 28, 1)).astype(np.float32)
  y = rng.integers(0, 10, _BATCH.value).astype(np.int32)
  variables, ours = _jax_rows(x, y, _REPEATS.value)
  from defenses_jax.models import cnn
  model = cnn.TargetTrainingMnistCNN(num_outputs=10)
  port = lambda: references.torch_port(lambda z: model.apply(variables, z), variables, x)
  rows = {"ours (JAX, jit)": ours,
          "PyTorch eager": _torch_rows(port(), x, y, _REPEATS.value),
          "PyTorch eager, channels_last": _torch_rows(port(), x, y, _REPEATS.value,
                                                      channels_last=True)}
  if _COMPILE.value:
    rows["PyTorch, torch.compile(model)"] = _torch_rows(port(), x, y, _REPEATS.value,
                                                        compiled=True)
  result = {"device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "jax": jax.__version__,
            "torch_threads": torch.get_num_threads(), "batch": _BATCH.value, "rows": rows}
  print(f"paper 000 MNIST CNN, batch {_BATCH.value}, float32, {jax.devices()[0].device_kind}:")
  print("| implementation | PGD-40 img/s | Madry-AT steps/s (PGD-7) | clean train steps/s |")
  print("|---|---|---|---|")
  for name, r in rows.items():
    ratio = lambda k: "" if r is ours else f" (ours {ours[k] / r[k]:.2f}x)"
    print(f"| {name} | {r['pgd40_img_per_s']:.1f}{ratio('pgd40_img_per_s')} | "
          f"{r['madry_steps_per_s']:.2f}{ratio('madry_steps_per_s')} | "
          f"{r['clean_steps_per_s']:.1f}{ratio('clean_steps_per_s')} |")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
