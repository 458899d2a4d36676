"""PDM (paper 002): reverse cross-entropy and the deployed argmax(-Z), Siamese partners, the
cosine pair loss and the reduce variance loss against hand-computed values, the combined loss,
the Davies-Bouldin index, and a tiny end-to-end run through the training loop."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from sklearn.metrics import davies_bouldin_score

from conftest import tiny_config
from defenses_jax import train as train_lib
from defenses_jax.defenses import PDM, create_defense
from defenses_jax.defenses.pdm import (cosine_pair_loss, reduce_variance_loss,
                                       reverse_cross_entropy, siamese_partners)
from defenses_jax.evaluation.clustering import davies_bouldin_index


def numpy_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reverse_labels(labels, k):
  r = np.full((len(labels), k), 1.0 / (k - 1))
  r[np.arange(len(labels)), labels] = 0.0
  return r


# 1. Reverse cross-entropy.

def test_reverse_cross_entropy_value_gradient_and_infimum():
  k = 5
  labels = jnp.array([0, 3, 4])
  np.testing.assert_allclose(reverse_cross_entropy(jnp.zeros((3, k)), labels), [np.log(k)] * 3,
                             rtol=1e-6)
  z = jax.random.normal(jax.random.key(0), (3, k)) * 3
  r = reverse_labels(np.asarray(labels), k)
  np.testing.assert_allclose(reverse_cross_entropy(z, labels),
                             -(r * numpy_log_softmax(z)).sum(-1), rtol=1e-5)
  # d/dZ of -R . (Z - logsumexp Z) = softmax(Z) - R (R sums to 1).
  grad = jax.grad(lambda z: jnp.sum(reverse_cross_entropy(z, labels)))(z)
  p = np.exp(numpy_log_softmax(z))
  np.testing.assert_allclose(grad, p - r, atol=1e-6)
  # With the other classes uniform, RCE = log(K-1) - log(1 - p_y): it falls as p_y -> 0.
  k = 4
  p_y = np.array([0.9, 0.5, 0.25, 0.1, 1e-3, 1e-6])
  probs = np.concatenate([p_y[:, None], np.repeat(((1 - p_y) / (k - 1))[:, None], k - 1, 1)], 1)
  values = np.asarray(reverse_cross_entropy(jnp.log(jnp.asarray(probs, jnp.float32)),
                                            jnp.zeros(len(p_y), jnp.int32)))
  assert np.all(np.diff(values) < 0), values
  np.testing.assert_allclose(values, np.log(k - 1) - np.log(1 - p_y), rtol=1e-5)
  np.testing.assert_allclose(values[-1], np.log(k - 1), rtol=1e-5)


# 2. The deployed classifier.

def test_rce_deploys_argmax_of_minus_logits_and_the_correct_metric_agrees():
  z = jnp.array([[3.0, 0.0, 1.0], [0.5, -2.0, 1.0], [2.0, 1.0, -1.0], [0.0, 0.2, 0.1]])
  labels = jnp.array([1, 1, 0, 0])
  rce, ce = PDM(3), PDM(3, reverse_cross_entropy=False)
  np.testing.assert_array_equal(rce.class_logits(z), -z)
  np.testing.assert_array_equal(ce.class_logits(z), z)
  net = lambda x: z
  np.testing.assert_array_equal(rce.deployed(net, None).class_logits, -z)
  np.testing.assert_array_equal(rce.attack_target("white_box", net)(None, None).class_logits, -z)
  # argmin Z = [1, 1, 2, 0] gets 3 labels right; argmax Z = [0, 2, 0, 1] gets 1.
  batch = {"label": labels, "weight": jnp.ones(4), "partner": jnp.arange(4),
           "pair_label": jnp.ones(4)}
  outputs = {"logits": z, "embedding": jnp.ones((4, 2))}
  assert float(rce.loss(outputs, batch)[1]["correct"]) == 3.0
  assert float(ce.loss(outputs, batch)[1]["correct"]) == 1.0


# 3. Siamese partners.

def shuffled_labels(n=64, k=4, seed=0):
  return jnp.asarray(np.random.default_rng(seed).permutation(np.arange(n) % k), jnp.int32)


@pytest.mark.parametrize("q", [0.3, 0.8])
def test_partners_are_same_class_with_probability_q(q):
  labels = shuffled_labels()
  keys = jax.random.split(jax.random.key(1), 50)
  partner, pair_label = jax.vmap(lambda key: siamese_partners(labels, key, q))(keys)
  assert partner.dtype == jnp.int32 and pair_label.dtype == jnp.float32
  partner, pair_label, labels = map(np.asarray, (partner, pair_label, labels))
  same = labels[partner] == labels[None]
  np.testing.assert_array_equal(pair_label, same.astype(np.float32))
  trials = same.size
  assert abs(same.mean() - q) < 4 * np.sqrt(q * (1 - q) / trials), same.mean()
  # Every class has 16 members: a same-class partner is never the example itself.
  assert not np.any(same & (partner == np.arange(len(labels))[None]))


def test_partners_are_uniform_among_the_candidates():
  labels = shuffled_labels()
  keys = jax.random.split(jax.random.key(2), 1500)
  partner = np.asarray(jax.vmap(lambda key: siamese_partners(labels, key, 1.0)[0])(keys))[:, 0]
  mates = np.flatnonzero(np.asarray(labels) == int(labels[0]))[1:]  # 15 classmates
  counts = np.array([(partner == m).sum() for m in mates])
  assert counts.sum() == len(keys)
  # 100 expected per classmate; chi-square with 14 degrees of freedom, p ~ 1e-6 at 50.
  chi2 = ((counts - 100.0) ** 2 / 100.0).sum()
  assert chi2 < 50, counts


def test_q_one_and_zero_and_the_fallbacks():
  labels = shuffled_labels()
  for q, expected in ((1.0, 1.0), (0.0, 0.0)):
    for seed in range(5):
      partner, pair_label = siamese_partners(labels, jax.random.key(seed), q)
      np.testing.assert_array_equal(pair_label, expected)
      np.testing.assert_array_equal(labels[partner] == labels, bool(expected))
  # One class only: Q = 0 falls back to a same-class partner (not the example itself), label 1.
  partner, pair_label = siamese_partners(jnp.zeros(6, jnp.int32), jax.random.key(0), 0.0)
  np.testing.assert_array_equal(pair_label, 1.0)
  assert not np.any(np.asarray(partner) == np.arange(6))
  # A class with one member: Q = 1 pairs it with itself.
  for seed in range(5):
    partner, pair_label = siamese_partners(jnp.array([0, 1, 1]), jax.random.key(seed), 1.0)
    np.testing.assert_array_equal(partner, [0, 2, 1])
    np.testing.assert_array_equal(pair_label, 1.0)
  partner, pair_label = siamese_partners(jnp.array([3]), jax.random.key(0), 0.0)
  assert int(partner[0]) == 0 and float(pair_label[0]) == 1.0


# 4. The embedding losses, by hand.

def test_cosine_pair_loss_by_hand():
  z = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]])
  partner = jnp.array([1, 2, 0, 0, 0])
  s = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0])
  # cosines: 0, 1/sqrt2, 1/sqrt2, 0 (zero embedding), -1.
  terms = np.array([0.0, 1 - 2 ** -0.5, 1 - 2 ** -0.5, 0.0, 2.0])
  np.testing.assert_allclose(cosine_pair_loss(z, partner, s, jnp.ones(5)), terms.mean(),
                             rtol=1e-6)
  w = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(cosine_pair_loss(z, partner, s, w), terms[[0, 2, 3]].mean(),
                             rtol=1e-6)
  grad = jax.grad(lambda z: cosine_pair_loss(z, partner, s, jnp.ones(5)))(z)
  assert np.all(np.isfinite(grad))


def test_reduce_variance_loss_by_hand():
  z = jnp.array([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 3.0], [0.0, 6.0], [5.0, 5.0]])
  labels = jnp.array([0, 0, 1, 1, 1, 2])
  # sigma_0 = (1 + 1) / 2 = 1, sigma_1 = (9 + 0 + 9) / 3 = 6, sigma_2 = 0; class 3 is absent.
  np.testing.assert_allclose(reduce_variance_loss(z, labels, jnp.ones(6), 4), 7.0 / 3,
                             rtol=1e-6)
  # Without (0, 6): class 1 is (0, 0), (0, 3): sigma_1 = 1.5^2 = 2.25.
  w = jnp.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
  np.testing.assert_allclose(reduce_variance_loss(z, labels, w, 4), 3.25 / 3, rtol=1e-6)


# 5. The combined loss.

def numpy_ce(z, labels):
  return -numpy_log_softmax(z)[np.arange(len(labels)), labels]


def loss_inputs():
  z = jax.random.normal(jax.random.key(3), (6, 3)) * 2
  embedding = jax.random.normal(jax.random.key(4), (6, 5))
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  batch = {"label": labels, "weight": jnp.ones(6), "partner": jnp.array([3, 3, 5, 0, 0, 2]),
           "pair_label": jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])}
  return {"logits": z, "embedding": embedding}, batch


def test_classification_terms_of_the_loss_by_hand():
  outputs, batch = loss_inputs()
  z, labels = np.asarray(outputs["logits"]), np.asarray(batch["label"])
  ce = numpy_ce(z, labels)
  rce = -(reverse_labels(labels, 3) * numpy_log_softmax(z)).sum(-1)
  # The baselines (no Siamese training) are plain CE and RCE: no twin.
  plain = PDM(3, reverse_cross_entropy=False, siamese_weight=0.0, rvl_weight=0.0)
  np.testing.assert_allclose(plain.loss(outputs, batch)[0], ce.mean(), rtol=1e-5)
  rce_only = PDM(3, siamese_weight=0.0, rvl_weight=0.0)
  loss, sums = rce_only.loss(outputs, batch)
  np.testing.assert_allclose(loss, rce.mean(), rtol=1e-5)
  # With Siamese training the twin's classification loss is added: the loss of the partner,
  # here examples 3, 3, 5, 0, 0, 2 (the cosine term, weight 1, on top).
  partner = np.asarray(batch["partner"])
  sl = cosine_pair_loss(outputs["embedding"], batch["partner"], batch["pair_label"], jnp.ones(6))
  siamese_ce = PDM(3, reverse_cross_entropy=False, siamese_weight=1.0, rvl_weight=0.0)
  np.testing.assert_allclose(siamese_ce.loss(outputs, batch)[0],
                             ce.mean() + ce[partner].mean() + float(sl), rtol=1e-5)
  identity = dict(batch, partner=jnp.arange(6))
  sl_identity = cosine_pair_loss(outputs["embedding"], identity["partner"],
                                 identity["pair_label"], jnp.ones(6))
  np.testing.assert_allclose(siamese_ce.loss(outputs, identity)[0],
                             2 * ce.mean() + float(sl_identity), rtol=1e-5)
  assert float(sums["count"]) == 6.0
  np.testing.assert_allclose(sums["loss"], 6 * loss, rtol=1e-6)


def test_each_weight_adds_exactly_weight_times_its_term():
  outputs, batch = loss_inputs()
  base = PDM(3, siamese_weight=0.0, rvl_weight=0.0).loss(outputs, batch)[0]
  sl = cosine_pair_loss(outputs["embedding"], batch["partner"], batch["pair_label"], jnp.ones(6))
  rvl = reduce_variance_loss(outputs["embedding"], batch["label"], jnp.ones(6), 3)
  assert float(sl) > 0.1 and float(rvl) > 0.1
  twin = PDM(3, siamese_weight=1.0, rvl_weight=0.0).loss(outputs, batch)[0] - base - sl
  for sw, rw in ((0.7, 0.0), (0.0, 2.5), (0.7, 2.5)):
    loss, sums = PDM(3, siamese_weight=sw, rvl_weight=rw).loss(outputs, batch)
    # Siamese training brings the twin's loss (weight 1) with its cosine term.
    np.testing.assert_allclose(loss - base, (twin if sw else 0.0) + sw * sl + rw * rvl,
                               rtol=1e-5)
    np.testing.assert_allclose(sums["siamese_loss"] / 6, sl, rtol=1e-5)
    np.testing.assert_allclose(sums["rvl"] / 6, rvl, rtol=1e-5)
  # A zero weight contributes exactly nothing, even when its term is not finite.
  bad = dict(outputs, embedding=jnp.full((6, 5), jnp.nan))
  assert np.isfinite(float(PDM(3, siamese_weight=0.0, rvl_weight=0.0).loss(bad, batch)[0]))


def test_training_batch_and_validation():
  defense = create_defense("pdm", 4, same_class_probability=0.25)
  labels = shuffled_labels(16)
  batch = {"image": jnp.zeros((16, 2, 2, 1)), "label": labels, "index": jnp.arange(16)}
  out, state = defense.training_batch(batch, jax.random.key(5), None, {"s": 1})
  assert state == {"s": 1} and set(out) == {"image", "label", "weight", "partner", "pair_label"}
  np.testing.assert_array_equal(out["weight"], 1.0)
  partner, pair_label = siamese_partners(labels, jax.random.key(5), 0.25)
  np.testing.assert_array_equal(out["partner"], partner)
  np.testing.assert_array_equal(out["pair_label"], pair_label)
  for options in ({"siamese_weight": -1.0}, {"rvl_weight": float("nan")},
                  {"same_class_probability": 1.5}, {"same_class_probability": -0.1}):
    with pytest.raises(ValueError, match="PDM"):
      create_defense("pdm", 4, **options)
  with pytest.raises(ValueError, match="at least 2 classes"):
    PDM(1)


# 6. The Davies-Bouldin index.

def test_davies_bouldin_index_matches_sklearn_and_a_hand_case():
  rng = np.random.default_rng(0)
  centers = rng.normal(0, 4, (4, 6))
  labels = rng.choice([2, 5, 7, 11], 200)
  x = centers[np.searchsorted([2, 5, 7, 11], labels)] + rng.normal(0, rng.uniform(0.5, 2, 200)
                                                                   )[:, None]
  np.testing.assert_allclose(davies_bouldin_index(x, labels), davies_bouldin_score(x, labels),
                             rtol=1e-10)
  # Clusters (0,0),(2,0) [centroid (1,0), s = 1] and (10,0),(10,4) [centroid (10,2), s = 2].
  x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
  np.testing.assert_allclose(davies_bouldin_index(x, [0, 0, 1, 1]), 3 / np.sqrt(85), rtol=1e-12)
  # Three clusters on a line: A at 0 (s = 1), B at 4 (s = 1), C at 20 (s = 2).
  x = np.array([[-1.0], [1.0], [3.0], [5.0], [18.0], [22.0]])
  # R_AB = 2/4, R_AC = 3/20, R_BC = 3/16: max per cluster 1/2, 1/2, 3/16.
  np.testing.assert_allclose(davies_bouldin_index(x, [0, 0, 1, 1, 2, 2]),
                             (0.5 + 0.5 + 3 / 16) / 3, rtol=1e-12)
  assert davies_bouldin_index(np.array([[0.0], [2.0], [1.0]]), [0, 0, 1]) == np.inf
  with pytest.raises(ValueError, match="at least 2 clusters"):
    davies_bouldin_index(x, np.zeros(6))


# 7. End to end.

def test_tiny_end_to_end_pdm_run(tmp_path, blobs):
  config = tiny_config(epochs=3, learning_rate=3e-3)
  config.defense.name = "pdm"
  config.defense.options = ml_collections.ConfigDict({"same_class_probability": 0.5})
  summary = train_lib.train_and_evaluate(config, str(tmp_path), datasets=blobs)
  records = [json.loads(line) for line in
             (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()]
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert losses and np.all(np.isfinite(losses)), records
  # The deployed argmax(-Z) classifies the blobs (4 classes: chance is 0.25).
  assert summary.test_accuracy >= 0.5, summary
