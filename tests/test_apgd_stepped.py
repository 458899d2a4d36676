"""APGD's runs (restarts, APGD-T's targets) per example (attacks/apgd.py, a SteppedAttack; apgd
and apgd_targeted are one batch of it, whose known answers test_apgd checks): each run starts
from the example's own random point, an image's result does not depend on the images beside it,
an example stops after the first run that fools it, and more runs never lose an example."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax.attacks import as_target
from defenses_jax.attacks.apgd import apgd_stepped, apgd_targeted_stepped
from defenses_jax.attacks.stepped import example_keys, run_batch, run_until_done
from test_apgd import K, W, X, Y, linear, reachable

TARGET = as_target(linear)
apgd_module = __import__("defenses_jax.attacks.apgd", fromlist=["apgd"])


def run(build, x, y, key=jax.random.key(0), count_steps=False, logits=linear):
  target = as_target(logits)
  return jax.jit(lambda xs, ys: run_batch(build(target), xs, ys, key, count_steps))(x, y)


def test_on_a_flat_loss_the_last_run_returns_its_random_start_from_the_examples_key():
  """No gradient and no loss change: the attack ends at the last run's start, drawn from the
  example's key (as run_batch derives it from the position) folded with the run and restart;
  so a run that does not restart afresh, or restarts from another key, shows."""
  flat = lambda z: jnp.zeros((z.shape[0], K)) + jnp.arange(K, 0, -1.0)
  x = jnp.asarray(X[:6])
  y = jnp.zeros(6, jnp.int32)
  key = jax.random.key(0)
  keys = example_keys(jax.random.split(key)[0], jnp.arange(6))
  for name, build, last_run, last_restart in (
      ("apgd", functools.partial(apgd_stepped, eps=0.1, steps=3), 0, 0),
      ("apgd 3 restarts", functools.partial(apgd_stepped, eps=0.1, steps=3, restarts=3), 0, 2),
      ("apgd_t", functools.partial(apgd_targeted_stepped, eps=0.1, steps=3, restarts=2,
                                   num_target_classes=3), 2, 1)):
    x_adv, info = run(build, x, y, key, logits=flat)
    expected = jnp.stack([apgd_module._start(
        jax.random.fold_in(jax.random.fold_in(k, last_run), last_restart), xi[None], 0.1,
        "linf")[0] for k, xi in zip(keys, x)])
    np.testing.assert_allclose(x_adv, expected, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(info["linf"], 0.1, rtol=1e-5, err_msg=name)
    assert not np.asarray(info["success"]).any(), name


@pytest.mark.parametrize("name,build", [
    ("apgd", functools.partial(apgd_stepped, eps=0.06, steps=12, restarts=2)),
    ("apgd dlr l2", functools.partial(apgd_stepped, eps=0.25, norm="l2", steps=12, loss="dlr",
                                      restarts=2)),
    ("apgd_t", functools.partial(apgd_targeted_stepped, eps=0.06, steps=12, restarts=2,
                                 num_target_classes=3))])
def test_an_image_gets_the_same_result_whichever_images_are_beside_it(name, build):
  """Image i with its key among other images (same batch shape: XLA rounds a batch of another
  shape differently, which a robust example's L2 highest-loss point carries along)."""
  x, y = jnp.asarray(X[:16]), jnp.asarray(Y[:16])
  others, others_y = jnp.asarray(X[16:32]), jnp.asarray(Y[16:32])
  keys = example_keys(jax.random.key(1), jnp.arange(32))

  @jax.jit
  def attack(xs, ys, ks):
    stepped = build(as_target(linear))
    init_key, loop_key, finish_key = jax.random.split(jax.random.key(2), 3)
    state = stepped.init(xs, ys, ks, init_key)
    state, steps = run_until_done(stepped.step, stepped.done, state, loop_key, xs)
    x_adv, info = stepped.finish(state, finish_key)
    return x_adv, info, steps

  x_adv, info, _ = attack(x, y, keys[:16])
  for i in range(len(x)):
    got, got_info, _ = attack(others.at[i].set(x[i]), others_y.at[i].set(y[i]),
                              keys[16:].at[i].set(keys[i]))
    np.testing.assert_allclose(got[i], x_adv[i], atol=1e-6, err_msg=f"{name} image {i}")
    assert bool(got_info["success"][i]) == bool(info["success"][i]), (name, i)
    np.testing.assert_allclose(got_info["step_size"][i], info["step_size"][i], err_msg=name)
  # Some fooled, some robust: the fooled ones finish first and wait (and must not move) while
  # the robust ones run every run.
  assert 0 < int(info["success"].sum()) < len(x), name


def test_more_restarts_or_targets_never_lose_an_example():
  """Run r, restart q draws the same start whatever the number of runs, so the first runs of
  a longer attack are the shorter attack's: an example it fooled keeps its point, and robust
  accuracy can only fall."""
  x = jnp.asarray(X)
  # Class 4 (large weights, low bias) is often reachable although rarely the runner-up, so
  # later targets fool examples the first one does not.
  w = W.copy()
  w[:, 4] *= 4
  biased = lambda z: z.reshape(z.shape[0], -1) @ w + np.array([0, 0, 0, 0, -3], np.float32)
  for name, logits, few, more in (
      ("restarts", linear, functools.partial(apgd_stepped, eps=0.06, steps=2),
       functools.partial(apgd_stepped, eps=0.06, steps=2, restarts=4)),
      ("targets", biased, functools.partial(apgd_targeted_stepped, eps=0.06, steps=3,
                                            num_target_classes=1),
       functools.partial(apgd_targeted_stepped, eps=0.06, steps=3, num_target_classes=K - 1))):
    y = jnp.argmax(logits(x), -1)
    x_few, info_few = run(few, x, y, logits=logits)
    x_more, info_more = run(more, x, y, logits=logits)
    fooled_few, fooled_more = np.asarray(info_few["success"]), np.asarray(info_more["success"])
    assert (fooled_more >= fooled_few).all() and fooled_more.sum() > fooled_few.sum(), name
    np.testing.assert_array_equal(np.asarray(x_more)[fooled_few], np.asarray(x_few)[fooled_few],
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
