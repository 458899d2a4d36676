"""Kernel density detector (Feinman et al. 2017, as used by paper 002, PDM): a Gaussian kernel
density estimate on the penultimate embedding, one per class.

The kernels of class c are training embeddings of images whose *true* label is c (at most
`kernels_per_class`, chosen at random); an input is scored by the density of the class it is
*predicted* as, because an adversarial example carries the predicted class's label while its
embedding stays away from that class's training embeddings. Higher score = more likely
adversarial, so the score is minus the log density.

Bandwidth convention: scikit-learn's. The kernel is exp(-||z - z_i||^2 / (2 h^2)), normalised as
a d-dimensional Gaussian, so

    log p(z | c) = logsumexp_i(-||z - z_i||^2 / (2 h^2)) - log M_c - (d / 2) log(2 pi h^2),

exactly `sklearn.neighbors.KernelDensity(kernel='gaussian', bandwidth=h).score_samples`, with
M_c the number of kernels of class c. Feinman et al.'s code uses this convention (h = 1.20 for
their MNIST model, 0.26 for their CIFAR-10 model); the reverse cross-entropy repository (Pang et
al.) scores with exp(-d^2 / sigma^2) and no normalisation, i.e. sigma^2 = 2 h^2, and a density
that differs from ours by the constant factor (2 pi h^2)^(d/2), which ranks inputs the same. Those
bandwidths belong to those models' embeddings and do not carry over to other networks, whose
embeddings have other scales, hence the data-driven default (`bandwidth=0`): the h that
maximises the mean held-out log-likelihood (each point under its true class) over a log-spaced
grid of 30 values from 0.02 to 5 times the median distance between same-class kernels. The
held-out points are up to 200 per class of the training embeddings not chosen as kernels; a class
with none left is scored leave-one-out over its kernels (each kernel without its own term).
Feinman et al. tuned h by cross-validation; this is the same idea.

`fit` runs on the host in numpy (float64), one class at a time, so that its memory stays modest
(10 classes x 1000 kernels x 512 dimensions: a few (1000, 1000) distance matrices). `score` and
`log_density` are pure JAX and differentiable, for detector-aware attacks.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax.detectors.base import Detector

GRID_SIZE = 30
GRID_RANGE = (0.02, 5.0)  # Multiples of the median same-class kernel distance.
MAX_HELD_OUT = 200  # Held-out embeddings per class for choosing the bandwidth.
MAX_MEDIAN_KERNELS = 500  # Kernels per class whose pair distances estimate the median.


def log_density(state: dict, embedding: jax.Array, classes: jax.Array) -> jax.Array:
  """(B,) log p(embedding | class) under the fitted kernels of each example's class.

  Squared distances come from ||z||^2 - 2 z.k + ||k||^2 (a matmul, fast and differentiable,
  unlike a norm of differences, whose square root has no gradient at 0), clipped at 0 against
  rounding. The matmul is against every class's kernels and the wanted class is picked after:
  (B, K * M) distances cost less memory than gathering (B, M, d) kernels per example.
  """
  kernels = jnp.asarray(state["kernels"])
  num_classes, num_kernels, dim = kernels.shape
  z = embedding.reshape(embedding.shape[0], -1)
  dtype = jnp.result_type(z.dtype, kernels.dtype)
  z, flat = z.astype(dtype), kernels.reshape(num_classes * num_kernels, dim).astype(dtype)
  # Full float32 precision: the difference of large norms cancels, and the reduced-precision
  # (TF32) matmul that the default precision allows on recent GPUs could leave errors
  # comparable to h^2 on same-class distances.
  cross = jnp.matmul(z, flat.T, precision=jax.lax.Precision.HIGHEST)
  sq = jnp.sum(z * z, -1, keepdims=True) - 2 * cross + jnp.sum(flat * flat, -1)
  sq = jnp.maximum(sq, 0.0).reshape(z.shape[0], num_classes, num_kernels)
  sq = jnp.take_along_axis(sq, classes[:, None, None], axis=1)[:, 0]  # (B, M)
  h = jnp.asarray(state["bandwidth"], dtype)
  present = jnp.asarray(state["mask"])[classes] > 0  # Padding of classes with fewer kernels.
  terms = jnp.where(present, -sq / (2 * h ** 2), -jnp.inf)
  log_count = jnp.asarray(state["log_count"], dtype)[classes]
  return jax.nn.logsumexp(terms, axis=-1) - log_count - 0.5 * dim * jnp.log(2 * jnp.pi * h ** 2)


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None], 0.0)


def _logsumexp(terms: np.ndarray) -> np.ndarray:
  """Over the last axis; every row has a finite entry (a class has a kernel beside the point)."""
  top = terms.max(-1, keepdims=True)
  return top[..., 0] + np.log(np.exp(terms - top).sum(-1))


def _log_densities(sq: np.ndarray, bandwidths: np.ndarray, log_count: float, dim: int):
  """(len(bandwidths), n) log densities of n points from their (n, M) squared distances; one
  bandwidth at a time, so that memory stays that of `sq`."""
  return np.stack([_logsumexp(-sq / (2 * h ** 2)) - log_count
                   - 0.5 * dim * np.log(2 * np.pi * h ** 2) for h in bandwidths])


def _leave_one_out(kernels: np.ndarray) -> np.ndarray:
  """Squared distances between kernels, each kernel's own term removed (infinitely far)."""
  sq = _squared_distances(kernels, kernels)
  np.fill_diagonal(sq, np.inf)
  return sq


