"""SyntheticShapes and the dataset registry."""

import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from aaf_jax import data
from aaf_jax.data import synthetic

SMALL = dict(image_size=48, num_train=6, num_validation=3)


def options(**overrides):
  return {**synthetic.OPTION_DEFAULTS, **overrides}


def make_cfg(data_dir, **synthetic_options):
  return ml_collections.ConfigDict(
    dict(name='synthetic', data_dir=str(data_dir), manual_dir=None, synthetic=synthetic_options)
  )


def raw_records(builder, split):
  source = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  return [source[i] for i in range(len(source))]


@pytest.fixture(scope='module')
def drawn():
  """40 default-size training examples: (images [N,H,W,3], labels [N,H,W])."""
  pairs = [synthetic.draw_example(options(), 'train', i) for i in range(40)]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def test_draw_is_deterministic_and_seeded():
  a = synthetic.draw_example(options(seed=1), 'train', 5)
  b = synthetic.draw_example(options(seed=1), 'train', 5)
  c = synthetic.draw_example(options(seed=2), 'train', 5)
  d = synthetic.draw_example(options(seed=1), 'validation', 5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], c[0])
  assert not np.array_equal(a[0], d[0])


def test_examples_have_expected_shapes_and_labels(drawn):
  images, labels = drawn
  assert images.shape == (40, 112, 112, 3) and images.dtype == np.uint8
  assert labels.shape == (40, 112, 112) and labels.dtype == np.uint8
  present = set(np.unique(labels).tolist())
  assert present == set(range(len(synthetic.CLASS_NAMES))) | {255}


def test_every_image_has_objects_and_colour_does_not_give_the_class(drawn):
  images, labels = drawn
  assert all((label != 0).mean() > 0.01 for label in labels)
  # Mean colour per class varies more across images than between classes would allow a
  # colour lookup: each class's pixels span most of the RGB range.
  for cls in range(len(synthetic.CLASS_NAMES)):
    pixels = images[labels == cls]
    assert np.all(np.ptp(pixels, axis=0) > 200), synthetic.CLASS_NAMES[cls]


def test_thin_classes_are_thin_and_solid_ones_are_not(drawn):
  _, labels = drawn

  def survives_erosion(cls):
    mask = labels == cls
    eroded = np.stack([synthetic._binary_shift_op(m, 2, np.logical_and) for m in mask])
    return eroded.sum() / mask.sum()

  for name in ('ring', 'bar', 'star'):
    assert survives_erosion(synthetic.CLASS_NAMES.index(name)) < 0.02, name
  for name in ('disc', 'box', 'triangle'):
    assert survives_erosion(synthetic.CLASS_NAMES.index(name)) > 0.3, name


def test_thin_width_sets_the_stroke_width():
  """Thin strokes of thin_width=2 px vanish under a 1 px erosion; at 5 px much of them stays."""

  def kept_after_erosion(thin_width):
    kept = total = 0
    for i in range(30):
      label = synthetic.draw_example(options(thin_width=thin_width), 'train', i)[1]
      thin = np.isin(label, [4, 5, 6])
      kept += synthetic._binary_shift_op(thin, 1, np.logical_and).sum()
      total += thin.sum()
    return kept / total

  assert kept_after_erosion(2.0) < 0.05 < 0.3 < kept_after_erosion(5.0)


def test_void_band_lies_along_solid_object_boundaries(drawn):
  _, labels = drawn
  void = labels == 255
  assert 0.001 < void.mean() < 0.1
  solid = np.isin(labels, [1, 2, 3])
  near_solid = np.stack([synthetic._binary_shift_op(m, 3, np.logical_or) for m in solid])
  assert (void & near_solid).sum() > 0.9 * void.sum()
  no_void = synthetic.draw_example(options(void_prob=0.0), 'train', 0)[1]
  assert not np.any(no_void == 255)


