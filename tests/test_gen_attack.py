"""GenAttack: every point the Oracle sees lies in the eps-ball and the box, each example draws its
own mutations, the fitness is the reference's (not foolbox's), selection / crossover / mutation
and the adaptive scaling are the reference's, the elite's fitness never decreases (it is the best
the Oracle has answered), the query count is steps * (N - 1) + 1 exactly (the Oracle's own count,
budget included), the linear-softmax known answer (targeted and untargeted), and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import as_target
from defenses_jax.attacks.query import Oracle
from defenses_jax.attacks.query.gen_attack import (_adaptive_scaling, _assess, _breed, _elite,
                                                   _mutate, _update_plateaus, gen_attack,
                                                   gen_attack_query_budget)

D = 16


def logsumexp(a, axis=-1):
  return np.logaddexp.reduce(np.asarray(a, np.float64), axis=axis)


def formula(steps, population):
  return steps * (population - 1) + 1


class RecordingOracle(Oracle):
  """An Oracle that also hands every generation to the host, in call order: calls holds
  (answers (B, Q, K), answered (B,)) and inputs the queried points (B, Q, ...)."""

  def __init__(self, logits_fn, *args, **kwargs):  # A plain model's Oracle.
    super().__init__(as_target(logits_fn), *args, **kwargs)
    self.calls, self.inputs = [], []

  def query_many(self, xs, counts, key, active=None):
    answers, counts, answered = super().query_many(xs, counts, key, active)

    def record(z, a, ok):
      self.inputs.append(np.asarray(z))
      self.calls.append((np.asarray(a), np.asarray(ok)))

    jax.debug.callback(record, xs, answers, answered, ordered=True)
    return answers, counts, answered


def test_every_queried_point_lies_in_the_ball_and_the_box_and_examples_mutate_independently():
  # Inputs at and near the box's faces; many steps with large adaptive mutations, so the stored
  # noise (never projected) leaves the ball and only the evaluation clip keeps points inside.
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(D, 4)), jnp.float32)
  seen = []

  def recorded(z):
    jax.debug.callback(lambda a: seen.append(np.asarray(a)), z)
    return 100.0 * z.reshape(z.shape[0], -1) @ w  # Confident: nothing succeeds quickly.

  x = np.concatenate([np.zeros((1, D)), np.ones((1, D)), rng.uniform(0, 1, (3, D)),
                      np.full((2, D), 0.5)]).astype(np.float32).reshape(7, 4, 4, 1)
  x = jnp.asarray(x)
  y = jnp.argmax(recorded(x), -1)
  seen.clear()
  eps, population, steps = 0.3, 5, 40
  oracle = Oracle(as_target(recorded), "scores", budget=10**6)
  _, info = jax.jit(lambda x, y, k: gen_attack(
      oracle, x, y, k, eps=eps, population=population, max_steps=steps, alpha=0.5,
      mutation_rate=0.5, adaptive=True))(x, y, jax.random.key(0))
  points = np.stack(seen).reshape(-1, 7, D)  # One (B, ...) batch per queried member.
  assert len(points) == population + (population - 1) * (int(info["steps"].max()) - 1)
  flat_x = np.asarray(x).reshape(1, 7, D)
  assert np.abs(points - flat_x).max() <= eps + 1e-6
  assert points.min() >= 0.0 and points.max() <= 1.0
  assert np.isclose(np.abs(points - flat_x).max(), eps, atol=1e-6)  # Clipping was exercised.
  # Examples 5 and 6 are the same input: with shared mutations (foolbox's bug) every point
  # queried for them would be equal.
  assert not np.array_equal(points[:, 5], points[:, 6])
  assert np.mean(np.all(points[:, 5] == points[:, 6], axis=-1)) < 0.05
  np.testing.assert_array_equal(info["queries"], formula(info["steps"], population))


@pytest.mark.parametrize("adaptive", [True, False])
def test_adaptive_scaling_mutates_every_gene_by_up_to_0_4_eps_in_the_first_generations(adaptive):
  # rho = 0.01 and alpha = 0.05: without adaptive scaling the second generation is mostly the
  # (sparse) initial noise; with it, every gene gets U(+-0.4 eps) (rho = 1 for 10 generations).
  rng = np.random.default_rng(1)
  w = jnp.asarray(rng.normal(size=(64, 3)), jnp.float32)
  model = lambda z: 100.0 * z.reshape(z.shape[0], -1) @ w
  x = jnp.full((4, 8, 8, 1), 0.5)
  eps = 0.1
  oracle = RecordingOracle(model, "scores", budget=10**6)
  jax.jit(lambda x, y, k: gen_attack(oracle, x, y, k, eps=eps, max_steps=3, alpha=0.05,
                                     mutation_rate=0.01, adaptive=adaptive))(
      x, jnp.argmax(model(x), -1), jax.random.key(9))
  first, second = (np.abs(z - 0.5).reshape(-1) / eps for z in oracle.inputs[:2])
  assert np.mean(first > 0) < 0.03  # The initial noise: rho, whatever the scaling.
  if adaptive:
    assert np.mean(second > 0) > 0.97 and np.mean(second > 0.4 + 1e-5) < 0.03  # Init's rho.
    assert abs(np.mean(second) - 0.2) < 0.02  # |U(-0.4, 0.4)|.
  else:
    assert np.mean(second > 0) < 0.05


def test_fitness_is_the_log_odds_of_the_class_computed_stably():
  logits = np.asarray([[[3.0, 1.0, -2.0], [200.0, -150.0, 0.0], [-90.0, 0.0, 90.0]]],
                      np.float32).repeat(2, 0)
  cls = np.asarray([0, 2], np.int32)
  for targeted in (True, False):
    fitness, margin, fooled = _assess(jnp.asarray(logits), jnp.asarray(cls), targeted)
    z = logits.astype(np.float64)
    for b in range(2):
      for q in range(3):
        c = cls[b]
        others = logsumexp(np.delete(z[b, q], c))
        # log p_c - log sum_{j != c} p_j = z_c - logsumexp_{j != c} z_j, finite even when p_c
        # or the others underflow in float32 (foolbox's log(sum exp z - z_t) is not this).
        expected = z[b, q, c] - others if targeted else others - z[b, q, c]
        assert float(fitness[b, q]) == pytest.approx(expected, rel=1e-5, abs=1e-4)
        p = np.exp(z[b, q] - logsumexp(z[b, q]))
        wanted = p[c] if targeted else np.delete(p, c).max()
        assert float(margin[b, q]) == pytest.approx(wanted - p.max(), abs=1e-6)
        label = np.argmax(z[b, q])
        assert bool(fooled[b, q]) == (label == c if targeted else label != c)


def test_selection_and_crossover_follow_the_selection_probabilities():
  # Member i of example b is the constant i + 10 b, so a child's genes name its parents. Without
  # mutation, a pair {i, j} is drawn with probability 2 p_i p_j (p_i^2 if i = j), and a child of
  # i != j takes each gene from i with probability p_i / (p_i + p_j), whichever parent i was.
  n_pop, genes, draws, temperature = 4, 4000, 300, 0.5
  fitness = np.asarray([[0.0, 0.3, -0.4, 0.5], [1.0, -1.0, 0.0, 0.2]], np.float32)
  noise = (np.arange(n_pop)[None, :, None] + 10 * np.arange(2)[:, None, None]
           + np.zeros((2, n_pop, genes))).astype(np.float32)
  children = np.asarray(jax.jit(jax.vmap(lambda k: _breed(
      k, jnp.asarray(noise), jnp.asarray(fitness), temperature, 0.0, 0.0)))(
          jax.random.split(jax.random.key(5), draws)))
  assert children.shape == (draws, 2, n_pop - 1, genes)
  for b in range(2):
    p = np.exp(fitness[b] / temperature)
    p /= p.sum()
    values = children[:, b].reshape(-1, genes) - 10 * b
    pairs = np.zeros((n_pop, n_pop))
    share_errors = []
    for child in values.astype(int):
      present = np.unique(child)
      assert len(present) <= 2 and set(present) <= set(range(n_pop))
      i, j = present[0], present[-1]
      pairs[i, j] += 1
      if i != j:  # Both parents contributed (4000 genes: a distinct pair always shows).
        share_errors.append(np.mean(child == i) - p[i] / (p[i] + p[j]))
    expected = np.triu(2 * np.outer(p, p), 1) + np.diag(p * p)
    observed = pairs / pairs.sum()
    np.testing.assert_allclose(observed, expected, atol=0.04)
    assert np.abs(share_errors).max() < 0.04  # ~4 standard errors at 4000 genes.


def test_mutation_draws_per_gene_and_per_example():
  zeros = jnp.zeros((3, 5, 2000))
  rate = jnp.asarray([0.0, 0.1, 0.6])
  mutated = np.asarray(_mutate(jax.random.key(6), zeros, rate, jnp.asarray([0.3, 0.3, 0.05])))
  changed = mutated != 0
  assert not changed[0].any()
  assert abs(changed[1].mean() - 0.1) < 0.01 and abs(changed[2].mean() - 0.6) < 0.01
  assert np.abs(mutated[1]).max() <= 0.3 and np.abs(mutated[2]).max() <= 0.05
  assert abs(np.abs(mutated[1][changed[1]]).mean() - 0.15) < 0.01  # U(-0.3, 0.3).
  # Scalars broadcast; no two members (of one example or of two) share their mutations.
  same = np.asarray(_mutate(jax.random.key(7), jnp.zeros((2, 3, 500)), 0.5, 1.0))
  rows = same.reshape(6, 500)
  assert all(not np.array_equal(rows[a], rows[c]) for a in range(6) for c in range(a))


def _reference_plateaus(margins):
  """genattack_tf2.py's plateau counting, one example, in plain Python."""
  best, count, plateaus, out = -1.0, 0, 0, []
  for m in margins:
    best, count = (m, 0) if m > best else (best, count + 1)
    threshold = 100 if m > -0.40 else 300
    plateaus, count = (plateaus + 1, 0) if count > threshold else (plateaus, count)
    out.append((plateaus, count))
  return np.asarray(out)


