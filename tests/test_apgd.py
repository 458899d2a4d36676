"""APGD and the AutoAttack-style worst case: the DLR loss by hand, the step-size schedule, the
halving rule on hand-made losses, exact success sets on linear models (where the optimal attack
is known), APGD at least as strong as PGD on a small CNN, and the worst case never above any
member's robust accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from defenses_jax import experiment as experiment_lib
from defenses_jax import train as train_lib
from defenses_jax.attacks import apgd, apgd_targeted, as_target, autoattack, dlr_loss, pgd
from defenses_jax.attacks.query import Oracle
from defenses_jax.attacks.query.square import square
from defenses_jax.attacks.apgd import checkpoints
from defenses_jax.attacks.autoattack import member_keys

K = 5
W = np.random.default_rng(5).normal(size=(16, K)).astype(np.float32)
linear = lambda z: z.reshape(z.shape[0], -1) @ W
X = np.random.default_rng(2).uniform(0.3, 0.7, (64, 4, 4, 1)).astype(np.float32)
Y = np.argmax(linear(X), -1)


def reachable(eps, norm):
  """Without the box (inputs are far from it), the best perturbation of norm eps changes the
  gap z_j - z_y by eps * ||w_j - w_y||_dual: the example can be fooled iff some gap closes."""
  z = linear(X)
  dual = {"linf": lambda v: np.abs(v).sum(), "l2": np.linalg.norm}[norm]
  return np.array([max(z[i, j] - z[i, Y[i]] + eps * dual(W[:, j] - W[:, Y[i]])
                       for j in range(K) if j != Y[i]) > 0 for i in range(len(X))])


def test_dlr_loss_by_hand():
  z = jnp.asarray([[3.0, 1.0, 0.0, -1.0]] * 2)
  np.testing.assert_allclose(dlr_loss(z, jnp.asarray([0, 1])), [-2 / 3, 2 / 3], rtol=1e-6)
  np.testing.assert_allclose(dlr_loss(z[:1], jnp.asarray([0]), jnp.asarray([2])), [-3 / 3.5],
                             rtol=1e-6)  # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
  np.testing.assert_allclose(dlr_loss(10 * z + 4, jnp.asarray([0, 1])), [-2 / 3, 2 / 3],
                             rtol=1e-5)  # Shift and scale invariant.


def test_step_size_halves_at_every_checkpoint_of_a_flat_loss():
  assert checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]  # AutoAttack's 22% / 3% / 6%.
  flat = lambda z: jnp.zeros((z.shape[0], 4)) + jnp.asarray([1.0, 0.0, -1.0, -2.0])
  x = jnp.full((2, 4, 4, 1), 0.5)
  _, info = apgd(as_target(flat), x, jnp.zeros(2, jnp.int32), jax.random.key(0), eps=0.1, steps=100)
  np.testing.assert_allclose(info["step_size"], 2 * 0.1 / 2**8)  # Never an increase: 8 halvings.


# AutoAttack's halving rule (autopgd_base.py), at each checkpoint, per example: halve (and go
# back to the best point) if
#   (1) the loss rose on at most rho of the steps since the last checkpoint
#       (check_oscillation: increases <= rho * k), or
#   (2) the last checkpoint did not halve and the best loss has not risen since
#       ((1 - reduced_last_check) * (loss_best_last_check >= loss_best)).
# Hand-made losses, four checkpoints of 4 steps each, rho = 0.75: (1) holds unless all 4 steps
# rose. The start's loss is 0 and every point is x = i + 1, so the point a halving returns to
# names the step where the best loss was. Start: step 2 eps = 1, reduced_last_check = 1.
# (With a start loss of 0 the reference's wrap-around first comparison, see apgd.py, agrees
# with ours.)
HALVING_CASES = {
    # name: (losses of steps 0-15, step after each checkpoint, x after each checkpoint)
    "neither: always rising": (
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
        [1, 1, 1, 1], [4, 8, 12, 16]),
    # cp1: 1 rise -> (1), back to step 0's point. cp2: 4 rises, (2) off (cp1 halved). cp3: 4
    # rises, cp2 did not halve and the best (10) has not risen since: (2) alone. cp4: 4 rises,
    # still no new best, but cp3 halved: no.
    "(2) alone at cp3": (
        [10, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 8.5, 9, 9.5, 9.75],
        [0.5, 0.5, 0.25, 0.25], [1, 8, 1, 16]),
    # cp1: 3 rises of 4 = rho * 4 exactly: "at most" halves, back to step 2's point (loss 3).
    "(1) at its bound": (
        [1, 2, 3, 2.5, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [0.5, 0.5, 0.5, 0.5], [3, 8, 12, 16]),
    # cp2: no rise and no new best since cp1, which did not halve: (1) and (2); back to step 3.
    "(1) and (2) at cp2": (
        [1, 2, 3, 4, 0, 0, 0, 0, 1, 2, 3, 5, 6, 7, 8, 9],
        [1, 0.5, 0.5, 0.5], [4, 4, 12, 16]),
    # cp2: 2 rises, but a new best (6, at step 6): (1) alone; back to step 6's point.
    "(1) alone after a checkpoint that did not halve": (
        [1, 2, 3, 4, 5, 4, 6, 5, 7, 8, 9, 10, 11, 12, 13, 14],
        [1, 0.5, 0.5, 0.5], [4, 7, 12, 16]),
}


def test_step_size_halving_follows_autoattack_rule_on_hand_made_losses():
  from defenses_jax.attacks.apgd import _first_state, _schedule, _update
  # The schedule's interval lengths for 100 steps (checkpoints 21, 40, 56, ...: see above).
  mask, lengths = _schedule(100)
  assert list(np.asarray(lengths)[np.asarray(mask)]) == [22, 19, 16, 13, 10, 7, 6, 6]

  names = list(HALVING_CASES)
  losses = jnp.asarray([HALVING_CASES[n][0] for n in names], jnp.float32)
  b, steps = losses.shape
  at = [3, 7, 11, 15]
  schedule = (jnp.zeros((steps,), bool).at[jnp.asarray(at)].set(True),
              jnp.zeros((steps,), jnp.int32).at[jnp.asarray(at)].set(4))
  zeros, no = jnp.zeros((b, 1)), jnp.zeros((b,), bool)
  s = _first_state(zeros, zeros, jnp.zeros((b,)), no, eps=0.5)
  step_after, x_after = [], []
  for i in range(steps):
    s = _update(s, jnp.full((b,), i), jnp.full((b, 1), i + 1.0), zeros, losses[:, i], no,
                schedule, 0.75)
    step_after.append(np.asarray(s["step"]))
    x_after.append(np.asarray(s["x"])[:, 0])
  step_after, x_after = np.stack(step_after, 1), np.stack(x_after, 1)
  for k, name in enumerate(names):
    _, want_step, want_x = HALVING_CASES[name]
    np.testing.assert_array_equal(step_after[k, at], want_step, err_msg=name)
    np.testing.assert_array_equal(x_after[k, at], want_x, err_msg=name)
    before = np.concatenate([[1.0], step_after[k, at[:-1]]])
    # Between checkpoints the step size never changes.
    np.testing.assert_array_equal(step_after[k].reshape(4, 4)[:, :3],
                                  np.repeat(before[:, None], 3, 1), err_msg=name)


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.3)])
def test_apgd_finds_exactly_the_examples_a_perturbation_can_fool_on_a_linear_model(norm, eps):
  expected = reachable(eps, norm)
  assert 0.2 < expected.mean() < 0.95
  x, y = jnp.asarray(X), jnp.asarray(Y)
  target = as_target(linear)
  for name, attack in (("ce", lambda k: apgd(target, x, y, k, eps=eps, norm=norm, steps=50)),
                       ("dlr", lambda k: apgd(target, x, y, k, eps=eps, norm=norm, steps=50,
                                              loss="dlr")),
                       ("t", lambda k: apgd_targeted(target, x, y, k, eps=eps, norm=norm,
                                                     steps=50, num_target_classes=K - 1))):
    x_adv, info = attack(jax.random.key(0))
    np.testing.assert_array_equal(info["success"], expected, err_msg=name)
    limit = info["linf"] if norm == "linf" else info["l2"]
    assert float(limit.max()) <= eps * (1 + 1e-5) and 0 <= float(x_adv.min()) <= 1


def test_apgd_t_with_one_target_aims_at_the_highest_other_class():
  # Class 4 has large weights and a low bias: often reachable although rarely the runner-up.
  w = W.copy()
  w[:, 4] *= 4
  b = np.array([0, 0, 0, 0, -3], np.float32)
  z = X.reshape(len(X), -1) @ w + b
  y = z.argmax(-1)
  eps = 0.05
  gap = lambda i, j: z[i, j] - z[i, y[i]] + eps * np.abs(w[:, j] - w[:, y[i]]).sum()
  runner_up = np.argsort(np.where(np.arange(K) == y[:, None], -np.inf, z), -1)[:, -1]
  expected = np.array([gap(i, j) > 0 for i, j in enumerate(runner_up)])
  any_class = np.array([max(gap(i, j) for j in range(K) if j != y[i]) > 0 for i in range(len(X))])
  assert expected.sum() < any_class.sum()  # Informative: another class is sometimes closer.
  biased = lambda v: v.reshape(v.shape[0], -1) @ w + b
  _, info = apgd_targeted(as_target(biased), jnp.asarray(X), jnp.asarray(y), jax.random.key(0),
                          eps=eps, steps=50, num_target_classes=1)
  np.testing.assert_array_equal(info["success"], expected)
  _, info = apgd_targeted(as_target(biased), jnp.asarray(X), jnp.asarray(y), jax.random.key(0),
                          eps=eps, steps=50, num_target_classes=K - 1)
  np.testing.assert_array_equal(info["success"], any_class)


def test_apgd_t_stops_attacking_once_every_example_is_fooled():
  calls = []

  def counted(z):
    jax.debug.callback(lambda: calls.append(1))
    return linear(z)

  def forward_passes(**kw):
    calls.clear()
    apgd_targeted(as_target(counted), jnp.asarray(X), jnp.asarray(Y), jax.random.key(0), steps=10,
                  **kw)
    jax.effects_barrier()
    return len(calls)

  # Every example falls to its first target at eps 1, so targets 2-4 cost no forward pass.
  assert forward_passes(eps=1.0, num_target_classes=K - 1) == forward_passes(
      eps=1.0, num_target_classes=1)
  # At a budget that leaves examples robust, every target runs.
  assert forward_passes(eps=0.01, num_target_classes=K - 1) > 3 * forward_passes(
      eps=0.01, num_target_classes=1)


def test_targeted_dlr_refuses_fewer_than_four_classes():
  three = lambda z: z.reshape(z.shape[0], -1)[:, :3]
  with pytest.raises(ValueError, match="4 classes"):
    apgd_targeted(as_target(three), jnp.asarray(X), jnp.zeros(64, jnp.int32), jax.random.key(0),
                  eps=0.1)


@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
  from conftest import blob_dataset
  datasets = blob_dataset(96, seed=0), blob_dataset(64, seed=1)
  config = tiny_config(epochs=4, learning_rate=3e-3)
  state, _ = train_lib.train(config, str(tmp_path_factory.mktemp("apgd")), datasets=datasets)
  exp = experiment_lib.Experiment(config, str(tmp_path_factory.mktemp("unused")), datasets)
  variables = experiment_lib.variables(state.params, state.batch_stats)
  net = lambda z: exp.model.apply(variables, z, train=False)
  x, y = jnp.asarray(datasets[1].images), jnp.asarray(datasets[1].labels)
  return net, x, y


def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(small_cnn):
  net, x, y = small_cnn
  eps, steps = 0.15, 20
  _, by_pgd = pgd(as_target(net), x, y, jax.random.key(0), eps=eps, step_size=eps / 4, steps=steps)
  _, by_apgd = apgd(as_target(net), x, y, jax.random.key(0), eps=eps, steps=steps)
  assert 0.1 < float(by_pgd["success"].mean()) < 0.9  # A budget where the attacks differ.
  assert float(by_apgd["success"].mean()) >= float(by_pgd["success"].mean())


def test_autoattack_worst_case_is_never_above_any_member(small_cnn):
  net, x, y = small_cnn
  eps, key = 0.1, jax.random.key(3)
  x_adv, info = autoattack(as_target(net), x, y, key, eps=eps, steps=10, num_target_classes=3,
                           square_queries=300)
  keys = member_keys(key, 3)
  _, ce = apgd(as_target(net), x, y, keys[0], eps=eps, steps=10)
  _, targeted = apgd_targeted(as_target(net), x, y, keys[1], eps=eps, steps=10,
                              num_target_classes=3)
  either = np.asarray(ce["success"]) | np.asarray(targeted["success"])
  # Square runs last, only on the points both APGD runs left robust, and pays no query for
  # the others.
  _, by_square = square(Oracle(as_target(net), "scores", 300), x, y, keys[2], eps=eps,
                        max_queries=300, attack_mask=jnp.asarray(~either))
  assert not np.asarray(by_square["success"])[either].any()
  np.testing.assert_array_equal(np.asarray(by_square["queries"])[either], 0)
  any_member = either | np.asarray(by_square["success"])
  np.testing.assert_array_equal(info["success"], any_member)
  assert 0 < np.mean(either) and np.mean(~any_member) > 0  # Neither all nor nothing.
  broken_by = np.asarray(info["broken_by"])
  np.testing.assert_array_equal(broken_by == 0, np.asarray(ce["success"]))
  np.testing.assert_array_equal(broken_by == 1, np.asarray(targeted["success"]) & ~np.asarray(
      ce["success"]))
  np.testing.assert_array_equal(broken_by == 2, np.asarray(by_square["success"]))
  np.testing.assert_array_equal(info["square_queries"], by_square["queries"])
  assert float(info["linf"].max()) <= eps + 1e-6
