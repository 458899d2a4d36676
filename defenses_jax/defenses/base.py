"""What a defense is, as the training loop, evaluation and attackers see it.

A defense decides (1) how many logits the network has, (2) how a training batch is built from a
data batch inside the compiled step (duplicates, adversarial examples, partners, ...), (3) the
loss on the network's outputs, and (4) the deployed classifier: `deployed(net, x, key,
detector)`, a function of the *input* (so that input transformations, randomised defenses and
detectors can be written), used at every call site: clean accuracy during training,
evaluation, attack targets, monitors and figures. (5) `attack_target(threat_model, net)` is
what an attacker under each threat model differentiates: an attack target (attacks/target.py),
`target(x, key) -> Deployed`, whatever the threat model, built from the deployed classifier and
the defense's `attack_surfaces`. Every method is a pure function, so it can run inside jit and
shard_map; none reads or writes files. Optional behaviour is declared here with defaults, never
discovered with `hasattr`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from defenses_jax import parallel
from defenses_jax.config import THREAT_MODELS
from defenses_jax.attacks.target import Deployed, Target

LogitsFn = Callable[[jax.Array], jax.Array]
# A fitted detector as the deployed system runs it: (outputs, x) -> (B,) scores, `outputs` being
# what `deployed_outputs` computed on x (detectors.Detector.scorer gives one).
DetectorFn = Callable[[dict, jax.Array], jax.Array]
# An attack surface: (net, x, key) -> the class scores an attacker differentiates.
Surface = Callable[[Callable, jax.Array, jax.Array], jax.Array]


class Network:
  """The trained network in inference mode (BatchNorm running statistics, no dropout):
  `net(x)` gives logits, `net.outputs(x)` also the penultimate embedding."""

  def __init__(self, model, variables: dict):
    self.model, self.variables = model, variables

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.model.apply(self.variables, x, train=False)

  def outputs(self, x: jax.Array) -> dict:
    logits, embedding = self.model.apply(self.variables, x, train=False, return_embedding=True)
    return {"logits": logits, "embedding": embedding}


class Defense:
  """Base class. A new defense is a frozen dataclass with `num_classes` and `name` fields,
  registered in defenses.DEFENSES, that writes

  must:  training_batch (what the network trains on: the data batch, its duplicates, its
         adversarial examples, ...);
  may:   what differs from the defaults here, by what it changes:
         the network         output_width, wrap_model;
         training            loss, init_state, state_specs, after_step (needs_input_gradient);
         the deployed system class_logits, deployed (randomised), deployed_outputs (the parts
                             a detector reads);
         attackers           attack_surfaces (adaptive, gray-box, named white-box surfaces);
         other experiments   resolve (options derived from them, parts restored from them);
         evaluation          evaluation_metrics.
  attack_target is not one of them: it builds every threat model's target from these."""

  num_classes: int
  name: str = "defense"
  # The input gradient of the training loss, from the same backward pass as the parameter
  # gradient, is passed to after_step (Free-Adv) only when this is True.
  needs_input_gradient = False
  # A randomised deployed classifier (e.g. a random input transformation) draws from the key it
  # is given, as do its white-box attack targets (an attack passes a fresh key per call).
  randomised = False

  def output_width(self) -> int:
    """Width of the network's last layer (k, or 2k for Target Training)."""
    return self.num_classes

  def wrap_model(self, model):
    """The network the defense trains and deploys, built around the configured model (a defense
    that grows extra heads on it, e.g. paper 003's, returns a wrapping module); default: the
    model itself."""
    return model

  def resolve(self, load_trained: Callable, image_shape: tuple, batch_size: int) -> "Defense":
    """The defense with what it takes from other trained experiments filled in, when the
    experiment is built: options derived from one (paper 003's Classmap, paper 004's f_b step;
    the experiment records every field this changes in its config.json, so the next build
    finds it set) and parts it deploys but does not train (paper 004's frozen f_b, a field
    with compare=False). `load_trained(name)` gives the TrainedExperiment of that name in the
    same workdir; a costly derivation goes through its `cached`, so that the defense itself
    reads and writes no files. Default: itself."""
    return self

  def init_state(self, num_train_examples: int, image_shape: tuple, batch_size: int) -> Any:
    """The defense's own training state (a pytree), checkpointed with the rest."""
    return {}

  def state_specs(self) -> Any:
    """A PartitionSpec prefix of the defense state: replicated by default; per-example
    buffers use P('data') and are split in equal blocks of rows over the devices (the number
    of training examples is rounded up to a multiple of the device count)."""
    return parallel.REPLICATED

  def training_batch(self, batch: dict, key: jax.Array, logits_fn: LogitsFn,
                     defense_state: Any) -> tuple[dict, Any]:
    """From a data batch to the batch the network trains on (must contain `image`).

    `logits_fn` is the network with the current parameters in inference mode, for defenses
    that craft adversarial examples during training. Returns (train_batch, new_defense_state).
    """
    raise NotImplementedError(f"{type(self).__name__} must define training_batch")

  def loss(self, outputs: dict, train_batch: dict) -> tuple[jax.Array, dict]:
    """Scalar loss and metric sums ({'loss': sum, 'correct': sum, 'count': n}); `outputs` holds
    the network's `logits` and penultimate `embedding` in training mode. Default: weighted
    cross-entropy on the batch's labels."""
    return weighted_cross_entropy(outputs["logits"], train_batch["label"], train_batch["weight"])

  def after_step(self, defense_state: Any, train_batch: dict, outputs: dict,
                 input_grad: Optional[jax.Array]) -> Any:
    """Runs inside the step after the backward pass (e.g. class centers, Free-Adv's delta)."""
    return defense_state

  def class_logits(self, logits: jax.Array) -> jax.Array:
    """The k class scores of the deployed classifier from the network's logits."""
    return logits

  def deployed(self, net: Network, x: jax.Array, key: Optional[jax.Array] = None,
               detector: Optional[DetectorFn] = None) -> Deployed:
    """The defense as deployed, on inputs x (key: the randomness of a randomised defense). With
    a fitted `detector`, also its score on x and the `outputs` it read (deployed_outputs)."""
    del key
    if detector is None:
      return Deployed(self.class_logits(net(x)))
    outputs = self.deployed_outputs(net, x)
    return Deployed(outputs["class_logits"], detector(outputs, x), outputs)

  def deployed_outputs(self, net: Network, x: jax.Array) -> dict:
    """What a detector (and a detector-aware attacker) reads of the deployed classifier on x:
    the network's `logits` and penultimate `embedding`, the deployed `class_logits`, and any
    parts of the defense's own (e.g. paper 003's `accept_margin`)."""
    outputs = net.outputs(x)
    outputs["class_logits"] = self.class_logits(outputs["logits"])
    return outputs

  def evaluation_metrics(self, net: Callable, images, key: jax.Array) -> dict:
    """Numbers of the defense itself on the evaluation's clean attacked images, {name: float}
    (e.g. paper 004's distance of the expected transformed image); tables read them as
    '<member>:defense:<name>'. Default: none."""
    return {}

  def attack_surfaces(self) -> dict[str, Surface]:
    """What an attacker may differentiate instead of the deployed system, by name:
    {name: surface(net, x, key) -> class scores}. 'adaptive' is the defense's own adaptive
    attack (threat_model 'adaptive'; paper 000's summed output pairs); 'gray_box', where given,
    replaces the bare network as the gray-box target (paper 003's Z head); any other name is
    picked by an attack's `surface` field under white_box or transfer (paper 004's BPDA
    stand-ins for its transformation). Default: none."""
    return {}

  def attack_target(self, threat_model: str, net: Callable, surface: str = "",
                    detector: Optional[DetectorFn] = None) -> Target:
    """What an attacker under `threat_model` differentiates, as an attack target: white_box
    (and transfer, on its source) the deployed system (with `detector`, if given), or its
    named `surface`; gray_box the bare network (or the defense's 'gray_box' surface);
    adaptive the defense's 'adaptive' surface. Defenses change it through attack_surfaces."""
    if threat_model not in THREAT_MODELS:
      raise ValueError(f"unknown threat_model {threat_model!r}; choose one of {THREAT_MODELS}.")
    if detector is not None and (surface or threat_model not in ("white_box", "transfer")):
      raise ValueError("a detector-aware attack target is the deployed system itself: white-box "
                       f"(or transfer), no surface; got {threat_model!r}, {surface!r}.")
    surfaces = self.attack_surfaces()
    if surface:
      named = white_box_surfaces(self)
      if surface not in named or threat_model not in ("white_box", "transfer"):
        raise ValueError(f"attack surface {surface!r}: defense {self.name!r} has "
                         f"{named or 'none'}, for white-box (or transfer) attacks; got "
                         f"threat_model {threat_model!r}.")
    elif threat_model == "adaptive" and threat_model not in surfaces:
      raise ValueError(f"defense {self.name!r} defines no adaptive attack.")
    elif threat_model == "gray_box" and threat_model not in surfaces:
      return lambda z, key: Deployed(net(z))
    elif threat_model not in ("adaptive", "gray_box"):
      return lambda z, key: self.deployed(net, z, key, detector)
    logits = surfaces[surface or threat_model]
    return lambda z, key: Deployed(logits(net, z, key))


def white_box_surfaces(defense: Defense) -> list[str]:
  """The attack surfaces an attack's `surface` field may name (those not standing for a threat
  model's own target)."""
  return [name for name in defense.attack_surfaces() if name not in THREAT_MODELS]


def weighted_cross_entropy(logits: jax.Array, labels: jax.Array,
                           weights: jax.Array) -> tuple[jax.Array, dict]:
  """Mean cross-entropy over examples with weight 1 and the metric sums that go with it."""
  per_example = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
  count = jnp.sum(weights)
  loss = jnp.sum(per_example * weights) / jnp.maximum(count, 1.0)
  correct = jnp.sum((jnp.argmax(logits, -1) == labels) * weights)
  return loss, {"loss": loss * count, "correct": correct, "count": count}


def unit_weighted(images: jax.Array, labels: jax.Array) -> dict:
  return {"image": images, "label": labels, "weight": jnp.ones(labels.shape, jnp.float32)}
