"""Auto-PGD (Croce & Hein 2020), after AutoAttack's `autopgd_base.py`: APGD-CE, APGD-DLR and the
targeted APGD-T (DLR to each of the top classes in turn), L-inf and L2, with EOT for randomised
defenses.

The step size starts at 2 eps and is halved at checkpoints, each time from the best point found
so far, when the loss rose on at most rho of the steps since the last checkpoint, or when the
previous checkpoint did not halve and the best loss has not improved since. The first checkpoint
comes after 22% of the iterations, the interval then shrinks by 3% of them per checkpoint, down
to 6%. Momentum 0.75 (none on the first step). Every example has its own step size.

Where we differ from the reference, on purpose: its oscillation count compares the first step's
loss with `loss_steps[-1]` (an unwritten zero: a wrap-around), we compare it with the loss at the
starting point; an example that no restart fools comes back as its highest-loss point (the
reference returns the random start).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch, cross_entropy
from defenses_jax.attacks.query.oracle import Oracle
from defenses_jax.attacks.query.square import square
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


def _apgd_run(outputs_fn, x, y, key, eps, norm, steps, loss_fn, rho, eot_iter,
              fooled_fn=misclassified):
  """One restart: (x_best_adv, x_best, fooled, step_size). outputs_fn(x, key) may return any
  pytree that loss_fn(out, y) and fooled_fn(out, y) (default: misclassified) read."""
  batch = x.shape[0]
  start_key, init_key, loop_key = jax.random.split(key, 3)
  schedule = _schedule(steps)
  x0 = _start(start_key, x, eps, norm)
  grad0, loss0, logits0 = _loss_and_grad(outputs_fn, loss_fn, y, x0, init_key, eot_iter)

  def iteration(i, s):
    i = jnp.full((batch,), i)
    z1 = _next_point(s, i, x, eps, norm)
    grad, loss, logits = _loss_and_grad(outputs_fn, loss_fn, y, z1,
                                        jax.random.fold_in(loop_key, i[0]), eot_iter)
    return _update(s, i, z1, grad, loss, fooled_fn(logits, y), schedule, rho)

  init = _first_state(x0, grad0, loss0, fooled_fn(logits0, y), eps)
  s = lax.fori_loop(0, steps, iteration, norms.varying_like(init, x))
  return s["x_best_adv"], s["x_best"], s["fooled"], s["step"]


def apgd(logits_fn: Callable, x, y, key, *, eps: float, norm: str = "linf", steps: int = 100,
         restarts: int = 1, loss: str = "ce", rho: float = 0.75, eot_iter: int = 1):
  """APGD-CE (loss='ce') or APGD-DLR (loss='dlr'), untargeted. Returns (x_adv, info) with info =
  {success, step_size (each example's final step size, last restart), l2, linf}. Restarts run
  from fresh random starts; the first that fools an example is kept."""
  check_batch(x, y)
  norms.check_norm(norm)
  if loss not in APGD_LOSSES:
    raise ValueError(f"unknown APGD loss {loss!r}; choose one of {APGD_LOSSES}.")
  if loss == "dlr" and jax.eval_shape(lambda z: call_logits(logits_fn, z, key), x).shape[-1] < 3:
    raise ValueError("the DLR loss needs at least 3 classes (z_pi1 - z_pi3).")
  return _with_restarts(_scores(logits_fn), x, y, key, eps, norm, steps, restarts, rho,
                        eot_iter, lambda run: _loss_fn(loss, None), num_runs=1)


def apgd_targeted(logits_fn: Callable, x, y, key, *, eps: float, norm: str = "linf",
                  steps: int = 100, num_target_classes: int = 9, restarts: int = 1,
                  rho: float = 0.75, eot_iter: int = 1):
  """APGD-T: targeted DLR towards each of the `num_target_classes` highest other classes of the
  clean logits in turn (AutoAttack: 9), `restarts` each; success is misclassification."""
  check_batch(x, y)
  norms.check_norm(norm)
  key, clean_key = jax.random.split(key)
  clean = call_logits(logits_fn, x, clean_key)
  _check_targeted(clean.shape[-1], num_target_classes)
  ranked = _ranked_targets(clean, y)
  return _with_restarts(_scores(logits_fn), x, y, key, eps, norm, steps, restarts, rho,
                        eot_iter, lambda run: _loss_fn("dlr", jnp.take(ranked, run, axis=1)),
                        num_runs=num_target_classes)


def _scores(target):
  """The target's class scores as a function of (x, key): what the APGD loop differentiates."""
  return lambda z, k: call_logits(target, z, k)


def _check_targeted(num_classes: int, num_target_classes: int):
  if num_classes < 4:  # The denominator z_pi1 - (z_pi3 + z_pi4) / 2 needs four classes.
    raise ValueError(f"targeted DLR needs at least 4 classes; the model has {num_classes}.")
  if not 1 <= num_target_classes <= num_classes - 1:
    raise ValueError(f"APGD-T needs 1 <= num_target_classes <= {num_classes - 1}; got "
                     f"{num_target_classes}.")


def _ranked_targets(clean, y):
  """Classes by decreasing clean logit, the true class last: [:, 0] is the highest other class
  (AutoAttack takes the 2nd, 3rd, ... highest, i.e. the same on correctly classified inputs,
  which are the only ones it attacks)."""
  return jnp.argsort(jnp.where(jnp.arange(clean.shape[-1]) == y[:, None], jnp.inf, -clean), -1)


def _with_restarts(outputs_fn, x, y, key, eps, norm, steps, restarts, rho, eot_iter, loss_of,
                   num_runs: int, fooled_fn=misclassified):
  """Runs loss_of(run) (run: a traced index, e.g. the target's rank) for each of `num_runs` runs,
  `restarts` times each, as one scan (one compiled APGD loop, however many targets); per example
  keeps the first run that fools it, otherwise the highest-loss point of the last run. Once
  every example is fooled the remaining runs are skipped (as AutoAttack, which attacks only the
  still-robust points): on an undefended model APGD-T then costs one target, not nine."""

  def one(carry, run_and_restart):
    return lax.cond(jnp.all(carry[0]), lambda carry: carry,
                    lambda carry: attack_still_robust(carry, run_and_restart), carry), None

  def attack_still_robust(carry, run_and_restart):
    fooled, x_adv, _ = carry
    run, restart = run_and_restart
    k = jax.random.fold_in(jax.random.fold_in(key, run), restart)
    best_adv, best, now, step = _apgd_run(outputs_fn, x, y, k, eps, norm, steps, loss_of(run),
                                          rho, eot_iter, fooled_fn)
    take = now & ~fooled
    chosen = jnp.where(norms.per_example(take, x), best_adv,
                       jnp.where(norms.per_example(fooled, x), x_adv, best))
    return fooled | now, chosen, step

  runs = jnp.repeat(jnp.arange(num_runs), restarts)
  restart_index = jnp.tile(jnp.arange(restarts), num_runs)
  init = (jnp.zeros(x.shape[:1], bool), x, jnp.zeros(x.shape[:1], x.dtype))
  (_, x_adv, step), _ = lax.scan(one, norms.varying_like(init, x), (runs, restart_index))
  check_key = jax.random.fold_in(key, 2**30)
  success = fooled_fn(outputs_fn(x_adv, check_key), y)
  return x_adv, {"success": success, "step_size": step, **norms.distances(x_adv, x)}


AUTOATTACK_VERSIONS = ("standard", "rand")


def autoattack(logits_fn: Callable, x, y, key, *, eps: float, norm: str = "linf",
               version: str = "standard", steps: int = 100, num_target_classes: int = 9,
               eot_iter: int = 20, square_queries: int = 5000):
  """An AutoAttack-style worst case over the members this library has, each run after the
  previous one on the examples still correctly classified (Croce & Hein 2020):
  standard: APGD-CE, then APGD-T (targeted DLR, `num_target_classes` targets, at most the
  number of other classes), then Square (`square_queries` score queries, p_init 0.8, margin
  loss; 0 leaves it out); `rand` (randomised defenses): APGD-CE and APGD-DLR, each with EOT
  over `eot_iter` draws. AutoAttack's FAB-T is not a member, so this is a lower bound on what
  the full AutoAttack finds.

  Returns (x_adv, info) with info = {success, broken_by (per example, the index of the first
  member that fooled it, -1 for none), square_queries (per example; 0 for the points APGD
  broke, which Square does not attack), l2, linf}. The batch has a fixed shape, so a member runs
  on every example and its result is kept only for those still robust; a member is skipped when
  no example is left.
  """
  check_batch(x, y)
  norms.check_norm(norm)
  if version not in AUTOATTACK_VERSIONS:
    raise ValueError(f"unknown AutoAttack version {version!r}; choose one of "
                     f"{AUTOATTACK_VERSIONS}.")
  num_classes = jax.eval_shape(lambda z: call_logits(logits_fn, z, key), x).shape[-1]
  # Each member: (key, still robust (B,)) -> (x_adv, info).
  if version == "standard":
    members = [lambda k, _: apgd(logits_fn, x, y, k, eps=eps, norm=norm, steps=steps)]
    if num_classes >= 4:
      members.append(lambda k, _: apgd_targeted(
          logits_fn, x, y, k, eps=eps, norm=norm, steps=steps,
          num_target_classes=min(num_target_classes, num_classes - 1)))
    if square_queries > 0:
      if x.ndim != 4:
        raise ValueError("AutoAttack's Square member attacks images (B, H, W, C); for other "
                         f"inputs (shape {x.shape}) pass square_queries=0.")
      # Square pays queries only for the points still robust (the others are masked out).
      members.append(lambda k, robust: square(
          Oracle(logits_fn, "scores", square_queries), x, y, k, eps=eps, norm=norm,
          max_queries=square_queries, attack_mask=robust))
  else:
    members = [lambda k, _, loss=loss: apgd(logits_fn, x, y, k, eps=eps, norm=norm,
                                            steps=steps, loss=loss, eot_iter=eot_iter)
               for loss in ("ce", "dlr")]
  keys = member_keys(key, len(members))
  x_adv = x
  broken_by = norms.match_varying(jnp.full(x.shape[:1], -1, jnp.int32), x)
  queries = jnp.zeros_like(broken_by)  # Square's score queries, per example.
  for index, member in enumerate(members):
    def run(state, member=member, index=index):
      x_adv, broken_by, queries = state
      candidate, report = member(keys[index], broken_by < 0)
      take = report["success"] & (broken_by < 0)
      return (jnp.where(norms.per_example(take, x), candidate, x_adv),
              jnp.where(take, index, broken_by), queries + report.get("queries", 0))

    x_adv, broken_by, queries = lax.cond(jnp.all(broken_by >= 0), lambda state: state, run,
                                         (x_adv, broken_by, queries))
  success = jnp.argmax(call_logits(logits_fn, x_adv, keys[-1]), -1) != y
  return x_adv, {"success": success, "broken_by": broken_by, "square_queries": queries,
                 **norms.distances(x_adv, x)}


def member_keys(key, num_members: int):
  """The key each AutoAttack member runs with (and, last, the final check's)."""
  return jax.random.split(key, num_members + 1)