def test_adaptive_scaling_is_the_references():
  # Margins that stall near success (> -0.4), improve now and then far from it, or improve
  # every 250 steps far from it.
  r = np.random.default_rng(8)
  margins = np.stack([
      np.minimum.accumulate(np.full(1500, -0.05)) - 0.3 * (r.uniform(size=1500) < 0.002),
      -0.9 + 0.5 * np.maximum.accumulate(r.uniform(size=1500)) ** 40,
      np.where(np.arange(1500) % 250 == 0, np.linspace(-0.8, 0.0, 1500), -0.95)]).astype(
          np.float32)

  def scan(state, m):
    state = _update_plateaus(state, m, jnp.asarray([True, True, True]))
    return state, (state[2], state[1])

  init = (jnp.full(3, -1.0), jnp.zeros(3, jnp.int32), jnp.zeros(3, jnp.int32))
  _, (k, count) = jax.lax.scan(scan, init, jnp.asarray(margins.T))
  for b in range(3):
    expected = _reference_plateaus(margins[b].tolist())
    np.testing.assert_array_equal(np.asarray(k)[:, b], expected[:, 0])
    np.testing.assert_array_equal(np.asarray(count)[:, b], expected[:, 1])
  # Near: a plateau every 101 stale steps; far: every 301; far, improving every 250: none.
  assert np.asarray(k)[-1, 0] == 14 and np.asarray(k)[-1, 1] >= 2 and np.asarray(k)[-1, 2] == 0
  # A generation that was not answered changes nothing.
  frozen = _update_plateaus(init, jnp.asarray([0.5, 0.5, 0.5]), jnp.asarray([False] * 3))
  for a, c in zip(frozen, init):
    np.testing.assert_array_equal(a, c)
  # alpha_k = max(alpha, 0.4 * 0.9^k); rho_k = max(rho, 0.5 * 0.9^k), and 1 while breeding from
  # the first 10 generations (the reference's idx < 10, idx counting from 0).
  steps = jnp.asarray([1, 10, 11, 11, 200, 200])
  plateaus = jnp.asarray([0, 3, 0, 3, 60, 5])
  step, rate = _adaptive_scaling(steps, plateaus, 0.15, 0.005)
  kk = np.asarray(plateaus, np.float64)
  np.testing.assert_allclose(step, np.maximum(0.15, 0.4 * 0.9 ** kk), rtol=1e-6)
  np.testing.assert_allclose(rate, [1.0, 1.0, 0.5, 0.5 * 0.9 ** 3, 0.005, 0.5 * 0.9 ** 5],
                             rtol=1e-6)


