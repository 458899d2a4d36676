"""Kernel density detector (paper 002): the log density against scikit-learn's and against the
reverse cross-entropy repository's unnormalised form, the predicted class taken from
class_logits, a perfect AUC on separated clusters, the bandwidth chosen from the data (scaling
with it, locally optimal by hand, deterministic), the kernels capped and the anchors typical,
and the gradient against finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.neighbors import KernelDensity as SklearnKernelDensity

from defenses_jax import detectors
from defenses_jax.detectors.kde import KernelDensity, log_density
from defenses_jax.evaluation import metrics


def clusters(counts, dim, seed=0, separation=12.0):
  """Unit-variance Gaussian clusters, class c centred at separation * e_c."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(counts)), counts)
  embedding = separation * np.eye(len(counts), dim)[labels] + rng.normal(size=(len(labels), dim))
  return embedding, labels


def fit(detector, embedding, labels, batch_size=50):
  """Fitted through several batches, as evaluation feeds it, with a (B, 1, 1, d) embedding: the
  detector flattens whatever trails the batch axis."""
  return detector.fit([({"embedding": embedding[i:i + batch_size, None, None]},
                        labels[i:i + batch_size]) for i in range(0, len(labels), batch_size)])


def class_kernels(state, c):
  return state["kernels"][c][state["mask"][c] > 0]


def test_log_density_is_sklearns_for_classes_with_different_kernel_counts():
  counts, dim, h = [3, 7, 12], 5, 0.8
  embedding, labels = clusters(counts, dim, separation=2.0)
  state = fit(KernelDensity(3, kernels_per_class=50, bandwidth=h), embedding, labels)
  np.testing.assert_array_equal(state["mask"].sum(1), counts)  # Padded to 12 kernels.
  np.testing.assert_allclose(state["log_count"], np.log(counts), rtol=1e-6)
  queries = np.random.default_rng(1).normal(size=(9, dim)) + 1.0
  for c in range(3):
    expected = SklearnKernelDensity(bandwidth=h).fit(embedding[labels == c]).score_samples(queries)
    ours = log_density(state, jnp.asarray(queries, jnp.float32), jnp.full(9, c))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)
  # Each example under its own class, in one call.
  mixed = np.arange(9) % 3
  expected = [SklearnKernelDensity(bandwidth=h).fit(embedding[labels == c]).score_samples(
      queries[i:i + 1])[0] for i, c in enumerate(mixed)]
  ours = jax.jit(log_density)(state, jnp.asarray(queries, jnp.float32), jnp.asarray(mixed))
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_rce_repository_form_is_our_density_times_the_normalisation():
  dim, h = 4, 0.6
  embedding, labels = clusters([20, 15], dim, separation=1.5)
  state = fit(KernelDensity(2, bandwidth=h), embedding, labels)
  queries = np.random.default_rng(2).normal(size=(6, dim)) * 0.5
  sigma2 = 2 * h ** 2
  for c in range(2):
    kernels = class_kernels(state, c).astype(np.float64)
    sq = ((queries[:, None] - kernels[None]) ** 2).sum(-1)
    terms = -sq / sigma2
    top = terms.max(1)
    rce = np.exp(top + np.log(np.exp(terms - top[:, None]).sum(1)) - np.log(len(kernels)))
    ours = np.exp(np.asarray(log_density(state, jnp.asarray(queries, jnp.float32),
                                         jnp.full(6, c)), np.float64))
    np.testing.assert_allclose(ours * (2 * np.pi * h ** 2) ** (dim / 2), rce, rtol=1e-4)


