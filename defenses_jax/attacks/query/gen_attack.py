"""GenAttack (Alzantot et al. 2019): a score-based genetic attack in the L-inf ball.

Reference: the authors' `nesl/adversarial_genattack: genattack_tf2.py` (`GenAttack2`) and its
`main.py` (see section 4 of the reference notes). Not foolbox 3's `GenAttack`, whose fitness is
`log(sum exp z - z_t)` (a logit subtracted from a sum of exponentials) and whose mutations are
shared by every example of the batch.

One example's population is N members stored as *noise* around x. A member is evaluated as
`clip(noise + x, max(x - eps, 0), min(x + eps, 1))` (the reference works in [-0.5, 0.5], this
library in [0, 1]); the stored noise is never projected, as in the reference, so repeated
mutations can push a coordinate past the ball and it is clipped to the ball's face. Every point
the Oracle sees lies in the eps-ball and in [0, 1].

- Init: sparse `U(-eps, eps)` noise on a fraction rho (`mutation_rate`) of the coordinates.
- Fitness, from the probabilities p = softmax(the Oracle's scores), in log space (logsumexp of
  log-probabilities, no `+ 1e-30`, so a confident model's fitness does not saturate at ~+-69):
    targeted    log p_t - log sum_{j != t} p_j   (the reference's),
    untargeted  log sum_{j != y} p_j - log p_y   (its mirror; the reference is targeted only).
- Elite: the first successful member if one exists, else the argmax of the fitness; it is copied
  unchanged into the next generation, with its stored fitness (it is not queried again).
- Selection: 2(N - 1) parents drawn with replacement from softmax(fitness / temperature).
- Crossover: each gene of a child comes from parent 1 with probability p1 / (p1 + p2), p the
  selection probabilities (computed as sigmoid(log p1 - log p2), which cannot be 0/0).
- Mutation: `U(-alpha * eps, alpha * eps)` added to each gene with probability rho; every example
  of the batch draws its own.
- Adaptive scaling (`adaptive=True`, the reference's): the win margin of a generation is the
  best member's p_c - max_j p_j (c = t; untargeted: c = the most likely class other than y), 0
  exactly at success. A plateau is counted once more than 100 generations (300 while this
  generation's margin is <= -0.40) pass without improving the best margin seen (which starts at
  -1); with k plateaus the mutation range is alpha_k = max(alpha, 0.4 * 0.9^k) and the mutation
  rate rho_k = max(rho, 0.5 * 0.9^k), except rho = 1 when breeding from the first 10 generations
  (the reference's idx < 10). The initial noise always uses rho, as the reference's.

Steps and queries. A *step* is one evaluated generation, the initial population being step 1
(the reference's `num_steps`). Step 1 queries all N members, each later step queries its N - 1
children (the elite's fitness is reused), so an example that stops after s steps has spent
exactly `s * (N - 1) + 1` queries: the reference's count `num_steps * (pop_size - 1) + 1`, which
is right for it (its loop returns idx + 1 after the generation whose evaluation succeeded). Its
model call re-evaluates the elite every step but does not count it; here it is really not
queried. `max_steps` caps the steps, so `gen_attack_query_budget` = max_steps * (N - 1) + 1 is
the most an example can spend (the reference's loop condition `i <= max_steps` would allow one
generation more; it reports nothing for a failed example, so its formula never counted that).

An example stops at the first step where a member succeeds (untargeted: the Oracle's argmax is
not y; targeted: it is t), after `max_steps` steps, or when the Oracle refuses its next
generation (its budget is spent; the generation is then not used, the population keeps its best
member so far; being unsuccessful, it comes back as x). Batch and population are vectorised:
each step is one `oracle.query_many` with (B, N - 1, ...) candidates, inside a `lax.while_loop`.

Against a randomised defense the elite's fitness is the answer to the query that found it, not
a fresh draw (the reference's count assumes the elite is not queried again; its model call did
re-evaluate it, deterministically).
"""

from __future__ import annotations

import inspect
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from defenses_jax.attacks import norms
from defenses_jax.attacks.objectives import check_batch
from defenses_jax.attacks.query.oracle import Oracle, check_query_targets


# The plateau rule of the reference's adaptive scaling.
_PLATEAU_STEPS, _PLATEAU_STEPS_FAR, _FAR_MARGIN = 100, 300, -0.40
_FULL_MUTATION_STEPS = 10


