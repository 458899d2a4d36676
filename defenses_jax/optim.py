"""Optimizers and learning-rate schedules from the `train` section of a config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from defenses_jax import config_schema
from defenses_jax.config import SCHEMA

# Declared with the config (config.SCHEMA), which checks them before any compute.
OPTIMIZERS = config_schema.lookup(SCHEMA, "train.optimizer").check.choices
SCHEDULES = config_schema.lookup(SCHEMA, "train.schedule").check.choices
L2_SCOPES = config_schema.lookup(SCHEMA, "train.l2_scope").check.choices


def learning_rate_schedule(cfg, steps_per_epoch: int) -> optax.Schedule:
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.learning_rate)
  if cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(cfg.learning_rate, cfg.epochs * steps_per_epoch)
  if cfg.schedule == "piecewise":
    # Multiply the rate by lr_decay at each epoch listed in lr_boundary_epochs.
    boundaries = {int(e * steps_per_epoch): cfg.lr_decay for e in cfg.lr_boundary_epochs}
    return optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)
  raise ValueError(f"unknown train.schedule {cfg.schedule!r}; choose one of {SCHEDULES}.")


def create_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
  lr = learning_rate_schedule(cfg, steps_per_epoch)
  if cfg.optimizer == "adam":
    return optax.adam(lr)
  if cfg.optimizer == "sgd":
    return optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
  raise ValueError(f"unknown train.optimizer {cfg.optimizer!r}; choose one of {OPTIMIZERS}.")


def l2_penalty(params, scope: str) -> jax.Array:
  """Sum of squared kernel weights: 'conv' (4-D kernels only, the Keras kernel_regularizer of
  paper 000 Table 5) or 'all' (every kernel, dense layers included). Biases and BatchNorm
  parameters are never penalised."""
  if scope not in L2_SCOPES:
    raise ValueError(f"unknown train.l2_scope {scope!r}; choose one of {L2_SCOPES}.")
  min_ndim = 4 if scope == "conv" else 2
  leaves = [p for path, p in jax.tree_util.tree_leaves_with_path(params)
            if getattr(path[-1], "key", None) == "kernel" and p.ndim >= min_ndim]
  return sum((jnp.sum(jnp.square(p)) for p in leaves), jnp.zeros(()))
