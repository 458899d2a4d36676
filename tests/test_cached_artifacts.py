"""Cached artefacts are reused only when verified, and files are written whole (issue: "No silent
wrong numbers"). A detector state whose means were zeroed, a universal perturbation replaced by
ones and a transfer source's examples replaced by other images were all reused silently; now
each is named in a warning and recomputed, and the numbers are those of a fresh run."""

import json
import os
import warnings

import ml_collections
import numpy as np
import pytest

from conftest import blob_dataset, tiny_config
from defenses_jax import artifact_cache, files
from defenses_jax import train as train_lib
from defenses_jax.evaluation import evaluate
from defenses_jax.suites import runner as suite
from experiments.common import attack

PGD = dict(eps=0.3, step_size=0.05, steps=5, random_start=False)


def _config(name, attacks, detector=""):
  c = tiny_config(epochs=3, learning_rate=3e-3)
  c.experiment_name = name
  c.eval.num_attack_examples = 24
  c.eval.sanity.enabled = False
  c.eval.attacks = ml_collections.ConfigDict(attacks)
  if detector:
    c.eval.detection.detector = detector
    c.eval.detection.false_positive_rate = 0.1
  return c


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  """A source experiment (its white-box PGD examples saved) and a target evaluated under a
  transfer of them, a universal perturbation and a class-mean detector: the first results."""
  workdir = str(tmp_path_factory.mktemp("cached"))
  data = blob_dataset(96, seed=0), blob_dataset(64, seed=1)
  source = _config("source", {"pgd": attack("pgd", "PGD", **PGD)})
  target = _config("target", {
      "pgd_transfer": attack("pgd", "PGD transfer", threat_model="transfer",
                             source_experiment="source", **PGD),
      "uap": attack("uap", "UAP", fit_examples=24, eps=0.25, max_passes=2, max_iter_df=5)},
      detector="class_mean")
  target.seed = 1
  for config in (source, target):
    train_lib.train_and_evaluate(config, workdir, datasets=data)
  evaluate(source, workdir, datasets=data)
  first = evaluate(target, workdir, datasets=data)
  return workdir, data, source, target, first


def _only(pattern):
  import glob
  (path,) = glob.glob(pattern)
  return path


def _rewrite(path, change):
  """The file rewritten with `change` applied to its arrays, the way a user or a bug would:
  same names, other content (its recorded checksum left as it was)."""
  with np.load(path) as saved:
    arrays = {k: saved[k] for k in saved.files}
  change(arrays)
  np.savez(path, **arrays)


def _numbers(summary):
  return (summary.attacks["pgd_transfer"].robust_accuracy,
          summary.attacks["uap"].robust_accuracy,
          summary.attacks["uap"].universal["linf"],
          summary.detection.threshold,
          summary.attacks["pgd_transfer"].detection.auc)


def test_tampered_caches_are_named_and_recomputed_and_the_numbers_stay(evaluated):
  workdir, data, source, target, first = evaluated
  detector = _only(os.path.join(workdir, "target", "detectors", "class_mean-*.npz"))
  universal = _only(os.path.join(workdir, "target", "universal", "uap-*.npz"))
  examples = _only(os.path.join(workdir, "source", "results", "adversarial", "pgd-*.npz"))
  _rewrite(detector, lambda a: a.update(means=np.zeros_like(a["means"])))
  _rewrite(universal, lambda a: a.update(v=np.ones_like(a["v"])))
  other_images = blob_dataset(64, seed=7).images[:24]  # Same labels: only the images differ.
  _rewrite(examples, lambda a: a.update(x_adv=other_images))
  with pytest.warns(artifact_cache.StaleCacheWarning) as caught:
    again = evaluate(target, workdir, datasets=data)
  messages = "\n".join(str(w.message) for w in caught)
  for path in (detector, universal, examples):
    assert f"not reusing the cached {path}: its content does not match its checksum" in messages
  assert _numbers(again) == _numbers(first)
  assert again.attacks["uap"].universal["linf"] <= 0.25 + 1e-6


