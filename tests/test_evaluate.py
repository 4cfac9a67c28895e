"""Metrics on hand-computed cases, the eval step with padding, and the recipe's inference:
sliding windows, scales and flip against whole-image results and a NumPy loop."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from launching import xla_flags

from aaf_jax import boundary, evaluate, sharding


def test_scores_hand_computed():
  # rows: truth, columns: prediction
  confusion = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
  res = evaluate.scores(confusion, ['a', 'b', 'c'])
  iou_a, iou_b = 3 / (3 + 1), 2 / (4 + 3 - 2)
  assert res['per_class_iou'] == {'a': iou_a, 'b': iou_b, 'c': 0.0}
  np.testing.assert_allclose(res['miou'], (iou_a + iou_b + 0.0) / 3)
  np.testing.assert_allclose(res['pixel_acc'], 5 / 8)


def test_summarize_keeps_the_confusion_matrix_truth_by_row():
  confusion = np.array([[3, 1, 0], [0, 2, 2], [0, 5, 0]], np.int64)
  res = evaluate.summarize({'confusion': confusion}, ['a', 'b', 'c'])
  # Rows are the truth: the 5 pixels of 'c' were all predicted as 'b'.
  assert res['confusion'] == [[3, 1, 0], [0, 2, 2], [0, 5, 0]]
  assert all(type(v) is int for row in res['confusion'] for v in row)  # JSON as it is


def test_absent_class_has_no_iou_and_is_left_out_of_the_mean():
  res = evaluate.scores(np.array([[2, 0], [0, 0]]), ['a', 'b'])
  assert res['per_class_iou'] == {'a': 1.0, 'b': None}
  assert res['miou'] == 1.0


class Identity(nn.Module):
  """Logits = the first C image channels, so predictions are whatever the test paints."""

  num_classes: int

  @nn.compact
  def __call__(self, images, train=False):
    return {'logits': images[..., : self.num_classes]}


def test_eval_step_counts_valid_pixels_once():
  mesh = sharding.make_mesh()
  preds = np.array([[[0, 1], [2, 2]], [[1, 1], [1, 1]]])
  labels = np.array([[[0, 1], [1, 255]], [[0, 0], [0, 0]]], np.int32)
  batch = {
    'image': np.asarray(jax.nn.one_hot(preds, 3), np.float32),
    'label': labels,
    'valid': np.array([True, False]),
  }  # example 2 is padding
  # A second batch in which both examples count: every batch, the last included, is summed.
  second = {
    'image': batch['image'][::-1].copy(),
    'label': labels[::-1].copy(),
    'valid': np.array([True, True]),
  }
  step = evaluate.jit_eval_step(Identity(3), 3, mesh, sharding.replicated(mesh))
  sums, kept = evaluate.run_evaluation(step, {}, [batch, second], mesh, 3, num_keep=5)
  confusion = sums['confusion']
  expected = np.zeros((3, 3), int)
  expected[0, 0] += 2
  expected[1, 1] += 2
  expected[1, 2] += 2  # the 255 pixels and the padding example count nowhere
  expected[0, 1] += 4  # second batch, example 1: labels 0 predicted 1
  np.testing.assert_array_equal(confusion, expected)

  # Boundary counts of the same pixels: each batch's, summed (hand-checked in test_boundary.py).
  def counts(b):
    counted = (b['label'] < 3) & b['valid'][:, None, None]
    return boundary.boundary_counts(b['label'], np.argmax(b['image'], -1), counted, 3, 3)

  np.testing.assert_array_equal(sums['boundary'], counts(batch) + counts(second))
  assert sums['boundary'][1].sum() > 0
  assert len(kept) == 3
  np.testing.assert_array_equal(kept[0][2], preds[0])
  np.testing.assert_array_equal(kept[1][2], preds[1])


def test_eval_step_boundary_width_as_a_fraction_follows_each_image_size():
  """Fraction 0.05 of each image's diagonal: 3 px on a 40x40 image, 1 px on a 20x20 one in the
  same canvas (the counts are worked out in test_boundary.py). Without batch['size'] every
  image is taken at the canvas's size: 3 px for both, so the small image's class-1 band grows
  from 20^2 - 18^2 = 76 to 20^2 - 14^2 = 204 pixels."""
  labels = np.full((2, 40, 40), 255, np.int32)
  labels[0] = 1
  labels[0, 15:25, 15:25] = 0
  labels[1, :20, :20] = 1
  batch = {
    'image': np.asarray(jax.nn.one_hot(labels, 2), np.float32),  # predictions = labels
    'label': labels,
    'size': np.array([[40, 40], [20, 20]], np.int32),
    'valid': np.array([True, True]),
  }
  step = jax.jit(evaluate.make_eval_step(Identity(2), 2, boundary_width=0.05))
  np.testing.assert_array_equal(step({}, batch)[0]['boundary'], [[84, 676], [84, 676]])
  del batch['size']
  np.testing.assert_array_equal(step({}, batch)[0]['boundary'], [[84, 804], [84, 804]])
  pixels = jax.jit(evaluate.make_eval_step(Identity(2), 2, boundary_width=3))
  np.testing.assert_array_equal(pixels({}, batch)[0]['boundary'], [[84, 804], [84, 804]])


# --- the recipe's inference: sliding windows, scales, flip ---


def identity_logits(images):
  return images[..., :3]  # a stride-1 "network": logits = the image's channels


def _probs(images, apply_fn=identity_logits, **options):
  fn = jax.jit(lambda x: evaluate.predict_probs(apply_fn, x, 3, **options))
  return np.asarray(fn(jnp.asarray(images)))


def _random_images(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
  'height,width,window,stride',
  [
    (37, 53, 16, 10),
    (37, 53, 16, 16),
    (37, 53, 16, 1),
    (20, 24, 32, 8),
    (16, 16, 16, 5),
    (30, 12, 13, 7),
  ],
)
def test_sliding_windows_give_the_whole_image_result(height, width, window, stride):
  images = _random_images((2, height, width, 3))
  whole = _probs(images)
  sliding = _probs(images, window=window, stride=stride)
  np.testing.assert_allclose(sliding, jax.nn.softmax(images, axis=-1), atol=1e-5)
  np.testing.assert_array_equal(sliding.argmax(-1), whole.argmax(-1))


@pytest.mark.parametrize(
  'length,window,stride',
  [
    (37, 16, 10),
    (53, 16, 10),
    (16, 16, 3),
    (5, 16, 10),
    (100, 7, 7),
    (101, 7, 7),
    (101, 7, 1),
    (1024, 480, 320),
    (3584, 720, 480),
  ],
)
def test_windows_cover_every_pixel_and_end_flush(length, window, stride):
  starts = evaluate.window_starts(length, window, stride)
  canvas = max(length, window)
  assert starts[0] == 0 and starts[-1] + window == canvas
  assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
  covered = np.zeros(canvas, int)
  for s in starts:
    covered[s : s + window] += 1
  assert covered.min() >= 1


def test_flip_mirrors_the_prediction_back():
  images = _random_images((2, 12, 17, 3), seed=1)  # asymmetric: a missing un-mirror shows
  for options in ({}, {'window': 8, 'stride': 5}):
    np.testing.assert_allclose(
      _probs(images, flip=True, **options), 2 * _probs(images, **options), atol=1e-6
    )


def test_multi_scale_of_constant_regions_keeps_the_regions():
  regions = np.zeros((2, 32, 48), int)  # class per 16 px block, rows differ per example
  regions[:, :16, 16:32], regions[:, 16:, :16], regions[1, :, 32:] = 1, 2, 1
  images = 5.0 * np.asarray(jax.nn.one_hot(regions, 3), np.float32)
  for options in ({}, {'window': 16, 'stride': 12, 'flip': True}):
    probs = _probs(images, scales=(0.5, 0.75, 1.0, 1.5), **options)
    np.testing.assert_array_equal(probs.argmax(-1), regions)
    np.testing.assert_allclose(probs.sum(-1), 4 * (2 if options else 1), rtol=1e-5)


def test_scales_resize_the_input_and_sum_probabilities():
  def width_logits(images):  # class 0 wins on wide inputs, class 1 on narrow ones
    n, h, w, _ = images.shape
    return jnp.broadcast_to(jnp.array([w / 10, 2.0, 0.0]), (n, h, w, 3))

  scales = (0.5, 1.0, 1.25)
  probs = _probs(np.zeros((1, 10, 30, 3), np.float32), width_logits, scales=scales)
  # The authors' scaled width int(scale * 30): 15, 30, 37 (not round's 38).
  expected = sum(jax.nn.softmax(jnp.array([int(s * 30) / 10, 2.0, 0.0])) for s in scales)
  np.testing.assert_allclose(probs[0, 4, 7], expected, rtol=1e-5)
  np.testing.assert_allclose(probs, np.broadcast_to(probs[:1, :1, :1], probs.shape), rtol=1e-5)


class StridedConv(nn.Module):
  """Logits at output stride 2 from a padded conv: not shift-equivariant at the borders."""

  @nn.compact
  def __call__(self, images, train=False):
    return {'logits': nn.Conv(3, (3, 3), strides=2)(images)}


def _reference_probs(apply_fn, images, window, stride, scales, flip):
  """The authors' loop (pad, windows, softmax, average, resize, un-mirror, sum), in NumPy."""

  def resize(x, h, w):
    return np.asarray(
      jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), 'linear', antialias=False)
    )

  n, height, width, _ = images.shape
  total = np.zeros((n, height, width, 3))
  for scale in scales:
    h, w = int(scale * height), int(scale * width)  # as tf.to_int32: truncation
    scaled = resize(images, h, w)
    for mirrored in [False, True] if flip else [False]:
      img = scaled[:, :, ::-1] if mirrored else scaled
      ph, pw = max(h, window), max(w, window)
      canvas = np.zeros((n, ph, pw, 3), np.float32)
      canvas[:, :h, :w] = img
      acc, count = np.zeros((n, ph, pw, 3)), np.zeros((ph, pw))
      for y in evaluate.window_starts(h, window, stride):
        for x in evaluate.window_starts(w, window, stride):
          logits = np.asarray(apply_fn(canvas[:, y : y + window, x : x + window]))
          probs = np.asarray(jax.nn.softmax(resize(logits, window, window), axis=-1))
          acc[:, y : y + window, x : x + window] += probs
          count[y : y + window, x : x + window] += 1
      probs = resize((acc / count[..., None])[:, :h, :w].astype(np.float32), height, width)
      total += probs[:, :, ::-1] if mirrored else probs
  return total


