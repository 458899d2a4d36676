"""APGD and APGD-T with restarts as per-example state machines (attacks/stepped.py), for the slot
runner: an example stops at the end of the first run (restart or target) that fools it, and its
place goes to the next image, instead of the batch running every restart while one example is
still robust.

Each step evaluates one gradient per example: at a run's random start, or at APGD's next point
(apgd.py's `_next_point` and `_update`, the same iteration as the fixed-batch attack). Per run
an example costs 1 + `steps` gradients, as in apgd.py. The random start of each run is drawn
from the example's own key (folded with the run and restart), so an image's result does not
depend on the other images in the batch; the fixed-batch attack draws its starts for the whole
batch at once, so the two agree in distribution, not bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from defenses_jax.attacks import norms
from defenses_jax.attacks.apgd import (APGD_LOSSES, _check_targeted, _first_state,
                                       _loss_and_grad, _loss_fn, _next_point, _ranked_targets,
                                       _schedule, _scores, _start, _update, misclassified)
from defenses_jax.attacks.objectives import check_batch
from defenses_jax.attacks.stepped import SteppedAttack, select_examples
from defenses_jax.attacks.target import call_logits


class APGDRestarts(NamedTuple):
  """One row per example."""
  x: jax.Array  # The clean input.
  y: jax.Array
  example_keys: jax.Array  # Each example's own key (its random starts).
  ranked: jax.Array  # APGD-T: its target classes in attack order, (B, runs); APGD: unused.
  run: jax.Array  # Which target (APGD-T), 0 for APGD; done at `num_runs`.
  restart: jax.Array  # Which restart of the run.
  i: jax.Array  # The run's next iteration; -1: the run starts with the next step.
  run_state: Any  # apgd.py's per-run state (its fields, one row per example).
  fooled: jax.Array  # Some finished run fooled the example.
  x_adv: jax.Array  # The first fooling run's point, else the last run's highest-loss point.


def apgd_stepped(logits_fn: Callable, *, eps: float, norm: str = "linf", steps: int = 100,
                 restarts: int = 1, loss: str = "ce", rho: float = 0.75,
                 eot_iter: int = 1) -> SteppedAttack:
  """APGD-CE / APGD-DLR (parameters: apgd.apgd) as a SteppedAttack."""
  norms.check_norm(norm)
  if loss not in APGD_LOSSES:
    raise ValueError(f"unknown APGD loss {loss!r}; choose one of {APGD_LOSSES}.")

  def check_classes(num_classes):
    if loss == "dlr" and num_classes < 3:
      raise ValueError("the DLR loss needs at least 3 classes (z_pi1 - z_pi3).")

  return _restarts_stepped(logits_fn, eps, norm, steps, restarts, rho, eot_iter, num_runs=1,
                           loss_of=lambda targets: _loss_fn(loss, None), rank=None,
                           check_classes=check_classes)


def apgd_targeted_stepped(logits_fn: Callable, *, eps: float, norm: str = "linf",
                          steps: int = 100, num_target_classes: int = 9, restarts: int = 1,
                          rho: float = 0.75, eot_iter: int = 1) -> SteppedAttack:
  """APGD-T (parameters: apgd.apgd_targeted) as a SteppedAttack: each example's targets are its
  highest other classes of the clean logits, in turn, `restarts` runs each."""
  norms.check_norm(norm)
  return _restarts_stepped(logits_fn, eps, norm, steps, restarts, rho, eot_iter,
                           num_runs=num_target_classes,
                           loss_of=lambda targets: _loss_fn("dlr", targets),
                           rank=_ranked_targets,
                           check_classes=lambda k: _check_targeted(k, num_target_classes))


def _restarts_stepped(logits_fn, eps, norm, steps, restarts, rho, eot_iter, num_runs: int,
                      loss_of: Callable, rank, check_classes: Callable) -> SteppedAttack:
  """loss_of(targets (B,) or None) -> the loss; rank(clean logits, y) -> (B, K) targets in
  order (None: untargeted)."""
  if steps < 1 or restarts < 1:
    raise ValueError(f"APGD needs steps >= 1 and restarts >= 1; got {steps}, {restarts}.")
  schedule = _schedule(steps)

  def init(x, y, example_keys, key):
    check_batch(x, y)
    batch = x.shape[0]
    num_classes = jax.eval_shape(lambda z: call_logits(logits_fn, z, key), x).shape[-1]
    check_classes(num_classes)
    ranked = (jnp.zeros((batch, 1), jnp.int32) if rank is None
              else rank(call_logits(logits_fn, x, key), y))
    zeros = jnp.zeros((batch,), jnp.int32)
    placeholder = _first_state(x, jnp.zeros_like(x), jnp.zeros((batch,), x.dtype),
                               jnp.zeros((batch,), bool), eps)  # Replaced at the first step.
    return APGDRestarts(x=x, y=y, example_keys=example_keys, ranked=ranked, run=zeros,
                        restart=zeros, i=zeros - 1, run_state=placeholder,
                        fooled=jnp.zeros((batch,), bool), x_adv=x)

  def done(s: APGDRestarts):
    return s.fooled | (s.run >= num_runs)

  def step(s: APGDRestarts, key) -> APGDRestarts:
    live = ~done(s)
    starting = s.i < 0
    i = jnp.maximum(s.i, 0)
    run_keys = jax.vmap(lambda k, r, q: jax.random.fold_in(jax.random.fold_in(k, r), q))(
        s.example_keys, s.run, s.restart)
    x0 = jax.vmap(lambda k, xi: _start(k, xi[None], eps, norm)[0])(run_keys, s.x)
    z = jnp.where(norms.per_example(starting, s.x), x0, _next_point(s.run_state, i, s.x, eps,
                                                                      norm))
    targets = None if rank is None else jnp.take_along_axis(
        s.ranked, jnp.minimum(s.run, num_runs - 1)[:, None], 1)[:, 0]
    grad, loss, logits = _loss_and_grad(_scores(logits_fn), loss_of(targets), s.y, z, key,
                                        eot_iter)
    now = misclassified(logits, s.y)
    run_state = select_examples(starting, _first_state(z, grad, loss, now, eps),
                                _update(s.run_state, i, z, grad, loss, now, schedule, rho))
    i_next = jnp.where(starting, 0, s.i + 1)
    ended = ~starting & (i_next >= steps)
    # A run that fools the example ends its attack with the run's last fooling point;
    # otherwise the run's highest-loss point stands until a later run does better.
    take = ended & run_state["fooled"]
    x_adv = jnp.where(norms.per_example(take, s.x), run_state["x_best_adv"],
                      jnp.where(norms.per_example(ended, s.x), run_state["x_best"], s.x_adv))
    restart = jnp.where(ended, s.restart + 1, s.restart)
    next_run = restart >= restarts
    new = s._replace(run_state=run_state, i=jnp.where(ended, -1, i_next),
                     fooled=s.fooled | take, x_adv=x_adv,
                     run=jnp.where(next_run, s.run + 1, s.run),
                     restart=jnp.where(next_run, 0, restart))
    return select_examples(live, new, s)

  def finish(s: APGDRestarts, key):
    success = misclassified(call_logits(logits_fn, s.x_adv, key), s.y)
    return s.x_adv, {"success": success, "step_size": s.run_state["step"],
                     **norms.distances(s.x_adv, s.x)}

  return SteppedAttack(init, step, done, finish)
