"""Independent implementations the attack benchmark compares against, on the same model.

- foolbox 3 runs on our jitted logits function directly (fb.JAXModel).
- The adversarial-robustness-toolbox (ART: JSMA, UAP) and AutoAttack's own APGD code
  (fra31/auto-attack: APGD-CE, APGD-T) are PyTorch code, so they attack a PyTorch port of the
  same weights (`TorchMnistCNN`); `torch_port` refuses a port whose logits differ from ours by
  more than 1e-4 on the benchmark images, so both sides attack the same function.

Each `prepare_*` takes (logits_fn, variables, x, y, settings), with x NHWC in [0, 1], does the
untimed set-up (port, parity check, wrappers) and returns a call with no arguments that runs the
attack and returns the adversarial images (NHWC numpy; for a universal attack, x + v). For the
query attacks (foolbox's HopSkipJump and GenAttack, ART's ZOO and Square) the call returns
(x_adv, per-image query counts), counted by `QueryCounter` around the model the library calls.
"""

from __future__ import annotations

import numpy as np

PARITY_TOLERANCE = 1e-4


# ----------------------------------------------------------------------------- foolbox


def foolbox_attack(name: str, eps: float):
  import foolbox as fb
  a = fb.attacks
  cw = lambda binary_steps, steps: a.L2CarliniWagnerAttack(
      binary_search_steps=binary_steps, steps=steps, stepsize=0.01, confidence=0,
      initial_const=1e-3, abort_early=True)
  return {
      "fgsm": (a.FGSM(random_start=False), eps),
      "pgd40": (a.LinfPGD(steps=40, abs_stepsize=0.01, random_start=False), eps),
      "deepfool": (a.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02), None),
      "cw_l2_5x100": (cw(5, 100), None),
      "cw_l2_9x1000": (cw(9, 1000), None),
  }[name]


def prepare_foolbox(name):
  def prepare(logits_fn, variables, x, y, settings):
    del variables
    import foolbox as fb
    import jax
    attack, eps = foolbox_attack(name, settings["eps"])
    model = fb.JAXModel(logits_fn, bounds=(0, 1))
    attack_fn = lambda: np.asarray(jax.block_until_ready(attack(model, x, y, epsilons=eps)[1]))
    fb.attacks.FGSM()(model, x, y, epsilons=0.1)  # Warm-up: compiles the model's forward/grad.
    return lambda: _zero_images_as_failures(attack_fn(), x)
  return prepare


def _zero_images_as_failures(x_adv, x):
    # foolbox's CW returns its all-zero initialisation for examples it never fooled; a black
  # image is usually misclassified, which would count as a "success" at a huge distance.
  # Score those as failures, as our attacks do (they return the clean input).
  never_found = (np.all(x_adv.reshape(len(x), -1) == 0, axis=1)
                 & np.any(np.asarray(x).reshape(len(x), -1) != 0, axis=1))
  return np.where(never_found[:, None, None, None], np.asarray(x), x_adv)


# ----------------------------------------------------------------------------- PyTorch port


