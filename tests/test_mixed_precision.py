"""Mixed precision (config.model.compute_dtype = "bfloat16", models/precision.py): the network
computes in bfloat16 while parameters, optimiser state, BatchNorm statistics, checkpoints and
outputs stay float32, and attacks find what they find in float32.

The model is paper 000's MNIST CNN (convolutions, BatchNorm, dropout, dense layers) on 12x12
blob images, so every kind of layer is covered in seconds."""

import json
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import blob_dataset, tiny_config
from defenses_jax import parallel
from defenses_jax import train as train_lib
from defenses_jax.config import attack
from defenses_jax.config_checks import check_config
from defenses_jax.defenses import Network
from defenses_jax.evaluation.runner import make_attack_runner, make_predictor, run_over_dataset
from defenses_jax.evaluation.threat_models import TargetBuilder, parse_attack_specs
from defenses_jax.experiment import Experiment, TrainedExperiment, state_specs, variables
from defenses_jax.models.cnn import BN_MOMENTUM
from defenses_jax.models.precision import with_compute_dtype
from defenses_jax.train import make_train_step

MODEL = "tt_mnist_cnn"


def _config(compute_dtype: str, epochs: int = 2):
  c = tiny_config(model=MODEL, epochs=epochs)
  c.model.compute_dtype = compute_dtype
  return c


def _datasets(num_test: int = 40):
  return blob_dataset(96, seed=0), blob_dataset(num_test, seed=1)


def _train_step(exp):
  specs = state_specs(exp.defense)
  return parallel.data_parallel(make_train_step(exp.model, exp.defense, exp.tx, 0.0, "conv"),
                                exp.mesh, in_specs=(specs, parallel.SHARDED, parallel.REPLICATED),
                                out_specs=(specs, parallel.REPLICATED))


def _batch(exp, ds, n=16):
  return parallel.shard_batch({"image": ds.images[:n], "label": ds.labels[:n],
                               "index": np.arange(n)}, exp.mesh)


def _compute_dtypes(hlo: str) -> set:
  """Element types of every convolution's and matmul's operands in lowered StableHLO text (a
  weight gradient added up over chunks asks for a float32 result of bfloat16 operands)."""
  lines = [line for line in hlo.splitlines()
           if "stablehlo.convolution" in line or "stablehlo.dot_general" in line]
  assert lines, "no convolution or matmul found: the parsing below would prove nothing"
  operands = [re.search(r": \((tensor<.*?>), (tensor<.*?>)\) ->", line) for line in lines]
  assert all(operands), "an operand type the parsing below does not read"
  return {re.match(r"tensor<[0-9x]*(\w+)>", t).group(1) for m in operands for t in m.groups()}