def test_score_uses_the_class_predicted_by_class_logits():
  dim = 3
  embedding, labels = clusters([30, 30, 30], dim)
  det = detectors.create_detector("kde", 3, bandwidth=1.0)
  state = fit(det, embedding, labels)
  # Embeddings near class 0's centre; the raw logits say class 0, but the deployed classifier
  # (as for reverse cross-entropy, class_logits = -logits) predicts class 2.
  queries = 12.0 * np.eye(dim)[0] + np.random.default_rng(3).normal(size=(4, dim)) * 0.5
  queries = jnp.asarray(queries, jnp.float32)
  logits = jnp.array([[5.0, 1.0, 0.0]] * 4)
  outputs = {"embedding": queries, "logits": logits, "class_logits": -logits}
  scores = jax.jit(det.score)(state, outputs, jnp.zeros((4, 1, 1, 3)))
  np.testing.assert_allclose(scores, -log_density(state, queries, jnp.full(4, 2)), rtol=1e-6)
  as_logits = det.score(state, {**outputs, "class_logits": logits}, jnp.zeros((4, 1, 1, 3)))
  np.testing.assert_allclose(as_logits, -log_density(state, queries, jnp.zeros(4, int)),
                             rtol=1e-6)
  # Near class 0 but predicted as class 2 (17 away): far less likely, so flagged.
  assert np.all(np.asarray(scores) > np.asarray(as_logits) + 50)


def test_points_between_the_clusters_are_separated_from_clean_points():
  dim, num_classes = 8, 3
  embedding, labels = clusters([200] * num_classes, dim)
  det = KernelDensity(num_classes, kernels_per_class=100)
  state = fit(det, embedding, labels)
  clean, clean_labels = clusters([50] * num_classes, dim, seed=1)
  # Like adversarial examples: at the boundary between two classes, predicted as one of them.
  rng = np.random.default_rng(2)
  first = rng.integers(0, num_classes, 150)
  second = (first + rng.integers(1, num_classes, 150)) % num_classes
  far = 6.0 * (np.eye(num_classes, dim)[first] + np.eye(num_classes, dim)[second])
  far += rng.normal(size=far.shape)

  def scores(z, predicted):
    logits = 10.0 * jnp.eye(num_classes)[predicted]
    return np.asarray(det.score(state, {"embedding": jnp.asarray(z, jnp.float32),
                                        "class_logits": logits}, jnp.zeros((len(z), 1))))

  assert metrics.roc_auc(scores(clean, clean_labels), scores(far, first)) == 1.0


def mean_log_likelihood(state, points, labels, h, leave_one_out=False):
  """By hand, with scikit-learn: the mean log density of each point under its true class."""
  total = 0.0
  for c in np.unique(labels):
    kernels = class_kernels(state, c).astype(np.float64)
    if leave_one_out:
      total += sum(SklearnKernelDensity(bandwidth=h).fit(np.delete(kernels, i, 0)).score_samples(
          kernels[i:i + 1])[0] for i in range(len(kernels)))
    else:
      total += SklearnKernelDensity(bandwidth=h).fit(kernels).score_samples(
          points[labels == c]).sum()
  return total / len(labels)