@dataclasses.dataclass(frozen=True)
class KernelDensity(Detector):
  num_classes: int
  kernels_per_class: int = 1000
  bandwidth: float = 0.0  # 0: chosen from the training embeddings (module docstring).
  seed: int = 0
  name: str = "kde"

  def __post_init__(self):
    if self.kernels_per_class < 1 or self.bandwidth < 0:
      raise ValueError(f"{self.name}: kernels_per_class must be >= 1 and bandwidth >= 0 (0: "
                       f"chosen from data); got {self.kernels_per_class}, {self.bandwidth}.")

  def fit(self, batches) -> dict:
    embeddings, labels = [], []
    for outputs, batch_labels in batches:
      batch_labels = np.asarray(batch_labels)
      # Kept in the network's dtype until chosen: all training embeddings in float64 would
      # double the largest array of the fit.
      embeddings.append(np.asarray(outputs["embedding"]).reshape(len(batch_labels), -1))
      labels.append(batch_labels)
    if not embeddings:
      raise ValueError(f"{self.name}: no training embeddings to fit on.")
    embeddings, labels = np.concatenate(embeddings), np.concatenate(labels)
    counts = np.bincount(labels, minlength=self.num_classes)[:self.num_classes]
    if (counts < 2).any():
      raise ValueError(f"{self.name}: every class needs at least 2 training embeddings (a kernel "
                       f"and a point to choose the bandwidth on); counts per class {counts}.")
    rng = np.random.default_rng(self.seed)
    kernels, held_out = [], []
    for c in range(self.num_classes):
      order = rng.permutation(np.flatnonzero(labels == c))
      chosen = min(self.kernels_per_class, len(order))
      kernels.append(embeddings[order[:chosen]].astype(np.float64))
      held_out.append(embeddings[order[chosen:chosen + MAX_HELD_OUT]].astype(np.float64))
    dim = embeddings.shape[1]
    bandwidth = self.bandwidth or self._choose_bandwidth(kernels, held_out, dim)

    num_kernels = max(len(k) for k in kernels)
    state = {"kernels": np.zeros((self.num_classes, num_kernels, dim), np.float32),
             "mask": np.zeros((self.num_classes, num_kernels), np.float32),
             "log_count": np.log([len(k) for k in kernels]).astype(np.float32),
             "bandwidth": np.asarray(bandwidth, np.float32),
             "anchors": np.zeros((self.num_classes, dim), np.float32)}
    for c, class_kernels in enumerate(kernels):
      state["kernels"][c, :len(class_kernels)] = class_kernels
      state["mask"][c, :len(class_kernels)] = 1.0
      # The anchor: the kernel most typical of its class, i.e. of highest leave-one-out density.
      if len(class_kernels) > 1:
        density = _log_densities(_leave_one_out(class_kernels), np.array([bandwidth]),
                                 np.log(len(class_kernels) - 1), dim)[0]
        state["anchors"][c] = class_kernels[np.argmax(density)]
      else:
        state["anchors"][c] = class_kernels[0]
    return state

  def _choose_bandwidth(self, kernels: list, held_out: list, dim: int) -> float:
    """The grid bandwidth of highest mean held-out log-likelihood (module docstring)."""
    pairs = []
    for class_kernels in kernels:
      # The kernels are in random order, so the first ones are a random subset: enough for a
      # median, and the memory stays bounded for many classes.
      subset = class_kernels[:MAX_MEDIAN_KERNELS]
      pairs.append(np.sqrt(_squared_distances(subset, subset)[np.triu_indices(len(subset), 1)]))
    pairs = np.concatenate(pairs)
    median = np.median(pairs[pairs > 0]) if (pairs > 0).any() else 0.0
    if not median > 0:
      raise ValueError(f"{self.name}: cannot choose a bandwidth without two distinct kernels "
                       "of one class; set `bandwidth` or raise `kernels_per_class`.")
    grid = median * np.geomspace(*GRID_RANGE, GRID_SIZE)
    total, num_points = np.zeros(GRID_SIZE), 0
    for class_kernels, points in zip(kernels, held_out):
      if len(points):
        sq, log_count = _squared_distances(points, class_kernels), np.log(len(class_kernels))
      else:  # Every training embedding of the class is a kernel: leave one out.
        sq, log_count = _leave_one_out(class_kernels), np.log(len(class_kernels) - 1)
      total += _log_densities(sq, grid, log_count, dim).sum(1)
      num_points += len(sq)
    best = int(np.argmax(total / num_points))
    if best in (0, GRID_SIZE - 1):
      warnings.warn(f"{self.name}: the chosen bandwidth {grid[best]:.4g} is at the edge of the "
                    "grid; the best one may lie outside it.")
    return float(grid[best])

  def score(self, state, outputs, x):
    embedding = outputs["embedding"].reshape(x.shape[0], -1)
    # The deployed classifier's class (for reverse cross-entropy models, argmax of -Z, already
    # folded into class_logits), not necessarily argmax of the raw logits.
    predicted = jnp.argmax(outputs["class_logits"], axis=-1)
    return -log_density(state, embedding, predicted)

  def anchor_embeddings(self, state):
    return jnp.asarray(state["anchors"])
