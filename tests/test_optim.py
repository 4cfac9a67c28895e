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


# config.loss.tables: one step of each mode on the AAF loss of a hand-made case.
SIZES = (1, 2, 3)


def _hand_made():
  """(probs [1,8,8,3], labels [1,8,8]): a box of class 1 and a stroke of class 2 on class 0,
  predicted unevenly, so that every size's terms differ and the tables get a gradient."""
  labels = np.zeros((1, 8, 8), np.int32)
  labels[0, 2:6, 1:5] = 1
  labels[0, :, 6] = 2
  logits = 2.0 * jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
  return jax.nn.softmax(logits, axis=-1), jnp.asarray(labels)


def _aaf_terms(tables):
  from aaf_jax import affinity

  probs, labels = _hand_made()
  return affinity.adaptive_affinity_loss(
    probs,
    labels,
    num_classes=3,
    sizes=SIZES,
    edge_logits=tables['edge_logits'],
    nonedge_logits=tables['nonedge_logits'],
  )


def _aaf_loss(tables):
  edge, nonedge = _aaf_terms(tables)
  return jnp.sum(edge) + jnp.sum(nonedge)


def _tables_and_network():
  zeros = jnp.zeros((3, len(SIZES)))
  return {
    'model': {'head': {'conv': {'kernel': jnp.ones((1, 1, 4, 3))}}},
    'aaf': {'edge_logits': zeros, 'nonedge_logits': zeros},
  }


@pytest.mark.parametrize('mode,sign', [('adversarial', +1), ('descent', -1), ('uniform', 0)])
def test_each_table_mode_moves_the_tables_its_way(mode, sign):
  """adversarial: up the loss's gradient; descent: down it; uniform: not at all. The network
  descends in every mode."""
  p = _tables_and_network()
  grads = {'model': jax.tree.map(jnp.ones_like, p['model']), 'aaf': jax.grad(_aaf_loss)(p['aaf'])}
  for g in grads['aaf'].values():
    assert np.abs(g).max() > 1e-2  # the tables have a direction to move in
  tx = optim.make_optimizer(OPT, num_steps=100, tables=mode)
  updates, _ = tx.update(grads, tx.init(p), p)
  lr = 0.1  # the schedule at step 0; momentum's trace starts at the first gradient
  for key in ('edge_logits', 'nonedge_logits'):
    np.testing.assert_allclose(updates['aaf'][key], sign * lr * grads['aaf'][key], rtol=1e-6)
  np.testing.assert_allclose(updates['model']['head']['conv']['kernel'], -10 * lr * 1.01, rtol=1e-6)
  after = optax.apply_updates(p, updates)
  before, moved = float(_aaf_loss(p['aaf'])), float(_aaf_loss(after['aaf']))
  if sign > 0:
    assert moved > before
  elif sign < 0:
    assert moved < before
  else:
    for key in ('edge_logits', 'nonedge_logits'):
      np.testing.assert_array_equal(after['aaf'][key], p['aaf'][key])


def test_uniform_tables_give_the_mean_of_the_per_size_terms():
  """After steps of 'uniform' the tables are still zero, so each size weighs 1/K: the loss is
  the mean over the sizes of the fixed-size affinity field's terms. The ascending tables of
  'adversarial' weigh the harder sizes more, and 'descent' the easier ones."""
  from aaf_jax import affinity

  probs, labels = _hand_made()
  fixed = [affinity.affinity_loss(probs, labels, num_classes=3, size=s) for s in SIZES]
  mean_edge = np.mean([float(e) for e, _ in fixed])
  mean_nonedge = np.mean([float(n) for _, n in fixed])
  assert np.ptp([float(e) for e, _ in fixed]) > 1e-3  # the sizes' terms differ

  def trained(mode, steps=5):
    p = _tables_and_network()
    tx = optim.make_optimizer(OPT, num_steps=100, tables=mode)
    state = tx.init(p)
    for _ in range(steps):
      grads = {
        'model': jax.tree.map(jnp.zeros_like, p['model']),
        'aaf': jax.grad(_aaf_loss)(p['aaf']),
      }
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    return p['aaf']

  uniform = trained('uniform')
  assert not any(np.any(t) for t in uniform.values())
  edge, nonedge = _aaf_terms(uniform)
  np.testing.assert_allclose(float(jnp.sum(edge)), mean_edge, rtol=1e-6)
  np.testing.assert_allclose(float(jnp.sum(nonedge)), mean_nonedge, rtol=1e-6)
  mean = mean_edge + mean_nonedge
  assert float(_aaf_loss(trained('adversarial'))) > mean > float(_aaf_loss(trained('descent')))


def test_unknown_table_mode_is_an_error():
  with pytest.raises(ValueError, match=r"config.loss.tables='ascent' is unknown"):
    optim.make_optimizer(OPT, num_steps=100, tables='ascent')


def test_the_trainer_builds_the_optimizer_config_loss_tables_names(tmp_path):
  """train.setup (--mode=train and --mode=eval) passes the field on: the tables of one update
  move up, down or not at all, and a run of any mode starts from zero tables."""
  from tiny import tiny_config

  from aaf_jax import train

  for mode, sign in (('adversarial', +1), ('descent', -1), ('uniform', 0)):
    run = train.setup(tiny_config(str(tmp_path), 'aaf', **{'loss.tables': mode}))
    params = run.init(jax.random.key(0)).params
    assert not np.any(params['aaf']['edge_logits'])
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = run.tx.update(grads, run.tx.init(params), params)
    np.testing.assert_allclose(updates['aaf']['edge_logits'], sign * 0.1, rtol=1e-6)