def torch_mnist_cnn(variables):
  """The paper 000 MNIST CNN (models/cnn.py TargetTrainingMnistCNN) in PyTorch, inference mode,
  NCHW in, logits out, with our flax weights copied in. Its dropouts act in training mode, as
  ours do, so that training steps compare like with like."""
  import torch
  from torch import nn

  params, stats = variables["params"], variables["batch_stats"]
  t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)

  class TorchMnistCNN(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv0, self.conv1 = nn.Conv2d(1, 32, 3), nn.Conv2d(32, 64, 3)
      # flax's BatchNorm epsilon is 1e-5, as torch's.
      self.bn0, self.bn1 = nn.BatchNorm2d(32), nn.BatchNorm2d(64)
      num_outputs = params["Dense_1"]["kernel"].shape[1]
      self.dense0, self.dense1 = nn.Linear(12 * 12 * 64, 128), nn.Linear(128, num_outputs)
      self.drop0, self.drop1 = nn.Dropout(0.25), nn.Dropout(0.5)

    def forward(self, x):
      x = self.bn0(torch.relu(self.conv0(x)))
      x = self.bn1(torch.relu(self.conv1(x)))
      x = self.drop0(nn.functional.max_pool2d(x, 2))
      x = x.permute(0, 2, 3, 1).reshape(len(x), -1)  # flax flattens NHWC
      return self.dense1(self.drop1(torch.relu(self.dense0(x))))

  model = TorchMnistCNN()
  with torch.no_grad():
    for conv, name in ((model.conv0, "Conv_0"), (model.conv1, "Conv_1")):
      conv.weight.copy_(t(params[name]["kernel"]).permute(3, 2, 0, 1))  # HWIO -> OIHW
      conv.bias.copy_(t(params[name]["bias"]))
    for bn, name in ((model.bn0, "BatchNorm_0"), (model.bn1, "BatchNorm_1")):
      bn.weight.copy_(t(params[name]["scale"]))
      bn.bias.copy_(t(params[name]["bias"]))
      bn.running_mean.copy_(t(stats[name]["mean"]))
      bn.running_var.copy_(t(stats[name]["var"]))
    for dense, name in ((model.dense0, "Dense_0"), (model.dense1, "Dense_1")):
      dense.weight.copy_(t(params[name]["kernel"]).T)
      dense.bias.copy_(t(params[name]["bias"]))
  return model.eval()


def to_nchw(x):
  import torch
  return torch.tensor(np.asarray(x), dtype=torch.float32).permute(0, 3, 1, 2).contiguous()


def to_nhwc(x):
  x = x.detach().numpy() if hasattr(x, "detach") else np.asarray(x)
  return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def logits_gap(model, logits_fn, x) -> float:
  """The largest absolute difference between the PyTorch model's logits on x (NHWC, fed to it
  as NCHW on its device) and logits_fn(x), in whatever mode the model is in."""
  import torch
  device = next(model.parameters()).device
  with torch.no_grad():
    theirs = model(to_nchw(x).to(device)).cpu().numpy()
  return float(np.abs(theirs - np.asarray(logits_fn(x))).max())


def torch_port(logits_fn, variables, x, build=None):
  """The PyTorch model build(variables) (default: the MNIST CNN), in inference mode, after
  checking that it computes our logits on x to PARITY_TOLERANCE."""
  model = (build or torch_mnist_cnn)(variables)
  gap = logits_gap(model, logits_fn, x)
  if gap > PARITY_TOLERANCE:
    raise RuntimeError(f"PyTorch port differs from the JAX model by {gap:.2e} in the logits")
  return model


# ----------------------------------------------------------------------------- ART


def _art_classifier(model, num_classes):
  import torch
  from art.estimators.classification import PyTorchClassifier
  return PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                           nb_classes=num_classes, clip_values=(0.0, 1.0), device_type="cpu")


def _num_classes(logits_fn, x):
  return int(np.asarray(logits_fn(x[:1])).shape[-1])


def prepare_art_jsma(logits_fn, variables, x, y, settings):
  from art.attacks.evasion import SaliencyMapMethod
  num_classes = _num_classes(logits_fn, x)
  classifier = _art_classifier(torch_port(logits_fn, variables, x), num_classes)
  attack = SaliencyMapMethod(classifier, theta=settings["theta"], gamma=settings["gamma"],
                             batch_size=len(x), verbose=False)
  targets = np.eye(num_classes, dtype=np.float32)[np.asarray(settings["targets"])]
  x_nchw = np.asarray(to_nchw(x))
  return lambda: to_nhwc(attack.generate(x_nchw, y=targets))