@pytest.mark.parametrize("target", ["none", "given"])
def test_the_elites_fitness_never_decreases_before_success(target):
  # A deterministic nonlinear model (10 classes); the elite is carried with its fitness, and
  # until a member succeeds it is the fittest member, so its fitness is non-decreasing: it is
  # the best fitness of every member the Oracle has answered so far (recomputed on the host).
  # Examples whose first pixel is 1 are locked in class 0 (+100 while it is > 0.5): they can
  # never succeed, and their fitness still varies.
  rng = np.random.default_rng(2)
  w1 = jnp.asarray(rng.normal(size=(D, 12)), jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(12, 10)), jnp.float32)

  def model(z):
    flat = z.reshape(z.shape[0], -1)
    lock = 100.0 * (flat[:, :1] > 0.5) * jax.nn.one_hot(0, 10)
    return 3.0 * jnp.tanh(flat @ w1) @ w2 + lock

  x = rng.uniform(0.2, 0.8, (12, D)).astype(np.float32)
  x[:, 0] = np.arange(12) % 2  # Odd examples are locked.
  x = jnp.asarray(x.reshape(12, 4, 4, 1))
  y = jnp.argmax(model(x), -1)
  targets = (y + 1 + jnp.arange(12) % 9) % 10 if target == "given" else None
  cls = np.asarray(y if targets is None else targets)
  steps = 60
  oracle = RecordingOracle(model, "scores", budget=10**6)
  x_adv, info = jax.jit(lambda x, y, k: gen_attack(
      oracle, x, y, k, eps=0.08, max_steps=steps, target=target, targets=targets,
      return_history=True))(x, y, jax.random.key(1))
  history = np.asarray(info["elite_fitness"])
  assert history.shape == (12, steps)

  def fitness(scores, c):  # (Q, K) -> (Q,), in float64.
    z = scores.astype(np.float64)
    own, others = z[:, c], logsumexp(np.delete(z, c, -1), -1)
    return own - others if target == "given" else others - own

  for b in range(12):
    s = int(info["steps"][b])
    assert np.isfinite(history[b, :s]).all() and np.isnan(history[b, s:]).all()
    seen = np.maximum.accumulate([fitness(a[b], cls[b]).max() for a, _ in oracle.calls[:s]])
    before = s - 1 if info["success"][b] else s
    np.testing.assert_allclose(history[b, :before], seen[:before], rtol=1e-4, atol=1e-4)
    assert (np.diff(history[b, :before]) >= 0).all(), (b, history[b, :before])
  # The locked examples never succeed, and improved anyway; some others succeeded.
  success = np.asarray(info["success"])
  assert not success[1::2].any() and success[::2].any()
  assert (history[1::2, -1] > history[1::2, 0]).all()
  # A successful example returns a successful member (the elite at success: the first
  # successful member, not the fittest, which need not be one), a failed one x.
  labels = np.asarray(model(x_adv)).argmax(-1)
  np.testing.assert_array_equal((labels == cls) if target == "given" else (labels != cls),
                                success)
  np.testing.assert_array_equal(np.asarray(x_adv)[~success], np.asarray(x)[~success])
  assert float(info["linf"].max()) <= 0.08 + 1e-6
  fooled = jnp.asarray([[False, True, True, False], [False, False, False, False]])
  np.testing.assert_array_equal(_elite(jnp.asarray([[5.0, 1.0, 3.0, 9.0]] * 2), fooled), [1, 3])


