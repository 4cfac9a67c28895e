"""Parameter groups: every leaf in exactly one, each moved in its intended direction."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aaf_jax import optim

OPT = ml_collections.ConfigDict(
  dict(learning_rate=0.1, poly_power=0.9, momentum=0.9, weight_decay=0.01, head_lr_mult=10.0)
)


def params():
  return {
    'model': {
      'backbone': {
        'conv': {'kernel': jnp.ones((3, 3, 2, 4))},
        'bn': {'scale': jnp.ones((4,)), 'bias': jnp.zeros((4,))},
      },
      'head': {'conv': {'kernel': jnp.ones((1, 1, 4, 3)), 'bias': jnp.zeros((3,))}},
      'aux_head': {'conv': {'kernel': jnp.ones((1, 1, 4, 3))}},
    },
    'aaf': {'edge_logits': jnp.zeros((3, 2)), 'nonedge_logits': jnp.zeros((3, 2))},
  }


def test_every_leaf_has_exactly_one_group():
  labels = optim.param_labels(params())
  flat = dict(jax.tree_util.tree_flatten_with_path(labels)[0])
  assert len(flat) == len(jax.tree.leaves(params()))
  by_path = {jax.tree_util.keystr(k): v for k, v in flat.items()}
  assert by_path["['model']['backbone']['conv']['kernel']"] == 'backbone'
  assert by_path["['model']['backbone']['bn']['scale']"] == 'backbone'
  assert by_path["['model']['head']['conv']['bias']"] == 'head'
  assert by_path["['model']['aux_head']['conv']['kernel']"] == 'head'
  assert by_path["['aaf']['edge_logits']"] == 'aaf'
  assert set(by_path.values()) == set(optim.GROUPS)


def test_unknown_top_level_subtree_is_an_error():
  with pytest.raises(ValueError, match="subtree 'extra'"):
    optim.param_labels({'extra': jnp.zeros(2)})


def test_decay_only_on_conv_kernels():
  mask = optim.decay_mask(params())
  assert mask['model']['backbone']['conv']['kernel']
  assert not mask['model']['backbone']['bn']['scale']
  assert not mask['model']['head']['conv']['bias']
  assert not mask['aaf']['edge_logits']


def test_one_step_moves_each_group_in_its_direction():
  p = params()
  grads = jax.tree.map(jnp.ones_like, p)  # d objective / d leaf = +1 everywhere
  tx = optim.make_optimizer(OPT, num_steps=100)
  updates, _ = tx.update(grads, tx.init(p), p)
  lr = 0.1  # the schedule at step 0
  # Backbone: descent, with L2 decay (wd * w) added on the conv kernel only.
  np.testing.assert_allclose(updates['model']['backbone']['conv']['kernel'], -lr * (1 + 0.01))
  np.testing.assert_allclose(updates['model']['backbone']['bn']['scale'], -lr)
  # Head: descent at 10x the learning rate.
  np.testing.assert_allclose(updates['model']['head']['conv']['kernel'], -10 * lr * 1.01, rtol=1e-6)
  np.testing.assert_allclose(updates['model']['head']['conv']['bias'], -10 * lr, rtol=1e-6)
  np.testing.assert_allclose(
    updates['model']['aux_head']['conv']['kernel'], -10 * lr * 1.01, rtol=1e-6
  )
  # AAF tables: ascent, no decay.
  np.testing.assert_allclose(updates['aaf']['edge_logits'], +lr)
  np.testing.assert_allclose(updates['aaf']['nonedge_logits'], +lr)


def test_poly_schedule_and_momentum():
  schedule = optim.poly_schedule(1e-3, 100, 0.9)
  np.testing.assert_allclose(schedule(0), 1e-3)
  np.testing.assert_allclose(schedule(50), 1e-3 * 0.5**0.9, rtol=1e-6)
  np.testing.assert_allclose(schedule(100), 0.0, atol=1e-12)
  p = {'aaf': {'edge_logits': jnp.zeros((1, 1))}}
  tx = optim.make_optimizer(OPT, num_steps=100)
  state = tx.init(p)
  g = {'aaf': {'edge_logits': jnp.ones((1, 1))}}
  first, state = tx.update(g, state, p)
  second, _ = tx.update(g, state, p)
  np.testing.assert_allclose(
    second['aaf']['edge_logits'], optim.poly_schedule(0.1, 100, 0.9)(1) * (1 + 0.9), rtol=1e-6
  )
  assert isinstance(tx, optax.GradientTransformation)