def prepare_art_uap(logits_fn, variables, x, y, settings):
  from art.attacks.evasion import UniversalPerturbation
  classifier = _art_classifier(torch_port(logits_fn, variables, x), _num_classes(logits_fn, x))
  attack = UniversalPerturbation(
      classifier, attacker="deepfool",
      attacker_params={"max_iter": settings["max_iter_df"], "epsilon": settings["overshoot"],
                       "nb_grads": settings["candidates"], "verbose": False},
      delta=settings["delta"], max_iter=settings["max_passes"], eps=settings["eps"],
      norm=np.inf, batch_size=len(x), verbose=False)
  x_nchw = np.asarray(to_nchw(x))

  def call():
    np.random.seed(0)  # ART shuffles the images with numpy's global generator
    return to_nhwc(attack.generate(x_nchw))
  return call


# ----------------------------------------------------------------------------- AutoAttack


def prepare_autoattack_apgd(targeted: bool):
  """fra31/auto-attack's APGDAttack / APGDAttack_targeted (`pip install
  git+https://github.com/fra31/auto-attack`; it is not on PyPI)."""
  def prepare(logits_fn, variables, x, y, settings):
    import torch
    from autoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    model = torch_port(logits_fn, variables, x)
    common = dict(n_iter=settings["steps"], norm="Linf", n_restarts=1, eps=settings["apgd_eps"],
                  seed=0, device="cpu")
    attack = (APGDAttack_targeted(model, n_target_classes=settings["num_target_classes"],
                                  **common) if targeted else APGDAttack(model, loss="ce", **common))
    x_nchw, labels = to_nchw(x), torch.tensor(np.asarray(y), dtype=torch.long)
    return lambda: to_nhwc(attack.perturb(x_nchw, labels))
  return prepare


# ----------------------------------------------------------------------------- query attacks


class QueryCounter:
  """Counts a reference's model evaluations per attacked image, by wrapping its model function
  (foolbox) or its classifier's `predict` (ART): every row a call evaluates is charged to one of
  the n attacked images. A call of exactly n rows is charged row i to image i (foolbox evaluates
  the whole batch, in order, at every step; so do ART's full-batch calls); inside `charging(i)`
  every row goes to image i (ART's ZOO runs image by image); any other call (ART's Square
  evaluates the subset of still-robust images) charges each row to the attacked image nearest in
  L2 (each row lies within the eps-ball of its own). Library overhead calls (a final success
  check) are model evaluations too and are counted.

  stats() gives per image: `queries`, every evaluation charged; `distinct_queries`, the distinct
  points among them (what an Oracle that caches its answers would charge: foolbox re-evaluates
  the images already done while the rest of the batch searches on, ART's Square re-evaluates its
  current points twice per iteration); `queries_to_first_adversarial`, the distinct points up to
  and including the call in which the image was first evaluated adversarial (misclassified;
  targeted: as its target; all of them if never), what the reference would have spent had it
  stopped each image at its first success, as ours do: for a fixed-eps attack the count
  comparable with ours."""

  def __init__(self, x, y, targets=None):
    self.originals = np.asarray(x, np.float32).reshape(len(x), -1)
    self.labels, self.targets = np.asarray(y), (None if targets is None else
                                                np.asarray(targets))
    self.only = None
    self.reset()

  def reset(self):
    n = len(self.originals)
    self.counts = np.zeros(n, np.int64)
    self.distinct = np.zeros(n, np.int64)
    self.seen = [set() for _ in range(n)]
    self.first_adversarial = np.zeros(n, np.int64)  # 0: never seen adversarial
    self.nearest_rows = 0

  def wrap(self, fn):
    def counted(z, *args, **kwargs):
      out = fn(z, *args, **kwargs)
      self.record(z, out)
      return out
    return counted

  def charging(self, images):
    counter = self

    class Charging:
      def __enter__(self):
        counter.only = images

      def __exit__(self, *exc):
        counter.only = None
    return Charging()

  def record(self, z, scores):
    rows = np.asarray(z, np.float32).reshape(len(z), -1)
    m, n = len(rows), len(self.originals)
    if self.only is not None and np.ndim(self.only) == 0:
      image = np.full(m, self.only)
    elif self.only is not None and m == len(self.only):
      image = np.asarray(self.only)
    elif m == n:
      image = np.arange(n)
    else:
      d = ((rows ** 2).sum(1)[:, None] - 2 * rows @ self.originals.T
           + (self.originals ** 2).sum(1)[None, :])
      image = np.argmin(d, axis=1)
      self.nearest_rows += m
    predicted = np.argmax(np.asarray(scores), axis=-1)
    adversarial = (predicted == self.targets[image] if self.targets is not None
                   else predicted != self.labels[image])
    np.add.at(self.counts, image, 1)
    for i, row in zip(image, rows):
      seen, h = self.seen[i], hash(row.tobytes())
      if h not in seen:
        seen.add(h)
        self.distinct[i] += 1
    hit = np.zeros(n, bool)
    hit[image[adversarial]] = True
    new = hit & (self.first_adversarial == 0)
    self.first_adversarial[new] = self.distinct[new]

  def stats(self):
    """Per-image counts (see the class docstring)."""
    return {"queries": self.counts.copy(), "distinct_queries": self.distinct.copy(),
            "queries_to_first_adversarial": np.where(self.first_adversarial > 0,
                                                     self.first_adversarial, self.distinct)}