def gen_attack(oracle, x, y, key, *, eps: float, population: int = 6,
               mutation_rate: float = 0.005, alpha: float = 0.20, temperature: float = 0.1,
               max_steps: int = 10000, adaptive: bool = True, target: str = "none",
               targets: Optional[jax.Array] = None, return_history: bool = False):
  """GenAttack through a scores Oracle. Returns (x_adv, info).

  eps: the L-inf radius, always given (no default: budgets differ by data set and paper).
  Defaults are the flags of the authors' `main.py` (population 6, mutation_rate rho = 0.005,
  alpha = 0.20, temperature 0.1, max_steps 10000, adaptive scaling on). Their class defaults
  differ (rho 0.001, temperature 0.3, non-adaptive), and their README's MNIST run uses
  rho = 0.3, alpha = 0.5, population 4, temperature 0.1, non-adaptive (eps 0.3; CIFAR: rho 0.05,
  alpha 0.25, eps 0.05): pass those to reproduce it.

  target: 'none' (untargeted: any class but y) or 'given' (reach `targets`).

  info: success (per the Oracle's own answer), queries (the Oracle's count per example), steps
  (generations evaluated, the initial one included), l2 / linf / l0 of x_adv - x; with
  `return_history`, also elite_fitness (B, max_steps): the elite's fitness after each step (NaN
  after the example stopped). The elite is the argmax of the fitness until a member succeeds,
  so this is non-decreasing before the success step (at it, the elite is the successful member,
  whose fitness may be lower when there are more than two classes). A failed example comes back
  as x.
  """
  _check(oracle, x, y, eps, population, mutation_rate, alpha, temperature, max_steps, target,
         targets)
  targeted = target == "given"
  cls = targets if targeted else y
  batch, n_pop = x.shape[0], int(population)
  eps = float(eps)
  lo = jnp.maximum(x - eps, 0.0)[:, None]
  hi = jnp.minimum(x + eps, 1.0)[:, None]
  shape = (batch, n_pop) + x.shape[1:]
  member = lambda noise: jnp.clip(x[:, None] + noise, lo, hi)
  ex = norms.per_example
  init_key, first_query_key, loop_key = jax.random.split(key, 3)

  # Step 1: the initial population, all N members queried.
  noise = _mutate(init_key, jnp.zeros(shape, x.dtype), mutation_rate, eps)
  scores, counts, answered = oracle.query_many(
      member(noise), oracle.initial_counts(batch), first_query_key)
  fitness, margin, fooled = _assess(scores, cls, targeted)
  fitness, margin = (jnp.where(answered[:, None], v, 0.0) for v in (fitness, margin))
  fooled = fooled & answered[:, None]
  elite = _elite(fitness, fooled)
  success = jnp.any(fooled, -1)
  steps = answered.astype(jnp.int32)
  no_plateau = (jnp.full((batch,), -1.0, fitness.dtype), jnp.zeros((batch,), jnp.int32),
                jnp.zeros((batch,), jnp.int32))  # The reference starts its best margin at -1.
  plateau = _update_plateaus(no_plateau, jnp.max(margin, -1), answered)
  done = success | ~answered | (steps >= max_steps)
  history = None
  if return_history:
    history = jnp.full((batch, max_steps), jnp.nan, fitness.dtype)
    history = history.at[:, 0].set(jnp.where(answered, _pick(fitness, elite), jnp.nan))

  def body(state):
    (i, noise, fitness, margin, elite, counts, success, done, steps, plateau, history) = state
    active = ~done
    breed_key, query_key = jax.random.split(jax.random.fold_in(loop_key, i))
    if adaptive:
      step_size, rate = _adaptive_scaling(steps, plateau[2], alpha, mutation_rate)
    else:
      step_size, rate = jnp.full((batch,), alpha), jnp.full((batch,), mutation_rate)
    children = _breed(breed_key, noise, fitness, temperature, rate, eps * step_size)
    scores, counts, answered = oracle.query_many(member(children), counts, query_key,
                                                 active=active)
    c_fitness, c_margin, c_fooled = _assess(scores, cls, targeted)
    # The next generation: the children, then the elite (the reference's order), unqueried.
    e_noise = _members(noise, elite[:, None])
    new_noise = jnp.concatenate([children, e_noise], 1)
    new_fitness = jnp.concatenate([c_fitness, _pick(fitness, elite)[:, None]], 1)
    new_margin = jnp.concatenate([c_margin, _pick(margin, elite)[:, None]], 1)
    fooled = jnp.concatenate([c_fooled, jnp.zeros((batch, 1), bool)], 1) & answered[:, None]
    new_elite = _elite(jnp.where(answered[:, None], new_fitness, 0.0), fooled)
    keep = lambda new, old: jnp.where(ex(answered, new), new, old)
    noise, fitness, margin, elite = (keep(new_noise, noise), keep(new_fitness, fitness),
                                     keep(new_margin, margin), keep(new_elite, elite))
    steps = steps + answered.astype(steps.dtype)
    success = success | jnp.any(fooled, -1)
    plateau = _update_plateaus(plateau, jnp.max(new_margin, -1), answered)
    done = done | success | (active & ~answered) | (steps >= max_steps)
    if history is not None:
      history = history.at[:, i + 1].set(jnp.where(answered, _pick(fitness, elite), jnp.nan))
    return (i + 1, noise, fitness, margin, elite, counts, success, done, steps, plateau, history)

  def cond(state):
    i, done = state[0], state[7]
    return (i + 1 < max_steps) & jnp.any(~done)

  init = (jnp.zeros((), jnp.int32), noise, fitness, margin, elite, counts, success, done, steps,
          plateau, history)
  (_, noise, _, _, elite, counts, success, _, steps, _, history) = lax.while_loop(
      cond, body, norms.varying_like(init, x))
  best = member(_members(noise, elite[:, None]))[:, 0]
  x_adv = jnp.where(ex(success, x), best, x)
  info = {"success": success, "queries": counts, "steps": steps, **norms.distances(x_adv, x)}
  if return_history:
    info["elite_fitness"] = history
  return x_adv, info