def _float_dtypes(tree) -> set:
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_bfloat16_computes_in_bfloat16_and_keeps_state_and_outputs_float32(tmp_path):
  datasets = _datasets()
  key = parallel.replicate(jax.random.key(1), parallel.make_mesh())
  hlo, states = {}, {}
  for dtype in ("float32", "bfloat16"):
    exp = Experiment(_config(dtype), str(tmp_path), datasets)
    state, batch, step = exp.initial_state(), _batch(exp, datasets[0]), _train_step(exp)
    hlo[dtype] = step.lower(state, batch, key).as_text()
    states[dtype] = (state, step(state, batch, key)[0], exp)
  # Every convolution and matmul of the train step (forward and backward) runs in bfloat16:
  # drop either cast (params or input) and flax promotes them back to float32.
  assert _compute_dtypes(hlo["bfloat16"]) == {"bf16"}
  assert _compute_dtypes(hlo["float32"]) == {"f32"}
  before, after, exp = states["bfloat16"]
  # Master weights, Adam's moments and BatchNorm statistics stay float32, and the step moved
  # them (a step that silently did nothing would also keep the dtypes).
  for field in ("params", "opt_state", "batch_stats"):
    assert _float_dtypes(getattr(after, field)) == {"float32"}, field
  assert not np.allclose(after.params["Dense_1"]["kernel"], before.params["Dense_1"]["kernel"])
  assert not np.allclose(after.batch_stats["BatchNorm_0"]["mean"],
                         before.batch_stats["BatchNorm_0"]["mean"])
  # The deployed network (what evaluation and attacks call): bfloat16 inside, float32 outside,
  # and the attacker's input gradient is float32 and not zero.
  net = Network(exp.model, variables(after.params, after.batch_stats))
  x = jnp.asarray(datasets[1].images[:8])
  assert _compute_dtypes(jax.jit(net).lower(x).as_text()) == {"bf16"}
  outputs = jax.jit(net.outputs)(x)
  assert outputs["logits"].dtype == outputs["embedding"].dtype == jnp.float32
  grad = jax.jit(jax.grad(lambda z: net(z)[:, 0].sum()))(x)
  assert grad.dtype == jnp.float32 and np.abs(grad).max() > 0
  # Close to the float32 network on the same weights (bfloat16 keeps 8 bits: 0.4% per rounding).
  f32 = jax.jit(Network(states["float32"][2].model, variables(after.params, after.batch_stats)))(x)
  np.testing.assert_allclose(outputs["logits"], f32, atol=0.05 * float(jnp.abs(f32).max()))


def test_batchnorm_running_statistics_keep_float32_precision(tmp_path):
  # Two states whose running statistics differ by 2^-12, a step bfloat16 cannot hold at 1.0
  # (it keeps 8 bits: 1 + 2^-12 rounds to 1). In training mode the statistics do not touch the
  # forward pass, so after one step they must still differ by exactly momentum * 2^-12 (float32
  # arithmetic, rtol 1e-3); statistics cast to bfloat16 anywhere on the way would give 0.
  datasets = _datasets()
  exp = Experiment(_config("bfloat16"), str(tmp_path), datasets)
  state, batch, step = exp.initial_state(), _batch(exp, datasets[0]), _train_step(exp)
  key = parallel.replicate(jax.random.key(1), exp.mesh)
  delta = 2.0 ** -12
  a = state.replace(batch_stats=jax.tree.map(jnp.ones_like, state.batch_stats))
  b = state.replace(batch_stats=jax.tree.map(lambda s: jnp.ones_like(s) + delta,
                                             state.batch_stats))
  new_a, new_b = step(a, batch, key)[0], step(b, batch, key)[0]
  for (path, sa), sb in zip(jax.tree_util.tree_flatten_with_path(new_a.batch_stats)[0],
                            jax.tree.leaves(new_b.batch_stats)):
    assert sa.dtype == sb.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(sb) - np.asarray(sa), BN_MOMENTUM * delta,
                               rtol=1e-3, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A float32-trained checkpoint of the CNN (12 steps, 128 test images)."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  train_lib.train_and_evaluate(_config("float32"), workdir, datasets=_datasets(128))
  return workdir


def _attack_results(workdir, compute_dtype, entries):
  """{key: (success rate, mean L2 of the successful examples)} through evaluation's own path:
  the attack runner, then a fresh prediction (another compiled program) on its output."""
  trained = TrainedExperiment(_config(compute_dtype), workdir, _datasets(128))
  exp, state = trained.exp, trained.state
  predict = make_predictor(exp.model, exp.defense, exp.mesh)
  results = {}
  for spec in parse_attack_specs(ml_collections.ConfigDict(entries), exp.defense):
    runner = make_attack_runner(spec, TargetBuilder("white_box", exp.model, exp.defense),
                                exp.mesh)
    key = jax.random.key(0)

    def one_batch(batch, number):
      x_adv, _ = runner(state.params, state.batch_stats, batch["image"], batch["label"],
                        jax.random.fold_in(key, number))
      return {"x_adv": x_adv, "pred": predict(state.params, state.batch_stats, x_adv, key)}

    out = run_over_dataset(exp.test_ds, 64, exp.mesh, one_batch)
    x_adv = np.concatenate([o["x_adv"] for o in out])
    success = np.concatenate([o["pred"] for o in out]) != exp.test_ds.labels
    l2 = np.sqrt(((x_adv - exp.test_ds.images) ** 2).reshape(len(x_adv), -1).sum(-1))
    results[spec.key] = (success.mean(), l2[success].mean())
  return results