def test_sliding_scales_and_flip_match_a_reference_loop():
  model = StridedConv()
  images = _random_images((2, 22, 31, 3), seed=2)
  variables = model.init(jax.random.key(0), images[:, :8, :8])
  apply_fn = lambda x: model.apply(variables, x)['logits']
  options = dict(window=12, stride=8, scales=(0.5, 1.0, 1.25), flip=True)
  np.testing.assert_allclose(
    _probs(images, apply_fn, **options), _reference_probs(apply_fn, images, **options), atol=1e-5
  )


class GlobalContext(nn.Module):
  """A strided conv plus the input's mean: every output depends on the whole input, as PSPNet's
  pyramid pooling does, so any padding that enters a run changes every logit."""

  @nn.compact
  def __call__(self, images, train=False):
    local = nn.Conv(3, (3, 3), strides=2)(images)
    return {'logits': local + nn.Dense(3)(images.mean(axis=(1, 2)))[:, None, None]}


def _canvas_batch(sizes, canvas, seed=0):
  """Images of `sizes` at the top left of a canvas whose padding is junk, not zeros: a result
  that reads the padding differs from the image run alone."""
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(len(sizes),) + canvas + (3,)).astype(np.float32) * 3
  labels = np.full((len(sizes),) + canvas, 255, np.int32)
  for i, (h, w) in enumerate(sizes):
    labels[i, :h, :w] = rng.integers(0, 3, (h, w))
  return {
    'image': images,
    'label': labels,
    'size': np.array(sizes, np.int32),
    'valid': np.ones(len(sizes), bool),
  }