def test_queries_are_the_formula_at_the_step_of_success_and_the_oracles_own_count():
  # Two classes, y = 0. Example 0 is out of reach (margin 10 eps ||w||_1); the others flip at
  # some step s, the first step where a queried member is labelled 1.
  rng = np.random.default_rng(3)
  w = np.zeros((D, 2), np.float32)
  w[:, 1] = rng.normal(size=D)
  model = lambda z: (z.reshape(z.shape[0], -1) - 0.5) @ jnp.asarray(w)
  sign = np.sign(w[:, 1])
  eps, population, max_steps = 0.05, 4, 60
  depth = np.asarray([10.0, 0.1, 0.3, 0.5])  # Margin / (eps ||w||_1).
  x = 0.5 - (depth * eps)[:, None] * sign[None, :]
  x = jnp.asarray(x.reshape(4, 4, 4, 1), jnp.float32)
  y = jnp.zeros(4, jnp.int32)
  budget = gen_attack_query_budget(eps=eps, population=population, max_steps=max_steps)
  assert budget == formula(max_steps, population) == 181
  run = lambda oracle: jax.jit(lambda x, y, k: gen_attack(
      oracle, x, y, k, eps=eps, population=population, max_steps=max_steps))(
          x, y, jax.random.key(2))

  oracle = RecordingOracle(model, "scores", budget=budget)
  x_adv, info = run(oracle)
  steps, queries = np.asarray(info["steps"]), np.asarray(info["queries"])
  answered = np.stack([ok for _, ok in oracle.calls], 1)  # (B, calls).
  sizes = np.asarray([a.shape[1] for a, _ in oracle.calls])
  np.testing.assert_array_equal(queries, (answered * sizes).sum(-1))  # The Oracle's count.
  np.testing.assert_array_equal(queries, formula(steps, population))
  assert sizes[0] == population and (sizes[1:] == population - 1).all()
  assert not info["success"][0] and steps[0] == max_steps and queries[0] == budget
  np.testing.assert_array_equal(x_adv[0], x[0])
  # Per call (B, Q, K) answers, NaN where unanswered: was any member labelled 1?
  fooled = np.stack([np.any(np.nan_to_num(a, nan=-np.inf).argmax(-1) == 1, -1)
                     for a, _ in oracle.calls], 1) & answered
  for b in range(1, 4):
    assert info["success"][b]
    first = int(np.argmax(fooled[b]))  # Call i is step i + 1.
    assert fooled[b].any() and steps[b] == first + 1 and not answered[b, first + 1:].any()
    assert model(x_adv[b:b + 1]).argmax(-1)[0] == 1
    assert float(info["linf"][b]) <= eps + 1e-6
  assert steps[1:].max() > 1  # Not only the initial population.

  # A budget one query short of a step: the unreachable example stops after the step before,
  # with exactly that step's count and its input unchanged.
  short = RecordingOracle(model, "scores", budget=budget - 1)
  x_adv, info = run(short)
  assert int(info["steps"][0]) == max_steps - 1 and not info["success"][0]
  assert int(info["queries"][0]) == formula(max_steps - 1, population)
  np.testing.assert_array_equal(x_adv[0], x[0])
  # Too small a budget for the initial population: nothing is queried, nothing changes.
  x_adv, info = run(RecordingOracle(model, "scores", budget=population - 1))
  np.testing.assert_array_equal(info["queries"], 0)
  np.testing.assert_array_equal(info["steps"], 0)
  np.testing.assert_array_equal(info["success"], False)
  np.testing.assert_array_equal(x_adv, x)