def _reset_eagerpy_rng():
  # foolbox draws JAX noise from eagerpy's global key: restart it, so every timed call of a
  # reference attack draws the same noise.
  import eagerpy as ep
  ep.JAXTensor.key = None


def prepare_foolbox_hsj(logits_fn, variables, x, y, settings):
  """foolbox 3's HopSkipJumpAttack from its default initialisation (LinearSearchBlendedUniform-
  NoiseAttack, 50 steps, at most 1000 uniform-noise draws), run here as foolbox runs it, so that
  an image whose draws all fail counts as a failure (clean input) instead of foolbox raising for
  the whole batch: uniform noise is almost always classified as one class (8 for this model),
  so for an image of that class no draw may be adversarial. HopSkipJump then starts from the
  drawn points (foolbox's own `starting_points`), as it would after its own init."""
  del variables
  import foolbox as fb
  import jax
  import jax.numpy as jnp
  counter = QueryCounter(x, y)
  model = fb.JAXModel(counter.wrap(logits_fn), bounds=(0, 1))
  attack = fb.attacks.HopSkipJumpAttack(
      steps=settings["hsj_steps"], initial_gradient_eval_steps=settings["hsj_init_evals"],
      max_gradient_eval_steps=settings["hsj_max_evals"], gamma=settings["hsj_gamma"],
      stepsize_search="geometric_progression", constraint=settings["hsj_norm"])
  init = fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50)
  criterion = fb.criteria.Misclassification(jnp.asarray(y))
  jax.block_until_ready(logits_fn(x))  # Warm-up: compiles the forward pass for this batch.

  def call():
    import warnings
    _reset_eagerpy_rng()
    counter.reset()
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # "failed to draw sufficient random inputs"
      starts = init.run(model, x, criterion)
    ok = np.asarray(jnp.argmax(logits_fn(starts), -1) != y)  # uncounted check
    x_adv = np.array(x)
    if ok.any():
      idx = np.flatnonzero(ok)
      with counter.charging(idx):
        x_adv[idx] = np.asarray(jax.block_until_ready(attack(
            model, x[idx], y[idx], epsilons=None, starting_points=starts[idx])[1]))
    return x_adv, counter.stats()
  return call