@pytest.mark.parametrize(
  'options',
  [
    dict(window=12, stride=8, scales=(0.5, 1.0, 1.25), flip=True),
    dict(window=16, stride=5, scales=(0.75, 1.5), flip=False),
  ],
)
def test_each_image_in_the_canvas_gets_its_own_size_result(options):
  """Sliding windows, scales and flip on images of different sizes in one padded canvas equal
  the authors' loop on each image alone (its own windows, no padding but theirs)."""
  model = GlobalContext()
  sizes = [(22, 31), (9, 14), (30, 40), (17, 40)]
  batch = _canvas_batch(sizes, (30, 40), seed=4)
  variables = model.init(jax.random.key(0), batch['image'][:1])
  apply_fn = lambda x: model.apply(variables, x)['logits']
  probs = jax.jit(lambda x, s: evaluate.predict_probs(apply_fn, x, 3, sizes=s, **options))(
    batch['image'], batch['size']
  )
  probs = np.asarray(probs)
  for i, (h, w) in enumerate(sizes):
    alone = _reference_probs(apply_fn, batch['image'][i : i + 1, :h, :w], **options)
    np.testing.assert_allclose(probs[i, :h, :w], alone[0], atol=2e-5, err_msg=str((h, w)))
    assert not probs[i, h:].any() and not probs[i, :, w:].any()


