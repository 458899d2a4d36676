"""The Oracle of query attacks: scores or labels only, exact per-example query counts, a budget
that stops an example, and no gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import stochastic
from defenses_jax.attacks.query import Oracle, QueryAccessError

W = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
logits_fn = lambda x: x.reshape(x.shape[0], -1) @ W


def test_scores_and_labels_are_the_deployed_classifiers():
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 2, 2, 1)), jnp.float32)
  expected = np.asarray(x).reshape(5, 4) @ np.asarray(W)
  scores, counts, answered = Oracle(logits_fn, "scores", 10).query(x, jnp.zeros(5, jnp.int32),
                                                                   jax.random.key(0))
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  labels, _, _ = Oracle(logits_fn, "labels", 10).query(x, jnp.zeros(5, jnp.int32),
                                                       jax.random.key(0))
  np.testing.assert_array_equal(labels, expected.argmax(-1))
  np.testing.assert_array_equal(counts, 1)
  assert bool(answered.all())


def test_differentiating_through_the_oracle_fails_when_traced():
  oracle = Oracle(logits_fn, "scores", 10)
  x = jnp.full((2, 2, 2, 1), 0.5)
  counts = oracle.initial_counts(2)
  total = lambda z: jnp.sum(oracle.query(z, counts, jax.random.key(0))[0])
  with pytest.raises(QueryAccessError, match="scores or labels only"):
    jax.grad(total)(x)
  with pytest.raises(QueryAccessError):
    jax.jit(jax.grad(total)).lower(x)  # At trace time: nothing is computed.
  with pytest.raises(QueryAccessError):
    jax.jvp(total, (x,), (jnp.ones_like(x),))
  assert float(total(x)) == pytest.approx(float(jnp.sum(logits_fn(x))), rel=1e-5)


def test_queries_are_counted_exactly_and_stop_at_the_budget():
  oracle = Oracle(logits_fn, "labels", budget=7)
  x = jnp.full((3, 2, 2, 1), 0.5)
  counts = jnp.asarray([0, 5, 7], jnp.int32)
  labels, counts, answered = oracle.query(x, counts, jax.random.key(0),
                                          active=jnp.asarray([True, True, True]))
  np.testing.assert_array_equal(counts, [1, 6, 7])  # The third had spent its budget.
  np.testing.assert_array_equal(answered, [True, True, False])
  assert int(labels[2]) == -1
  # Two queries each: the second example has one left, so it gets none (and pays none).
  many = jnp.stack([x, x], axis=1)
  _, counts, answered = oracle.query_many(many, counts, jax.random.key(1))
  np.testing.assert_array_equal(counts, [3, 6, 7])
  np.testing.assert_array_equal(answered, [True, False, False])
  # Inactive examples (finished attacks) are neither answered nor counted.
  _, counts, _ = oracle.query(x, counts, jax.random.key(2), active=jnp.asarray([False] * 3))
  np.testing.assert_array_equal(counts, [3, 6, 7])
  # Counting works inside a compiled loop, as a query attack runs.
  def loop(counts):
    return jax.lax.fori_loop(0, 10, lambda i, c: oracle.query(x, c, jax.random.key(i))[1],
                             counts)
  np.testing.assert_array_equal(jax.jit(loop)(jnp.zeros(3, jnp.int32)), [7, 7, 7])


def test_a_randomised_defense_is_queried_with_a_fresh_key_per_query():
  noisy = stochastic(lambda x, key: logits_fn(x) + jax.random.normal(key, (x.shape[0], 3)))
  oracle = Oracle(noisy, "scores", 100)
  x = jnp.full((2, 2, 2, 1), 0.5)
  answers, _, _ = oracle.query_many(jnp.stack([x] * 4, axis=1), oracle.initial_counts(2),
                                    jax.random.key(0))
  assert answers.shape == (2, 4, 3)
  assert len({tuple(np.round(np.asarray(answers[0, q]), 5)) for q in range(4)}) == 4
  with pytest.raises(ValueError, match="access"):
    Oracle(logits_fn, "gradients", 10)
