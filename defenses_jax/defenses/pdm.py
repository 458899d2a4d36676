"""PDM: penetration distortion maximization (paper 002, section 3 and Algorithm 1).

PDM widens the margin between the classes' clusters in the embedding space, so that an
adversarial example has to move further to change class and lands where a density detector
notices it. It has three components, each a switch here, so that one defense gives the paper's
four models:

  CE             reverse_cross_entropy=False, siamese_weight=0, rvl_weight=0
  RCE            reverse_cross_entropy=True,  siamese_weight=0, rvl_weight=0
  Siamese + RVL  reverse_cross_entropy=False, siamese_weight=1, rvl_weight=1
  PDM            reverse_cross_entropy=True,  siamese_weight=1, rvl_weight=1 (the defaults)

1. Reverse cross-entropy (section 3.3, Pang et al. 2018): the label is the reverse one-hot R
   (0 at the class, 1/(K-1) elsewhere) and the loss -R . log softmax(Z). Its minimum is p_y -> 0
   with the other classes uniform, so the network learns to put the *lowest* score on the true
   class: the deployed classifier predicts argmax(-Z), as Pang et al.'s code does (the paper
   leaves this out; predicting argmax(Z) would get almost every example wrong).
2. Siamese training (section 3.1): every example gets a partner, from its own class with
   probability Q and from another class otherwise; the loss |cos(z, z_partner) - s| pulls the
   embeddings of the same class to cosine 1 and of different classes to cosine 0. The twin's
   classification loss is part of Algorithm 1's objective too.
3. Reduce variance loss (section 3.2): the mean over the classes in the batch of the class's
   mean squared distance to its centroid in the embedding space.

Where we depart from Algorithm 1, and why:
- The partner is another member of the same batch (Algorithm 1 draws "a random sample from
  class y" of the training set). The twin's embedding and logits are then already computed:
  no second forward pass, and the batch keeps a static shape inside the compiled step.
- RVL is the *mean* of sigma_c over the classes in the batch (section 3.2: "estimated per class
  on each mini-batch, then averaged"; Algorithm 1 line 22 sums them), so rvl_weight is a weight
  per class and does not grow with the number of classes a batch happens to hold.
- The paper gives no value for Q; same_class_probability = 0.5 (half the pairs of each kind)
  is our choice.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from defenses_jax.defenses.base import Defense, unit_weighted

# Added under the square root of the squared norm: a zero embedding (all ReLUs off) then has a
# finite cosine and gradient instead of 0/0.
NORM_EPS = 1e-12


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example -log softmax(Z)_y."""
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]


def reverse_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example -R . log softmax(Z) with the reverse label R (0 at y, 1/(K-1) elsewhere)."""
  k = logits.shape[-1]
  log_p = jax.nn.log_softmax(logits)
  others = 1.0 - jax.nn.one_hot(labels, k, dtype=log_p.dtype)
  return -jnp.sum(others * log_p, axis=-1) / (k - 1)


def siamese_partners(labels: jax.Array, key: jax.Array,
                     same_class_probability: float) -> tuple[jax.Array, jax.Array]:
  """Each example's Siamese partner, an index into the batch, and the pair's cosine target.

  With probability Q the partner is drawn uniformly from the example's own class (excluding the
  example itself unless it is alone in its class), otherwise from the other classes; when the
  batch holds no other class the partner falls back to the own class. The pair label is 1.0
  exactly when the partner has the same label (so it stays the truth after a fallback).
  Uniform draws are the Gumbel-max trick over the masked candidates: one (B, B) draw, static
  shapes, no loop over examples.
  """
  n = labels.shape[0]
  q_key, gumbel_key = jax.random.split(key)
  want_same = jax.random.bernoulli(q_key, same_class_probability, (n,))
  same = labels[:, None] == labels[None, :]
  same_other = same & ~jnp.eye(n, dtype=bool)
  same_candidates = jnp.where(jnp.any(same_other, 1, keepdims=True), same_other, same)
  different = ~same
  use_same = want_same | ~jnp.any(different, 1)
  candidates = jnp.where(use_same[:, None], same_candidates, different)
  gumbel = jax.random.gumbel(gumbel_key, (n, n))
  partner = jnp.argmax(jnp.where(candidates, gumbel, -jnp.inf), axis=1).astype(jnp.int32)
  pair_label = (labels[partner] == labels).astype(jnp.float32)
  return partner, pair_label


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def cosine_pair_loss(embedding: jax.Array, partner: jax.Array, pair_label: jax.Array,
                     weights: jax.Array) -> jax.Array:
  """Algorithm 1's SL: the weighted mean of |cos(z_i, z_partner(i)) - s_i|."""
  z = embedding.reshape(embedding.shape[0], -1)
  unit = z / jnp.sqrt(jnp.sum(z * z, axis=-1, keepdims=True) + NORM_EPS)
  cosine = jnp.sum(unit * unit[partner], axis=-1)
  return _weighted_mean(jnp.abs(cosine - pair_label), weights)


