"""The Oracle of query attacks: scores or labels only, exact per-example query counts, a budget
that stops an example, and no gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import as_target
from defenses_jax.attacks.query import Oracle, QueryAccessError, random_search

W = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
logits_fn = lambda x: x.reshape(x.shape[0], -1) @ W
TARGET = as_target(logits_fn)


def test_scores_and_labels_are_the_deployed_classifiers():
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 2, 2, 1)), jnp.float32)
  expected = np.asarray(x).reshape(5, 4) @ np.asarray(W)
  scores, counts, answered = Oracle(TARGET, "scores", 10).query(x, jnp.zeros(5, jnp.int32),
                                                                jax.random.key(0))
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  labels, _, _ = Oracle(TARGET, "labels", 10).query(x, jnp.zeros(5, jnp.int32),
                                                    jax.random.key(0))
  np.testing.assert_array_equal(labels, expected.argmax(-1))
  np.testing.assert_array_equal(counts, 1)
  assert bool(answered.all())


def test_differentiating_through_the_oracle_fails_when_traced():
  oracle = Oracle(TARGET, "scores", 10)
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
  oracle = Oracle(TARGET, "labels", budget=7)
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
  noisy = as_target(lambda x, key: logits_fn(x) + jax.random.normal(key, (x.shape[0], 3)),
                    randomised=True)
  oracle = Oracle(noisy, "scores", 100)
  x = jnp.full((2, 2, 2, 1), 0.5)
  answers, _, _ = oracle.query_many(jnp.stack([x] * 4, axis=1), oracle.initial_counts(2),
                                    jax.random.key(0))
  assert answers.shape == (2, 4, 3)
  assert len({tuple(np.round(np.asarray(answers[0, q]), 5)) for q in range(4)}) == 4
  with pytest.raises(ValueError, match="access"):
    Oracle(TARGET, "gradients", 10)


def test_random_search_finds_the_one_flipping_corner_and_counts_its_queries():
  # Label 1 only at the all-plus corner of the eps-cube around x = 0.5 (1 corner in 16); the
  # second example's threshold is out of reach, so it spends its whole budget and stays x.
  threshold = jnp.asarray([3.5 * 0.1, 10.0])
  fn = lambda x: jnp.stack([jnp.zeros(x.shape[0]),
                            (x.reshape(x.shape[0], -1) - 0.5).sum(-1) * 1.0 - threshold], -1)
  x = jnp.full((2, 4), 0.5)
  y = jnp.zeros(2, jnp.int32)
  oracle = Oracle(as_target(fn), "labels", budget=200)
  x_adv, info = jax.jit(lambda x, y, k: random_search(oracle, x, y, k, eps=0.1,
                                                      max_queries=200))(x, y, jax.random.key(0))
  np.testing.assert_allclose(x_adv[0], 0.6, atol=1e-6)  # The flipping corner, exactly.
  np.testing.assert_array_equal(x_adv[1], x[1])
  np.testing.assert_array_equal(info["success"], [True, False])
  assert 1 <= int(info["queries"][0]) < 200 and int(info["queries"][1]) == 200


def test_evaluation_runs_query_attacks_through_an_oracle(tmp_path, monkeypatch):
  import ml_collections
  from conftest import blob_dataset, tiny_config
  from defenses_jax import attacks
  from defenses_jax import train as train_lib
  from defenses_jax.evaluation import evaluate
  from experiments.common import attack
  datasets = blob_dataset(96, seed=0), blob_dataset(32, seed=1)
  config = tiny_config(epochs=4, learning_rate=3e-3)
  config.eval.num_attack_examples = 32
  config.eval.sanity.enabled = False
  config.eval.attacks = ml_collections.ConfigDict(
      {"rs": attack("random_search", "Random search", eps=0.5, max_queries=50)})
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=datasets)
  out = evaluate(config, str(tmp_path), datasets=datasets).attacks["rs"]
  assert out.queries.budget == 50 and 1 <= out.queries.mean <= 50
  assert out.attack_success_rate > 0
  # A "query" attack that tries to differentiate what it is given fails before running.
  def peeking(oracle, x, y, key, *, max_queries=10):
    counts = oracle.initial_counts(x.shape[0])
    jax.grad(lambda z: oracle.query(z, counts, key)[0].sum())(x)
    return x, {}
  monkeypatch.setitem(attacks.ATTACKS, "peeking", attacks.AttackInfo(
      peeking, "scores", "linf", budget_param="max_queries"))
  config.eval.attacks = ml_collections.ConfigDict({"peek": attack("peeking", "Peeking")})
  with pytest.raises(QueryAccessError):
    evaluate(config, str(tmp_path), datasets=datasets)


def test_every_query_attack_runs_in_the_evaluation_with_its_budget(tmp_path):
  import ml_collections
  from conftest import blob_dataset, tiny_config
  from defenses_jax import train as train_lib
  from defenses_jax.attacks import ATTACKS
  from defenses_jax.evaluation import evaluate
  from experiments.common import attack
  datasets = blob_dataset(96, seed=0), blob_dataset(32, seed=1)
  config = tiny_config(epochs=4, learning_rate=3e-3)
  config.eval.num_attack_examples = 32
  config.eval.sanity.enabled = False
  config.eval.attacks = ml_collections.ConfigDict({
      "zoo": attack("zoo", "ZOO", num_examples=8, binary_search_steps=2, max_iterations=5,
                    coordinates=4),
      "hsj": attack("hop_skip_jump", "HSJ", steps=2, init_evals=10, max_init_queries=20),
      "ga": attack("gen_attack", "GenAttack", eps=0.3, max_steps=20, population=4),
      "square": attack("square", "Square", eps=0.3, max_queries=30)})
  train_lib.train_and_evaluate(config, str(tmp_path), datasets=datasets)
  out = evaluate(config, str(tmp_path), datasets=datasets).attacks
  # The Oracle's budget is each attack's schedule: ZOO 2 x 5 x (2 * 4 + 1), GenAttack
  # 20 x 3 + 1, Square its max_queries; HopSkipJump its upper bound.
  assert out["zoo"].queries.budget == 90 and out["zoo"].num_examples == 8
  assert out["ga"].queries.budget == 61 and out["square"].queries.budget == 30
  assert out["hsj"].queries.budget == ATTACKS["hop_skip_jump"].oracle_budget(
      {"steps": 2, "init_evals": 10, "max_init_queries": 20})
  for key in ("hsj", "ga", "square"):
    assert out[key].num_examples == 32
  for key, result in out.items():
    assert 1 <= result.queries.mean <= result.queries.budget, key
  assert out["hsj"].attack_success_rate > 0  # Unbounded: HSJ fools what it starts on.


def test_independent_examples_run_as_one_flat_batch_with_the_same_answers():
  x = jnp.asarray(np.random.default_rng(4).uniform(size=(3, 5, 2, 2, 1)), jnp.float32)
  counts = jnp.zeros(3, jnp.int32)
  paired = Oracle(TARGET, "scores", 100).query_many(x, counts, jax.random.key(0))
  flat = Oracle(TARGET, "scores", 100, independent_examples=True).query_many(
      x, counts, jax.random.key(0))
  np.testing.assert_allclose(flat[0], paired[0], rtol=1e-6)
  np.testing.assert_allclose(flat[0][1, 2], np.asarray(x[1, 2]).reshape(-1) @ np.asarray(W),
                             rtol=1e-5)
  np.testing.assert_array_equal(flat[1], paired[1])
  # A function of the batch position (a per-example bias) needs the per-query path.
  bias = jnp.arange(3.0)[:, None]
  by_position = as_target(lambda z: logits_fn(z) + bias)
  answers, _, _ = Oracle(by_position, "scores", 100).query_many(x, counts, jax.random.key(0))
  np.testing.assert_allclose(answers[2, 0], np.asarray(logits_fn(x[:, 0]))[2] + 2.0, rtol=1e-5)


def test_query_units_count_each_examples_masked_queries_in_row_order():
  # Rows of 3 query slots, owned by examples 0, 0, 2, 0 (example 1 has none): only masked
  # queries count, and a row is answered only if it fits after the example's earlier rows.
  oracle = Oracle(TARGET, "labels", budget=6, independent_examples=True)
  x = jnp.asarray(np.random.default_rng(5).uniform(size=(4, 3, 2, 2, 1)), jnp.float32)
  owner = jnp.asarray([0, 0, 2, 0])
  mask = jnp.asarray([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
  counts = jnp.asarray([1, 0, 5], jnp.int32)
  labels, counts, answered = oracle.query_units(x, owner, mask, counts, jax.random.key(0))
  # Example 0: 1 + 3 + 2 = 6 fits, the last row's 3 more do not; example 2: 5 + 1 = 6.
  np.testing.assert_array_equal(answered, [True, True, True, False])
  np.testing.assert_array_equal(counts, [6, 0, 6])
  np.testing.assert_array_equal(labels[1, :2], np.asarray(logits_fn(x[1, :2])).argmax(-1))
  np.testing.assert_array_equal(labels[3], -1)
  assert int(labels[1, 2]) == -1 and int(labels[2, 1]) == -1  # Unmasked: not answered either.
  # The same rows through the per-example path (vmapped over the row's queries) agree.
  paired = Oracle(TARGET, "labels", budget=6).query_units(
      x, owner, mask, jnp.asarray([1, 0, 5], jnp.int32), jax.random.key(0))
  np.testing.assert_array_equal(paired[0], labels)
  np.testing.assert_array_equal(paired[1], counts)