def test_cut_off_cache_files_are_recomputed_not_fatal(evaluated):
  workdir, data, source, target, first = evaluated
  paths = [_only(os.path.join(workdir, "target", "detectors", "class_mean-*.npz")),
           _only(os.path.join(workdir, "target", "universal", "uap-*.npz")),
           _only(os.path.join(workdir, "source", "results", "adversarial", "pgd-*.npz"))]
  for path in paths:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  with pytest.warns(artifact_cache.StaleCacheWarning) as caught:
    again = evaluate(target, workdir, datasets=data)
  messages = "\n".join(str(w.message) for w in caught)
  for path in paths:
    assert f"not reusing the cached {path}: it cannot be read" in messages
  assert _numbers(again) == _numbers(first)


def test_a_verified_cache_is_reused_without_a_warning(evaluated, monkeypatch):
  workdir, data, source, target, first = evaluated
  for config in (source, target):  # Whatever an earlier test damaged is made whole again.
    evaluate(config, workdir, datasets=data)
  from defenses_jax import detectors
  from defenses_jax.evaluation import universal

  def never(*args, **kwargs):
    raise AssertionError("recomputed although a verified cache exists")

  monkeypatch.setattr(detectors.ClassMeanDistance, "fit", never)
  monkeypatch.setattr(universal, "TargetBuilder", never)
  with warnings.catch_warnings():
    warnings.simplefilter("error", artifact_cache.StaleCacheWarning)
    again = evaluate(target, workdir, datasets=data)
  assert _numbers(again) == _numbers(first)
  assert again.attacks["pgd_transfer"].reused_examples.startswith("source/results/")


def _saved(tmp_path, arrays, identity, info=None):
  path = str(tmp_path / "a.npz")
  artifact_cache.save(path, arrays, identity, info)
  return path


def test_a_cache_made_by_something_else_is_not_reused(tmp_path):
  path = _saved(tmp_path, {"v": np.zeros(3)}, {"step": 4, "model": "aa"})
  assert artifact_cache.load(path, {"step": 4, "model": "aa"}).arrays["v"].shape == (3,)
  with pytest.warns(artifact_cache.StaleCacheWarning, match="model: \"aa\" there, \"bb\" now"):
    assert artifact_cache.load(path, {"step": 4, "model": "bb"}) is None
  # Written by the same code but re-digested after the change (a checksum alone would pass):
  # the caller's contract still refuses a perturbation outside its ball.
  path = _saved(tmp_path, {"v": np.ones(3)}, {"step": 4})
  ball = lambda arrays, info: artifact_cache.within_norm_ball(arrays["v"][None], 0.3, "linf")
  with pytest.warns(artifact_cache.StaleCacheWarning, match="linf norm 1 exceeds its eps 0.3"):
    assert artifact_cache.load(path, {"step": 4}, ball) is None
  np.savez(path, v=np.zeros(3))  # A file from before caches carried their identity.
  with pytest.warns(artifact_cache.StaleCacheWarning, match="before cached files carried"):
    assert artifact_cache.load(path, {"step": 4}) is None


def test_norm_ball_and_box_contracts():
  delta = np.array([[0.3, -0.1], [0.0, 0.2]], np.float32)
  assert artifact_cache.within_norm_ball(delta, 0.3, "linf") is None
  assert "exceeds" in artifact_cache.within_norm_ball(delta, 0.29, "linf")
  assert artifact_cache.within_norm_ball(delta, np.sqrt(0.1), "l2") is None
  assert "exceeds" in artifact_cache.within_norm_ball(delta, 0.31, "l2")
  assert artifact_cache.in_box(np.array([0.0, 1.0])) is None
  assert "outside [0, 1]" in artifact_cache.in_box(np.array([0.0, 1.5]))
  assert "non-finite" in artifact_cache.in_box(np.array([np.nan]))
  rows = artifact_cache.row_digests(np.arange(12, dtype=np.float32).reshape(3, 4))
  assert len(set(rows.tolist())) == 3
  assert np.array_equal(rows[:2], artifact_cache.row_digests(
      np.arange(8, dtype=np.float32).reshape(2, 4)))


