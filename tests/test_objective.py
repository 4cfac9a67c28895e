"""The objective (aaf_jax/objective.py) pinned against an independent float64 reference.

Each test here fails on one silent bug that trains without any error: an affinity term dropped,
the two lambdas swapped, the loss decay ignored, the aux head's loss dropped, labels shrunk or
ignored wrongly, the wrong implementation of the pair sums.
"""

from unittest import mock

import affinity_reference as ref
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from step_fixtures import NUM_CLASSES, tiny_batch, tiny_state

from aaf_jax import affinity_pallas, loss_kinds, objective


def test_shrink_labels_and_cross_entropy_ignore_255():
  labels = jnp.array([[[0, 0, 1, 1], [0, 0, 1, 1], [255, 255, 2, 2], [255, 255, 2, 2]]])
  np.testing.assert_array_equal(objective.shrink_labels(labels, 2, 2), [[[0, 1], [255, 2]]])
  logits = jnp.log(
    jnp.array([[[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]], [[0.9, 0.05, 0.05], [0.2, 0.2, 0.6]]]])
  )
  ce, acc, _ = objective.cross_entropy(logits, labels, 3)
  np.testing.assert_allclose(ce, -(np.log(0.5) + np.log(0.6) + np.log(0.6)) / 3, rtol=1e-6)
  np.testing.assert_allclose(acc, 1.0)


def _reference_ce(logits, labels):
  """Mean float64 cross-entropy over labels that are classes, labels shrunk to the logits."""
  logits = np.asarray(logits, np.float64)
  small = np.asarray(objective.shrink_labels(np.asarray(labels), *logits.shape[1:3]))
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
  config, model, _, state = tiny_state(
    loss,
    **{'loss.lambda_edge': 0.3, 'loss.lambda_nonedge': 1.7, 'loss.margin': 2.5, **overrides},
  )
  batch = tiny_batch()
  loss_fn = jax.jit(objective.make_loss_fn(model, config, NUM_CLASSES))
  total, (terms, _) = loss_fn(
    state.params, state.batch_stats, batch['image'], batch['label'], 2, jax.random.key(0)
  )
  expected = _reference_objective(config, model, state, batch, at_step=2)
  np.testing.assert_allclose(float(total), expected, rtol=2e-5)
  if loss != 'ce':
    assert float(terms['edge']) > 1e-3 and float(terms['nonedge']) > 1e-3  # both terms matter


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
      terms[implementation] = objective.terms_of(kind)(
        probs, labels, num_classes=3, loss_cfg=loss_cfg, tables=tables
      )
    assert fused.called == (implementation == 'pallas')
  np.testing.assert_allclose(terms['pallas'], terms['xla'], rtol=1e-5)
