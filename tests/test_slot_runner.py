"""The slot runner: early-stopping attacks over a whole set with finished slots refilled.

A toy attack whose examples need a known number of steps checks the scheduling exactly (which
image each result lands on, how many steps the set costs); the early-stopping attacks (CW-L2,
CW-L-inf, DeepFool, APGD-T with restarts, JSMA, HopSkipJump) check that each image gets what the attack gives it alone, in refilled
slots and in one fixed batch (a finished example's state must not move while others run)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from defenses_jax import parallel
from defenses_jax.attacks import as_target, carlini_wagner
from defenses_jax.attacks.query import Oracle
from defenses_jax.attacks.stepped import SteppedAttack, run_batch
from defenses_jax.evaluation.slot_runner import make_slot_runner

deepfool_module = __import__("defenses_jax.attacks.deepfool", fromlist=["deepfool_stepped"])
jsma_module = __import__("defenses_jax.attacks.jsma", fromlist=["jsma_stepped"])
apgd_module = __import__("defenses_jax.attacks.apgd", fromlist=["apgd_targeted_stepped"])
hsj_module = __import__("defenses_jax.attacks.query.hop_skip_jump",
                        fromlist=["hop_skip_jump_stepped"])
cw_linf_module = __import__("defenses_jax.attacks.carlini_wagner_linf",
                            fromlist=["cw_linf_stepped"])


def counting_attack(_logits_fn) -> SteppedAttack:
  """Example i needs y_i steps; its result is x_i + the steps it took, its info its key's bits
  (so that a result written to the wrong image, or a wrong key, shows)."""

  def init(x, y, example_keys, key):
    del key
    return {"x": x, "left": y, "taken": jnp.zeros_like(y),
            "key_bits": jax.vmap(lambda k: jax.random.bits(k, (), jnp.uint32))(example_keys)}

  def step(s, key):
    del key
    live = s["left"] > 0
    return {**s, "left": s["left"] - live, "taken": s["taken"] + live}

  def finish(s, key):
    del key
    return s["x"] + s["taken"][:, None].astype(s["x"].dtype), {"taken": s["taken"],
                                                               "key_bits": s["key_bits"]}

  return SteppedAttack(init, step, lambda s: s["left"] <= 0, finish)


def _run(build_attack, x, y, slots, chunk_steps=3, params=None, build_logits=None):
  runner = make_slot_runner(build_attack, build_logits or (lambda p, b: None),
                            parallel.make_mesh(1), slots, chunk_steps)
  return runner(params, None, x, y, jax.random.key(7))


def test_each_image_gets_its_own_result_and_the_set_costs_the_busiest_slot():
  steps_needed = np.array([5, 1, 1, 1, 1, 2, 3, 1, 1], np.int32)
  x = np.arange(9, dtype=np.float32)[:, None] * 10.0
  x_adv, info = _run(counting_attack, x, steps_needed, slots=2)
  np.testing.assert_array_equal(x_adv[:, 0], x[:, 0] + steps_needed)
  np.testing.assert_array_equal(info["taken"], steps_needed)
  np.testing.assert_array_equal(info["image_steps"], steps_needed)  # Counted by the runner.
  # Refill on 2 slots: A runs image 0 (steps 1-5) then 6 (6-8); B runs images 1-4 (steps 1-4),
  # 5 (5-6), 7 (7) and 8 (8): 8 steps, the 16 steps of work split evenly. Batch after batch
  # (2 images each) the same set costs 5 + 1 + 2 + 3 + 1 = 12.
  assert info["steps"].tolist() == [8]


def test_one_slot_costs_the_sum_and_more_slots_than_images_the_maximum():
  steps_needed = np.array([2, 4, 3], np.int32)
  x = np.zeros((3, 1), np.float32)
  assert _run(counting_attack, x, steps_needed, slots=1)[1]["steps"].tolist() == [9]
  assert _run(counting_attack, x, steps_needed, slots=8)[1]["steps"].tolist() == [4]


def test_an_images_key_depends_on_its_index_not_on_its_slot():
  steps_needed = np.array([3, 1, 2, 1, 1, 2], np.int32)
  x = np.zeros((6, 1), np.float32)
  bits = [_run(counting_attack, x, steps_needed, slots=s)[1]["key_bits"] for s in (1, 2, 5)]
  np.testing.assert_array_equal(bits[0], bits[1])
  np.testing.assert_array_equal(bits[0], bits[2])
  assert len(set(bits[0].tolist())) == 6


def _mlp_target(params, _batch_stats):
  return as_target(lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"]) @ params["w2"])


@pytest.fixture(scope="module")
def mlp():
  params = {"w1": 0.5 * jax.random.normal(jax.random.key(1), (20, 32)),
            "w2": jax.random.normal(jax.random.key(2), (32, 5))}
  x = np.asarray(jax.random.uniform(jax.random.key(3), (11, 20)))
  y = np.asarray(jnp.argmax(_mlp_target(params, None)(x, None).class_logits, -1))
  return params, x, y


# Attacks whose per-example draws are none or fixed (least-likely targets), so that an image's
# result alone is its result in any batch.
DETERMINISTIC_ATTACKS = [
    ("cw_l2", functools.partial(carlini_wagner.cw_l2_stepped, binary_search_steps=3,
                                max_iterations=30)),
    # Stops on its own at 40-49 steps per image (the constant passes largest_const).
    ("cw_linf", functools.partial(cw_linf_module.cw_linf_stepped, max_iterations=5,
                                  initial_const=0.1, largest_const=10.0, learning_rate=0.05,
                                  max_total_iterations=400)),
    ("deepfool", functools.partial(deepfool_module.deepfool_stepped, max_iter=20)),
    ("jsma", functools.partial(jsma_module.jsma_stepped, target="least_likely", theta=-1.0,
                               gamma=0.6)),
]
# And two that draw from each example's key (random starts, random targets): the key follows
# the image's position in the attacked set.
STEPPED_ATTACKS = DETERMINISTIC_ATTACKS + [
    ("apgd_t", functools.partial(apgd_module.apgd_targeted_stepped, eps=0.05, steps=8,
                                 num_target_classes=3, restarts=2)),
    ("cw_l2_random_target", functools.partial(carlini_wagner.cw_l2_stepped, binary_search_steps=2,
                                              max_iterations=20, target="random")),
    # A query attack, through an Oracle whose rows of different examples share calls: noise
    # draws and directions from each example's key, examples stopping within eps or not.
    ("hop_skip_jump", lambda f: hsj_module.hop_skip_jump_stepped(
        Oracle(f, "labels", 10**6, independent_examples=True), steps=4, init_evals=20,
        max_init_queries=30, chunk=16)),
    ("hop_skip_jump_eps", lambda f: hsj_module.hop_skip_jump_stepped(
        Oracle(f, "labels", 10**6, independent_examples=True), norm="linf", steps=6,
        init_evals=20, max_init_queries=30, chunk=16, eps=0.08)),
]


def _batch_runner(build, params, count_steps=False):
  """The attack on one batch, jitted once (a batch of one image compiles once for all)."""
  return jax.jit(lambda xs, ys: run_batch(build(_mlp_target(params, None)), xs, ys,
                                          jax.random.key(7), count_steps))


def _one_batch(build, params, x, y, count_steps=False):
  return _batch_runner(build, params, count_steps)(x, y)


@pytest.mark.parametrize("name,build", STEPPED_ATTACKS)
def test_refilled_slots_give_each_image_what_one_batch_of_the_set_gives_it(mlp, name, build):
  params, x, y = mlp
  x_adv, info = _run(build, x, y, slots=3, params=params, build_logits=_mlp_target)
  expected, expected_info = _one_batch(build, params, x, y)
  np.testing.assert_allclose(x_adv, expected, atol=1e-5, err_msg=name)
  np.testing.assert_array_equal(info["success"], expected_info["success"])
  assert info["success"].any()


@pytest.mark.parametrize("name,build", DETERMINISTIC_ATTACKS)
def test_one_batch_gives_each_image_what_the_attack_gives_it_alone(mlp, name, build):
  params, x, y = mlp
  run = _batch_runner(build, params, count_steps=True)
  x_adv, info = run(x, y)
  steps_alone = []
  for i in range(len(x)):
    expected, expected_info = run(x[i:i + 1], y[i:i + 1])
    np.testing.assert_allclose(x_adv[i], expected[0], atol=1e-5, err_msg=f"{name} image {i}")
    steps_alone.append(int(expected_info["steps"]))
  # The examples stop at different steps, so the batch's finished ones really wait (and must
  # not move) while the slowest runs.
  assert len(set(steps_alone)) > 1 and int(info["steps"]) == max(steps_alone)


def test_bad_slot_counts_fail_before_compute():
  with pytest.raises(ValueError, match="slots"):
    make_slot_runner(counting_attack, lambda p, b: None, parallel.make_mesh(1), 0)
