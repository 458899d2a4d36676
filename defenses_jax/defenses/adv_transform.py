"""Adversarial transformation (paper 004, "defense by attack"): the deployed classifier is
f_a(g(x)), g an attack on a frozen model f_b (defenses/attack_transform.py) started at a random
point of its Delta-ball, f_a trained on g(x) only (equation 1).

f_b is its own experiment (`transform_experiment`: any trained member of the same workdir, e.g.
a standard or adversarially trained small VGG), restored from its checkpoint when this
experiment is built (`resolve`) and never trained further: its weights are constants of
the compiled steps, so no gradient can reach them. Its checkpoint step is recorded in this
experiment's config (`transform_step`), so f_a's checkpoints are refused once f_b is retrained.
An untrained f_b (the paper's Table 1, first column) is `transform_model` initialised from
`transform_seed`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from defenses_jax import parallel
from defenses_jax.defenses.attack_transform import (VARIANTS, TransformSettings,
                                                    attack_transform, bpda_sign,
                                                    equation_5_clip)
from defenses_jax.defenses.base import Defense, Deployed, Network, unit_weighted

# Without a random start g is deterministic and ignores its key; this one stands in for None.
_UNUSED_KEY = 0

# The white-box surfaces an attack can pick (`surface`), each g(x) on the forward pass:
SURFACES = {
    # BPDA-I: the identity on the way back (the paper's Table 1 and Figures 6-7).
    "bpda_identity": None,
    # Equation 5: sgn differentiated as soft sign or tanh, the projection as 1 inside the
    # ball and 1 / (1 + |delta|)^2 outside (the paper's Figure 5).
    "bpda_softsign": "softsign",
    "bpda_tanh": "tanh",
    # Through g's unrolled steps: sgn straight-through, the clips' true derivatives (a second
    # derivative of f_b: beyond the paper).
    "straight_through": "identity",
}


@dataclasses.dataclass(frozen=True)
class AdvTransform(Defense):
  num_classes: int
  transform_experiment: str = ""  # The trained f_b (an experiment of the same workdir).
  transform_model: str = ""  # Or an untrained f_b: this model, initialised from transform_seed.
  transform_model_options: Any = ()  # The untrained model's options (a dict; kept as items).
  transform_seed: int = 0
  transform_step: int = -1  # f_b's checkpoint step (derived; -1: not yet read).
  variant: str = "paper"  # 'paper' | 'code': ../shared/reference/algorithms.md section 7.
  delta: float = 0.2
  steps: int = 13
  step_fraction: float = 0.0  # 0: the variant's (paper 1/6, code 1/10).
  random_start: bool = True
  # The evaluation's own number (Table 1's last row): ||x - E g(x)||_inf, E over metric_samples
  # draws of g, averaged over the first metric_images attacked images.
  metric_images: int = 100
  metric_samples: int = 5000
  name: str = "adv_transform"
  # f_b in inference mode, attached by resolve (not part of the defense's identity).
  frozen: Any = dataclasses.field(default=None, compare=False, repr=False)

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown adv_transform variant {self.variant!r}; choose one of "
                       f"{sorted(VARIANTS)}.")
    if bool(self.transform_experiment) == bool(self.transform_model):
      raise ValueError("adv_transform needs exactly one f_b: `transform_experiment` (a trained "
                       "experiment) or `transform_model` (an untrained model, from "
                       "transform_seed).")
    # As sorted items: the defense stays hashable (jit keys on it).
    object.__setattr__(self, "transform_model_options",
                       tuple(sorted(dict(self.transform_model_options or {}).items())))
    self.settings  # Validates delta, steps and step_fraction before any compute.

  @property
  def settings(self) -> TransformSettings:
    preset = dict(VARIANTS[self.variant], random_start=self.random_start)
    if self.step_fraction:
      preset["step_fraction"] = self.step_fraction
    return TransformSettings(delta=self.delta, steps=self.steps, **preset)

  @property
  def randomised(self) -> bool:
    return self.random_start

  def resolve(self, load_trained: Callable, image_shape: tuple, batch_size: int
              ) -> "AdvTransform":
    """With f_b attached: the untrained `transform_model` initialised from transform_seed, or
    the trained `transform_experiment` restored, its checkpoint step recorded (transform_step)
    or, once recorded, required (f_a was trained on that f_b)."""
    if self.transform_model:
      from defenses_jax.models import create_model  # Models import nothing from defenses.
      model = create_model(self.transform_model, self.num_classes,
                           **dict(self.transform_model_options))
      variables = model.init({"params": jax.random.key(self.transform_seed)},
                             jnp.zeros((1, *image_shape), jnp.float32), train=False)
      return dataclasses.replace(self, frozen=Network(model, dict(variables)))
    fb = load_trained(self.transform_experiment)
    if self.transform_step >= 0 and int(fb.state.step) != self.transform_step:
      raise ValueError(
          f"f_b {self.transform_experiment!r} is at step {int(fb.state.step)}, but this "
          f"experiment was trained on it at step {self.transform_step}: f_b changed, so f_a "
          "must be retrained (a new workdir or experiment name).")
    if fb.exp.train_ds.image_shape != tuple(image_shape):
      raise ValueError(f"f_b {self.transform_experiment!r} takes images "
                       f"{fb.exp.train_ds.image_shape}, this experiment {tuple(image_shape)}.")
    return dataclasses.replace(self, transform_step=int(fb.state.step), frozen=fb.network())

  def evaluation_metrics(self, net, images, key) -> dict:
    n = min(self.metric_images, len(images))
    if n == 0:
      return {}
    samples = self.metric_samples if self.randomised else 1  # Deterministic: E g = g.

    @functools.partial(jax.jit, compiler_options=parallel.COMPILER_OPTIONS)  # As the runners.
    def linf_to_mean(x, key):
      keys = jax.random.split(key, samples)
      total = jax.lax.map(lambda k: self.transform(x, k), keys, batch_size=min(samples, 32))
      return jnp.max(jnp.abs(jnp.mean(total, 0) - x).reshape(x.shape[0], -1), -1)

    batch = min(n, 25)  # Fixed shapes: the last batch is padded with its first image.
    distances = []
    for start in range(0, n, batch):
      x = np.asarray(images[start:start + batch])
      padded = np.concatenate([x, np.repeat(x[:1], batch - len(x), 0)]) if len(x) < batch else x
      d = linf_to_mean(jnp.asarray(padded), jax.random.fold_in(key, start))
      distances.append(np.asarray(d)[:len(x)])
    return {"expected_image_linf": float(np.mean(np.concatenate(distances)))}

  def fb_logits(self, x: jax.Array) -> jax.Array:
    if self.frozen is None:
      raise ValueError("adv_transform: f_b is not attached; build the experiment through "
                       "experiment.Experiment, which restores it (resolve).")
    return self.frozen(x)

  def transform(self, x: jax.Array, key: Optional[jax.Array] = None, **ops) -> jax.Array:
    """g(x, key); `ops`: attack_transform's sign_op / offset_op (the BPDA surfaces)."""
    key = jax.random.key(_UNUSED_KEY) if key is None else key
    return attack_transform(self.fb_logits, x, key, self.settings, **ops)

  def surface_transform(self, surface: str, x: jax.Array, key: Optional[jax.Array] = None):
    """g(x, key) forward, differentiated as `surface` says."""
    if surface == "bpda_identity":  # Straight-through: the value of g, the gradient of x.
      return x + jax.lax.stop_gradient(self.transform(x, key) - x)
    sign_op = bpda_sign(SURFACES[surface])
    if surface == "straight_through":
      return self.transform(x, key, sign_op=sign_op)
    return self.transform(x, key, sign_op=sign_op, offset_op=equation_5_clip(self.delta))

  def attack_surfaces(self) -> dict:
    return {surface: functools.partial(self._surface_logits, surface) for surface in SURFACES}

  def _surface_logits(self, surface: str, net: Callable, x: jax.Array, key: jax.Array):
    return self.class_logits(net(self.surface_transform(surface, x, key)))

  def training_batch(self, batch, key, logits_fn, defense_state):
    images = jax.lax.stop_gradient(self.transform(batch["image"], key))
    return unit_weighted(images, batch["label"]), defense_state

  def deployed(self, net: Network, x: jax.Array, key: Optional[jax.Array] = None,
               detector=None) -> Deployed:
    """f_a(g(x)): the base classifier (and detector) on the transformed input."""
    return super().deployed(net, self.transform(x, key), detector=detector)
