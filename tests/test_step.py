"""The objective and the update pinned against an independent float64 reference.

Each test here fails on one silent bug that trains without any error: an affinity term dropped,
the two lambdas swapped, the loss decay ignored, the aux head's loss dropped, BatchNorm
statistics not updated, one dropout key reused every step, a host transfer inside the step.
"""

from unittest import mock

import affinity_reference as ref
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from tiny import tiny_config

from aaf_jax import affinity_pallas, loss_kinds, models, optim, step

NUM_CLASSES = 7


def _build(loss='aaf', **overrides):
  config = tiny_config('/unused', loss, **overrides)
  model = models.build_model(config.model, num_classes=NUM_CLASSES)
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
  state = jax.jit(step.init_state_fn(model, tx, config, NUM_CLASSES, 32))(jax.random.key(0))
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


def _batch(seed=0, n=2):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=(n, 4, 4)).repeat(8, 1).repeat(8, 2)
  labels[:, :3, :3] = 255  # some ignored pixels
  return {
    'image': jnp.asarray(rng.normal(size=(n, 32, 32, 3)) * 50, jnp.float32),
    'label': jnp.asarray(labels, jnp.int32),
  }


def _reference_ce(logits, labels):
  """Mean float64 cross-entropy over labels that are classes, labels shrunk to the logits."""
  logits = np.asarray(logits, np.float64)
  small = np.asarray(step.shrink_labels(np.asarray(labels), *logits.shape[1:3]))
  valid = small < NUM_CLASSES
  log_probs = np.log(ref.softmax(logits))
  picked = np.take_along_axis(log_probs, np.where(valid, small, 0)[..., None], -1)[..., 0]
  return -picked[valid].mean(), small


def _reference_objective(config, model, state, batch, at_step):
  """CE + aux_weight * aux CE + 10^(-t/T) * (lambda_e * edge + lambda_n * nonedge), in float64."""
  outputs = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[0])(
    {'params': state.params['model'], 'batch_stats': state.batch_stats}, batch['image']
  )
  ce, small = _reference_ce(outputs['logits'], batch['label'])
  total = ce
  if config.model.aux_head:
    total += config.model.aux_weight * _reference_ce(outputs['aux_logits'], batch['label'])[0]
  probs = ref.softmax(outputs['logits'])
  loss = config.loss
  if loss.kind == 'affinity':
    edge, nonedge = ref.affinity_loss(probs, small, NUM_CLASSES, loss.sizes[0], loss.margin)
  elif loss.kind == 'aaf':
    edges, nonedges = ref.adaptive_affinity_loss(
      probs,
      small,
      NUM_CLASSES,
      loss.sizes,
      loss.margin,
      np.asarray(state.params['aaf']['edge_logits']),
      np.asarray(state.params['aaf']['nonedge_logits']),
    )
    edge, nonedge = np.sum(edges), np.sum(nonedges)
  else:
    return total
  decay = 10.0 ** (-at_step / config.num_train_steps) if loss.decay else 1.0
  return total + decay * (loss.lambda_edge * edge + loss.lambda_nonedge * nonedge)


@pytest.mark.parametrize(
  'loss,overrides',
  [
    ('ce', {}),
    ('affinity', {}),
    ('aaf', {}),
    ('aaf', {'loss.decay': False}),
    ('aaf', {'model.aux_head': True, 'model.aux_weight': 0.4}),
    ('affinity', {'model.aux_head': True, 'model.aux_weight': 0.4}),
  ],
)
def test_objective_matches_the_float64_reference(loss, overrides):
  """Distinct lambdas (0.3, 1.7), margin 2.5 and step 2 of 4 (decay 10^-0.5): swapping the
  lambdas, dropping a term, ignoring the decay or the aux loss each moves the total."""
  config, model, _, state = _build(
    loss,
    **{'loss.lambda_edge': 0.3, 'loss.lambda_nonedge': 1.7, 'loss.margin': 2.5, **overrides},
  )
  batch = _batch()
  loss_fn = jax.jit(step.make_loss_fn(model, config, NUM_CLASSES))
  total, (terms, _) = loss_fn(
    state.params, state.batch_stats, batch['image'], batch['label'], 2, jax.random.key(0)
  )
  expected = _reference_objective(config, model, state, batch, at_step=2)
  np.testing.assert_allclose(float(total), expected, rtol=2e-5)
  if loss != 'ce':
    assert float(terms['edge']) > 1e-3 and float(terms['nonedge']) > 1e-3  # both terms matter


