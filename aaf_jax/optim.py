"""Parameter groups and the one optax transform that trains them (docs/method.md item 9).

The trainable tree is `{'model': network params, 'aaf': {'edge_logits', 'nonedge_logits'}}`.
Every leaf gets exactly one group label:

  backbone  momentum SGD on the poly schedule, L2 weight decay on conv kernels
  head      the same at `head_lr_mult` times the learning rate (subtrees `head`, `aux_head`)
  aaf       the same momentum and schedule, no weight decay; its direction is
            `config.loss.tables` (loss_kinds.TABLE_MODES): 'adversarial' ASCENDS the objective, the
            min-max game of the paper; 'descent' descends with the network (min-min);
            'uniform' never moves the tables from their zero start (equal weights over sizes)

so by default one `tx.update` descends on the network and ascends on the kernel-size tables.
"""

import jax
import jax.numpy as jnp
import optax

from aaf_jax import loss_kinds

HEAD_SUBTREES = ('head', 'aux_head')
GROUPS = ('backbone', 'head', 'aaf')


def poly_schedule(base_lr: float, num_steps: int, power: float):
  """lr(t) = base_lr * (1 - t / num_steps) ** power, the recipe's poly policy."""
  return optax.polynomial_schedule(
    init_value=base_lr, end_value=0.0, power=power, transition_steps=num_steps
  )


def param_labels(params):
  """The group label of every leaf of `{'model': ..., 'aaf': ...}` (see module docstring)."""

  def label(path, _):
    top = path[0].key
    if top == 'aaf':
      return 'aaf'
    if top != 'model':
      raise ValueError(f'Unexpected top-level parameter subtree {top!r}; expected model/aaf.')
    return 'head' if path[1].key in HEAD_SUBTREES else 'backbone'

  return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params):
  """True on conv kernels (4-D leaves named `kernel`): the recipe decays only those."""

  def is_conv_kernel(path, leaf):
    return path[-1].key == 'kernel' and jnp.ndim(leaf) == 4

  return jax.tree_util.tree_map_with_path(is_conv_kernel, params)


def make_optimizer(
  opt_cfg, num_steps: int, tables: str = loss_kinds.DEFAULT_TABLES
) -> optax.GradientTransformation:
  """One transform: descent on `model` (with head LR multiplier); on `aaf` what `tables` says.

  opt_cfg fields: learning_rate, poly_power, momentum, weight_decay, head_lr_mult. `tables` is
  `config.loss.tables`: 'adversarial' (ascent), 'descent' or 'uniform' (never updated).
  """
  if tables not in loss_kinds.TABLE_MODES:
    raise ValueError(
      f'config.loss.tables={tables!r} is unknown; expected one of {tuple(loss_kinds.TABLE_MODES)}.'
    )
  schedule = poly_schedule(opt_cfg.learning_rate, num_steps, opt_cfg.poly_power)

  def descent(lr_mult):
    return optax.chain(
      optax.masked(optax.add_decayed_weights(opt_cfg.weight_decay), decay_mask),
      optax.trace(decay=opt_cfg.momentum),
      optax.scale_by_learning_rate(lambda step: lr_mult * schedule(step)),
    )

  direction = loss_kinds.TABLE_MODES[tables]
  if direction:
    aaf = optax.chain(
      optax.trace(decay=opt_cfg.momentum),
      optax.scale_by_learning_rate(schedule, flip_sign=direction < 0),
    )
  else:
    aaf = optax.set_to_zero()
  return optax.partition(
    {'backbone': descent(1.0), 'head': descent(opt_cfg.head_lr_mult), 'aaf': aaf}, param_labels
  )
