"""robustness.evaluate on models with known answers: a linear model (analytic robust accuracy,
per image), an undefended CNN at a large eps, a model that masks its gradients, a randomised
model, and a detector-guarded one whose detector an unaware attack runs into."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import blob_dataset
from defenses_jax import robustness
from defenses_jax.errors import EvaluationInputError

# The quick preset, smaller still: these models are tiny and the tests compile every attack.
SMALL = dataclasses.replace(robustness.PRESETS["quick"], name="test", apgd_steps=20,
                            square_queries=200, sanity_examples=24, check_restarts=2,
                            unbounded_steps=40)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linear_problem(num=48, dim=16, num_classes=10, seed=0):
  """A linear classifier and images in [0.3, 0.7], where no ball below radius 0.3 meets the
  box's faces, so its robust accuracy has a closed form."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(dim, num_classes)).astype(np.float32)
  x = rng.uniform(0.3, 0.7, size=(num, 4, dim // 4, 1)).astype(np.float32)
  y = (x.reshape(num, -1) @ w).argmax(-1).astype(np.int32)
  return w, x, y


def analytic_robust(w, x, y, eps, norm):
  """An image is robust iff every other class's margin exceeds eps times the dual norm of the
  weight difference (L1 for an L-inf ball, L2 for an L2 ball)."""
  flat = x.reshape(len(x), -1)
  robust = []
  for xi, yi in zip(flat, y):
    diffs = w[:, yi:yi + 1] - w  # (dim, classes)
    dual = np.abs(diffs).sum(0) if norm == "linf" else np.sqrt((diffs ** 2).sum(0))
    slack = xi @ diffs - eps * dual
    robust.append(bool(np.all(np.delete(slack, yi) > 0)))
  return np.array(robust)


@pytest.mark.parametrize("norm, eps", [("linf", 0.08), ("l2", 0.3)])
def test_a_linear_model_gets_its_analytic_robust_accuracy_image_by_image(norm, eps):
  w, x, y = linear_problem()
  expected = analytic_robust(w, x, y, eps, norm)
  assert 0.2 < expected.mean() < 0.9  # The eps leaves both robust and broken images.
  report = robustness.evaluate(lambda z: z.reshape(len(z), -1) @ w, x, y, eps=eps, norm=norm,
                               key=jax.random.key(0), preset=SMALL, show_progress=False)
  np.testing.assert_array_equal(report.per_example["robust"], expected)
  assert report.robust_accuracy == pytest.approx(expected.mean())
  assert report.sanity_passed, report.warnings
  # Every broken image's adversarial example lies in the ball, the box, and is misclassified.
  broken = ~expected
  adv = report.adversarial[broken]
  delta = (adv - x[broken]).reshape(broken.sum(), -1)
  size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
  assert np.all(size <= eps * (1 + 1e-5)) and adv.min() >= 0 and adv.max() <= 1
  assert np.all((adv.reshape(len(adv), -1) @ w).argmax(-1) != y[broken])


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    return nn.Dense(4)(x.reshape(len(x), -1))


@pytest.fixture(scope="module")
def trained_cnn():
  """An undefended CNN trained for 150 steps on the blob images (4 classes)."""
  train, test = blob_dataset(256, seed=0), blob_dataset(64, seed=1)
  model = SmallCNN()
  params = model.init(jax.random.key(0), train.images[:1])
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, xb, yb):
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
        model.apply(p, xb), yb).mean()
    updates, opt = tx.update(jax.grad(loss)(params), opt)
    return optax.apply_updates(params, updates), opt

  for i in range(150):
    rows = np.arange(i * 32, i * 32 + 32) % len(train.images)
    params, opt = step(params, opt, train.images[rows], train.labels[rows])
  return jax.jit(lambda z: model.apply(params, z)), test.images, test.labels


def test_an_undefended_cnn_goes_to_zero_at_a_large_eps(trained_cnn):
  logits_fn, x, y = trained_cnn
  report = robustness.evaluate(logits_fn, x, y, eps=0.45, key=jax.random.key(1),
                               preset=SMALL, show_progress=False)
  assert report.clean_accuracy >= 0.95
  assert report.robust_accuracy <= 0.05
  assert report.row("APGD-CE").robust_accuracy_alone <= 0.05
  assert report.sanity_passed, report.warnings