def test_config_name_encodes_options_and_rejects_bad_fields():
  assert synthetic.make_config(None) is synthetic.DEFAULT_CONFIG
  assert synthetic.make_config({}) is synthetic.DEFAULT_CONFIG
  names = {
    synthetic.make_config(o).name
    for o in [SMALL, {**SMALL, 'seed': 1}, {**SMALL, 'noise_std': 5.0}]
  }
  assert len(names) == 3
  with pytest.raises(ValueError, match='colour'):
    synthetic.make_config({'colour': 3})
  with pytest.raises(ValueError, match='image_size'):
    synthetic.make_config({'image_size': 8})
  with pytest.raises(ValueError, match='void_prob'):
    synthetic.make_config({'void_prob': 1.5})
  with pytest.raises(ValueError, match='thin_width'):
    synthetic.make_config({'thin_width': 0.5})


def test_get_builder_prepares_once_with_contract_features(tmp_path, monkeypatch):
  builder = data.get_builder(make_cfg(tmp_path, **SMALL))
  assert isinstance(builder, synthetic.SyntheticShapes)
  assert builder.info.splits['train'].num_examples == 6
  assert builder.info.splits['validation'].num_examples == 3
  features = builder.info.features
  assert features['image'].shape == (None, None, 3)
  assert features['label'].shape == (None, None, 1)
  assert features['label'].encoding_format == 'png'
  assert isinstance(features['name'], tfds.features.Text)
  example = builder.as_data_source('train')[0]
  assert example['image'].shape == (48, 48, 3) and example['label'].shape == (48, 48, 1)

  def no_regeneration(*args, **kwargs):
    raise AssertionError('prepared data should have been reused')

  monkeypatch.setattr(synthetic.SyntheticShapes, 'download_and_prepare', no_regeneration)
  again = data.get_builder(make_cfg(tmp_path, **SMALL))
  assert raw_records(again, 'train') == raw_records(builder, 'train')
  with pytest.raises(AssertionError, match='reused'):
    data.get_builder(make_cfg(tmp_path, **{**SMALL, 'seed': 4}))


def test_same_options_give_identical_bytes_other_seed_differs(tmp_path):
  first = data.get_builder(make_cfg(tmp_path / 'a', **SMALL))
  second = data.get_builder(make_cfg(tmp_path / 'b', **SMALL))
  other = data.get_builder(make_cfg(tmp_path / 'a', **{**SMALL, 'seed': 9}))
  assert other.data_dir != first.data_dir
  for split in ('train', 'validation'):
    assert raw_records(first, split) == raw_records(second, split)
  assert set(raw_records(other, 'train')).isdisjoint(raw_records(first, 'train'))


def test_registry_rejects_unknown_names_and_missing_data_dir(tmp_path):
  with pytest.raises(ValueError, match="'nope'.*cityscapes.*gta5.*synthetic.*voc"):
    data.get_builder(ml_collections.ConfigDict(dict(name='nope', data_dir=str(tmp_path))))
  with pytest.raises(ValueError, match='data_dir'):
    data.get_builder(ml_collections.ConfigDict(dict(name='synthetic', data_dir=None)))


@pytest.mark.slow
def test_registry_imports_builders_lazily():
  code = (
    'import sys, aaf_jax.data as d; '
    'assert not any(m.startswith("aaf_jax.data.") for m in sys.modules), sys.modules; '
    'd.builder_class("synthetic"); assert "aaf_jax.data.synthetic" in sys.modules'
  )
  subprocess.run([sys.executable, '-c', code], check=True, capture_output=True)