def test_train_step_updates_batchnorm_statistics():
  """The new state's statistics are those of a training forward pass on the batch."""
  config, model, tx, state = _build('aaf')
  batch = _batch()
  new_state, _, _ = jax.jit(step.make_train_step(model, tx, config, NUM_CLASSES))(state, batch)
  expected = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[1])(
    {'params': state.params['model'], 'batch_stats': state.batch_stats}, batch['image']
  )['batch_stats']
  leaves = jax.tree.leaves(new_state.batch_stats)
  assert leaves and jax.tree.structure(new_state.batch_stats) == jax.tree.structure(expected)
  for new, reference, old in zip(
    leaves, jax.tree.leaves(expected), jax.tree.leaves(state.batch_stats)
  ):
    np.testing.assert_allclose(new, reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(new, old)


def test_dropout_key_changes_every_step_and_follows_the_seed():
  # 'ce': its loss depends on the step only through the dropout key (no loss decay).
  config, model, tx, state = _build('ce', **{'model.dropout': 0.5})
  train_step = jax.jit(step.make_train_step(model, tx, config, NUM_CLASSES))
  batch = _batch()

  def loss_at(step_number, seed_state=state, fn=train_step):
    return float(fn(seed_state.replace(step=jnp.int32(step_number)), batch)[1].compute()['loss'])

  assert loss_at(3) == loss_at(3)  # the same step draws the same masks (resumable)
  assert loss_at(3) != loss_at(4)  # another step, other masks
  other_seed = tiny_config('/unused', 'ce', seed=1, **{'model.dropout': 0.5})
  other_step = jax.jit(step.make_train_step(model, tx, other_seed, NUM_CLASSES))
  assert loss_at(3, fn=other_step) != loss_at(3)


def test_train_step_makes_no_host_transfer():
  config, model, tx, state = _build('aaf')
  train_step = jax.jit(step.make_train_step(model, tx, config, NUM_CLASSES), donate_argnums=0)
  batch = jax.device_put(_batch())
  state, _, _ = train_step(state, batch)  # compile outside the guard
  with jax.transfer_guard('disallow'):
    for _ in range(2):
      state, metrics, finite = train_step(state, batch)
  assert bool(finite) and int(state.step) == 3
  assert np.isfinite(metrics.compute()['loss'])


@pytest.mark.parametrize('kind', ['affinity', 'aaf'])
def test_config_loss_implementation_chooses_the_pair_sums(kind):
  """config.loss.implementation reaches the loss: 'pallas' runs the fused kernels, 'xla' not."""
  rng = np.random.default_rng(0)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=(1, 4, 5, 3)), jnp.float32), axis=-1)
  labels = jnp.asarray(rng.integers(0, 3, size=(1, 4, 5)), jnp.int32)
  sizes = loss_kinds.get(kind).default_sizes[:2]
  tables = {'edge_logits': jnp.zeros((3, len(sizes))), 'nonedge_logits': jnp.zeros((3, len(sizes)))}
  terms = {}
  for implementation in ('xla', 'pallas'):
    loss_cfg = ml_collections.ConfigDict(
      dict(sizes=sizes, margin=3.0, implementation=implementation)
    )
    with mock.patch.object(affinity_pallas, 'pair_sums', wraps=affinity_pallas.pair_sums) as fused:
      terms[implementation] = loss_kinds.get(kind).terms(
        probs, labels, num_classes=3, loss_cfg=loss_cfg, tables=tables
      )
    assert fused.called == (implementation == 'pallas')
  np.testing.assert_allclose(terms['pallas'], terms['xla'], rtol=1e-5)
