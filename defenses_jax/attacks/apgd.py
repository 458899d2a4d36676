"""Auto-PGD (Croce & Hein 2020), after AutoAttack's `autopgd_base.py`: APGD-CE, APGD-DLR and the
targeted APGD-T (DLR to each of the top classes in turn), L-inf and L2, with EOT for randomised
defenses.

The step size starts at 2 eps and is halved at checkpoints, each time from the best point found
so far, when the loss rose on at most rho of the steps since the last checkpoint, or when the
previous checkpoint did not halve and the best loss has not improved since. The first checkpoint
comes after 22% of the iterations, the interval then shrinks by 3% of them per checkpoint, down
to 6%. Momentum 0.75 (none on the first step). Every example has its own step size.

Written once, as a per-example state machine (attacks/stepped.py): each step evaluates one
gradient per example, at a run's random start or at its next point, so a run (one restart of
one target) costs 1 + `steps` gradients. An example stops at the end of the first run that
fools it, as AutoAttack attacks only the points still robust; one that no run fools comes back
as the last run's highest-loss point. Each run's random start is drawn from the example's own
key (folded with the run and restart), so an image's result does not depend on the other
images beside it. `apgd` and `apgd_targeted` run one batch (stepped.run_batch); the slot
runner refills a finished example's place with the next image.

Where we differ from the reference, on purpose: its oscillation count compares the first step's
loss with `loss_steps[-1]` (an unwritten zero: a wrap-around), we compare it with the loss at the
starting point; an example that no restart fools comes back as its highest-loss point (the
reference returns the random start).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch, cross_entropy
from defenses_jax.attacks.stepped import SteppedAttack, run_batch, select_examples
from defenses_jax.attacks.target import call_logits

APGD_LOSSES = ("ce", "dlr")


def dlr_loss(logits, labels, targets=None):
  """Difference of logits ratio, per example (maximised by the attack). Untargeted:
  -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3); targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 +
  z_pi4) / 2), pi sorting the logits in decreasing order. Invariant to shifting and scaling
  the logits."""
  top = -jnp.sort(-logits, axis=-1)
  true = jnp.take_along_axis(logits, labels[:, None], -1)[:, 0]
  if targets is None:
    other = jnp.where(jnp.argmax(logits, -1) == labels, top[:, 1], top[:, 0])
    return -(true - other) / (top[:, 0] - top[:, 2] + 1e-12)
  target = jnp.take_along_axis(logits, targets[:, None], -1)[:, 0]
  return -(true - target) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def checkpoints(steps: int) -> list[int]:
  """The iterations (0-based) after which APGD decides whether to halve its step size."""
  first, minimum, decrease = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(
      int(0.03 * steps), 1)
  out, at, k = [], -1, first
  while at + k < steps:
    at += k
    out.append(at)
    k = max(k - decrease, minimum)
  return out


def _loss_fn(loss: str, targets):
  if loss == "ce":
    return (lambda z, y: cross_entropy(z, y)) if targets is None else (
        lambda z, y: -cross_entropy(z, targets))
  return lambda z, y: dlr_loss(z, y, targets)


def _start(key, x, eps, norm):
  """AutoAttack's random start: a random direction scaled to the sphere of radius eps."""
  if norm == "linf":
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
    t = t / jnp.maximum(jnp.max(jnp.abs(t).reshape(x.shape[0], -1), -1), 1e-12).reshape(
        (-1,) + (1,) * (x.ndim - 1))
  else:
    t = jax.random.normal(key, x.shape, x.dtype)
    t = t / jnp.maximum(norms.l2_norm(t), 1e-12)
  return jnp.clip(x + eps * t, 0.0, 1.0)


def misclassified(logits, y):
  return jnp.argmax(logits, -1) != y


def _schedule(steps: int):
  """(is_checkpoint (steps,), the interval ending at each checkpoint (steps,), 0 elsewhere)."""
  mask = jnp.zeros((steps,), bool).at[jnp.asarray(checkpoints(steps))].set(True)
  lengths = jnp.zeros((steps,), jnp.int32)
  previous = -1
  for at in checkpoints(steps):
    lengths = lengths.at[at].set(at - previous)
    previous = at
  return mask, lengths