def test_chosen_bandwidth_scales_with_the_data_and_is_locally_optimal():
  dim = 8
  embedding, labels = clusters([60, 60, 60], dim)
  det = KernelDensity(3, kernels_per_class=20)
  state = fit(det, embedding, labels)
  h = float(state["bandwidth"])
  scaled = fit(det, 10 * embedding, labels)
  assert float(scaled["bandwidth"]) == pytest.approx(10 * h, rel=1e-5)
  np.testing.assert_allclose(scaled["kernels"], 10 * state["kernels"], rtol=1e-5)
  # Unit-variance clusters: h of the order of the standard deviation, 1 (Silverman's rule of
  # thumb says 0.72 for 20 kernels in 8 dimensions; likelihood cross-validation picks somewhat
  # wider), far inside the grid, which spans 0.08 to 20 here (median same-class distance 4).
  assert 0.5 < h < 1.5
  # Locally optimal on its held-out points, computed by hand: with 40 embeddings per class
  # left after the 20 kernels, the held-out points are all of them.
  kernel_rows = {tuple(k) for k in state["kernels"].reshape(-1, dim)}
  held_out = np.array([tuple(e.astype(np.float32)) not in kernel_rows for e in embedding])
  assert held_out.sum() == 3 * 40
  at = lambda b: mean_log_likelihood(state, embedding[held_out], labels[held_out], b)
  assert at(h) > max(at(h / 1.5), at(h * 1.5))
  # Every embedding a kernel (kernels_per_class >= count): chosen leave-one-out.
  small = KernelDensity(3, kernels_per_class=30)
  loo_state = fit(small, *clusters([25, 30, 20], dim, seed=4))
  assert loo_state["mask"].sum() == 75
  h = float(loo_state["bandwidth"])
  at = lambda b: mean_log_likelihood(loo_state, None, np.repeat(np.arange(3), [25, 30, 20]), b,
                                     leave_one_out=True)
  assert at(h) > max(at(h / 1.5), at(h * 1.5))
  # Deterministic given the seed; another seed picks other kernels.
  again = fit(det, embedding, labels)
  for key in state:
    np.testing.assert_array_equal(again[key], state[key])
  other = fit(KernelDensity(3, kernels_per_class=20, seed=1), embedding, labels)
  assert not np.array_equal(other["kernels"], state["kernels"])


def test_kernels_are_capped_a_lonely_class_is_refused_and_anchors_are_typical_kernels():
  dim = 6
  embedding, labels = clusters([40, 5, 25], dim)
  det = KernelDensity(3, kernels_per_class=10)
  state = fit(det, embedding, labels)
  assert state["kernels"].shape == (3, 10, dim)
  np.testing.assert_array_equal(state["mask"].sum(1), [10, 5, 10])
  np.testing.assert_allclose(state["log_count"], np.log([10, 5, 10]), rtol=1e-6)
  assert all(v.dtype == np.float32 for v in state.values())
  h = float(state["bandwidth"])
  for c in range(3):
    kernels = class_kernels(state, c)
    members = embedding[labels == c].astype(np.float32)
    # Distinct training embeddings of class c (chosen without replacement).
    assert len({tuple(k) for k in kernels}) == len(kernels)
    assert all((members == k).all(1).any() for k in kernels)
    # The anchor: the kernel of highest leave-one-out density, by hand.
    loo = [SklearnKernelDensity(bandwidth=h).fit(np.delete(kernels, i, 0)).score_samples(
        kernels[i:i + 1])[0] for i in range(len(kernels))]
    np.testing.assert_array_equal(state["anchors"][c], kernels[np.argmax(loo)])
  anchors = det.anchor_embeddings(state)
  assert isinstance(anchors, jax.Array)
  np.testing.assert_array_equal(anchors, state["anchors"])
  with pytest.raises(ValueError, match="at least 2 training embeddings"):
    fit(det, *clusters([40, 1, 25], dim))
  with pytest.raises(ValueError, match="at least 2 training embeddings"):
    fit(det, *clusters([40, 3], dim))  # Class 2 has none.
  with pytest.raises(ValueError, match="kernels_per_class"):
    KernelDensity(3, kernels_per_class=0)


def test_gradient_of_log_density_matches_finite_differences():
  dim = 5
  embedding, labels = clusters([15, 15], dim, separation=3.0)
  state = fit(KernelDensity(2, bandwidth=0.9), embedding, labels)
  with jax.enable_x64(True):
    z = jnp.asarray(np.random.default_rng(5).normal(size=(3, dim)) + 1.0, jnp.float64)
    classes = jnp.array([0, 1, 1])
    f = lambda v: log_density(state, v, classes).sum()
    grad = np.asarray(jax.grad(f)(z))
    eps = 1e-5
    numeric = np.zeros_like(grad)
    for i in np.ndindex(*z.shape):
      step = jnp.zeros_like(z).at[i].set(eps)
      numeric[i] = (f(z + step) - f(z - step)) / (2 * eps)
  assert np.abs(grad).max() > 0.1  # Not trivially zero.
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
