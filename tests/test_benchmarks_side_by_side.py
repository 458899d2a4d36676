"""The side-by-side benchmark's parts that can be wrong silently: the FLOP count of loops (XLA
counts a while loop's body once) and the PyTorch port of the ResNets (same logits)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks import flops as flops_lib


def _matmul_loop(steps):
  x = jnp.ones((64, 64), jnp.float32)
  f = jax.jit(lambda x, w: lax.fori_loop(0, steps, lambda i, z: jnp.tanh(z @ w), x))
  return f.lower(x, x).compile()


def test_xla_counts_a_loop_body_once_and_loop_flops_corrects_it():
  one_matmul = 2 * 64 ** 3
  reported_2, reported_40 = (flops_lib.xla_flops(_matmul_loop(k)) for k in (2, 40))
  assert reported_2 == pytest.approx(reported_40, rel=1e-3)
  assert reported_40 < 2 * one_matmul  # one body, not 40
  counted = flops_lib.loop_flops(_matmul_loop, 40)
  assert counted["flops"] == pytest.approx(40 * one_matmul, rel=1e-2)
  assert counted["linear_in_iterations"]
  assert counted["xla_loop_counting"] == "body once"
  assert jax.lax.fori_loop is lax.fori_loop  # the patch is undone


def test_batch_sizes_per_network():
  side_by_side = pytest.importorskip("benchmarks.side_by_side")
  assert side_by_side.batch_sizes(["a", "b"], 8, ["b=2"]) == {"a": 8, "b": 2}
  with pytest.raises(ValueError):
    side_by_side.batch_sizes(["a"], 8, ["c=2"])


def test_resnet_port_gives_our_logits_in_eval_and_train_mode():
  pytest.importorskip("torch")
  from benchmarks import references, side_by_side
  from defenses_jax.models import create_model
  module = create_model("resnet8", num_outputs=10)  # stride-2 stages and projections, small
  net = side_by_side.Network("ResNet-8", "resnet8", (32, 32, 3), 8 / 255, 2 / 255, True)
  x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  variables = side_by_side.randomize_batchnorm(module.init(jax.random.key(0), x[:1]))
  build, gaps = side_by_side.parity("resnet8", net, module, variables, x)
  assert gaps["eval_max_abs_logit_gap"] < references.PARITY_TOLERANCE
  assert gaps["train_max_abs_logit_gap"] < references.PARITY_TOLERANCE
  # PyTorch's symmetric padding=1 on the stride-2 convolutions (1 before, and the 1 after is
  # never read) would be another function.
  import torch
  model = build(variables)
  for m in model.modules():
    if type(m).__name__ == "SameConv" and m.stride == (2, 2) and m.kernel_size == (3, 3):
      m.forward = lambda z, m=m: torch.nn.Conv2d.forward(m, torch.nn.functional.pad(
          z, (1, 0, 1, 0)))
  assert references.logits_gap(model, lambda z: module.apply(variables, z), x) > 1e-3
