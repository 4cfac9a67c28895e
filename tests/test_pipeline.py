"""Input pipeline: shapes, augmentation invariants, determinism, resume, sharding, evaluation."""

import json

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from aaf_jax import data
from aaf_jax.data import pipeline

MEAN = np.array((122.675, 116.669, 104.008), np.float32)
# Class c is painted (RED[c], GREEN[c]); the blue channel encodes the example's index.
RED = np.array([10, 200, 60, 250], np.uint8)
GREEN = np.array([30, 90, 220, 160], np.uint8)
TRAIN_SIZE = (20, 28)
EVAL_SIZES = [(16, 24), (20, 28), (24, 18), (12, 12), (24, 28), (17, 23), (22, 9)]


def _blue(index: int) -> int:
  return 5 + 20 * index


class CodedBlocks(tfds.core.GeneratorBasedBuilder):
  """Tiny set whose pixel colour encodes its label (red, green) and its index (blue)."""

  VERSION = tfds.core.Version('1.0.0')
  CLASS_NAMES = ('a', 'b', 'c', 'd')
  IGNORE_LABEL = 255

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
          'name': tfds.features.Text(),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {
      'train': self._generate_examples([TRAIN_SIZE] * 10, 'train'),
      'validation': self._generate_examples(EVAL_SIZES, 'validation'),
    }

  def _generate_examples(self, sizes, split):
    for index, (height, width) in enumerate(sizes):
      label = coded_label(index, height, width)
      image = np.stack([RED[label], GREEN[label], np.full_like(label, _blue(index))], axis=-1)
      yield index, {'image': image, 'label': label[..., None], 'name': f'{split}_{index}'}


def coded_label(index, height, width):
  """Random 6x6-pixel blocks of the 4 classes, [H,W] uint8."""
  blocks = np.random.default_rng(index).integers(0, 4, (height // 6 + 1, width // 6 + 1))
  return np.kron(blocks, np.ones((6, 6), np.uint8))[:height, :width].astype(np.uint8)


data.register_builder('coded_blocks', CodedBlocks)


def make_cfg(data_dir, name='coded_blocks', **overrides):
  cfg = ml_collections.ConfigDict(
    dict(
      name=name,
      data_dir=str(data_dir),
      manual_dir=None,
      train_split='train',
      eval_split='validation',
      crop_size=24,
      min_scale=0.5,
      max_scale=2.0,
      mirror=True,
      mean=tuple(MEAN.tolist()),
      eval_size=(24, 28),
      prefetch=2,
    )
  )
  cfg.update(overrides)
  return cfg


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  data.get_builder(make_cfg(path))
  return path


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def decode_index(image):
  """Example index from the blue code of the top-left pixel (never padding: pads go last)."""
  return int(round((image[0, 0, 2] + MEAN[2] - 5) / 20))


def test_dataset_info(data_dir):
  info = pipeline.dataset_info(make_cfg(data_dir))
  assert info == pipeline.DatasetInfo(
    num_classes=4,
    class_names=('a', 'b', 'c', 'd'),
    ignore_label=255,
    num_train=10,
    num_eval=len(EVAL_SIZES),
  )


def test_synthetic_train_batches_have_contract_shapes(tmp_path):
  cfg = make_cfg(
    tmp_path,
    name='synthetic',
    crop_size=40,
    synthetic=dict(image_size=48, num_train=6, num_validation=2),
  )
  batches = take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=0), 3)
  for batch in batches:
    assert set(batch) == {'image', 'label'}
    assert batch['image'].shape == (4, 40, 40, 3) and batch['image'].dtype == np.float32
    assert batch['label'].shape == (4, 40, 40) and batch['label'].dtype == np.int32
    assert set(np.unique(batch['label'])) <= set(range(7)) | {255}


def test_identity_augmentation_returns_the_mean_subtracted_image_padded(data_dir):
  # Scale 1, no mirror, crop = longest side: the only freedom left is which example.
  cfg = make_cfg(data_dir, min_scale=1.0, max_scale=1.0, mirror=False, crop_size=28)
  iterator = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=3)
  batches = take(iterator, 5)  # 20 positions = exactly 2 epochs of 10 examples
  height, width = TRAIN_SIZE
  order = []
  for batch in batches:
    for image, label in zip(batch['image'], batch['label']):
      index = decode_index(image)
      order.append(index)
      expected_label = coded_label(index, height, width)
      np.testing.assert_array_equal(label[:height], expected_label)
      np.testing.assert_array_equal(label[height:], 255)
      expected_rgb = np.stack(
        [RED[expected_label], GREEN[expected_label], np.full_like(expected_label, _blue(index))], -1
      )
      np.testing.assert_allclose(image[:height], expected_rgb - MEAN, atol=1e-4)
      np.testing.assert_array_equal(image[height:], 0.0)
  first, second = order[:10], order[10:]
  assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
  assert first != second, 'each epoch must get a fresh permutation'