def reduce_variance_loss(embedding: jax.Array, labels: jax.Array, weights: jax.Array,
                         num_classes: int) -> jax.Array:
  """RVL: the mean, over the classes present in the batch, of sigma_c, the (weighted) mean
  squared Euclidean distance of the class's embeddings to their centroid."""
  z = embedding.reshape(embedding.shape[0], -1)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=z.dtype)  # (B, K)
  weighted = one_hot * weights[:, None]
  counts = jnp.sum(weighted, axis=0)  # (K,)
  present = counts > 0
  safe_counts = jnp.where(present, counts, 1.0)  # Absent classes: 0 / 1, masked out below.
  centroids = (weighted.T @ z) / safe_counts[:, None]  # (K, D)
  squared = jnp.sum((z - one_hot @ centroids) ** 2, axis=-1)  # (B,): to the own centroid
  sigma = (weighted.T @ squared) / safe_counts
  return jnp.sum(jnp.where(present, sigma, 0.0)) / jnp.maximum(jnp.sum(present), 1)


@dataclasses.dataclass(frozen=True)
class PDM(Defense):
  num_classes: int
  reverse_cross_entropy: bool = True
  siamese_weight: float = 1.0
  rvl_weight: float = 1.0
  # The paper's Q: the probability that a partner is from the same class. The paper gives no
  # value; 0.5 is our choice.
  same_class_probability: float = 0.5
  name: str = "pdm"

  def __post_init__(self):
    if self.num_classes < 2:
      raise ValueError(f"PDM needs at least 2 classes; got num_classes={self.num_classes}.")
    # `not x >= 0` also refuses NaN.
    for field in ("siamese_weight", "rvl_weight"):
      if not getattr(self, field) >= 0:
        raise ValueError(f"PDM's {field} must be >= 0; got {getattr(self, field)}.")
    if not 0 <= self.same_class_probability <= 1:
      raise ValueError("PDM's same_class_probability (Q) must be in [0, 1]; got "
                       f"{self.same_class_probability}.")

  def classification_loss(self, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example RCE or CE, as configured."""
    if self.reverse_cross_entropy:
      return reverse_cross_entropy(logits, labels)
    return cross_entropy(logits, labels)

  def class_logits(self, logits: jax.Array) -> jax.Array:
    # RCE trains the true class to the lowest score (see the module docstring).
    return -logits if self.reverse_cross_entropy else logits

  def training_batch(self, batch, key, logits_fn, defense_state):
    # training_batch runs per device: partners are drawn from this device's shard of the batch,
    # whose embeddings are the only ones the loss below sees.
    partner, pair_label = siamese_partners(batch["label"], key, self.same_class_probability)
    train_batch = unit_weighted(batch["image"], batch["label"])
    train_batch.update(partner=partner, pair_label=pair_label)
    return train_batch, defense_state

  def loss(self, outputs, train_batch):
    logits, embedding = outputs["logits"], outputs["embedding"]
    labels, weights = train_batch["label"], train_batch["weight"]
    partner = train_batch["partner"]
    per_example = self.classification_loss(logits, labels)
    classification = _weighted_mean(per_example, weights)
    siamese = cosine_pair_loss(embedding, partner, train_batch["pair_label"], weights)
    rvl = reduce_variance_loss(embedding, labels, weights, self.num_classes)
    total = classification
    # Python-level switches: a zero weight adds exactly nothing (not 0 * a possibly NaN term).
    if self.siamese_weight:
      # Siamese training (Algorithm 1) minimises -R log p1 - R_siamese log p2: the twin's own
      # classification loss too. The twin is a batch member, so its loss is already in
      # per_example. Without Siamese training (the CE and RCE baselines) there is no twin.
      twin = _weighted_mean(per_example[partner], weights)
      total = total + twin + self.siamese_weight * siamese
    if self.rvl_weight:
      total = total + self.rvl_weight * rvl
    count = jnp.sum(weights)
    correct = jnp.sum((jnp.argmax(self.class_logits(logits), -1) == labels) * weights)
    # The training log reads loss, correct and count; the components are summed the same way
    # (times count) for whoever inspects the step's sums.
    return total, {"loss": total * count, "correct": correct, "count": count,
                   "classification_loss": classification * count,
                   "siamese_loss": siamese * count, "rvl": rvl * count}