@pytest.mark.slow
def test_a_job_waits_for_another_preparing_the_same_data_and_then_reuses_it(tmp_path):
  """Two jobs on one machine (sweep shards, say) with a fresh data_dir: the second waits on the
  first's preparation lock and then reads its data, instead of racing it to the same folder."""
  cfg = ml_collections.ConfigDict(
    dict(name='synthetic', data_dir=str(tmp_path), synthetic=dict(SMALL))
  )
  code = (
    'import sys, ml_collections; from absl import logging; logging.set_verbosity("info"); '
    'from aaf_jax import data; '
    f'b = data.get_builder(ml_collections.ConfigDict({cfg.to_dict()!r})); '
    'print("examples", b.info.splits["train"].num_examples)'
  )
  with data._preparation_lock(str(tmp_path), 'synthetic'):  # another job is preparing
    waiting = subprocess.Popen(
      [sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = ''
    while 'Waiting for another job' not in log:
      line = waiting.stderr.readline()
      assert line or waiting.poll() is None, f'exited without waiting:\n{log}'
      log += line
    cls = data.builder_class('synthetic')
    builder = cls(data_dir=str(tmp_path), file_format=data.FILE_FORMAT, **cls.builder_kwargs(cfg))
    builder.download_and_prepare()
  out, err = waiting.communicate(timeout=120)
  log += err
  assert waiting.returncode == 0, log
  assert out.strip() == f'examples {SMALL["num_train"]}'
  assert 'Preparing' not in log and 'Generating' not in log, log


def _digest(arrays) -> str:
  import hashlib

  h = hashlib.sha1()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def test_shapes_layout_is_the_data_it_was_before_layouts():
  """The main job's data and folder name are those of version 2.0.0, before `layout` existed
  (digests taken at d073a80): a change to the default draws would change every result."""
  assert synthetic.DEFAULT_CONFIG.name == 'size112_train2000_val200_seed0_6263bf05'
  main_job = options(image_size=64, max_objects=4, noise_std=8.0, thin_width=5.0)
  pairs = [synthetic.draw_example(main_job, 'train', i) for i in range(3)]
  assert _digest(a for pair in pairs for a in pair) == '3db4db10209b8b915081c7125ebe51d693a72e09'


@pytest.fixture(scope='module')
def multiscale():
  """60 multiscale examples at 64 px: (images [N,H,W,3], labels [N,H,W])."""
  given = options(layout='multiscale', image_size=64, max_objects=5, thin_width=5.0)
  pairs = [synthetic.draw_example(given, 'train', i) for i in range(60)]
  return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _object_sizes(labels, cls):
  """Per image holding `cls`, the side of the square of its area (px)."""
  return [np.sqrt((label == cls).sum()) for label in labels if (label == cls).any()]


def test_multiscale_draws_each_class_at_its_own_scale(multiscale):
  images, labels = multiscale
  assert set(np.unique(labels).tolist()) == set(range(len(synthetic.CLASS_NAMES))) | {255}
  large = [np.median(_object_sizes(labels, c)) for c in (1, 2)]  # disc, box
  medium = np.median(_object_sizes(labels, 3))  # triangle
  assert min(large) > 2 * medium, (large, medium)
  # Strokes of 3-5 px: next to nothing survives a 3-step erosion (a star's hub, where its spokes
  # meet, a little); the large solids keep most of their area.
  for name, most in (('ring', 0.02), ('bar', 0.02), ('star', 0.15)):
    mask = labels == synthetic.CLASS_NAMES.index(name)
    kept = np.stack([synthetic._binary_shift_op(m, 3, np.logical_and) for m in mask]).sum()
    assert kept / mask.sum() < most, name
  for cls in (1, 2):
    mask = labels == cls
    kept = np.stack([synthetic._binary_shift_op(m, 3, np.logical_and) for m in mask]).sum()
    assert kept / mask.sum() > 0.5, synthetic.CLASS_NAMES[cls]
  # The 4x scale span: a large object's extent against the widest stroke (5 px).
  assert min(large) > 4 * 5
  # Textured surfaces: inside the large objects, neighbouring pixels 2 px apart differ by more
  # than the noise alone would make them (high-contrast blotches, not flat paint).
  inside = np.stack([synthetic._binary_shift_op(m, 3, np.logical_and) for m in labels == 1])
  step = np.abs(images[:, :, 2:].astype(int) - images[:, :, :-2].astype(int)).sum(-1)
  assert np.mean(step[inside[:, :, 2:] & inside[:, :, :-2]] > 150) > 0.03


def test_multiscale_draws_smaller_objects_over_larger_ones(multiscale, monkeypatch):
  """Large objects are drawn first, so strokes lie on them; the draw order is what is pinned
  (touching alone would hold whichever came first)."""
  _, labels = multiscale
  thin, large = np.isin(labels, [4, 5, 6]), np.isin(labels, [1, 2])
  touching = np.stack([synthetic._binary_shift_op(m, 1, np.logical_or) for m in large]) & thin
  assert touching.sum() > 0  # strokes lie on and against large objects
  drawn = []
  shape_mask = synthetic._shape_mask

  def recording(cls, rng, dy, dx, radius, thin_width):
    drawn[-1].append(cls)
    return shape_mask(cls, rng, dy, dx, radius, thin_width)

  monkeypatch.setattr(synthetic, '_shape_mask', recording)
  given = options(layout='multiscale', image_size=64, max_objects=5, thin_width=5.0)
  for i in range(20):
    drawn.append([])
    synthetic.draw_example(given, 'train', i)
  largest = [[synthetic._MULTISCALE_RADIUS[c][1] for c in classes] for classes in drawn]
  assert all(r == sorted(r, reverse=True) for r in largest), drawn
  assert sum(len(set(r)) > 1 for r in largest) >= 10  # orders that could have been wrong


def test_layout_has_its_own_config_name_and_is_checked():
  shapes = synthetic.make_config(SMALL)
  explicit = synthetic.make_config({**SMALL, 'layout': 'shapes'})
  multi = synthetic.make_config({**SMALL, 'layout': 'multiscale'})
  assert explicit.name == shapes.name
  assert multi.name.startswith('multiscale_size48_') and multi.name != shapes.name
  a = synthetic.draw_example(options(**SMALL), 'train', 0)[1]
  b = synthetic.draw_example(options(**SMALL, layout='multiscale'), 'train', 0)[1]
  assert not np.array_equal(a, b)
  with pytest.raises(ValueError, match=r"config.data.synthetic.layout='wide': expected one of"):
    synthetic.make_config({'layout': 'wide'})


def test_get_builder_passes_the_layout_down_to_the_prepared_data(tmp_path):
  """config.data.synthetic.layout reaches the builder: its folder and its examples."""
  shapes = data.get_builder(make_cfg(tmp_path, **SMALL))
  multi = data.get_builder(make_cfg(tmp_path, **SMALL, layout='multiscale'))
  assert multi.builder_config.layout == 'multiscale' and '/multiscale_size48_' in multi.data_dir
  assert multi.data_dir != shapes.data_dir
  source = multi.as_data_source('train')
  for example in (source[i] for i in range(len(source))):
    index = int(example['name'].decode().rpartition('_')[2])
    expected = synthetic.draw_example(options(**SMALL, layout='multiscale'), 'train', index)[1]
    np.testing.assert_array_equal(np.asarray(example['label'])[..., 0], expected)


# Split 'shifted': the validation scenes with another look (issue 29). Its definition was fixed,
# and these digests taken, before any model was evaluated on it.
MAIN_JOB = dict(image_size=64, max_objects=4, noise_std=8.0, thin_width=5.0)
MULTISCALE = dict(MAIN_JOB, layout='multiscale', max_objects=5)


def test_existing_splits_keep_their_bytes():
  """Train and validation of the main job and of the multiscale set, as drawn at 33d5424
  (before split 'shifted'): the data every existing result was measured on."""
  expected = {
    ('main', 'train'): '3db4db10209b8b915081c7125ebe51d693a72e09',
    ('main', 'validation'): 'ab934e205bdce33a5de5d7b1a51d552bfac27673',
    ('multiscale', 'train'): 'fdf38a0755fed7649c320bc859bf27b649f8c0c0',
    ('multiscale', 'validation'): 'd018adf68f1f23db36fb5aa0e56e91fd6e928ee4',
  }
  for (name, split), digest in expected.items():
    given = options(**(MAIN_JOB if name == 'main' else MULTISCALE))
    pairs = [synthetic.draw_example(given, split, i) for i in range(3)]
    assert _digest(a for pair in pairs for a in pair) == digest, (name, split)


def test_shifted_split_is_pinned():
  """The first 3 shifted examples of the main job's and the multiscale set's options, as defined
  in the commit that added the split: a change to the look would change every shifted score."""
  expected = {
    'main': '5559e14febe5995549c425d1566d4285902118d5',
    'multiscale': 'f4a39bed90d669f95db83c0650f7b91b7917e105',
  }
  for name, digest in expected.items():
    given = options(**(MAIN_JOB if name == 'main' else MULTISCALE))
    pairs = [synthetic.draw_example(given, 'shifted', i) for i in range(3)]
    assert _digest(a for pair in pairs for a in pair) == digest, name


@pytest.mark.parametrize('layout', synthetic.LAYOUTS)
def test_shifted_split_is_the_validation_scenes_with_the_defined_look(layout):
  """Index for index the validation split's labels; the image is the validation scene under
  SHIFTED_LOOK (checked without noise, where the validation image is the clean scene rounded)."""
  for noise_std in (8.0, 0.0):
    given = options(**{**MULTISCALE, 'layout': layout, 'noise_std': noise_std})
    for i in range(6):
      image, label = synthetic.draw_example(given, 'validation', i)
      shifted_image, shifted_label = synthetic.draw_example(given, 'shifted', i)
      np.testing.assert_array_equal(shifted_label, label)
      assert not np.array_equal(shifted_image, image)
      if noise_std == 0.0:
        looked = np.clip(np.rint(synthetic.shifted_look(image.astype(np.float64))), 0, 255)
        assert np.abs(looked - shifted_image.astype(np.float64)).max() <= 1
        # Half the contrast (and less where blur and desaturation act), never more.
        assert shifted_image.std() <= 0.5 * image.std() + 1


def test_shifted_look_as_defined():
  """Each part of SHIFTED_LOOK on images where it alone acts."""
  grey = np.full((16, 16, 3), 200.0)
  np.testing.assert_allclose(synthetic.shifted_look(grey), 127.5 + 0.5 * 72.5)  # contrast
  red = np.zeros((16, 16, 3))
  red[..., 0] = 255.0
  luma = 0.299 * 255.0
  expected = 127.5 + 0.5 * (luma + 0.5 * (np.array([255.0, 0.0, 0.0]) - luma) - 127.5)
  np.testing.assert_allclose(synthetic.shifted_look(red)[8, 8], expected)  # saturation
  step = np.zeros((16, 16, 3))
  step[:, 8:] = 255.0
  row = synthetic.shifted_look(step)[4, :, 0]
  sigma = synthetic.SHIFTED_LOOK['blur_sigma']
  taps = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)  # radius 3 sigma, normalised
  taps /= taps.sum()
  bright = [taps[np.arange(-3, 4) + j >= 8].sum() for j in range(3, 13)]  # away from the sides
  np.testing.assert_allclose(row[3:13], 127.5 + 0.5 * (255.0 * np.array(bright) - 127.5))
  with pytest.raises(ValueError, match=r"split 'test' does not exist"):
    synthetic.draw_example(options(**SMALL), 'test', 0)


def test_prepared_data_has_the_shifted_split_and_an_older_copy_does_not_break_a_run(
  tmp_path, monkeypatch
):
  """A copy prepared before split 'shifted' (version 2.1.0: train and validation only) stays as
  it is; the current code prepares its own version beside it, with the same train and
  validation records."""
  old_generators = synthetic.SyntheticShapes._split_generators

  def without_shifted(self, dl_manager):
    generators = old_generators(self, dl_manager)
    del generators['shifted']
    return generators

  with monkeypatch.context() as patch:
    patch.setattr(synthetic.SyntheticShapes, 'VERSION', tfds.core.Version('2.1.0'))
    patch.setattr(synthetic.SyntheticShapes, '_split_generators', without_shifted)
    old = data.get_builder(make_cfg(tmp_path, **SMALL))
    assert sorted(old.info.splits) == ['train', 'validation'] and old.data_dir.endswith('2.1.0')
  new = data.get_builder(make_cfg(tmp_path, **SMALL))
  assert new.data_dir.endswith('2.2.0') and sorted(new.info.splits) == [
    'shifted',
    'train',
    'validation',
  ]
  for split in ('train', 'validation'):
    assert raw_records(new, split) == raw_records(old, split)
  shifted = new.as_data_source('shifted')
  validation = new.as_data_source('validation')
  assert len(shifted) == len(validation) == SMALL['num_validation']
  for i in range(len(shifted)):
    index = int(shifted[i]['name'].decode().rpartition('_')[2])
    match = [
      j for j in range(len(validation)) if validation[j]['name'].decode().endswith(f'_{index:06d}')
    ]
    np.testing.assert_array_equal(shifted[i]['label'], validation[match[0]]['label'])
