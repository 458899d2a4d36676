"""Independent implementations the attack benchmark compares against, on the same model.

- foolbox 3 runs on our jitted logits function directly (fb.JAXModel).
- The adversarial-robustness-toolbox (ART: JSMA, UAP) and AutoAttack's own APGD code
  (fra31/auto-attack: APGD-CE, APGD-T) are PyTorch code, so they attack a PyTorch port of the
  same weights (`TorchMnistCNN`); `torch_port` refuses a port whose logits differ from ours by
  more than 1e-4 on the benchmark images, so both sides attack the same function.

Each `prepare_*` takes (logits_fn, variables, x, y, settings), with x NHWC in [0, 1], does the
untimed set-up (port, parity check, wrappers) and returns a call with no arguments that runs the
attack and returns the adversarial images (NHWC numpy; for a universal attack, x + v).
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
  NCHW in, logits out, with our flax weights copied in."""
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

    def forward(self, x):
      x = self.bn0(torch.relu(self.conv0(x)))
      x = self.bn1(torch.relu(self.conv1(x)))
      x = nn.functional.max_pool2d(x, 2)
      x = x.permute(0, 2, 3, 1).reshape(len(x), -1)  # flax flattens NHWC
      return self.dense1(torch.relu(self.dense0(x)))

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


def torch_port(logits_fn, variables, x):
  """The PyTorch model, after checking it computes our logits on x."""
  import torch
  model = torch_mnist_cnn(variables)
  with torch.no_grad():
    theirs = model(to_nchw(x)).numpy()
  gap = float(np.abs(theirs - np.asarray(logits_fn(x))).max())
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
