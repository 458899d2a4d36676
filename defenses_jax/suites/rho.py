"""Paper 001's rho curves (section 4, equation 13): how fast iterative attacks saturate.

rho = error rate under the current setting / error rate under the strongest one.
- Figure 3 (`rho_vs_steps`): BIM(n, n) for several n, relative to the largest n.
- Figure 4 (`rho_vs_iteration`): the intermediate iterates 0..n2 of BIM(n1, n2), relative to the
  final one.
Error rates are over the first `num_examples` test images (clean mistakes count as errors).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from defenses_jax import parallel
from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import cross_entropy
from defenses_jax.attacks.target import call_logits
from defenses_jax.evaluation.runner import (adversarial_correct, make_attack_runner,
                                            make_predictor, run_over_dataset)
from defenses_jax.evaluation.threat_models import AttackSpec, TargetBuilder


def bim_trajectory_correct(target, x, y, key, eps: float, n1: int, n2: int) -> jax.Array:
  """(n2 + 1, B): whether each BIM(n1, n2) iterate x_0 = x, ..., x_{n2} on the attack target is
  classified as y (`key`: one draw of a randomised target's randomness, for every iterate)."""
  logits_fn = lambda z: call_logits(target, z, key)

  def step(xi, _):
    def loss(z):
      logits = logits_fn(z)
      return jnp.sum(cross_entropy(logits, y)), logits
    grad, logits = jax.grad(loss, has_aux=True)(xi)
    x_next = norms.project(xi + eps / n1 * norms.steepest_ascent(grad, "linf"), x, eps, "linf")
    return x_next, jnp.argmax(logits, -1) == y

  x_last, correct = lax.scan(step, x, None, length=n2)
  last = jnp.argmax(logits_fn(x_last), -1) == y
  return jnp.concatenate([correct, last[None]])


def _error_rate(trained, spec: AttackSpec, ds, batch_size: int, key) -> float:
  exp = trained.exp
  runner = make_attack_runner(spec, TargetBuilder("white_box", exp.model, exp.defense), exp.mesh)
  predictor = make_predictor(exp.model, exp.defense, exp.mesh)
  return 1.0 - float(np.mean(adversarial_correct(runner, predictor, trained.state, ds,
                                                 batch_size, exp.mesh, key)))


def rho_vs_steps(trained, eps: float, n_values, num_examples: int, batch_size: int) -> dict:
  ds = trained.exp.test_ds.take(num_examples)
  key = jax.random.key(0)
  errors = {int(n): _error_rate(trained, AttackSpec("bim", f"BIM({n},{n})", "bim", "white_box",
                                                    {"eps": eps, "n1": int(n), "n2": int(n)}),
                                ds, batch_size, key) for n in n_values}
  top = errors[max(errors)]
  return {"n": list(errors), "error_rate": list(errors.values()),
          "rho": [e / top if top > 0 else float("nan") for e in errors.values()]}


def rho_vs_iteration(trained, eps: float, n1: int, n2: int, num_examples: int,
                     batch_size: int) -> dict:
  exp, s = trained.exp, trained.state
  ds = exp.test_ds.take(num_examples)

  def per_device(params, batch_stats, x, y):
    deployed = TargetBuilder("white_box", exp.model, exp.defense)(params, batch_stats)
    return bim_trajectory_correct(deployed, x, y, jax.random.key(0), eps, n1, n2).T

  fn = parallel.data_parallel(per_device, exp.mesh, in_specs=(parallel.REPLICATED,) * 2 + (
      parallel.SHARDED,) * 2, out_specs=parallel.SHARDED)
  correct = np.concatenate(run_over_dataset(
      ds, batch_size, exp.mesh, lambda b, n: fn(s.params, s.batch_stats, b["image"],
                                                b["label"])))
  errors = 1.0 - correct.mean(0)
  return {"iteration": list(range(n2 + 1)), "error_rate": errors.tolist(),
          "rho": (errors / errors[-1]).tolist() if errors[-1] > 0 else [float("nan")] * (n2 + 1)}