def test_whole_image_eval_runs_each_size_alone_one_compile_per_size():
  """Whole-image inference crops the batch to each distinct size: the confusion matrix and the
  predictions equal those of each image run alone, and the step compiles once per size."""
  mesh = sharding.make_mesh()
  model = GlobalContext()
  sizes = [(22, 31), (9, 14), (22, 31), (30, 40)]
  batch = _canvas_batch(sizes, (30, 40), seed=5)
  second = _canvas_batch([(9, 14), (30, 40), (22, 31), (9, 14)], (30, 40), seed=6)
  second['valid'][3] = False
  variables = model.init(jax.random.key(0), batch['image'][:1])
  options = dict(scales=(0.5, 1.0), flip=True)
  step = evaluate.jit_eval_step(model, 3, mesh, sharding.replicated(mesh), **options)
  sums, kept = evaluate.run_evaluation(step, variables, [batch, second], mesh, 3, num_keep=8)
  confusion = sums['confusion']
  alone = evaluate.make_eval_step(model, 3, **options)
  expected, expected_preds = np.zeros((3, 3), np.int64), []
  for b in (batch, second):
    for i in np.flatnonzero(b['valid']):
      h, w = b['size'][i]
      one = {
        'image': b['image'][i : i + 1, :h, :w],
        'label': b['label'][i : i + 1, :h, :w],
        'valid': np.array([True]),
      }
      c, p = alone(variables, one)
      expected += np.asarray(c['confusion'])
      expected_preds.append((b['label'][i], np.asarray(p[0])))
  np.testing.assert_array_equal(confusion, expected)
  assert step.step._cache_size() == 3  # three distinct sizes
  assert len(kept) == 7
  for _, label, pred in kept:  # each kept prediction is its image's own, in the canvas
    [alone_pred] = [p for lab, p in expected_preds if np.array_equal(lab, label)]
    h, w = alone_pred.shape
    np.testing.assert_array_equal(pred[:h, :w], alone_pred)
    assert not pred[h:].any() and not pred[:, w:].any()


def test_sliding_eval_compiles_once_for_every_image_size():
  mesh = sharding.make_mesh()
  model = GlobalContext()
  variables = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  step = evaluate.jit_eval_step(
    model, 3, mesh, sharding.replicated(mesh), window=12, stride=8, scales=(0.5, 1.25), flip=True
  )
  batches = [
    _canvas_batch([(22, 31), (9, 14)], (30, 40), seed=7),
    _canvas_batch([(30, 40), (5, 6)], (30, 40), seed=8),
  ]
  evaluate.run_evaluation(step, variables, batches, mesh, 3)
  assert step.step._cache_size() == 1


def test_sliding_eval_step_counts_like_the_whole_image_step():
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(3)
  batch = {
    'image': _random_images((2, 21, 26, 3), seed=3),
    'label': rng.integers(0, 3, (2, 21, 26)).astype(np.int32),
    'valid': np.array([True, True]),
  }
  batch['label'][1, 15:] = 255  # padding rows
  results = []
  for options in ({}, {'window': 10, 'stride': 6, 'scales': (1.0,), 'flip': True}):
    step = evaluate.jit_eval_step(Identity(3), 3, mesh, sharding.replicated(mesh), **options)
    results.append(evaluate.run_evaluation(step, {}, [batch], mesh, 3)[0]['confusion'])
  np.testing.assert_array_equal(results[0], results[1])
  assert results[0].sum() == 2 * 21 * 26 - 6 * 26