def gen_attack_query_budget(**params) -> int:
  """The most queries gen_attack can spend per example with these parameters (any of
  gen_attack's keyword parameters; unset ones take its defaults): max_steps * (N - 1) + 1."""
  signature = inspect.signature(gen_attack).parameters
  unknown = sorted(set(params) - {n for n, p in signature.items() if p.kind == p.KEYWORD_ONLY})
  if unknown:
    raise ValueError(f"gen_attack has no parameter(s) {unknown}.")
  population = int(params.get("population", signature["population"].default))
  max_steps = int(params.get("max_steps", signature["max_steps"].default))
  return max_steps * (population - 1) + 1


def _check(oracle, x, y, eps, population, mutation_rate, alpha, temperature, max_steps, target,
           targets):
  check_batch(x, y, targets)
  if not isinstance(oracle, Oracle) or oracle.access != "scores":
    got = f"access {oracle.access!r}" if isinstance(oracle, Oracle) else repr(oracle)
    raise ValueError("GenAttack needs an Oracle with access='scores' (its fitness is computed "
                     f"from the class probabilities); got {got}.")
  if eps is None:
    raise ValueError("GenAttack needs an L-inf radius eps > 0; none was given.")
  if not float(eps) > 0:
    raise ValueError(f"GenAttack needs an L-inf radius eps > 0; got {eps}.")
  if int(population) != population or population < 2:
    raise ValueError(f"GenAttack needs an integer population >= 2 (an elite and at least one "
                     f"child); got {population}.")
  if not 0 <= mutation_rate <= 1:
    raise ValueError(f"GenAttack's mutation_rate is a probability; got {mutation_rate}.")
  if not alpha >= 0 or not temperature > 0:
    raise ValueError(f"GenAttack needs alpha >= 0 and temperature > 0; got {alpha}, "
                     f"{temperature}.")
  if int(max_steps) != max_steps or max_steps < 1:
    raise ValueError(f"GenAttack needs an integer max_steps >= 1; got {max_steps}.")
  check_query_targets("GenAttack", target, targets)


def _mutate(key, noise, rate, step):
  """The reference's mutation_op: U(-step, step) added to each gene with probability `rate`
  (scalars, or one per example (B,)); every member of every example draws its own."""
  k_mask, k_value = jax.random.split(key)
  rate, step = (norms.per_example(jnp.asarray(v, noise.dtype).reshape(-1), noise)
                for v in (rate, step))
  where = jax.random.uniform(k_mask, noise.shape, noise.dtype) < rate
  value = jax.random.uniform(k_value, noise.shape, noise.dtype, -1.0, 1.0) * step
  return noise + where * value