def _loss_and_grad(outputs_fn, loss_fn, y, z, key, eot_iter):
  """The loss's gradient and value averaged over `eot_iter` draws, and the last draw's output
  (outputs_fn(x, key): what loss_fn reads, e.g. a target's class scores)."""

  def total(zz, kk):
    logits = outputs_fn(zz, kk)
    per_example = loss_fn(logits, y)
    return jnp.sum(per_example), (per_example, logits)

  keys = jax.random.split(key, eot_iter)
  grads, (losses, logits) = jax.vmap(lambda kk: jax.grad(total, has_aux=True)(z, kk))(keys)
  return jnp.mean(grads, 0), jnp.mean(losses, 0), jax.tree.map(lambda a: a[-1], logits)


def _first_state(z, grad, loss, fooled, eps):
  """A run's state after its evaluation at the random start z."""
  batch = z.shape[0]
  # Of the loss history since the last checkpoint only the number of increases is needed.
  return dict(x=z, x_old=z, grad=grad, loss_prev=loss, x_best=z, grad_best=grad, loss_best=loss,
              x_best_adv=z, fooled=fooled, step=jnp.full((batch,), 2.0 * eps, z.dtype),
              increases=jnp.zeros((batch,), jnp.int32), loss_best_last=loss,
              reduced_last=jnp.ones((batch,), bool))


def _next_point(s, i, x, eps, norm):
  """The point iteration i (per example) evaluates: a step along the gradient's steepest-ascent
  direction, then momentum (none on the first step), projected each time."""
  project = lambda z: norms.project(z, x, eps, norm)
  momentum = norms.per_example(jnp.where(i > 0, 0.75, 1.0), x)
  step = norms.per_example(s["step"], x)
  z1 = project(s["x"] + step * norms.steepest_ascent(s["grad"], norm))
  return project(s["x"] + (z1 - s["x"]) * momentum + (s["x"] - s["x_old"]) * (1 - momentum))


def _update(s, i, z1, grad, loss, now_fooled, schedule, rho):
  """The state after iteration i (per example) evaluated z1: best points, and at a checkpoint
  the step size halved (and a return to the best point) where the loss oscillates or stalls."""
  checkpoint_mask, lengths = schedule
  mask = lambda m: norms.per_example(m, z1)
  x_best_adv = jnp.where(mask(now_fooled), z1, s["x_best_adv"])
  improved = loss > s["loss_best"]
  x_best = jnp.where(mask(improved), z1, s["x_best"])
  grad_best = jnp.where(mask(improved), grad, s["grad_best"])
  loss_best = jnp.where(improved, loss, s["loss_best"])
  increases = s["increases"] + (loss > s["loss_prev"]).astype(jnp.int32)
  at_checkpoint = checkpoint_mask[i]
  oscillating = increases <= rho * lengths[i]
  stalled = ~s["reduced_last"] & (s["loss_best_last"] >= loss_best)
  halve = at_checkpoint & (oscillating | stalled)
  return dict(
      x_old=s["x"],
      x=jnp.where(mask(halve), x_best, z1),
      grad=jnp.where(mask(halve), grad_best, grad),
      loss_prev=loss, x_best=x_best, grad_best=grad_best, loss_best=loss_best,
      x_best_adv=x_best_adv, fooled=s["fooled"] | now_fooled,
      step=jnp.where(halve, s["step"] / 2.0, s["step"]),
      increases=jnp.where(at_checkpoint, 0, increases),
      loss_best_last=jnp.where(at_checkpoint, loss_best, s["loss_best_last"]),
      reduced_last=jnp.where(at_checkpoint, halve, s["reduced_last"]))


