"""Collaborative multi-task training with a gradient lock unit (paper 003, Wang et al. 2018,
sections 3.2-3.3): a second logits head Z' on the last hidden layer learns each class's
*robust label* from a Classmap; the gradient lock unit g multiplies the class logits Z
element-wise with g(Z'), Z* = Z * g(Z'); an input is flagged adversarial when the deployed class
argmax Z* and argmax Z' are not a Classmap pair (detectors/pair.py).

Classmap (section 3.2, equation 7): FGS examples of the training images are crafted on a
trained oracle; for every true class y, Classmap[y] is the class r != y maximising
P(F(x_adv) = r | y). The prose calls the robust label the "least possible" class instead, the
opposite reading: `classmap_reading` 'argmax' (equation 7, the default) or 'argmin'. The true
class is excluded (otherwise the FGS examples the oracle still classifies correctly would pair
most classes with themselves and the detector would test nothing); ties in the counts are
broken by the mean predicted probability of the class, then by the lower index.

Loss (equations 8-9, alpha = beta = 0.4, gamma = 0.2), FGS examples crafted on Z* inside the
compiled step:
    0.4 CE(Z*(x), y) + 0.4 CE(Z*(x_adv), y) + 0.2 J',
    J' = 1/2 [CE(Z'(x), y_r) - min(CE(Z'(x_adv), y_r), bound)].
The paper's negative term is unbounded below (the loss would be minimised by sending Z'(x_adv)'s
probability of y_r to zero at any cost to everything else); we bound it at `robust_adv_bound`,
log K by default: the cross-entropy of the uniform distribution, beyond which Z'(x_adv) already
gives y_r less than chance and the term stops pushing. The paper does not say whether eq. 8's J
reads Z or Z*; with the lock unit the deployed output is Z*, so we train Z*.

Gradient lock unit (section 3.3.3): "two fully connected layers" on Z' whose output multiplies
Z. The paper gives no widths or activations and also says the unit "contains no parameter to be
trained": `trainable_lock` True (Dense(lock_hidden)-ReLU-Dense(K), trained with the rest) or
False (the same layers with constant weights drawn from a fixed seed; no parameters). Ours: a
sigmoid on the output, so that g only rescales each class score (Z* keeps Z's signs).

The network's logits are packed as [Z, Z', g] (3K columns); `class_logits` is Z * g.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax import parallel
from defenses_jax.attacks.gradient import fgsm
from defenses_jax.attacks.target import as_target
from defenses_jax.defenses.adversarial_training import adversarial_examples
from defenses_jax.defenses.base import Defense, Network
from defenses_jax.defenses.pdm import cross_entropy

CLASSMAP_READINGS = ("argmax", "argmin")
LOCK_SEED = 20180314  # The fixed lock unit's weights (trainable_lock=False): the same every init.


# --- Classmap (equation 7) -----------------------------------------------------------------

def classmap_from_counts(counts: np.ndarray, mean_probabilities: Optional[np.ndarray] = None,
                         reading: str = "argmax") -> tuple:
  """Classmap from counts[y, r] (how often FGS examples of class y were predicted as r) and,
  for ties, mean_probabilities[y, r] (the mean predicted probability of r over them): for each
  y the class r != y with the most (argmax) or fewest (argmin) predictions."""
  if reading not in CLASSMAP_READINGS:
    raise ValueError(f"unknown classmap_reading {reading!r}; choose one of {CLASSMAP_READINGS}.")
  counts = np.asarray(counts, np.float64)
  k = counts.shape[0]
  if counts.shape != (k, k) or k < 2:
    raise ValueError(f"Classmap counts must be a (K, K) matrix with K >= 2; got {counts.shape}.")
  probs = np.zeros_like(counts) if mean_probabilities is None else np.asarray(
      mean_probabilities, np.float64)
  sign = 1.0 if reading == "argmax" else -1.0
  classmap = []
  for y in range(k):  # K classes: a host-side loop over a (K, K) table, once per experiment.
    candidates = [r for r in range(k) if r != y]
    # Sorted by count, then mean probability, in the reading's direction; then by index.
    best = min(candidates, key=lambda r: (-sign * counts[y, r], -sign * probs[y, r], r))
    classmap.append(int(best))
  return tuple(classmap)


def fgs_confusion(logits_fn: Callable, images: np.ndarray, labels: np.ndarray,
                  num_classes: int, epsilon: float, batch_size: int):
  """(counts, mean probabilities) of the predictions on FGS examples (eps `epsilon`, crafted
  on logits_fn with the true labels), by true class and predicted class."""
  key = jax.random.key(0)  # FGS is deterministic; the key is part of the attack signature.

  @functools.partial(jax.jit, compiler_options=parallel.COMPILER_OPTIONS)  # As the runners.
  def predictions(x, y):
    x_adv, _ = fgsm(as_target(logits_fn), x, y, key, eps=epsilon)
    return jax.nn.softmax(logits_fn(x_adv))

  counts = np.zeros((num_classes, num_classes))
  prob_sums = np.zeros((num_classes, num_classes))
  for start in range(0, len(images), batch_size):
    x, y = images[start:start + batch_size], labels[start:start + batch_size]
    pad = batch_size - len(x)  # Pad the last batch: one compiled shape.
    xp = np.concatenate([x, np.repeat(x[:1], pad, 0)]) if pad else x
    yp = np.concatenate([y, np.repeat(y[:1], pad, 0)]) if pad else y
    probs = np.asarray(predictions(jnp.asarray(xp), jnp.asarray(yp)))[:len(x)]
    np.add.at(counts, (y, probs.argmax(-1)), 1)
    np.add.at(prob_sums, y, probs)
  per_class = np.maximum(np.bincount(labels, minlength=num_classes), 1)[:, None]
  return counts, prob_sums / per_class


def pair_accept_margins(robust_logits: jax.Array, classmap) -> jax.Array:
  """(B, K): for each candidate deployed class c, margin(Z', Classmap[c]) = Z'_r - max_{j != r}
  Z'_j with r = Classmap[c]; positive iff argmax Z' is Classmap[c], i.e. the pair detector
  accepts the input if it is classified as c."""
  classmap = jnp.asarray(classmap, jnp.int32)
  top2 = jax.lax.top_k(robust_logits, 2)[0]
  paired = robust_logits[:, classmap]  # (B, K): Z'_{Classmap[c]}
  is_top = classmap[None, :] == jnp.argmax(robust_logits, -1)[:, None]
  best_other = jnp.where(is_top, top2[:, 1:2], top2[:, 0:1])
  return paired - best_other


# --- The network: Z, Z' and the gradient lock unit ------------------------------------------

def _fixed_lock_weights(num_classes: int, hidden: int):
  k1, k2 = jax.random.split(jax.random.key(LOCK_SEED))
  init = nn.initializers.lecun_normal()
  return (init(k1, (num_classes, hidden)), jnp.zeros((hidden,)),
          init(k2, (hidden, num_classes)), jnp.zeros((num_classes,)))


class CollaborativeNet(nn.Module):
  """The base classifier (its K logits Z and last hidden layer h) with Z' = Dense_K(h) and the
  gradient lock unit g(Z'); returns the packed logits [Z, Z', g] and h."""

  base: nn.Module
  num_classes: int
  lock_hidden: int = 64
  trainable_lock: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False, return_embedding: bool = False):
    z, hidden = self.base(x, train=train, return_embedding=True)
    flat = hidden.reshape((hidden.shape[0], -1))
    z_robust = nn.Dense(self.num_classes, name="robust_head")(flat)
    if self.trainable_lock:
      u = nn.relu(nn.Dense(self.lock_hidden, name="lock_hidden")(z_robust))
      u = nn.Dense(self.num_classes, name="lock_out")(u)
    else:
      w1, b1, w2, b2 = _fixed_lock_weights(self.num_classes, self.lock_hidden)
      u = nn.relu(z_robust @ w1 + b1) @ w2 + b2
    packed = jnp.concatenate([z, z_robust, jax.nn.sigmoid(u)], axis=-1)
    return (packed, hidden) if return_embedding else packed


# --- The defense ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Collaborative(Defense):
  num_classes: int
  # The Classmap (Classmap[y]: the robust label of class y). Empty: derived before training from
  # the trained experiment `classmap_oracle` (same workdir) and written into this config.
  classmap: tuple = ()
  classmap_oracle: str = ""
  classmap_epsilon: float = 0.1  # FGS eps for the Classmap (the paper states 0.1 only for eval).
  classmap_reading: str = "argmax"
  classmap_examples: int = 0  # Training images the Classmap is estimated on (0: all).
  fgs_epsilon: float = 0.1  # The training examples' FGS eps (not stated; the eval's 0.1).
  clean_weight: float = 0.4  # alpha
  adversarial_weight: float = 0.4  # beta
  robust_weight: float = 0.2  # gamma
  robust_adv_bound: float = -1.0  # Bound of J''s negative term (-1: log K).
  lock_hidden: int = 64
  trainable_lock: bool = True
  name: str = "collaborative"

  def __post_init__(self):
    k = self.num_classes
    if k < 2:
      raise ValueError(f"collaborative needs at least 2 classes; got {k}.")
    if self.classmap_reading not in CLASSMAP_READINGS:
      raise ValueError(f"unknown classmap_reading {self.classmap_reading!r}; choose one of "
                       f"{CLASSMAP_READINGS}.")
    if not self.classmap and not self.classmap_oracle:
      raise ValueError("collaborative needs a Classmap: give `classmap` (K robust labels) or "
                       "`classmap_oracle` (the trained experiment it is derived from).")
    if self.classmap:
      # As a tuple of ints (config.json gives a list): the defense stays hashable.
      object.__setattr__(self, "classmap", tuple(int(r) for r in self.classmap))
      cm = self.classmap
      if len(cm) != k or any(not 0 <= int(r) < k for r in cm) or any(
          int(r) == y for y, r in enumerate(cm)):
        raise ValueError(f"classmap must give each of the {k} classes a robust label in "
                         f"[0, {k}) other than itself; got {cm}.")
    for field in ("clean_weight", "adversarial_weight", "robust_weight", "fgs_epsilon",
                  "classmap_epsilon"):
      if not getattr(self, field) >= 0:
        raise ValueError(f"collaborative's {field} must be >= 0; got {getattr(self, field)}.")
    if self.lock_hidden < 1 or self.classmap_examples < 0:
      raise ValueError("collaborative needs lock_hidden >= 1 and classmap_examples >= 0.")

  def resolve(self, load_trained: Callable, image_shape: tuple, batch_size: int
              ) -> "Collaborative":
    """With the Classmap derived from the trained `classmap_oracle`, when it is not given."""
    if self.classmap:
      return self
    oracle = load_trained(self.classmap_oracle)
    return dataclasses.replace(self, classmap=oracle_classmap(oracle, self, batch_size))

  @property
  def robust_labels(self) -> jax.Array:
    if not self.classmap:
      raise ValueError("collaborative: the Classmap has not been derived (classmap is empty); "
                       "build the experiment through experiment.Experiment, which derives it "
                       f"from classmap_oracle {self.classmap_oracle!r} (resolve).")
    return jnp.asarray(self.classmap, jnp.int32)

  def wrap_model(self, model: nn.Module) -> nn.Module:
    return CollaborativeNet(model, self.num_classes, self.lock_hidden, self.trainable_lock)

  def split(self, logits: jax.Array):
    """(Z, Z', g) from the packed logits."""
    k = self.num_classes
    if logits.shape[-1] != 3 * k:
      raise ValueError(f"collaborative expects packed logits [Z, Z', g] of width {3 * k}; got "
                       f"{logits.shape[-1]} (was the model wrapped with wrap_model?).")
    return logits[:, :k], logits[:, k:2 * k], logits[:, 2 * k:]

  def class_logits(self, logits):
    z, _, lock = self.split(logits)
    return z * lock

  def training_batch(self, batch, key, logits_fn, defense_state):
    x_adv = adversarial_examples("fgsm", {"eps": self.fgs_epsilon},
                                 lambda z: self.class_logits(logits_fn(z)), batch, key)
    return {"image": jnp.concatenate([batch["image"], x_adv]), "label": batch["label"],
            "robust_label": self.robust_labels[batch["label"]]}, defense_state

  def loss(self, outputs, train_batch):
    labels, robust = train_batch["label"], train_batch["robust_label"]
    n = labels.shape[0]
    z, z_robust, lock = self.split(outputs["logits"])
    z_star = z * lock
    clean = jnp.mean(cross_entropy(z_star[:n], labels))
    adversarial = jnp.mean(cross_entropy(z_star[n:], labels))
    j_prime = jnp.mean(robust_objective(z_robust[:n], z_robust[n:], robust,
                                        self.robust_bound()))
    total = (self.clean_weight * clean + self.adversarial_weight * adversarial
             + self.robust_weight * j_prime)
    count = jnp.asarray(n, jnp.float32)
    correct = jnp.sum(jnp.argmax(z_star[:n], -1) == labels)
    paired = jnp.sum(jnp.argmax(z_robust[:n], -1) == robust)
    return total, {"loss": total * count, "correct": correct, "count": count,
                   "robust_head_correct": paired, "adversarial_loss": adversarial * count,
                   "robust_objective": j_prime * count}

  def robust_bound(self) -> float:
    return math.log(self.num_classes) if self.robust_adv_bound < 0 else self.robust_adv_bound

  def deployed_outputs(self, net: Network, x) -> dict:
    """Adds to the network's outputs: `base_logits` Z, `robust_logits` Z', `lock` g(Z'), the
    deployed `class_logits` Z*, and `accept_margin` (B, K): margin(Z', Classmap[c]) for each
    candidate class c (what the pair detector and pair-aware attacks read)."""
    outputs = net.outputs(x)
    z, z_robust, lock = self.split(outputs["logits"])
    outputs.update(base_logits=z, robust_logits=z_robust, lock=lock, class_logits=z * lock,
                   accept_margin=pair_accept_margins(z_robust, self.robust_labels))
    return outputs

  def attack_surfaces(self) -> dict:
    # Gray-box (paper 003 section 2.2: the oracle's parameters, not the defense): the base
    # classifier's own logits Z, without Z' and the lock unit.
    return {"gray_box": lambda net, x, key: self.split(net(x))[0]}


def robust_objective(robust_clean: jax.Array, robust_adv: jax.Array, robust_labels: jax.Array,
                     bound: float) -> jax.Array:
  """Equation 9 per example, its negative term bounded: 1/2 [CE(Z'(x), y_r) -
  min(CE(Z'(x_adv), y_r), bound)]."""
  return 0.5 * (cross_entropy(robust_clean, robust_labels)
                - jnp.minimum(cross_entropy(robust_adv, robust_labels), bound))


def oracle_classmap(oracle, defense: Collaborative, batch_size: int) -> tuple:
  """The Classmap of `defense`'s settings from the trained oracle (a TrainedExperiment): the
  FGS confusion of its deployed classifier on its training images, kept by the oracle's
  `cached` (beside its checkpoint, reused only when verified: the settings, step, model and
  images that produced it, a map of every class to a class)."""
  settings = {"epsilon": defense.classmap_epsilon, "reading": defense.classmap_reading,
              "examples": defense.classmap_examples}
  ds = oracle.exp.train_ds
  n = defense.classmap_examples or len(ds)

  def compute():
    net = oracle.network()
    deployed = lambda z: oracle.exp.defense.deployed(net, z).class_logits
    counts, probs = fgs_confusion(deployed, ds.images[:n], ds.labels[:n], ds.num_classes,
                                  defense.classmap_epsilon, batch_size)
    classmap = classmap_from_counts(counts, probs, defense.classmap_reading)
    return ({"classmap": np.asarray(classmap, np.int32), "counts": counts},
            {"fgs_accuracy": float(np.trace(counts) / counts.sum())})

  def contract(arrays, info):
    classmap = arrays.get("classmap")
    if (classmap is None or classmap.shape != (ds.num_classes,)
        or not np.all((classmap >= 0) & (classmap < ds.num_classes))):
      return f"it is not a map of {ds.num_classes} classes to classes"
    return None

  arrays = oracle.cached("classmaps", "classmap", settings, compute, contract,
                         data=ds.take(n).fingerprint)
  return tuple(int(c) for c in arrays["classmap"])