def prepare_foolbox_genattack(logits_fn, variables, x, y, settings):
  """foolbox 3's GenAttack (targeted only): the settings' targets, eps, population, mutation
  probability / range (its minima: foolbox always adapts them), temperature and steps."""
  del variables
  import foolbox as fb
  import jax
  targets = np.asarray(settings["targets"])
  counter = QueryCounter(x, y, targets)
  model = fb.JAXModel(counter.wrap(logits_fn), bounds=(0, 1))
  attack = fb.attacks.GenAttack(
      steps=settings["gen_steps"], population=settings["population"],
      mutation_probability=settings["mutation_rate"], mutation_range=settings["alpha"],
      sampling_temperature=settings["temperature"])
  criterion = fb.criteria.TargetedMisclassification(jax.numpy.asarray(targets))
  jax.block_until_ready(logits_fn(x))  # Warm-up.

  def call():
    _reset_eagerpy_rng()
    np.random.seed(0)  # foolbox draws the parents with numpy's global generator
    counter.reset()
    x_adv = np.asarray(jax.block_until_ready(
        attack(model, x, criterion, epsilons=settings["gen_eps"])[1]))
    return x_adv, counter.stats()
  return call


def _counted_art_classifier(logits_fn, variables, x, y):
  """ART's PyTorchClassifier on the parity-checked port, its predict wrapped by a counter."""
  classifier = _art_classifier(torch_port(logits_fn, variables, x), _num_classes(logits_fn, x))
  counter = QueryCounter(to_nchw(x).numpy(), y)
  classifier.predict = counter.wrap(classifier.predict)
  return classifier, counter


def prepare_art_zoo(logits_fn, variables, x, y, settings):
  """ART's ZooAttack, untargeted. ART's own MNIST-incompatible defaults are switched off:
  use_resize (it would attack a 32 x 32 upsampling) and use_importance (with use_resize off its
  probabilities are never refreshed, so sampling is uniform anyway, as ours). batch_size 1, its
  default: with more, as read in its code (not run), every image's coordinate updates are
  written into the first image's noise (its indices are taken modulo one image's size), and
  the images share one Adam state. ART
  predicts each of the 2B + 1 points with its batch_size, i.e. one image at a time."""
  from art.attacks.evasion import ZooAttack
  classifier, counter = _counted_art_classifier(logits_fn, variables, x, y)
  attack = ZooAttack(
      classifier, confidence=0.0, targeted=False, learning_rate=settings["zoo_lr"],
      max_iter=settings["zoo_iterations"], binary_search_steps=settings["zoo_binary_steps"],
      initial_const=settings["zoo_const"], abort_early=True, use_resize=False,
      use_importance=False, nb_parallel=settings["zoo_coordinates"], batch_size=1,
      variable_h=1e-4, verbose=False)
  x_nchw = np.asarray(to_nchw(x))
  labels = np.eye(_num_classes(logits_fn, x), dtype=np.float32)[np.asarray(y)]

  def call():
    np.random.seed(0)  # ART samples the coordinates with numpy's global generator
    counter.reset()
    out = []
    for i in range(len(x_nchw)):  # = ART's own loop over batches of 1, each charged to image i
      with counter.charging(i):
        out.append(attack.generate(x_nchw[i:i + 1], y=labels[i:i + 1]))
    return to_nhwc(np.concatenate(out)), counter.stats()
  return call


def prepare_art_square(logits_fn, variables, x, y, settings):
  """ART's SquareAttack, L-inf, untargeted, margin loss on the logits (its default). Its max_iter
  counts the iterations after the initial stripes, each one new point per still-robust image,
  so max_iter = max_queries - 1 gives both sides the same number of new points; its window
  schedule is on i / max_iter (as ours with rescale_schedule=True)."""
  from art.attacks.evasion import SquareAttack
  classifier, counter = _counted_art_classifier(logits_fn, variables, x, y)
  attack = SquareAttack(classifier, norm=np.inf, max_iter=settings["square_queries"] - 1,
                        eps=settings["square_eps"], p_init=settings["p_init"], nb_restarts=1,
                        batch_size=len(x), verbose=False)
  x_nchw = np.asarray(to_nchw(x))
  labels = np.eye(_num_classes(logits_fn, x), dtype=np.float32)[np.asarray(y)]

  def call():
    np.random.seed(0)  # ART draws windows and signs with numpy's global generator
    counter.reset()
    return to_nhwc(attack.generate(x_nchw, y=labels)), counter.stats()
  return call
