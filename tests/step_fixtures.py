"""A tiny network, state and batch that the objective and the update tests share."""

import jax
import jax.numpy as jnp
import numpy as np
from tiny import tiny_config

from aaf_jax import builder

NUM_CLASSES = 7


def tiny_state(loss='aaf', **overrides):
  config = tiny_config('/unused', loss, **overrides)
  trainable = builder.build(config, NUM_CLASSES)
  model, tx, state = trainable.model, trainable.tx, trainable.init_state()
  # Confident, varied predictions (a larger classifier), so that both affinity terms are far
  # from 0: at init every pixel predicts nearly the uniform distribution.
  model_params = jax.tree_util.tree_map_with_path(
    lambda path, x: x * 30 if 'classifier' in jax.tree_util.keystr(path) else x,
    state.params['model'],
  )
  state = state.replace(params={**state.params, 'model': model_params})
  if 'aaf' in state.params:  # distinct, non-uniform tables, so swapping them would show
    rng = np.random.default_rng(2)
    tables = {
      k: jnp.asarray(rng.normal(size=(NUM_CLASSES, len(config.loss.sizes))), jnp.float32)
      for k in ('edge_logits', 'nonedge_logits')
    }
    state = state.replace(params={**state.params, 'aaf': tables})
  return config, model, tx, state


def tiny_batch(seed=0, n=2):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=(n, 4, 4)).repeat(8, 1).repeat(8, 2)
  labels[:, :3, :3] = 255  # some ignored pixels
  return {
    'image': jnp.asarray(rng.normal(size=(n, 32, 32, 3)) * 50, jnp.float32),
    'label': jnp.asarray(labels, jnp.int32),
  }