def test_augmented_image_and_label_stay_aligned(data_dir):
  cfg = make_cfg(data_dir, crop_size=24)
  batches = take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=1), 6)
  labels = np.concatenate([b['label'] for b in batches])  # [N,crop,crop]
  images = np.concatenate([b['image'] for b in batches]) + MEAN  # [N,crop,crop,3]
  assert set(np.unique(labels)) <= {0, 1, 2, 3, 255}
  padded = labels == 255
  np.testing.assert_allclose(images[padded], np.broadcast_to(MEAN, images[padded].shape), atol=1e-4)
  # Pixels whose 3x3 label neighbourhood is one class see no bilinear blending (the crop's
  # border rows are left out: their outer neighbours were cropped away).
  window = np.lib.stride_tricks.sliding_window_view(
    np.pad(labels, ((0, 0), (1, 1), (1, 1)), constant_values=-1), (3, 3), axis=(1, 2)
  )
  uniform = (window.min(axis=(-1, -2)) == window.max(axis=(-1, -2))) & ~padded
  assert uniform.sum() > 0.3 * labels.size, 'too few pixels checked to trust this test'
  np.testing.assert_allclose(images[uniform][:, 0], RED[labels[uniform]], atol=1e-3)
  np.testing.assert_allclose(images[uniform][:, 1], GREEN[labels[uniform]], atol=1e-3)
  # The blue code is constant inside an example, so it survives any blending.
  for image, label in zip(images, labels):
    blue = image[..., 2][label != 255]
    np.testing.assert_allclose(blue, blue[0], atol=1e-3)
  scales_seen = {int((label != 255).sum()) for label in labels}
  assert len(scales_seen) > 3, 'the random scale should vary the padded area'


def reference_augment(image, label, seed, *, crop, min_scale, max_scale, mirror, mean):
  """The recipe done the plain way: resize everything, mirror, pad, then crop."""
  scale_seed, mirror_seed, y_seed, x_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, num=4)
  )
  scale = tf.random.stateless_uniform([], scale_seed, min_scale, max_scale)
  size = tf.maximum(tf.cast(tf.cast(tf.shape(image)[:2], tf.float32) * scale, tf.int32), 1)
  image = tf.image.resize(tf.cast(image, tf.float32), size, method='bilinear')
  label = tf.image.resize(label, size, method='nearest')
  if mirror and tf.random.stateless_uniform([], mirror_seed) < 0.5:
    image, label = tf.reverse(image, [1]), tf.reverse(label, [1])
  pad = [[0, max(crop - int(size[0]), 0)], [0, max(crop - int(size[1]), 0)], [0, 0]]
  image = tf.pad(image - mean, pad)
  label = tf.pad(tf.cast(label, tf.int32), pad, constant_values=255)
  top = tf.random.stateless_uniform([], y_seed, 0, image.shape[0] - crop + 1, tf.int32)
  left = tf.random.stateless_uniform([], x_seed, 0, image.shape[1] - crop + 1, tf.int32)
  return (
    image[top : top + crop, left : left + crop].numpy(),
    label[top : top + crop, left : left + crop, 0].numpy(),
  )


@pytest.mark.parametrize('height, width, crop', [(37, 53, 24), (20, 28, 40), (64, 17, 16)])
def test_crop_only_resampling_matches_resizing_the_whole_image(height, width, crop):
  rng = np.random.default_rng(height)
  image = tf.constant(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
  label = tf.constant(rng.integers(0, 256, (height, width, 1), dtype=np.uint8))
  options = dict(crop=crop, min_scale=0.5, max_scale=2.0, mirror=True, mean=MEAN)
  for position in range(25):
    seed = tf.constant([11, position], tf.int64)
    got_image, got_label = pipeline._augment(image, label, seed, **options)
    want_image, want_label = reference_augment(image, label, seed, **options)
    np.testing.assert_array_equal(got_label.numpy(), want_label)
    np.testing.assert_allclose(got_image.numpy(), want_image, atol=1e-3)


def test_same_seed_same_batches_and_other_seed_differs(data_dir):
  cfg = make_cfg(data_dir)
  a = take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=7), 2)
  b = take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=7), 2)
  c = take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=8), 2)
  assert_batches_equal(a, b)
  assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_resume_from_state_reproduces_the_uninterrupted_stream(data_dir):
  cfg = make_cfg(data_dir)
  uninterrupted = take(pipeline.make_train_iterator(cfg, global_batch_size=4, seed=5), 6)
  first = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=5)
  take(first, 3)
  state = json.loads(json.dumps(first.get_state()))
  assert state['step'] == 3
  resumed = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=5)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 3), uninterrupted[3:])
  assert resumed.get_state()['step'] == 6


