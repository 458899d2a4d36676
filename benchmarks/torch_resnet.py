"""A PyTorch port of models/resnet.py's ResNet (the CIFAR ResNet-20/32/56 and ResNet-18) with our
flax weights copied in, for the side-by-side benchmark (benchmarks/side_by_side.py).

Layer for layer the flax model: a 3x3 stem convolution (no bias), BatchNorm, activation; each
BasicBlock is conv 3x3 (stride s) - BN - act - conv 3x3 - BN, plus a 1x1 projection + BN where
the shape changes, then act; global average pool; Dense. flax's 'SAME' padding is lax's:
for a stride-2 3x3 convolution on an even-sized input it pads 0 before and 1 after
(PyTorch's padding=1 pads 1 on both sides, which samples other pixels), so those convolutions
pad explicitly; stride-1 ones use Conv2d's own symmetric padding. BatchNorm: epsilon 1e-5 on
both sides; flax's momentum 0.9 is PyTorch's momentum 0.1; in training mode both normalise with
the batch statistics (biased variance). (PyTorch updates its running variance with the unbiased
batch variance, flax with the biased one: the running statistics drift apart by B / (B - 1),
which the benchmark, timing only, does not use.)
"""

from __future__ import annotations

import numpy as np


def _same_pads(size: int, kernel: int, stride: int):
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def torch_resnet(module, variables):
  """module: the flax ResNet (for its stage sizes and activation); variables: its
  {'params', 'batch_stats'}. Returns the PyTorch model in inference mode, NCHW in."""
  import torch
  from torch import nn
  import torch.nn.functional as F

  params, stats = variables["params"], variables["batch_stats"]
  t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)
  slope = {"relu": 0.0, "leaky_relu": 0.1}[module.activation]
  act = (lambda z: F.relu(z)) if slope == 0 else (lambda z: F.leaky_relu(z, slope))

  class SameConv(nn.Conv2d):
    """Conv2d (no bias) with lax's 'SAME' padding."""

    def __init__(self, cin, cout, kernel, stride):
      # Stride 1, odd kernel: lax pads (k - 1) / 2 on both sides, as Conv2d's padding does.
      super().__init__(cin, cout, kernel, stride, padding=(kernel - 1) // 2 if stride == 1 else 0,
                       bias=False)

    def forward(self, x):
      if self.stride != (1, 1):
        (top, bottom), (left, right) = (_same_pads(x.shape[2], self.kernel_size[0], self.stride[0]),
                                        _same_pads(x.shape[3], self.kernel_size[1], self.stride[1]))
        if top or bottom or left or right:
          x = F.pad(x, (left, right, top, bottom))
      return super().forward(x)

  def load_conv(conv, p):
    conv.weight.copy_(t(p["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW

  def load_bn(bn, p, s):
    bn.weight.copy_(t(p["scale"]))
    bn.bias.copy_(t(p["bias"]))
    bn.running_mean.copy_(t(s["mean"]))
    bn.running_var.copy_(t(s["var"]))

  class Block(nn.Module):
    def __init__(self, p, s, stride):
      super().__init__()
      cin, cout = p["Conv_0"]["kernel"].shape[2:]
      self.stride = stride
      self.conv0, self.bn0 = SameConv(cin, cout, 3, self.stride), nn.BatchNorm2d(cout)
      self.conv1, self.bn1 = SameConv(cout, cout, 3, 1), nn.BatchNorm2d(cout)
      self.project = "Conv_2" in p
      if self.project:
        self.conv2, self.bn2 = SameConv(cin, cout, 1, self.stride), nn.BatchNorm2d(cout)
      with torch.no_grad():
        for i in range(3 if self.project else 2):
          load_conv(getattr(self, f"conv{i}"), p[f"Conv_{i}"])
          load_bn(getattr(self, f"bn{i}"), p[f"BatchNorm_{i}"], s[f"BatchNorm_{i}"])

    def forward(self, x):
      y = act(self.bn0(self.conv0(x)))
      y = self.bn1(self.conv1(y))
      if self.project:
        x = self.bn2(self.conv2(x))
      return act(x + y)

  class TorchResNet(nn.Module):
    def __init__(self):
      super().__init__()
      k = params["Conv_0"]["kernel"]
      self.stem, self.bn = SameConv(k.shape[2], k.shape[3], 3, 1), nn.BatchNorm2d(k.shape[3])
      blocks, index = [], 0
      for stage, num_blocks in enumerate(module.stage_sizes):
        for b in range(num_blocks):
          name = f"BasicBlock_{index}"
          blocks.append(Block(params[name], stats[name], 2 if stage > 0 and b == 0 else 1))
          index += 1
      self.blocks = nn.Sequential(*blocks)
      dense = params["Dense_0"]["kernel"]
      self.dense = nn.Linear(dense.shape[0], dense.shape[1])
      with torch.no_grad():
        load_conv(self.stem, params["Conv_0"])
        load_bn(self.bn, params["BatchNorm_0"], stats["BatchNorm_0"])
        self.dense.weight.copy_(t(dense).T)
        self.dense.bias.copy_(t(params["Dense_0"]["bias"]))

    def forward(self, x):
      x = self.blocks(act(self.bn(self.stem(x))))
      return self.dense(x.mean(dim=(2, 3)))

  return TorchResNet().eval()