def _linear_case(num_classes, seed):
  r = np.random.default_rng(seed)
  w = r.normal(size=(D, num_classes)).astype(np.float32)
  b = r.normal(size=num_classes).astype(np.float32)
  x = r.uniform(0.4, 0.6, (24, D)).astype(np.float32)
  return w, b, x


@pytest.mark.parametrize("target", ["given", "none"])
def test_linear_softmax_known_answer(target):
  # Inside the box, max over the L-inf ball of (w_j - w_y) . delta is eps ||w_j - w_y||_1: the
  # margin z_y - z_j can be flipped iff eps exceeds (z_y - z_j) / ||w_j - w_y||_1. Targeted:
  # two classes, t = 1 - y (exact). Untargeted: four classes, the easiest j (exact).
  num_classes = 2 if target == "given" else 4
  w, b, x = _linear_case(num_classes, seed=3)
  z = x.astype(np.float64) @ w + b
  y = z.argmax(-1)
  rows = np.arange(len(x))
  l1 = np.abs(w[None, :, :] - w[:, y].T[:, :, None]).sum(1)  # (B, K): ||w_j - w_y||_1.
  need = (z[rows, y][:, None] - z) / np.where(l1 > 0, l1, np.inf)
  need[rows, y] = np.inf
  t = 1 - y if target == "given" else None
  threshold = need[rows, t] if target == "given" else need.min(-1)
  eps = float(np.median(threshold))
  assert eps <= 0.35  # x +- eps stays inside [0, 1]: the box does not bind.
  model = lambda v: v.reshape(v.shape[0], -1) @ jnp.asarray(w) + jnp.asarray(b)
  oracle = Oracle(as_target(model), "scores", budget=10**6)
  x_adv, info = jax.jit(lambda x, y, k: gen_attack(
      oracle, x, y, k, eps=eps, max_steps=1500, target=target,
      targets=None if t is None else jnp.asarray(t)))(
          jnp.asarray(x), jnp.asarray(y), jax.random.key(4))
  success = np.asarray(info["success"])
  reachable, unreachable = threshold < eps / 1.25, threshold >= eps
  assert reachable.sum() >= 5 and unreachable.sum() >= 5
  np.testing.assert_array_equal(success[reachable], True)
  np.testing.assert_array_equal(success[unreachable], False)  # Impossible inside the ball.
  np.testing.assert_array_equal(np.asarray(x_adv)[~success], x[~success])
  labels = np.asarray(model(x_adv)).argmax(-1)
  np.testing.assert_array_equal(labels[success] == t[success] if t is not None
                                else labels[success] != y[success], True)
  assert float(info["linf"].max()) <= eps + 1e-6
  np.testing.assert_array_equal(info["steps"][unreachable], 1500)
  np.testing.assert_array_equal(info["queries"], formula(np.asarray(info["steps"]), 6))