def test_gradient_masking_fails_the_sanity_checks_and_square_finds_what_apgd_cannot():
  """Input quantisation: the model's gradient is zero everywhere, so APGD is blind; Square,
  reading only scores, breaks most of the images, and the checks say the gradients lie."""
  w, x, y = linear_problem(num=48)
  quantised = lambda z: (jnp.round(z * 8) / 8).reshape(len(z), -1) @ w
  y = np.asarray(quantised(jnp.asarray(x)).argmax(-1), np.int32)
  report = robustness.evaluate(quantised, x, y, eps=0.2, key=jax.random.key(0),
                               preset=SMALL, show_progress=False)
  status = {c.check: c.status for c in report.sanity}
  assert status["gradients"] == "warn" and status["unbounded"] == "warn"
  assert status["black_box_not_stronger"] == "warn"
  gradient_alone = report.row("APGD-CE").robust_accuracy_alone
  assert report.row("Square").broken >= 0.3 * len(x)
  assert report.robust_accuracy <= gradient_alone - 0.3
  assert not report.sanity_passed


def test_a_randomised_model_is_attacked_with_eot_and_judged_by_its_majority():
  """Logit noise far below the margins that decide: its decisions, and its robust accuracy
  under the EOT battery, are the linear model's."""
  w, x, y = linear_problem()
  eps = 0.08
  expected = analytic_robust(w, x, y, eps, "linf")

  def noisy(z, key):
    logits = z.reshape(len(z), -1) @ w
    return logits + 1e-4 * jax.random.normal(key, logits.shape)

  report = robustness.evaluate(noisy, x, y, eps=eps, key=jax.random.key(0), randomised=True,
                               preset=SMALL, show_progress=False)
  assert report.model == "randomised"
  assert all(f"EOT {SMALL.eot_draws}" in r.description for r in report.rows
             if r.access == "gradient")
  np.testing.assert_array_equal(report.per_example["robust"], expected)
  with pytest.raises(EvaluationInputError, match="randomised=True"):
    robustness.evaluate(noisy, x, y, eps=eps, key=jax.random.key(0), preset=SMALL,
                        show_progress=False)


