"""Metrics on hand-computed cases, and the eval step's confusion matrix with padding."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax import evaluate, sharding


def test_scores_hand_computed():
  # rows: truth, columns: prediction
  confusion = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
  res = evaluate.scores(confusion, ['a', 'b', 'c'])
  iou_a, iou_b = 3 / (3 + 1), 2 / (4 + 3 - 2)
  assert res['per_class_iou'] == {'a': iou_a, 'b': iou_b, 'c': 0.0}
  np.testing.assert_allclose(res['miou'], (iou_a + iou_b + 0.0) / 3)
  np.testing.assert_allclose(res['pixel_acc'], 5 / 8)


def test_absent_class_has_no_iou_and_is_left_out_of_the_mean():
  res = evaluate.scores(np.array([[2, 0], [0, 0]]), ['a', 'b'])
  assert res['per_class_iou'] == {'a': 1.0, 'b': None}
  assert res['miou'] == 1.0


class Identity(nn.Module):
  """Logits = the first C image channels, so predictions are whatever the test paints."""
  num_classes: int

  @nn.compact
  def __call__(self, images, train=False):
    return {'logits': images[..., :self.num_classes]}


def test_eval_step_counts_valid_pixels_once():
  mesh = sharding.make_mesh()
  preds = np.array([[[0, 1], [2, 2]], [[1, 1], [1, 1]]])
  labels = np.array([[[0, 1], [1, 255]], [[0, 0], [0, 0]]], np.int32)
  batch = {'image': np.asarray(jax.nn.one_hot(preds, 3), np.float32),
           'label': labels, 'valid': np.array([True, False])}  # example 2 is padding
  step = evaluate.jit_eval_step(Identity(3), 3, mesh, sharding.replicated(mesh))
  confusion, kept = evaluate.run_evaluation(step, {}, [batch], mesh, 3, num_keep=5)
  expected = np.zeros((3, 3), int)
  expected[0, 0] += 1
  expected[1, 1] += 1
  expected[1, 2] += 1  # the 255 pixel and the padding example count nowhere
  np.testing.assert_array_equal(confusion, expected)
  assert len(kept) == 1
  np.testing.assert_array_equal(kept[0][2], preds[0])


def test_results_json_is_written_atomically(tmp_path):
  path = tmp_path / 'results.json'
  evaluate.write_json_atomically(str(path), {'miou': 0.5})
  assert path.read_text().strip().startswith('{')
  try:
    evaluate.write_json_atomically(str(path), {'miou': float('nan')})
  except ValueError:
    pass
  assert '0.5' in path.read_text()  # the old result is intact
  assert [p.name for p in tmp_path.iterdir()] == ['results.json']