def test_bad_input_is_refused():
  model = lambda v: v.reshape(v.shape[0], -1) @ jnp.ones((4, 3))
  x = jnp.full((2, 2, 2, 1), 0.5)
  y = jnp.zeros(2, jnp.int32)
  oracle = Oracle(as_target(model), "scores", 100)
  key = jax.random.key(0)
  with pytest.raises(TypeError, match="eps"):  # No default radius: budgets differ by paper.
    gen_attack(oracle, x, y, key)
  with pytest.raises(ValueError, match="eps"):
    gen_attack(oracle, x, y, key, eps=-0.1)
  with pytest.raises(ValueError, match="population"):
    gen_attack(oracle, x, y, key, eps=0.1, population=1)
  with pytest.raises(ValueError, match="targets"):
    gen_attack(oracle, x, y, key, eps=0.1, target="given")
  with pytest.raises(ValueError, match="target='given'"):
    gen_attack(oracle, x, y, key, eps=0.1, targets=y)
  with pytest.raises(ValueError, match="target"):
    gen_attack(oracle, x, y, key, eps=0.1, target="least_likely")
  with pytest.raises(ValueError, match="scores"):
    gen_attack(Oracle(as_target(model), "labels", 100), x, y, key, eps=0.1)
  with pytest.raises(ValueError, match="max_steps"):
    gen_attack(oracle, x, y, key, eps=0.1, max_steps=0)
  with pytest.raises(ValueError, match="steps"):
    gen_attack_query_budget(eps=0.1, steps=10)
  assert gen_attack_query_budget(eps=0.1) == 10000 * 5 + 1  # The defaults: main.py's flags.
