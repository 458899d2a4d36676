"""g(x): an input transformed by an attack on a frozen model f_b (paper 004, "defense by
attack"; Wang et al.), and the backward-pass stand-ins its BPDA attacks need.

The paper (eqs. 2-3): y_L = argmin f_b(x), the least-likely class of the clean input; start at
x + U[-Delta, Delta]; N steps x' <- Pi(x' - eps sgn grad CE(f_b(x'), y_L)) of eps = Delta / 6
(descent *towards* y_L), Pi the projection onto the L-inf Delta-ball around x (and, here, onto
[0, 1]); g(x) is the last iterate, not the best one. The authors' code
(a554b554/DefenseByAttack, ../shared/reference/algorithms.md section 7) instead *ascends* the
cross-entropy of f_b's most-likely class with steps of Delta / 10 and never clips to [0, 1]:
`PAPER` and `CODE` below hold both settings.

Every non-differentiable piece is a parameter, so one loop serves the deployed classifier and
each BPDA surface of the paper's equation 5:
  sign_op:   sgn on the forward pass. Default: its gradient is stopped (sgn has derivative 0 a.e.,
             and stopping it saves XLA the Hessian-vector products that would be multiplied by
             0); `bpda_sign('softsign' | 'tanh')` differentiates a smooth stand-in instead.
  offset_op: clip(delta, -Delta, Delta) on the offset delta = x' - x. Default: jnp.clip (its true
             derivative, 1 inside, 0 outside); `equation_5_clip` keeps the clip on the forward
             pass with derivative 1 inside and 1 / (1 + |delta|)^2 outside.
Under plain autodiff the step's gradient term is 0, so dg/dx is the identity where neither
clip is active: the plain gradient of f_a(g(x)) is close to BPDA-identity's, one draw of g each.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from defenses_jax.attacks.objectives import cross_entropy
from defenses_jax.attacks.wrappers import bpda

OBJECTIVES = ("least_likely", "most_likely")


@dataclasses.dataclass(frozen=True)
class TransformSettings:
  """The attack g runs. objective: 'least_likely' descends CE towards argmin f_b(x) (the
  paper); 'most_likely' ascends CE away from argmax f_b(x) (the authors' code)."""
  delta: float = 0.2
  steps: int = 13
  step_fraction: float = 1 / 6  # The step as a fraction of delta.
  random_start: bool = True
  objective: str = "least_likely"
  box_clip: bool = True  # Clip every iterate to [0, 1] (the paper's images; the code does not).

  def __post_init__(self):
    if not self.delta > 0 or self.steps < 0 or not self.step_fraction > 0:
      raise ValueError(f"the transform needs delta > 0, steps >= 0 and step_fraction > 0; got "
                       f"{self.delta}, {self.steps}, {self.step_fraction}.")
    if self.objective not in OBJECTIVES:
      raise ValueError(f"unknown transform objective {self.objective!r}; choose one of "
                       f"{OBJECTIVES}.")

  @property
  def step_size(self) -> float:
    return self.delta * self.step_fraction


PAPER = dict(step_fraction=1 / 6, random_start=True, objective="least_likely", box_clip=True)
CODE = dict(step_fraction=1 / 10, random_start=True, objective="most_likely", box_clip=False)
VARIANTS = {"paper": PAPER, "code": CODE}


def stopped_sign(v: jax.Array) -> jax.Array:
  return jax.lax.stop_gradient(jnp.sign(v))


def bpda_sign(approximation: str) -> Callable:
  """sgn forward, the derivative of `approximation` ('softsign' | 'tanh' | 'identity') back."""
  return bpda(jnp.sign, approximation)


def equation_5_clip(delta: float) -> Callable:
  """clip(v, -delta, delta) forward; backward 1 for |v| < delta, else 1 / (1 + |v|)^2 (the
  paper's equation 5 for the projection's derivative)."""

  @jax.custom_vjp
  def clip(v):
    return jnp.clip(v, -delta, delta)

  def clip_fwd(v):
    return clip(v), v

  def clip_bwd(v, g):
    return (g * jnp.where(jnp.abs(v) < delta, 1.0, 1.0 / (1.0 + jnp.abs(v)) ** 2),)

  clip.defvjp(clip_fwd, clip_bwd)
  return clip


def attack_transform(fb_logits: Callable, x: jax.Array, key: jax.Array,
                     settings: TransformSettings, sign_op: Callable = stopped_sign,
                     offset_op: Callable | None = None) -> jax.Array:
  """g(x, key): the last iterate of `settings`' attack on fb_logits (a frozen f_b: x -> logits),
  one compiled loop over the steps. Deterministic given key; key-independent without a random
  start."""
  offset_op = offset_op or (lambda v: jnp.clip(v, -settings.delta, settings.delta))
  box = (lambda v: jnp.clip(v, 0.0, 1.0)) if settings.box_clip else (lambda v: v)
  clean = jax.lax.stop_gradient(fb_logits(x))
  if settings.objective == "least_likely":
    classes, direction = jnp.argmin(clean, -1), -1.0  # Descend towards y_L.
  else:
    classes, direction = jnp.argmax(clean, -1), 1.0  # Ascend away from f_b's prediction.

  def loss(xp):
    return jnp.sum(cross_entropy(fb_logits(xp), classes))

  start = x
  if settings.random_start:
    start = box(x + jax.random.uniform(key, x.shape, x.dtype, -settings.delta, settings.delta))

  def step(_, xp):
    moved = xp + direction * settings.step_size * sign_op(jax.grad(loss)(xp))
    return box(x + offset_op(moved - x))

  return jax.lax.fori_loop(0, settings.steps, step, start)