def guarded_problem(num=40, seed=0):
  """4 classes read off x[:, 0, :4]: the true class's pixel is 0.7, the others 0.3. The
  detector flags a total of those four pixels >= 1.7 (clean: 1.6). Raising every other class's
  pixel by eps (what an attack that ignores the detector does) is flagged; raising one and
  lowering the true class's is accepted, and misclassified once eps > 0.2."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 4, num).astype(np.int32)
  x = rng.uniform(0.3, 0.7, (num, 2, 4, 1)).astype(np.float32)
  x[:, 0, :4, 0] = 0.3 + rng.uniform(-0.01, 0.01, (num, 4))
  x[np.arange(num), 0, y, 0] = 0.7
  logits = lambda z: 10.0 * z[:, 0, :4, 0]
  score = lambda z: jnp.sum(z[:, 0, :4, 0], -1)
  return x, y, logits, score


def test_a_guarded_model_is_scored_misclassified_and_accepted():
  x, y, logits, score = guarded_problem()
  report = robustness.evaluate(logits, x, y, eps=0.25, key=jax.random.key(0),
                               detector_score=score, detector_threshold=1.7,
                               preset=SMALL, show_progress=False)
  assert report.model == "detector-guarded" and report.clean_flagged_rate == 0.0
  assert report.clean_accuracy == 1.0
  # The detector-aware battery gets every image through misclassified and accepted ...
  assert report.robust_accuracy == 0.0
  adv = report.adversarial
  assert np.all(np.asarray(logits(adv)).argmax(-1) != y)
  assert np.all(np.asarray(score(adv)) < 1.7)
  # ... while the attack that ignores the detector is flagged on every image: the robust
  # accuracy AutoAttack-style evaluation would report is wrong.
  ignored = report.row("APGD-CE, detector ignored")
  assert ignored.detector_aware is False and ignored.robust_accuracy_alone == 1.0


def test_same_seed_same_report_and_the_writers_round_trip(tmp_path):
  w, x, y = linear_problem(num=24)
  model = lambda z: z.reshape(len(z), -1) @ w
  run = lambda: robustness.evaluate(model, x, y, eps=0.05, key=jax.random.key(3),
                                    preset=SMALL, show_progress=False)
  first, second = run(), run()
  assert first.per_example == second.per_example
  np.testing.assert_array_equal(first.adversarial, second.adversarial)
  first.write(str(tmp_path))
  data = json.loads((tmp_path / "report.json").read_text())
  assert data["robust_accuracy"] == first.robust_accuracy
  assert [r["name"] for r in data["rows"]] == ["APGD-CE", "APGD-T", "Square"]
  assert data["sanity_passed"] is True and len(data["per_example"]["robust"]) == 24
  markdown = (tmp_path / "report.md").read_text()
  assert "| APGD-T |" in markdown and "black_box_not_stronger" in markdown
  saved = np.load(tmp_path / "adversarial.npz")
  np.testing.assert_array_equal(saved["index"],
                                np.flatnonzero(~np.array(data["per_example"]["robust"])))


@pytest.mark.parametrize("change, message", [
    (dict(eps=-0.1), "eps must be"),
    (dict(eps=1.0), "whole"),
    (dict(norm="l1"), "unknown norm"),
    (dict(images="scaled"), r"\[0, 1\]"),
    (dict(labels="float"), "integer classes"),
    (dict(labels="out_of_range"), r"must lie in \[0, 10\)"),
    (dict(detector_score=lambda z: jnp.zeros(len(z))), "threshold"),
    (dict(preset="fast"), "unknown preset"),
    (dict(norm="l2", eps=4.0), "covers the whole"),
    (dict(images="channels_first"), "channels-first"),
    (dict(key=0), "jax.random.key"),
    (dict(detector_score=lambda z: jnp.zeros(len(z)), detector_threshold=0.5,
          detector_weight=-1.0), "detector_weight"),
])
def test_bad_input_is_refused_before_any_attack_runs(change, message):
  w, x, y = linear_problem(num=8)
  args = dict(images=x, labels=y, eps=0.05, norm="linf", key=jax.random.key(0),
              preset=SMALL, show_progress=False)
  replace = {"scaled": x * 255, "float": y.astype(np.float32),
             "channels_first": np.transpose(x, (0, 3, 1, 2)),
             "out_of_range": np.where(np.arange(len(y)) == 0, 10, y).astype(np.int32)}
  args.update({k: replace.get(v, v) if isinstance(v, str) else v for k, v in change.items()})
  with pytest.raises(EvaluationInputError, match=message):
    robustness.evaluate(lambda z: z.reshape(len(z), -1) @ w, **args)


def test_the_command_evaluates_a_model_it_imports(tmp_path):
  w, x, y = linear_problem(num=16)
  np.save(tmp_path / "w.npy", w)
  np.savez(tmp_path / "data.npz", images=x, labels=y)
  (tmp_path / "my_model.py").write_text(
      "import numpy as np, os\n"
      "def load():\n"
      "  w = np.load(os.path.join(os.path.dirname(__file__), 'w.npy'))\n"
      "  return lambda z: z.reshape(len(z), -1) @ w\n")
  env = {**os.environ, "PYTHONPATH": ROOT}
  command = [sys.executable, "-m", "defenses_jax.evaluate_model", "--model=my_model:load",
             f"--data={tmp_path / 'data.npz'}", "--eps=0.04", "--preset=quick",
             f"--out={tmp_path / 'out'}"]
  done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  data = json.loads((tmp_path / "out" / "report.json").read_text())
  np.testing.assert_array_equal(data["per_example"]["robust"],
                                analytic_robust(w, x, y, 0.04, "linf"))
  assert "worst-case robust accuracy" in done.stdout
  refused = subprocess.run(command[:3] + ["--model=my_model:nothing"] + command[4:], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=600)
  assert refused.returncode == 1 and "has no function 'nothing'" in refused.stderr
  assert "Traceback" not in refused.stderr


def test_a_randomised_decision_is_the_majority_of_its_draws():
  """A model that answers a wrong class on 10% of its draws, at an eps too small to matter: by
  the majority of 5 draws it is right on ~99% of images (one draw would give ~90%, any draw
  of 5 ~59%)."""
  w, x, y = linear_problem(num=64)

  def flaky(z, key):
    logits = z.reshape(len(z), -1) @ w
    flip = jax.random.bernoulli(key, 0.1, (len(z),))
    return jnp.where(flip[:, None], jnp.roll(logits, 1, axis=-1), logits)

  report = robustness.evaluate(flaky, x, y, eps=1e-4, key=jax.random.key(0), randomised=True,
                               preset=SMALL, show_progress=False)
  assert SMALL.decision_draws == 5
  assert report.clean_accuracy >= 0.95 and report.robust_accuracy >= 0.85


def test_the_battery_follows_what_the_system_declares():
  """Which rows each kind of system gets under each preset (rows are built, not run)."""
  from defenses_jax.robustness.battery import build_rows
  from defenses_jax.robustness.system import System
  plain, guarded = System(lambda z: z), System(lambda z: z, False, lambda z: z[:, 0], 0.5)
  names = lambda system, preset, **kw: [r.name for r in build_rows(
      system, robustness.PRESETS[preset], kw.get("eps", 0.1), kw.get("norm", "linf"),
      kw.get("classes", 10), kw.get("shape", (28, 28, 1)))]
  assert names(plain, "standard") == ["APGD-CE", "APGD-T", "Square"]
  assert names(plain, "standard", classes=3) == ["APGD-CE", "APGD-DLR", "Square"]
  assert names(plain, "standard", shape=(20,)) == ["APGD-CE", "APGD-T"]  # Square needs images.
  assert names(plain, "thorough") == ["APGD-CE", "APGD-T", "PGD-margin", "Square", "ES sign-PGD"]
  assert names(plain, "thorough", norm="l2") == ["APGD-CE", "APGD-T", "PGD-margin", "Square"]
  assert names(guarded, "standard") == ["APGD-CE", "APGD-T", "Square",
                                        "APGD-CE, detector ignored"]
  assert names(guarded, "thorough")[:4] == ["APGD-CE", "APGD-T", "APGD-T, detector x0.1",
                                            "APGD-T, detector x10"]
  rows = build_rows(guarded, robustness.PRESETS["standard"], 0.1, "linf", 10, (28, 28, 1))
  assert [r.detector_aware for r in rows] == [True, True, True, False]
  assert [r.cascade for r in rows] == [True, True, True, False]


def test_a_noisy_randomised_model_is_broken_at_least_where_the_exact_attack_breaks_it():
  """Logit noise of the size of the margins: the exact attack on the noise-free linear model
  (each other class's corner of the ball), judged by the system's majority decision, breaks
  some images; the EOT battery must break at least those (up to the decision's noise)."""
  from defenses_jax.robustness.system import System
  w, x, y = linear_problem(num=64)
  eps = 0.05

  def noisy(z, key):
    logits = z.reshape(len(z), -1) @ w
    return logits + 0.5 * jax.random.normal(key, logits.shape)

  flat, broken = x.reshape(len(x), -1), np.zeros(len(x), bool)
  for j in range(w.shape[1]):
    corner = np.clip(flat - eps * np.sign((w[:, y] - w[:, [j]]).T), 0, 1)
    through, _ = System(noisy, True).decide(jnp.asarray(corner.reshape(x.shape)), jnp.asarray(y),
                                            jax.random.key(7), 25)
    broken |= np.asarray(through) & (y != j)
  report = robustness.evaluate(noisy, x, y, eps=eps, key=jax.random.key(0), randomised=True,
                               preset=SMALL, show_progress=False)
  assert 0.05 < broken.mean() < 0.5
  assert report.robust_accuracy <= 1 - broken.mean() + 0.05


def test_a_refused_clean_image_is_not_robust_and_a_tie_at_the_threshold_is_flagged():
  """Four of 40 clean images have their three other-class pixels at 0.35, which puts the
  detector's total at 1.75: refused, so not robust (Tramer 2022), though nothing gets through
  at eps 0.15 (that takes eps > 0.175 on them, 0.2 on the others). Then a detector whose
  score saturates at its threshold (every flagged input scores exactly the threshold): the
  attack must not take a tie for a success."""
  x, y, logits, score = guarded_problem()
  for i in range(4):
    x[i, 0, [c for c in range(4) if c != y[i]], 0] += 0.05
  report = robustness.evaluate(logits, x, y, eps=0.15, key=jax.random.key(0),
                               detector_score=score, detector_threshold=1.7, preset=SMALL,
                               show_progress=False)
  assert report.clean_flagged_rate == 0.1 and report.misclassified_and_accepted == 0.0
  assert report.robust_accuracy == 0.9
  assert report.per_example["refused_clean"] == [True] * 4 + [False] * 36

  x, y, logits, score = guarded_problem()
  saturated = lambda z: jnp.clip(10 * (score(z) - 1.6), 0.0, 1.0)  # 1.0 iff total >= 1.7.
  report = robustness.evaluate(logits, x, y, eps=0.25, key=jax.random.key(0),
                               detector_score=saturated, detector_threshold=1.0, preset=SMALL,
                               show_progress=False)
  assert report.robust_accuracy == 0.0 and report.misclassified_and_accepted == 1.0
  assert np.all(np.asarray(saturated(report.adversarial)) < 1.0)
  # Taking a tie for a success, APGD-CE stopped at a flagged point and left APGD-T an image.
  assert report.row("APGD-CE").broken == len(x)


def test_a_binary_classifier_gets_its_analytic_answer():
  w, x, y = linear_problem(num=48, num_classes=2)
  report = robustness.evaluate(lambda z: z.reshape(len(z), -1) @ w, x, y, eps=0.08,
                               key=jax.random.key(0), preset=SMALL, show_progress=False)
  assert [r.name for r in report.rows] == ["APGD-CE", "Square"]
  np.testing.assert_array_equal(report.per_example["robust"],
                                analytic_robust(w, x, y, 0.08, "linf"))


def test_noise_and_transfer_beating_a_blind_battery_are_flagged():
  """The quantised model without Square: APGD is blind, so random noise and APGD on the
  un-quantised surrogate both do better than the battery, and no black-box attack ran."""
  w, x, y = linear_problem(num=48)
  linear = lambda z: z.reshape(len(z), -1) @ w
  quantised = lambda z: linear(jnp.round(z * 8) / 8)
  y = np.asarray(quantised(jnp.asarray(x)).argmax(-1), np.int32)
  report = robustness.evaluate(quantised, x, y, eps=0.2, key=jax.random.key(0),
                               preset=dataclasses.replace(SMALL, square_queries=0),
                               surrogate_fn=linear, show_progress=False)
  status = {c.check: c.status for c in report.sanity}
  assert status["noise_weaker"] == "warn" and status["transfer_not_stronger"] == "warn"
  assert status["black_box_not_stronger"] == "warn"


def test_non_finite_logits_count_as_misclassified():
  """NaN logits on some images, labelled 0, where argmax of NaNs happens to answer."""
  w, x, y = linear_problem(num=32)
  nan_on_bright = lambda z: jnp.where(z[:, :1, :1, 0].reshape(-1, 1) > 0.6, jnp.nan,
                                      z.reshape(len(z), -1) @ w)
  bright = x[:, 0, 0, 0] > 0.6
  y = np.where(bright, 0, y).astype(np.int32)
  report = robustness.evaluate(nan_on_bright, x, y, eps=1e-4, key=jax.random.key(0),
                               preset=SMALL, show_progress=False)
  assert 0 < bright.sum() < len(x)
  assert report.clean_accuracy == pytest.approx(1 - bright.mean())
  assert not np.any(np.array(report.per_example["robust"])[bright])
