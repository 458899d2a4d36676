"""The Oracle: all a query (black-box) attack may see of the model under attack.

A query attack gets an Oracle instead of the attack target (target.py). The Oracle answers with the
deployed classifier's class scores (`access='scores'`) or only its predicted labels
(`access='labels'`), counts every query per example, refuses to answer an example that has
spent its budget, and cannot be differentiated: taking a gradient through it fails when the
attack is traced, before any compute, so a "black-box" attack can never silently become a
white-box one.

The Oracle is pure: the per-example counts are an array the attack carries through its loop.

    oracle = Oracle(target, access="scores", budget=10_000)
    counts = oracle.initial_counts(batch_size)
    scores, counts, answered = oracle.query(x, counts, key)             # one query per example
    scores, counts, answered = oracle.query_many(candidates, counts, key)  # (B, Q, ...): Q each
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from defenses_jax.attacks.target import Target, call_logits

ACCESS = ("scores", "labels")


def check_query_targets(attack: str, target: str, targets) -> None:
  """Query attacks take target 'none' or 'given' (with `targets`): the least likely class
  would cost queries of its own, so the caller computes it if it wants it."""
  if target not in ("none", "given"):
    raise ValueError(f"{attack} supports target 'none' or 'given' (a query attack cannot compute "
                     f"the least likely class itself); got {target!r}.")
  if target == "given" and targets is None:
    raise ValueError("target='given' needs a `targets` array of classes.")
  if target != "given" and targets is not None:  # Silently attacking untargeted misleads.
    raise ValueError(f"{attack} got `targets` with target={target!r}; pass target='given' to "
                     "attack them.")


class QueryAccessError(TypeError):
  """A query attack tried to differentiate the model behind an Oracle."""


@jax.custom_jvp
def _no_gradient(x):
  return x


@_no_gradient.defjvp
def _refuse(primals, tangents):
  raise QueryAccessError(
      "a query attack differentiated the model behind its Oracle; query attacks see scores or "
      "labels only (use a gradient attack, with threat_model white_box, to differentiate).")


class Oracle:
  """Answers queries on the class scores of `target` (an attack target: a randomised one draws
  from the key of each query)."""

  def __init__(self, target: Target, access: str, budget: int,
               independent_examples: bool = False):
    """independent_examples: the target is deterministic and treats the rows of its batch
    independently (as every network does; not a randomised target, nor one that pairs rows
    with per-example constants), so the Q queries of each example may run as one flat batch of
    B * Q rows: on CPU about 3x faster than vmapping the model over the queries (XLA batches
    convolutions with pooling badly). Otherwise each query gets its own key."""
    if access not in ACCESS:
      raise ValueError(f"unknown oracle access {access!r}; choose one of {ACCESS}.")
    if budget < 1:
      raise ValueError(f"the query budget must be >= 1; got {budget}.")
    self._target, self.access, self.budget = target, access, int(budget)
    self.independent_examples = bool(independent_examples)

  def initial_counts(self, batch_size: int) -> jax.Array:
    return jnp.zeros((batch_size,), jnp.int32)

  def _answer(self, x, key):
    scores = call_logits(self._target, _no_gradient(x), key)
    return scores if self.access == "scores" else jnp.argmax(scores, axis=-1)

  def query(self, x: jax.Array, counts: jax.Array, key: jax.Array,
            active: Optional[jax.Array] = None):
    """One query per example of the batch x (B, ...). Returns (answers, counts, answered):
    answers are scores (B, K) or labels (B,); an example that is inactive or has no budget left
    is not counted, and its answer is NaN scores or label -1 (answered False)."""
    answered = counts < self.budget
    if active is not None:
      answered = answered & active
    answers = self._answer(x, key)
    return self._mask(answers, answered), counts + answered.astype(counts.dtype), answered

  def query_many(self, xs: jax.Array, counts: jax.Array, key: jax.Array,
                 active: Optional[jax.Array] = None):
    """Q queries per example: xs is (B, Q, ...). An example is answered only if all Q fit in its
    remaining budget (else none are, and none are counted). Returns (answers (B, Q, ...),
    counts, answered (B,)); each of the B * Q queries has its own key."""
    q = xs.shape[1]
    answered = counts + q <= self.budget
    if active is not None:
      answered = answered & active
    return (self._mask(self._answer_many(xs, key), answered),
            counts + q * answered.astype(counts.dtype), answered)

  def _answer_many(self, xs, key):
    """Answers to xs (R, Q, ...): one flat batch of R * Q rows where examples are independent,
    else the model vmapped over Q with a fresh key per query (a randomised defense draws anew)."""
    if self.independent_examples:
      flat = self._answer(xs.reshape((-1,) + xs.shape[2:]), key)
      return flat.reshape(xs.shape[:2] + flat.shape[1:])
    keys = jax.random.split(key, xs.shape[1])
    return jax.vmap(self._answer, in_axes=(1, 0), out_axes=1)(xs, keys)

  def query_units(self, xs: jax.Array, owner: jax.Array, mask: jax.Array, counts: jax.Array,
                  key: jax.Array):
    """Queries in units: row r of xs (R, Q, ...) holds up to Q queries of example owner[r]
    (those where mask (R, Q)), so that one call can serve some examples with several rows and
    others with none. A row is answered only if all its masked queries fit in its example's
    budget after the queries of its example's earlier rows in this call (as asked, answered or
    not); only masked queries of answered rows are answered and counted (the rest: NaN scores,
    label -1). Returns (answers (R, Q, ...), counts (B,), answered (R,)). Rows of different
    examples run as one flat batch, so an Oracle whose examples are not independent needs
    owner == arange(B) (row r is example r)."""
    batch = counts.shape[0]
    asked = jnp.sum(mask, axis=1, dtype=counts.dtype)
    mine = (owner[:, None] == jnp.arange(batch)[None, :]).astype(counts.dtype)  # (R, B)
    before = jnp.sum((jnp.cumsum(mine * asked[:, None], axis=0) - mine * asked[:, None]) * mine,
                     axis=1)  # The example's queries in earlier rows of this call.
    answered = (asked > 0) & (counts[owner] + before + asked <= self.budget)
    counts = counts + jnp.sum(mine * (asked * answered)[:, None], axis=0)
    # Only the masked queries of answered rows are answered (and counted): no free answers.
    keep = mask & answered[:, None]
    return self._mask(self._answer_many(xs, key), keep), counts, answered

  def _mask(self, answers, keep):
    """Answers where `keep` (its shape a leading part of the answers'), else NaN scores or
    label -1."""
    keep = keep.reshape(keep.shape + (1,) * (answers.ndim - keep.ndim))
    return jnp.where(keep, answers, jnp.nan if self.access == "scores" else -1)