def test_set_state_rejects_another_stream(data_dir):
  cfg = make_cfg(data_dir)
  state = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=5).get_state()
  other = pipeline.make_train_iterator(cfg, global_batch_size=4, seed=6)
  with pytest.raises(ValueError, match='seed'):
    other.set_state(state)
  with pytest.raises(ValueError, match='step'):
    other.set_state({**other.get_state(), 'step': -1})


def test_processes_read_disjoint_shares_that_make_up_the_global_batch(data_dir):
  cfg = make_cfg(data_dir)
  whole = take(
    pipeline.make_train_iterator(
      cfg, global_batch_size=4, seed=2, process_index=0, process_count=1
    ),
    2,
  )
  shares = [
    take(
      pipeline.make_train_iterator(
        cfg, global_batch_size=4, seed=2, process_index=i, process_count=2
      ),
      2,
    )
    for i in range(2)
  ]
  for step in range(2):
    assert shares[0][step]['image'].shape[0] == 2
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
        np.concatenate([shares[0][step][key], shares[1][step][key]]), whole[step][key]
      )
  # Within the first epoch (8 of 10 positions) no example is read twice.
  seen = [decode_index(image) for share in shares for batch in share for image in batch['image']]
  assert len(seen) == len(set(seen))


def test_eval_yields_every_image_once_padded(data_dir):
  cfg = make_cfg(data_dir, eval_size=(24, 28))
  per_process = [
    pipeline.make_eval_iterator(
      cfg, split='validation', global_batch_size=4, process_index=i, process_count=2
    )
    for i in range(2)
  ]
  assert [len(p) for p in per_process] == [2, 2]
  assert [p.num_examples for p in per_process] == [len(EVAL_SIZES)] * 2
  found = []
  for process in per_process:
    batches = list(process)
    assert len(batches) == 2
    for batch in batches:
      assert batch['image'].shape == (2, 24, 28, 3)
      assert batch['image'].dtype == np.float32
      assert batch['label'].shape == (2, 24, 28) and batch['label'].dtype == np.int32
      assert batch['valid'].dtype == bool
      assert batch['size'].shape == (2, 2) and batch['size'].dtype == np.int32
      for image, label, size, valid in zip(
        batch['image'], batch['label'], batch['size'], batch['valid']
      ):
        if not valid:
          np.testing.assert_array_equal(image, 0.0)
          np.testing.assert_array_equal(label, 255)
          found.append(None)
          continue
        index = decode_index(image)
        height, width = EVAL_SIZES[index]
        np.testing.assert_array_equal(size, (height, width))
        np.testing.assert_array_equal(label[:height, :width], coded_label(index, height, width))
        np.testing.assert_array_equal(label[height:], 255)
        np.testing.assert_array_equal(label[:, width:], 255)
        np.testing.assert_array_equal(image[height:], 0.0)
        np.testing.assert_array_equal(image[:, width:], 0.0)
        np.testing.assert_allclose(image[:height, :width, 2] + MEAN[2], _blue(index))
        found.append(index)
  assert sorted(i for i in found if i is not None) == list(range(len(EVAL_SIZES)))
  assert found.count(None) == 8 - len(EVAL_SIZES)


def test_eval_image_larger_than_eval_size_is_named(data_dir):
  cfg = make_cfg(data_dir, eval_size=(24, 27))  # validation_4 is 24x28
  with pytest.raises(ValueError, match=r'validation_4.*config\.data\.eval_size'):
    list(pipeline.make_eval_iterator(cfg, split='validation', global_batch_size=2))


@pytest.mark.parametrize(
  'overrides, kwargs, field',
  [
    (dict(crop_size=0), {}, 'crop_size'),
    (dict(crop_size=-8), {}, 'crop_size'),
    (dict(min_scale=2.0, max_scale=1.0), {}, 'min_scale'),
    (dict(prefetch=-1), {}, 'prefetch'),
    (dict(mean=(1.0, 2.0)), {}, 'mean'),
    (dict(train_split='nope'), {}, 'train_split'),
    ({}, dict(global_batch_size=3, process_count=2, process_index=0), 'global_batch_size'),
    ({}, dict(process_count=2, process_index=2), 'process_index'),
  ],
)
def test_bad_train_config_names_the_field(data_dir, overrides, kwargs, field):
  cfg = make_cfg(data_dir, **overrides)
  kwargs = {'global_batch_size': 4, 'seed': 0, **kwargs}
  with pytest.raises(ValueError, match=field):
    pipeline.make_train_iterator(cfg, **kwargs)


def test_bad_eval_config_names_the_field(data_dir):
  with pytest.raises(ValueError, match='eval_size'):
    pipeline.make_eval_iterator(
      make_cfg(data_dir, eval_size=(24,)), split='validation', global_batch_size=2
    )
  with pytest.raises(ValueError, match='global_batch_size'):
    pipeline.make_eval_iterator(
      make_cfg(data_dir), split='validation', global_batch_size=5, process_index=0, process_count=2
    )