def _breed(key, noise, fitness, temperature, rate, step):
  """The N - 1 children (B, N - 1, ...) of a population (B, N, ...) with fitness (B, N):
  2(N - 1) parents drawn from softmax(fitness / temperature), each gene from parent 1 with
  probability p1 / (p1 + p2), then mutated (`rate`, `step`: scalars or per example)."""
  k_parents, k_cross, k_mutate = jax.random.split(key, 3)
  batch, n_pop = fitness.shape
  logits = fitness / temperature
  parents = jax.random.categorical(k_parents, logits, shape=(2 * (n_pop - 1), batch)).T
  first, second = parents[:, :n_pop - 1], parents[:, n_pop - 1:]
  log_probs = jax.nn.log_softmax(logits, -1)
  p_first = jax.nn.sigmoid(jnp.take_along_axis(log_probs, first, -1)
                           - jnp.take_along_axis(log_probs, second, -1))  # p1 / (p1 + p2).
  parent1 = _members(noise, first)
  from_first = jax.random.uniform(k_cross, parent1.shape, noise.dtype) < _genes(p_first, noise)
  return _mutate(k_mutate, jnp.where(from_first, parent1, _members(noise, second)), rate, step)


def _adaptive_scaling(steps, num_plateaus, alpha, mutation_rate):
  """The reference's (alpha_k, rho_k) per example, breeding from generation `steps` (the
  initial one is 1) after `num_plateaus` plateaus: max(alpha, 0.4 * 0.9^k) and
  max(rho, 0.5 * 0.9^k), rho = 1 for the first 10 generations."""
  decay = 0.9 ** num_plateaus.astype(jnp.float32)
  step = jnp.maximum(alpha, 0.4 * decay)
  rate = jnp.where(steps <= _FULL_MUTATION_STEPS, 1.0, jnp.maximum(mutation_rate, 0.5 * decay))
  return step, rate


def _update_plateaus(state, margin, answered):
  """The reference's plateau counting: state (best win margin, steps without improving it,
  plateaus k), updated with a generation's win margin where `answered`. A plateau is counted,
  and the count restarted, once the count exceeds 100 (300 while this margin is <= -0.40)."""
  best, count, k = state
  better = margin > best
  new_best = jnp.where(better, margin, best)
  new_count = jnp.where(better, 0, count + 1)
  threshold = jnp.where(margin > _FAR_MARGIN, _PLATEAU_STEPS, _PLATEAU_STEPS_FAR)
  hit = new_count > threshold
  new_count, new_k = jnp.where(hit, 0, new_count), k + hit.astype(k.dtype)
  keep = lambda new, old: jnp.where(answered, new, old)
  return keep(new_best, best), keep(new_count, count), keep(new_k, k)


def _genes(v, like):
  """(B, Q) against a population (B, Q, ...)."""
  return v.reshape(v.shape + (1,) * (like.ndim - 2))


def _members(noise, idx):
  """noise[b, idx[b, q]]: (B, Q, ...) members of a population (B, N, ...)."""
  return jnp.take_along_axis(noise, _genes(idx, noise), 1)


def _assess(scores, cls, targeted: bool):
  """Per member (B, Q): fitness, win margin and success, from the Oracle's scores (B, Q, K)."""
  log_p = jax.nn.log_softmax(scores, -1)
  is_cls = jax.nn.one_hot(cls, scores.shape[-1], dtype=bool)[:, None, :]
  log_p_cls = jnp.sum(jnp.where(is_cls, log_p, 0.0), -1)
  log_p_others = jax.nn.logsumexp(jnp.where(is_cls, -jnp.inf, log_p), -1)
  fitness = log_p_cls - log_p_others if targeted else log_p_others - log_p_cls
  p = jnp.exp(log_p)
  # The reference's win margin p_t - max_j p_j; untargeted, the best class other than y in t's
  # place. 0 exactly when the member succeeds (ties aside), negative before.
  wanted = (jnp.sum(jnp.where(is_cls, p, 0.0), -1) if targeted
            else jnp.max(jnp.where(is_cls, -jnp.inf, p), -1))
  margin = wanted - jnp.max(p, -1)
  labels = jnp.argmax(scores, -1)
  fooled = labels == cls[:, None] if targeted else labels != cls[:, None]
  return fitness, margin, fooled


def _elite(fitness, fooled):
  """The first successful member if there is one, else the fittest (B,)."""
  return jnp.where(jnp.any(fooled, -1), jnp.argmax(fooled, -1),
                   jnp.argmax(fitness, -1)).astype(jnp.int32)


def _pick(v, idx):
  return jnp.take_along_axis(v, idx[:, None], -1)[:, 0]