def apgd(system: Callable, x, y, key, *, eps: float, norm: str = "linf", steps: int = 100,
         restarts: int = 1, loss: str = "ce", rho: float = 0.75, eot_iter: int = 1):
  """APGD-CE (loss='ce') or APGD-DLR (loss='dlr'), untargeted. Returns (x_adv, info) with info =
  {success, step_size (each example's final step size, in its last run), l2, linf}. Restarts
  run from fresh random starts; the first that fools an example ends its attack."""
  attack = apgd_stepped(system, eps=eps, norm=norm, steps=steps, restarts=restarts,
                        loss=loss, rho=rho, eot_iter=eot_iter)
  return run_batch(attack, x, y, key)


def apgd_targeted(system: Callable, x, y, key, *, eps: float, norm: str = "linf",
                  steps: int = 100, num_target_classes: int = 9, restarts: int = 1,
                  rho: float = 0.75, eot_iter: int = 1):
  """APGD-T: targeted DLR towards each of the `num_target_classes` highest other classes of the
  clean logits in turn (AutoAttack: 9), `restarts` each; success is misclassification. Returns
  (x_adv, info) as apgd."""
  attack = apgd_targeted_stepped(system, eps=eps, norm=norm, steps=steps,
                                 num_target_classes=num_target_classes, restarts=restarts,
                                 rho=rho, eot_iter=eot_iter)
  return run_batch(attack, x, y, key)


def apgd_stepped(system: Callable, *, eps: float, norm: str = "linf", steps: int = 100,
                 restarts: int = 1, loss: str = "ce", rho: float = 0.75,
                 eot_iter: int = 1) -> SteppedAttack:
  """APGD-CE / APGD-DLR (parameters: apgd) as a SteppedAttack."""
  if loss not in APGD_LOSSES:
    raise ValueError(f"unknown APGD loss {loss!r}; choose one of {APGD_LOSSES}.")

  def check(outputs):
    if loss == "dlr" and outputs.shape[-1] < 3:
      raise ValueError("the DLR loss needs at least 3 classes (z_pi1 - z_pi3).")

  return apgd_runs(_scores(system), eps=eps, norm=norm, steps=steps, restarts=restarts,
                   rho=rho, eot_iter=eot_iter, num_runs=1,
                   loss_of=lambda targets: _loss_fn(loss, None), check=check)


def apgd_targeted_stepped(system: Callable, *, eps: float, norm: str = "linf",
                          steps: int = 100, num_target_classes: int = 9, restarts: int = 1,
                          rho: float = 0.75, eot_iter: int = 1) -> SteppedAttack:
  """APGD-T (parameters: apgd_targeted) as a SteppedAttack: each example's targets are its
  highest other classes of the clean logits, in turn, `restarts` runs each."""

  def check(outputs):
    num_classes = outputs.shape[-1]
    if num_classes < 4:  # The denominator z_pi1 - (z_pi3 + z_pi4) / 2 needs four classes.
      raise ValueError(f"targeted DLR needs at least 4 classes; the model has {num_classes}.")
    if not 1 <= num_target_classes <= num_classes - 1:
      raise ValueError(f"APGD-T needs 1 <= num_target_classes <= {num_classes - 1}; got "
                       f"{num_target_classes}.")

  return apgd_runs(_scores(system), eps=eps, norm=norm, steps=steps, restarts=restarts,
                   rho=rho, eot_iter=eot_iter, num_runs=num_target_classes,
                   loss_of=lambda targets: _loss_fn("dlr", targets), rank=ranked_targets,
                   check=check)


def _scores(target):
  """The target's class scores as a function of (x, key): what the APGD loop differentiates."""
  return lambda z, k: call_logits(target, z, k)


def ranked_targets(clean, y):
  """Classes by decreasing clean logit, the true class last: [:, 0] is the highest other class
  (AutoAttack takes the 2nd, 3rd, ... highest, i.e. the same on correctly classified inputs,
  which are the only ones it attacks)."""
  return jnp.argsort(jnp.where(jnp.arange(clean.shape[-1]) == y[:, None], jnp.inf, -clean), -1)