def test_a_write_killed_half_way_leaves_the_previous_file(tmp_path, monkeypatch):
  path = str(tmp_path / "results" / "eval.json")
  files.write_json(path, {"step": 1})

  def dies_half_way(value, f, **kwargs):
    f.write('{"step": ')
    raise KeyboardInterrupt  # As a kill would stop the process mid-write.

  monkeypatch.setattr(json, "dump", dies_half_way)
  with pytest.raises(KeyboardInterrupt):
    files.write_json(path, {"step": 2})
  monkeypatch.undo()
  assert files.read_json(path) == {"step": 1}
  assert os.listdir(tmp_path / "results") == ["eval.json"]  # No temporary left behind.


def test_cut_off_results_files_are_named_and_recomputed_by_a_suite(tmp_path, blobs):
  """A truncated eval.json or train.json made every relaunch fail with a bare JSONDecodeError;
  a suite now names the file and evaluates the member again."""
  member = _config("only", {"fgsm": attack("fgsm", "FGSM", eps=0.3)})
  config = ml_collections.ConfigDict({
      "suite_name": "s", "description": "d", "members": {"only": member}, "order": ("only",),
      "tables": {"order": ()}})
  suite.run_suite(config, str(tmp_path), datasets=blobs)
  results = tmp_path / "only" / "results"
  first = json.loads((results / "eval.json").read_text())
  for name in ("eval.json", "train.json"):
    (results / name).write_text((results / name).read_text()[:30])
  with pytest.warns(files.DamagedFileWarning) as caught:
    suite.run_suite(config, str(tmp_path), datasets=blobs)
  messages = "\n".join(str(w.message) for w in caught)
  assert f"{results / 'eval.json'} is damaged (not valid JSON" in messages
  again = json.loads((results / "eval.json").read_text())
  assert again["attacks"]["fgsm"]["robust_accuracy"] == first["attacks"]["fgsm"]["robust_accuracy"]
  assert json.loads((results / "train.json").read_text())["final_step"] == 18
  (results / "eval.json").write_text("{")
  with pytest.raises(files.DamagedFileError, match="eval.json is damaged"):
    files.read_json(str(results / "eval.json"))


def test_saved_examples_are_matched_to_their_images_labels_count_and_ball(tmp_path):
  from defenses_jax.evaluation import crafted
  images = blob_dataset(8, seed=0)
  other = blob_dataset(8, seed=5).images  # Other images (the labels are compared apart).
  x_adv = np.clip(images.images + 0.1, 0, 1)
  identity = {"attack": "pgd", "params": {"eps": 0.1}, "step": 3, "model": "m"}
  crafted.save(str(tmp_path / "results"), "pgd", identity, x_adv, images.labels, images.images)
  find = lambda x, labels=images.labels, eps=0.1: crafted.find(str(tmp_path), identity, labels,
                                                                x, eps, "linf")
  reused, path = find(images.images)
  np.testing.assert_array_equal(reused, x_adv)
  np.testing.assert_array_equal(find(images.images[:5], images.labels[:5])[0], x_adv[:5])
  for args, reason in (((other,), "crafted from other images"),
                       ((images.images, images.labels[::-1]), "labels are not those"),
                       ((np.concatenate([images.images] * 2), np.tile(images.labels, 2)),
                        "fewer than the 16 examples"),
                       ((images.images, images.labels, 0.05), "exceeds its eps 0.05")):
    with pytest.warns(artifact_cache.StaleCacheWarning, match=reason):
      assert find(*args) is None
