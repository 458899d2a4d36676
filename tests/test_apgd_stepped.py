"""APGD and APGD-T with restarts as per-example state machines (attacks/apgd_stepped.py): the
exact success sets of test_apgd's linear model, the fixed-batch attack's results when both start
from the same point, and the cost: an example stops after the first run that fools it."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import as_target
from defenses_jax.attacks.apgd_stepped import apgd_stepped, apgd_targeted_stepped
from defenses_jax.attacks.stepped import run_batch
from test_apgd import K, X, Y, linear, reachable

TARGET = as_target(linear)

# The modules (the package exports a function `apgd` under the module's name).
apgd_module = importlib.import_module("defenses_jax.attacks.apgd")
stepped_module = importlib.import_module("defenses_jax.attacks.apgd_stepped")


def run(build, x, y, key=jax.random.key(0), count_steps=False):
  return jax.jit(lambda xs, ys: run_batch(build(TARGET), xs, ys, key, count_steps))(x, y)


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.3)])
def test_stepped_apgd_finds_exactly_the_examples_a_perturbation_can_fool(norm, eps):
  expected = reachable(eps, norm)
  for name, build in (
      ("ce", functools.partial(apgd_stepped, eps=eps, norm=norm, steps=50)),
      ("dlr", functools.partial(apgd_stepped, eps=eps, norm=norm, steps=50, loss="dlr")),
      ("t", functools.partial(apgd_targeted_stepped, eps=eps, norm=norm, steps=50,
                              num_target_classes=K - 1))):
    x_adv, info = run(build, jnp.asarray(X), jnp.asarray(Y))
    np.testing.assert_array_equal(info["success"], expected, err_msg=name)
    limit = info["linf"] if norm == "linf" else info["l2"]
    assert float(limit.max()) <= eps * (1 + 1e-5) and 0 <= float(x_adv.min()) <= 1


def test_from_the_same_start_stepped_and_fixed_batch_attacks_agree(monkeypatch):
  """The random start is the only draw: fixed, every run, restart and iteration must match the
  fixed-batch attack's (a wrong run or restart count, checkpoint index or kept point shows)."""
  fixed_start = lambda key, x, eps, norm: jnp.clip(x + 0.5 * eps, 0.0, 1.0)
  monkeypatch.setattr(apgd_module, "_start", fixed_start)
  monkeypatch.setattr(stepped_module, "_start", fixed_start)
  x, y = jnp.asarray(X), jnp.asarray(Y)
  for name, batch_fn, build, kw in (
      ("apgd", apgd_module.apgd, apgd_stepped, dict(eps=0.06, steps=30, restarts=2)),
      ("apgd dlr l2", apgd_module.apgd, apgd_stepped,
       dict(eps=0.25, norm="l2", steps=12, loss="dlr")),
      ("apgd_t", apgd_module.apgd_targeted, apgd_targeted_stepped,
       dict(eps=0.06, steps=30, num_target_classes=3, restarts=2))):
    expected, expected_info = jax.jit(lambda a, b: batch_fn(TARGET, a, b, jax.random.key(0),
                                                            **kw))(x, y)
    got, info = run(functools.partial(build, **kw), x, y)
    assert 0 < int(info["success"].sum()) < len(X), name  # Some fooled, some robust.
    np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(info["success"], expected_info["success"], err_msg=name)
    # The step size of the example's last run: the fixed batch goes on with fooled examples
    # while others are robust, so only the robust ones ran the same last run.
    robust = ~np.asarray(info["success"])
    np.testing.assert_allclose(info["step_size"][robust], expected_info["step_size"][robust],
                               err_msg=name)


def test_an_example_stops_after_the_first_run_that_fools_it():
  steps, restarts, targets = 10, 2, K - 1
  build = functools.partial(apgd_targeted_stepped, eps=0.08, steps=steps, restarts=restarts,
                            num_target_classes=targets)
  fooled = reachable(0.08, "linf")
  alone = jax.jit(lambda xs, ys: run_batch(build(TARGET), xs, ys, jax.random.key(0), True))
  per_image = []
  for i in range(12):
    _, info = alone(jnp.asarray(X[i:i + 1]), jnp.asarray(Y[i:i + 1]))
    per_image.append(int(info["steps"]))
    if not fooled[i]:  # Every target, every restart: 1 + steps gradients each.
      assert per_image[-1] == targets * restarts * (1 + steps), i
    else:  # Stops at the end of a run: a multiple of a run, short of all of them.
      assert per_image[-1] % (1 + steps) == 0 and per_image[-1] < targets * restarts * (
          1 + steps), i
  assert 0 < fooled[:12].sum() < 12


def test_bad_apgd_settings_fail_before_compute():
  with pytest.raises(ValueError, match="steps"):
    apgd_stepped(TARGET, eps=0.1, steps=0)
  with pytest.raises(ValueError, match="loss"):
    apgd_stepped(TARGET, eps=0.1, loss="hinge")
  with pytest.raises(ValueError, match="num_target_classes"):
    run(functools.partial(apgd_targeted_stepped, eps=0.1, num_target_classes=K),
        jnp.asarray(X[:2]), jnp.asarray(Y[:2]))