class APGDState(NamedTuple):
  """One row per example."""
  x: jax.Array  # The clean input.
  y: jax.Array
  example_keys: jax.Array  # Each example's own key (its random starts).
  ranked: jax.Array  # Targeted: its target classes in attack order, (B, runs); else unused.
  run: jax.Array  # Which target (targeted), 0 untargeted; done at `num_runs`.
  restart: jax.Array  # Which restart of the run.
  i: jax.Array  # The run's next iteration; -1: the run starts with the next step.
  run_state: Any  # The run's iteration state (_first_state's fields).
  fooled: jax.Array  # Some finished run fooled the example.
  x_adv: jax.Array  # The first fooling run's point, else the last run's highest-loss point.


def apgd_runs(outputs_fn: Callable, *, eps: float, norm: str, steps: int, restarts: int,
              rho: float, eot_iter: int, num_runs: int, loss_of: Callable,
              rank: Optional[Callable] = None, check: Callable = lambda outputs: None,
              fooled_fn: Callable = misclassified) -> SteppedAttack:
  """APGD runs one after another per example, `restarts` for each of `num_runs` runs, until one
  fools the example. loss_of(targets) -> loss(outputs, y) per example (targets: (B,) the run's
  target of each example, None without `rank`); rank(clean outputs, y) -> (B, >= num_runs)
  each example's targets in order; check(the outputs' shape) raises on a model the attack
  cannot run on. outputs_fn(x, key) may return any pytree that the loss, rank and
  fooled_fn(outputs, y) (default: misclassified) read (apgd: a target's class scores)."""
  norms.check_norm(norm)
  if steps < 1 or restarts < 1:
    raise ValueError(f"APGD needs steps >= 1 and restarts >= 1; got {steps}, {restarts}.")
  schedule = _schedule(steps)

  def init(x, y, example_keys, key):
    check_batch(x, y)
    batch = x.shape[0]
    check(jax.eval_shape(lambda z: outputs_fn(z, key), x))
    ranked = (jnp.zeros((batch, 1), jnp.int32) if rank is None
              else rank(outputs_fn(x, key), y))
    zeros = jnp.zeros((batch,), jnp.int32)
    placeholder = _first_state(x, jnp.zeros_like(x), jnp.zeros((batch,), x.dtype),
                               jnp.zeros((batch,), bool), eps)  # Replaced at the first step.
    return APGDState(x=x, y=y, example_keys=example_keys, ranked=ranked, run=zeros,
                     restart=zeros, i=zeros - 1, run_state=placeholder,
                     fooled=jnp.zeros((batch,), bool), x_adv=x)

  def done(s: APGDState):
    return s.fooled | (s.run >= num_runs)

  def step(s: APGDState, key) -> APGDState:
    live = ~done(s)
    starting = s.i < 0
    i = jnp.maximum(s.i, 0)

    def starts():  # Each example's start of its current run, from its own key.
      run_keys = jax.vmap(lambda k, r, q: jax.random.fold_in(jax.random.fold_in(k, r), q))(
          s.example_keys, s.run, s.restart)
      return jax.vmap(lambda k, xi: _start(k, xi[None], eps, norm)[0])(run_keys, s.x)

    # Drawn only at a step where some example starts a run (in one batch: 1 step in 1 + steps):
    # drawn at every step, they cost more than the rest of the step beside the model.
    x0 = lax.cond(jnp.any(starting & live), starts, lambda: s.x)
    z = jnp.where(norms.per_example(starting, s.x), x0, _next_point(s.run_state, i, s.x, eps,
                                                                      norm))
    targets = None if rank is None else jnp.take_along_axis(
        s.ranked, jnp.minimum(s.run, num_runs - 1)[:, None], 1)[:, 0]
    grad, loss, outputs = _loss_and_grad(outputs_fn, loss_of(targets), s.y, z, key, eot_iter)
    now = fooled_fn(outputs, s.y)
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

  def finish(s: APGDState, key):
    success = fooled_fn(outputs_fn(s.x_adv, key), s.y)
    return s.x_adv, {"success": success, "step_size": s.run_state["step"],
                     **norms.distances(s.x_adv, s.x)}

  return SteppedAttack(init, step, done, finish)
