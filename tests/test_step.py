"""The update: each test here fails on one silent bug that trains without any error: BatchNorm
statistics not updated, one dropout key reused every step, a host transfer inside the step (the
objective's own tests are in test_objective.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
from step_fixtures import NUM_CLASSES, tiny_batch, tiny_state
from tiny import tiny_config

from aaf_jax import step


def test_train_step_updates_batchnorm_statistics():
  """The new state's statistics are those of a training forward pass on the batch."""
  config, model, tx, state = tiny_state('aaf')
  batch = tiny_batch()
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
  config, model, tx, state = tiny_state('ce', **{'model.dropout': 0.5})
  train_step = jax.jit(step.make_train_step(model, tx, config, NUM_CLASSES))
  batch = tiny_batch()

  def loss_at(step_number, seed_state=state, fn=train_step):
    return float(fn(seed_state.replace(step=jnp.int32(step_number)), batch)[1].compute()['loss'])

  assert loss_at(3) == loss_at(3)  # the same step draws the same masks (resumable)
  assert loss_at(3) != loss_at(4)  # another step, other masks
  other_seed = tiny_config('/unused', 'ce', seed=1, **{'model.dropout': 0.5})
  other_step = jax.jit(step.make_train_step(model, tx, other_seed, NUM_CLASSES))
  assert loss_at(3, fn=other_step) != loss_at(3)


def test_train_step_makes_no_host_transfer():
  config, model, tx, state = tiny_state('aaf')
  train_step = jax.jit(step.make_train_step(model, tx, config, NUM_CLASSES), donate_argnums=0)
  batch = jax.device_put(tiny_batch())
  state, _, _ = train_step(state, batch)  # compile outside the guard
  with jax.transfer_guard('disallow'):
    for _ in range(2):
      state, metrics, finite = train_step(state, batch)
  assert bool(finite) and int(state.step) == 3
  assert np.isfinite(metrics.compute()['loss'])