def test_pgd_and_cw_l2_find_the_same_under_bfloat16_as_under_float32(trained):
  # PGD at an eps where about half the images fall (so a change in either direction shows),
  # CW-L2 with a small budget (it reaches every image; its distortion is the measure).
  entries = {"pgd": attack("pgd", "PGD", eps=0.17, step_size=0.17 / 8, steps=20),
             "cw": attack("cw_l2", "CW", binary_search_steps=4, max_iterations=50,
                          learning_rate=0.05, initial_const=1.0)}
  f32 = _attack_results(trained, "float32", entries)
  bf16 = _attack_results(trained, "bfloat16", entries)
  assert 0.3 <= f32["pgd"][0] <= 0.7 and f32["cw"][0] >= 0.95, f32  # Not a vacuous comparison.
  # Tolerances. Success rate: 0.05 on these 128 images (6 images) is about one binomial standard
  # error of a success rate near 0.5 (sqrt(0.25 / 128) = 0.044): a difference below it is below
  # the sampling noise of the measurement itself. Distortion: 5% relative; bfloat16 keeps 8 bits
  # (0.4% per rounding). Measured on 2 CPU cores: PGD 0.523 in both, mean L2 1.674 / 1.672;
  # CW 1.0 in both, mean L2 1.209 / 1.218 (+0.7%). Without parallel.COMPILER_OPTIONS, CW fell
  # to 0.914 under bfloat16 (its examples sit just past the boundary, and the fresh prediction
  # ran the network rounded differently from the attack's loop) and PGD to 0.508.
  for key in entries:
    assert abs(bf16[key][0] - f32[key][0]) <= 0.05, (key, f32, bf16)
    assert abs(bf16[key][1] / f32[key][1] - 1) <= 0.05, (key, f32, bf16)