@pytest.mark.parametrize(
  'options,field',
  [
    ({'window': -1}, 'config.eval.window'),
    ({'window': 16, 'stride': 0}, 'config.eval.stride'),
    ({'window': 16, 'stride': 17}, 'config.eval.stride'),
    ({'scales': ()}, 'config.eval.scales'),
    ({'scales': (1.0, 0.0)}, 'config.eval.scales'),
    ({'flip': 1}, 'config.eval.flip'),
    ({'boundary_width': 0}, 'config.eval.boundary_width'),
    ({'boundary_width': 2.5}, 'config.eval.boundary_width'),
    ({'boundary_width': 1.0}, 'config.eval.boundary_width'),
    ({'boundary_width': 0.0}, 'config.eval.boundary_width'),
    ({'boundary_width': True}, 'config.eval.boundary_width'),
  ],
)
def test_bad_eval_options_name_the_field(options, field):
  with pytest.raises(ValueError, match=field.replace('.', r'\.')):
    evaluate.make_eval_step(Identity(3), 3, **options)


def test_configs_carry_the_recipes_inference():
  from configs import cityscapes, synthetic, voc

  six_scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  expected = {
    'synthetic': (synthetic.get_config(), (0, 0, (1.0,), False)),
    'voc stage1': (voc.get_config('stage1'), (480, 320, (1.0,), False)),
    'voc stage2': (voc.get_config('stage2,init=/runs/voc1'), (480, 320, six_scales, True)),
    'cityscapes': (cityscapes.get_config(), (720, 480, six_scales, True)),
  }
  for name, (config, values) in expected.items():
    e = config.eval
    assert (e.window, e.stride, tuple(e.scales), e.flip) == values, name
    evaluate.make_eval_step(Identity(3), 3, **e.to_dict())  # valid options


_EIGHT_DEVICES = """
import jax, numpy as np
from aaf_jax import evaluate, sharding
from tests.test_evaluate import StridedConv
model, rng = StridedConv(), np.random.default_rng(0)
batch = {'image': rng.normal(size=(8, 22, 31, 3)).astype(np.float32),
         'label': rng.integers(0, 3, (8, 22, 31)).astype(np.int32), 'valid': np.ones(8, bool),
         'size': np.stack([rng.integers(5, 23, 8), rng.integers(5, 32, 8)], 1).astype(np.int32)}
variables = model.init(jax.random.key(0), batch['image'][:1])
mesh = sharding.make_mesh()
assert mesh.devices.size == 8, mesh
options = dict(window=12, stride=8, scales=(0.5, 1.0, 1.25), flip=True)
step = evaluate.jit_eval_step(model, 3, mesh, sharding.replicated(mesh), **options)
sums, kept = evaluate.run_evaluation(step, variables, [batch], mesh, 3, num_keep=8)
want_sums, want_preds = evaluate.make_eval_step(model, 3, **options)(variables, batch)
np.testing.assert_array_equal(sums['confusion'], np.asarray(want_sums['confusion']))
np.testing.assert_array_equal(sums['boundary'], np.asarray(want_sums['boundary']))
np.testing.assert_array_equal(np.stack([k[2] for k in kept]), np.asarray(want_preds))
"""


@pytest.mark.slow
def test_sliding_flip_eval_on_eight_devices_matches_one():
  """Windows, scales and the flipped views of images of different sizes stay correct with the
  batch split over 8 devices."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(
    os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=os.pathsep.join([root, f'{root}/tests'])
  )
  out = subprocess.run(
    [sys.executable, '-c', _EIGHT_DEVICES],
    cwd=root,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]


class _Batches(list):
  num_examples = 3  # what the eval iterator reports: the last batch is padding in part


def test_evaluation_logs_progress_eta_and_time(monkeypatch, caplog):
  import logging

  mesh = sharding.make_mesh()
  batch = {
    'image': _random_images((2, 6, 7, 3)),
    'label': np.zeros((2, 6, 7), np.int32),
    'valid': np.array([True, True]),
  }
  last = dict(batch, valid=np.array([True, False]))
  monkeypatch.setattr(evaluate, 'PROGRESS_EVERY_S', 0.0)
  step = evaluate.jit_eval_step(Identity(3), 3, mesh, sharding.replicated(mesh))
  with caplog.at_level(logging.INFO):
    evaluate.run_evaluation(step, {}, _Batches([batch, last]), mesh, 3)
  messages = [r.getMessage() for r in caplog.records]
  assert any(m.startswith('Evaluation: 2/3 images (67%)') and 'ETA' in m for m in messages)
  assert any(m.startswith('Evaluation: 3/3 images (100%)') for m in messages)
  assert any(m.startswith('Evaluation of 3 images took') for m in messages), messages
