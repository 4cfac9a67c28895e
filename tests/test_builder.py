"""The one builder (aaf_jax/builder.py): what a config names is what gets built."""

import jax
import jax.numpy as jnp
import numpy as np
from tiny import tiny_config

from aaf_jax import builder, sharding


def _network(config, num_classes=7):
  """(the network, its logits on a fixed image) of what builder.build makes of `config`."""
  trainable = builder.build(config, num_classes)
  state = trainable.init_state()
  variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
  images = jax.random.normal(jax.random.key(1), (1, 32, 32, 3)) * 50
  return trainable.model, trainable.model.apply(variables, images, train=False)['logits']


def test_compute_dtype_alone_sets_the_network_dtype():
  """Two configs that differ in compute_dtype only: the network computes in each one's dtype."""
  model32, logits32 = _network(tiny_config('/unused', compute_dtype='float32'))
  model16, logits16 = _network(tiny_config('/unused', compute_dtype='bfloat16'))
  assert model32.dtype == jnp.float32 and model16.dtype == jnp.bfloat16
  assert not np.array_equal(logits32, logits16)  # bfloat16 arithmetic rounds differently


def test_initial_state_follows_the_seed_classes_and_loss_kind():
  aaf = builder.build(tiny_config('/unused', 'aaf'), 5).init_state()
  assert aaf.params['aaf']['edge_logits'].shape == (5, 3)  # classes x sizes, learned by 'aaf'
  assert 'aaf' not in builder.build(tiny_config('/unused', 'ce'), 5).init_state().params
  seed0, seed1 = (
    jax.tree.leaves(builder.build(tiny_config('/unused', seed=s), 5).init_state().params['model'])
    for s in (0, 1)
  )
  assert any(not np.array_equal(a, b) for a, b in zip(seed0, seed1))


def test_state_is_placed_by_the_state_sharding():
  trainable = builder.build(tiny_config('/unused'), 7)
  mesh = sharding.make_mesh()
  state_sharding = trainable.state_sharding(mesh)
  state = trainable.init_state(state_sharding)
  for leaf, placed in zip(jax.tree.leaves(state), jax.tree.leaves(state_sharding)):
    assert leaf.sharding == placed