def test_float32_checkpoints_resume_and_evaluate_under_bfloat16_unchanged_in_format(trained,
                                                                                  tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(trained, workdir)
  # A config.json saved before the switch existed has no compute_dtype: still the same model.
  path = f"{workdir}/tiny/config.json"
  with open(path) as f:
    saved = json.load(f)
  del saved["model"]["compute_dtype"]
  with open(path, "w") as f:
    json.dump(saved, f)
  f32 = TrainedExperiment(_config("float32"), workdir, _datasets(128)).state
  # Precision is not part of the model's identity: training on in bfloat16 is accepted...
  state, _ = train_lib.train(_config("bfloat16", epochs=3), workdir, datasets=_datasets(128))
  assert int(state.step) > int(f32.step)
  # ... and what it saves is float32, as before.
  restored = TrainedExperiment(_config("float32", epochs=3), workdir, _datasets(128)).state
  assert int(restored.step) == int(state.step)
  for field in ("params", "opt_state", "batch_stats"):
    assert _float_dtypes(getattr(restored, field)) == {"float32"}, field
  assert jax.tree.structure(restored.params) == jax.tree.structure(f32.params)


def test_a_suite_does_not_reuse_an_evaluation_made_in_another_precision(trained, tmp_path):
  from defenses_jax.suites.runner import evaluation_is_current
  workdir = str(tmp_path / "copy")
  shutil.copytree(trained, workdir)
  f32, bf16 = _config("float32"), _config("bfloat16")
  from defenses_jax.evaluation.results import EvalSummary
  result = EvalSummary("tiny", 12, "blobs", 40, 32, 1.0, 1.0, {},
                       eval_config=json.loads(json.dumps(f32.eval.to_dict()))).to_json()
  del result["compute_dtype"]  # As written before the switch existed.
  (tmp_path / "copy" / "tiny" / "results").mkdir(exist_ok=True)
  for saved_dtype, current in ((None, {"float32"}), ("float32", {"float32"}),
                               ("bfloat16", {"bfloat16"})):
    with open(tmp_path / "copy" / "tiny" / "results" / "eval.json", "w") as f:
      json.dump(result if saved_dtype is None else {**result, "compute_dtype": saved_dtype}, f)
    assert {c.model.compute_dtype for c in (f32, bf16)
            if evaluation_is_current(c, workdir)} == current, saved_dtype


@pytest.mark.parametrize("bad", ["float16", "bf16", "float64", ""])
def test_an_unknown_compute_dtype_is_refused_before_any_compute(tmp_path, bad):
  config = _config("float32")
  config.model.compute_dtype = bad
  with pytest.raises(ValueError, match=r"model\.compute_dtype must be one of \['bfloat16', "
                                       r"'float32'\]"):
    check_config(config)
  with pytest.raises(ValueError, match="compute_dtype"):
    train_lib.train_and_evaluate(config, str(tmp_path), datasets=_datasets())
  assert not (tmp_path / "tiny").exists()  # Refused before the experiment directory was made.
  with pytest.raises(ValueError, match="compute_dtype"):
    with_compute_dtype(object(), bad)


def test_compiler_options_leave_float32_results_unchanged(tmp_path):
  # parallel.COMPILER_OPTIONS is applied to every compile, float32 ones included: it must not
  # change a float32 network's numbers at all.
  exp = Experiment(_config("float32"), str(tmp_path), _datasets())
  state = exp.initial_state()
  net = Network(exp.model, variables(state.params, state.batch_stats))
  x = jnp.asarray(_datasets()[1].images)
  grad = lambda z: jax.grad(lambda q: net(q).max(-1).sum())(z)
  for fn in (net, grad):
    np.testing.assert_array_equal(jax.jit(fn)(x),
                                  jax.jit(fn, compiler_options=parallel.COMPILER_OPTIONS)(x))


def test_cached_fits_and_saved_examples_are_kept_apart_by_precision():
  """Detector states, universal perturbations and saved adversarial examples made on a bfloat16
  network are not reused for a float32 one (or the reverse); float32 keeps the keys it always
  had, so files saved before the switch still match."""
  from defenses_jax.checkpoint import resume_changes, step_artifact_path
  from defenses_jax.detectors import cache_path as detector_path, create_detector
  from defenses_jax.evaluation import universal
  from defenses_jax.evaluation.attacked_set import crafted_as
  detector = create_detector("class_mean", 10)
  old_detector = step_artifact_path("/e", "detectors", detector.name, dict(vars(detector)), 7)
  assert detector_path("/e", detector, 7) == old_detector
  assert detector_path("/e", detector, 7, "bfloat16") != old_detector
  spec = parse_attack_specs({"uap": attack("uap", "UAP", fit_examples=8, eps=0.1)}, None)[0]
  assert (universal.cache_path("/e", spec, "white_box", 0, 7)
          != universal.cache_path("/e", spec, "white_box", 0, 7, "bfloat16"))
  pgd_spec = parse_attack_specs({"pgd": attack("pgd", "PGD", eps=0.1, step_size=0.01, steps=2)}, None)[0]
  assert crafted_as(pgd_spec) == dict(pgd_spec.params)
  assert crafted_as(pgd_spec, "bfloat16") != crafted_as(pgd_spec)
  # A resumed run that switches precision records it (not refused: the state is float32).
  saved = {"model": {"name": MODEL}, "train": {"epochs": 2}}
  now = {"model": {"name": MODEL, "compute_dtype": "bfloat16"}, "train": {"epochs": 2}}
  assert resume_changes(saved, now, 5) == {"model.compute_dtype": ["float32", "bfloat16"]}
  assert resume_changes(saved, saved, 5) == {}
