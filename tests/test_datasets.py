"""VOC+SBD, Cityscapes and GTA5 builders on tiny trees in their official layouts."""

import logging
import os
import subprocess
import sys

import fake_layouts as fl
import numpy as np
import pytest
import scipy.io

from aaf_jax.data import build, cityscapes, voc

# The official Cityscapes labelId -> trainId table, written out by hand (ids not listed -> 255).
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_CLASS_NAMES = (
    'road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light', 'traffic sign',
    'vegetation', 'terrain', 'sky', 'person', 'rider', 'car', 'truck', 'bus', 'train',
    'motorcycle', 'bicycle',
)  # fmt: skip


def expected_train_ids(label_ids: np.ndarray) -> np.ndarray:
  lookup = np.vectorize(lambda i: CITYSCAPES_TRAIN_IDS.get(int(i), 255))
  return lookup(label_ids).astype(np.uint8)


def prepare(dataset, manual_dir, tmp_path, **kwargs):
  data_dir = str(tmp_path / 'tfds')
  return build.build(dataset, manual_dir=str(manual_dir), data_dir=data_dir, **kwargs)


def read_split(builder, split) -> dict[str, dict]:
  """name -> example, read through the random-access source the pipeline uses."""
  source = builder.as_data_source(split)
  examples = [source[i] for i in range(len(source))]
  return {ex['name'].decode(): ex for ex in examples}


def assert_colour(image: np.ndarray, seed: int) -> None:
  """The image is the flat colour written for `seed` (JPEG: within a few levels)."""
  assert image.dtype == np.uint8 and image.shape == (fl.H, fl.W, 3)
  np.testing.assert_allclose(image.reshape(-1, 3).mean(0), fl.colour(seed), atol=3)


# ----------------------------------------------------------------------------- VOC + SBD

VOC_TREE = dict(
  voc_train=['2007_a', '2007_b'],
  voc_val=['2008_c', '2008_d'],
  # 2007_b is in VOC train too (VOC files win); 2008_c is VOC val (excluded from train_aug).
  sbd_train=['2007_b', '2009_e', '2008_c'],
  sbd_val=['2009_f', '2009_g'],
)


@pytest.fixture(scope='module')
def voc_prepared(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp('voc')
  seeds = fl.make_voc_tree(tmp_path / 'manual', **VOC_TREE)
  return prepare('voc', tmp_path / 'manual', tmp_path), seeds


def test_voc_splits(voc_prepared):
  builder, _ = voc_prepared
  assert set(read_split(builder, 'train_aug')) == {'2007_a', '2007_b', '2009_e', '2009_f', '2009_g'}
  assert set(read_split(builder, 'train')) == {'2007_a', '2007_b'}
  assert set(read_split(builder, 'val')) == {'2008_c', '2008_d'}
  assert builder.info.splits['train_aug'].num_examples == 5
  assert len(voc.VocAug.CLASS_NAMES) == 21 and voc.VocAug.CLASS_NAMES[0] == 'background'
  assert voc.VocAug.IGNORE_LABEL == 255


@pytest.mark.parametrize('split', ['train_aug', 'train', 'val'])
def test_voc_examples_come_from_the_right_source(voc_prepared, split):
  """VOC-listed and VOC-labelled images use VOC files (palette indices, 255 boundary kept);
  SBD-only images use SBD's image, GTcls and GTinst."""
  builder, seeds = voc_prepared
  for name, ex in read_split(builder, split).items():
    source = 'voc' if ('voc', name) in seeds else 'sbd'
    seed = seeds[(source, name)]
    label, instance = fl.voc_masks(seed, source)
    assert_colour(ex['image'], seed)
    np.testing.assert_array_equal(ex['label'][..., 0], label, err_msg=name)
    np.testing.assert_array_equal(ex['instance'][..., 0], instance, err_msg=name)
    assert ex['label'].dtype == np.uint8
    assert (255 in ex['label']) == (source == 'voc')


def test_voc_prefers_voc_label_for_an_sbd_listed_image(tmp_path):
  """An SBD-listed image outside the VOC lists but with a VOC label PNG uses the VOC files."""
  manual = tmp_path / 'manual'
  seeds = fl.make_voc_tree(manual, voc_train=['t'], voc_val=['v'], sbd_train=['s', 'x'], sbd_val=[])
  # 'x' gets VOC files but is in no VOC list.
  fl.write_rgb(manual / 'VOCdevkit/VOC2012/JPEGImages/x.jpg', 99)
  label, instance = fl.voc_masks(99, 'voc')
  fl.write_palette_png(manual / 'VOCdevkit/VOC2012/SegmentationClass/x.png', label)
  fl.write_palette_png(manual / 'VOCdevkit/VOC2012/SegmentationObject/x.png', instance)
  examples = read_split(prepare('voc', manual, tmp_path), 'train_aug')
  assert set(examples) == {'t', 's', 'x'}
  assert_colour(examples['x']['image'], 99)
  np.testing.assert_array_equal(examples['x']['label'][..., 0], label)
  assert_colour(examples['s']['image'], seeds[('sbd', 's')])


# ----------------------------------------------------------------------------- Cityscapes


def all_label_ids_image() -> np.ndarray:
  """[H,W] uint8 holding every labelId 0..33 and -1 (license plate, 255 as uint8)."""
  ids = np.full(fl.H * fl.W, 7, np.uint8)
  ids[:35] = list(range(34)) + [255]
  return ids.reshape(fl.H, fl.W)


def test_label_id_table_covers_every_cityscapes_id():
  ids = np.array(list(range(34)) + [-1])
  expected = [CITYSCAPES_TRAIN_IDS.get(i, 255) for i in ids]
  np.testing.assert_array_equal(cityscapes.label_ids_to_train_ids(ids, 'x.png'), expected)
  assert cityscapes.CityscapesFine.CLASS_NAMES == CITYSCAPES_CLASS_NAMES


def test_cityscapes_splits_and_label_mapping(tmp_path):
  all_ids = all_label_ids_image()
  objects = np.full((fl.H, fl.W), 7, np.uint16)
  objects[:3, :4], objects[3:, :4], objects[:, 6:] = 26000, 26001, 24  # two cars, a crowd
  seeds = fl.make_cityscapes_tree(
    tmp_path / 'manual',
    {'train': {'aachen': 2, 'bremen': 1}, 'val': {'lindau': 1}},
    {'bremen_000000_000000_leftImg8bit': all_ids},
    {'lindau_000000_000000_leftImg8bit': objects},
  )
  builder = prepare('cityscapes', tmp_path / 'manual', tmp_path)
  train, val = read_split(builder, 'train'), read_split(builder, 'val')
  assert set(train) == {
        'aachen_000000_000000_leftImg8bit', 'aachen_000000_000001_leftImg8bit',
        'bremen_000000_000000_leftImg8bit',
    }  # fmt: skip
  assert set(val) == {'lindau_000000_000000_leftImg8bit'}
  for name, ex in {**train, **val}.items():
    assert_colour(ex['image'], seeds[name])
  np.testing.assert_array_equal(
    train['bremen_000000_000000_leftImg8bit']['label'][..., 0], expected_train_ids(all_ids)
  )
  assert np.all(val['lindau_000000_000000_leftImg8bit']['label'] == 0)  # road
  # The instanceIds come along, 16 bits, for the iIoU score.
  stored = val['lindau_000000_000000_leftImg8bit']['instance_id']
  assert stored.dtype == np.uint16
  np.testing.assert_array_equal(stored[..., 0], objects)
  # ... and reach the evaluation batches, padded with 0 (no instance).
  import ml_collections

  from aaf_jax.data import pipeline

  data_cfg = ml_collections.ConfigDict({
        'name': 'cityscapes', 'data_dir': str(tmp_path / 'tfds'), 'manual_dir': None,
        'train_split': 'train', 'eval_split': 'val', 'mean': (0.0, 0.0, 0.0),
        'eval_size': (fl.H + 1, fl.W), 'prefetch': 1,
    })  # fmt: skip
  (batch,) = pipeline.make_eval_iterator(data_cfg, split='val', global_batch_size=2)
  np.testing.assert_array_equal(batch['instance_id'][0, : fl.H], objects)
  assert not batch['instance_id'][0, fl.H :].any() and not batch['instance_id'][1].any()


# ----------------------------------------------------------------------------- GTA5


def test_gta5_official_split(tmp_path):
  split = {'trainIds': [1, 3], 'valIds': [2], 'testIds': [4]}
  ids_by_stem = fl.make_gta5_tree(tmp_path / 'manual', 4, split)
  builder = prepare('gta5', tmp_path / 'manual', tmp_path)
  assert set(builder.info.splits) == {'train', 'val', 'test'}
  assert set(read_split(builder, 'train')) == {'00001', '00003'}
  assert set(read_split(builder, 'test')) == {'00004'}
  ((name, ex),) = read_split(builder, 'val').items()
  assert name == '00002'
  assert_colour(ex['image'], 2)
  # Palette indices are the labelIds, mapped to train ids.
  np.testing.assert_array_equal(ex['label'][..., 0], expected_train_ids(ids_by_stem['00002']))


def test_gta5_without_split_file_has_one_split(tmp_path):
  fl.make_gta5_tree(tmp_path / 'manual', 3)
  builder = prepare('gta5', tmp_path / 'manual', tmp_path)
  assert set(builder.info.splits) == {'full'}
  assert set(read_split(builder, 'full')) == {'00001', '00002', '00003'}


# ----------------------------------------------------------------------------- bad input


def small_voc(manual):
  return fl.make_voc_tree(manual, voc_train=['t'], voc_val=['v'], sbd_train=['s'], sbd_val=[])


VOC = 'VOCdevkit/VOC2012'
SBD = 'benchmark_RELEASE/dataset'


def truncate(path):
  path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def truncated_jpeg(path):
  """A JPEG whose header is intact but whose last scan bytes are gone (opens, fails to load)."""
  from PIL import Image

  noise = np.random.default_rng(0).integers(0, 256, (fl.H, fl.W, 3), dtype=np.uint8)
  Image.fromarray(noise).save(path)
  path.write_bytes(path.read_bytes()[:-30])


def write_rgb_label(path):
  from PIL import Image

  Image.new('RGB', (fl.W, fl.H), (128, 0, 0)).save(path)


@pytest.mark.parametrize(
    'damage, error, named',
    [
        (lambda m: truncated_jpeg(m / VOC / 'JPEGImages/t.jpg'), ValueError,
         f'{VOC}/JPEGImages/t.jpg: cannot decode image'),
        (lambda m: (m / VOC / 'JPEGImages/v.jpg').write_bytes(b'not a jpeg'), ValueError,
         f'{VOC}/JPEGImages/v.jpg: cannot decode image'),
        (lambda m: truncate(m / VOC / 'SegmentationClass/t.png'), ValueError,
         f'{VOC}/SegmentationClass/t.png: cannot decode label image'),
        (lambda m: fl.write_palette_png(m / VOC / 'SegmentationClass/t.png',
                                        np.full((fl.H, fl.W), 30)), ValueError,
         f'{VOC}/SegmentationClass/t.png: label values [30]'),
        (lambda m: write_rgb_label(m / VOC / 'SegmentationClass/v.png'), ValueError,
         "SegmentationClass/v.png: label image has PIL mode 'RGB'"),
        (lambda m: fl.write_palette_png(m / VOC / 'SegmentationObject/t.png',
                                        np.zeros((fl.H + 1, fl.W))), ValueError,
         f'{VOC}/SegmentationObject/t.png is 9x10'),
        (lambda m: truncate(m / SBD / 'cls/s.mat'), ValueError,
         f'{SBD}/cls/s.mat: cannot read .mat file'),
        (lambda m: scipy.io.savemat(m / SBD / 'inst/s.mat', {'wrong': 1}), ValueError,
         f"{SBD}/inst/s.mat: expected a struct 'GTinst'"),
        (lambda m: (m / SBD / 'train.txt').write_text('s\nghost\n'), FileNotFoundError,
         f'{SBD}/img/ghost.jpg'),
        (lambda m: (m / VOC / 'SegmentationObject/v.png').unlink(), FileNotFoundError,
         f'{VOC}/SegmentationObject/v.png'),
        (lambda m: (m / VOC / 'ImageSets/Segmentation/val.txt').write_text('v\nv\n'),
         ValueError, "Segmentation/val.txt: lists ['v'] more than once"),
    ],
    ids=['truncated_jpeg', 'garbage_jpeg', 'truncated_label', 'label_value', 'rgb_label',
         'size_mismatch', 'corrupt_mat', 'mat_without_struct', 'split_names_missing_image',
         'missing_instance', 'listed_twice'],
)  # fmt: skip
def test_voc_bad_example_is_an_error_naming_the_file(tmp_path, damage, error, named):
  manual = tmp_path / 'manual'
  small_voc(manual)
  damage(manual)
  with pytest.raises(error) as info:
    prepare('voc', manual, tmp_path)
  assert named in str(info.value)


def test_voc_missing_folders_are_listed(tmp_path):
  manual = tmp_path / 'manual'
  small_voc(manual)
  for path in [manual / SBD / 'img', manual / VOC / 'ImageSets/Segmentation/val.txt']:
    path.rename(path.with_name(path.name + '.moved'))
  with pytest.raises(FileNotFoundError) as info:
    prepare('voc', manual, tmp_path)
  message = str(info.value)
  assert f'missing under {manual}: {VOC}/ImageSets/Segmentation/val.txt, {SBD}/img' in message
  assert 'SegmentationObject/<id>.png' in message  # the expected layout is shown


def test_empty_manual_folder_shows_the_layout(tmp_path):
  (tmp_path / 'manual').mkdir()
  with pytest.raises(FileNotFoundError) as info:
    prepare('gta5', tmp_path / 'manual', tmp_path)
  assert f'Manual directory {tmp_path}/manual does not exist or is empty' in str(info.value)
  assert 'labels/<number>.png' in str(info.value)


def test_cityscapes_bad_input(tmp_path):
  manual = tmp_path / 'manual'
  fl.make_cityscapes_tree(manual, {'train': {'aachen': 2}, 'val': {'lindau': 1}}, {})
  label = manual / 'gtFine/train/aachen/aachen_000000_000001_gtFine_labelIds.png'
  image = manual / 'leftImg8bit/train/aachen/aachen_000000_000001_leftImg8bit.png'
  instances = manual / 'gtFine/train/aachen/aachen_000000_000001_gtFine_instanceIds.png'

  good_instances = instances.read_bytes()
  instances.unlink()
  with pytest.raises(ValueError, match='missing') as info:
    prepare('cityscapes', manual, tmp_path)
  assert str(instances) in str(info.value)
  fl.write_grey_png(instances, np.full((fl.H - 1, fl.W), 7))
  with pytest.raises(ValueError, match='size mismatch') as info:
    prepare('cityscapes', manual, tmp_path)
  assert str(instances) in str(info.value)
  instances.write_bytes(good_instances)

  fl.write_grey_png(label, np.full((fl.H, fl.W), 40))
  with pytest.raises(ValueError, match='are not Cityscapes labelIds') as info:
    prepare('cityscapes', manual, tmp_path)
  assert f'{label}: values [40]' in str(info.value)

  fl.write_grey_png(label, np.full((fl.H, fl.W - 1), 7))
  with pytest.raises(ValueError, match='size mismatch') as info:
    prepare('cityscapes', manual, tmp_path)
  assert str(image) in str(info.value) and str(label) in str(info.value)

  label.unlink()
  with pytest.raises(FileNotFoundError) as info:
    prepare('cityscapes', manual, tmp_path)
  assert str(label) in str(info.value)

  (manual / 'gtFine/val').rename(manual / 'gtFine/validation')
  with pytest.raises(FileNotFoundError, match=f'missing under {manual}: gtFine/val'):
    prepare('cityscapes', manual, tmp_path)


def test_gta5_size_mismatch_is_an_error_or_a_logged_skip(tmp_path, caplog):
  manual = tmp_path / 'manual'
  fl.make_gta5_tree(manual, 4, {'trainIds': [1, 2], 'valIds': [3], 'testIds': [4]})
  fl.write_rgb(manual / 'images/00002.png', 2, size=(fl.H + 2, fl.W))
  with pytest.raises(ValueError, match='size mismatch') as info:
    prepare('gta5', manual, tmp_path)
  assert f'{manual}/images/00002.png is 10x10' in str(info.value)
  assert f'{manual}/labels/00002.png is 8x10' in str(info.value)

  with caplog.at_level(logging.WARNING):
    builder = prepare('gta5', manual, tmp_path, skip_bad_examples=True)
  assert set(read_split(builder, 'train')) == {'00001'}
  assert f'{manual}/images/00002.png' in caplog.text


def test_gta5_split_file_problems(tmp_path):
  manual = tmp_path / 'manual'
  fl.make_gta5_tree(manual, 3, {'trainIds': [1, 7], 'valIds': [2], 'testIds': [3]})
  with pytest.raises(FileNotFoundError, match=f'listed in {manual}/split.mat') as info:
    prepare('gta5', manual, tmp_path)
  assert f'{manual}/images/00007.png' in str(info.value)

  scipy.io.savemat(manual / 'split.mat', {'trainIds': [1], 'valIds': [2]})
  with pytest.raises(ValueError, match=r"split.mat: missing keys \['testIds'\]"):
    prepare('gta5', manual, tmp_path)

  scipy.io.savemat(manual / 'split.mat', {'trainIds': [1, 3, 1], 'valIds': [2], 'testIds': [3]})
  with pytest.raises(ValueError, match=r'split.mat \(trainIds\): lists \[1\] more than once'):
    prepare('gta5', manual, tmp_path)

  scipy.io.savemat(manual / 'split.mat', {'trainIds': [1], 'valIds': [2], 'testIds': []})
  with pytest.raises(ValueError, match='split.mat: testIds is empty'):
    prepare('gta5', manual, tmp_path)


def test_voc_skip_bad_examples_logs_each_skip(tmp_path, caplog):
  manual = tmp_path / 'manual'
  fl.make_voc_tree(manual, voc_train=['t', 'u'], voc_val=['v'], sbd_train=['s'], sbd_val=[])
  (manual / SBD / 'train.txt').write_text('s\nghost\n')
  fl.write_palette_png(manual / VOC / 'SegmentationClass/t.png', np.full((fl.H, fl.W), 30))
  with caplog.at_level(logging.WARNING):
    builder = prepare('voc', manual, tmp_path, skip_bad_examples=True)
  assert set(read_split(builder, 'train_aug')) == {'u', 's'}
  assert set(read_split(builder, 'train')) == {'u'}
  assert set(read_split(builder, 'val')) == {'v'}
  assert f'{manual}/{SBD}/img/ghost.jpg' in caplog.text
  assert f'{manual}/{VOC}/SegmentationClass/t.png: label values [30]' in caplog.text


def test_split_with_every_example_skipped_is_an_error(tmp_path):
  manual = tmp_path / 'manual'
  small_voc(manual)
  fl.write_palette_png(manual / VOC / 'SegmentationClass/v.png', np.full((fl.H, fl.W), 30))
  with pytest.raises(ValueError, match='split val has no usable examples'):
    prepare('voc', manual, tmp_path, skip_bad_examples=True)


def test_cityscapes_label_without_image_is_an_error(tmp_path):
  manual = tmp_path / 'manual'
  fl.make_cityscapes_tree(manual, {'train': {'aachen': 2}, 'val': {'lindau': 1}}, {})
  image = manual / 'leftImg8bit/val/lindau/lindau_000000_000000_leftImg8bit.png'
  fl.write_rgb(manual / 'leftImg8bit/val/lindau/lindau_000000_000009_leftImg8bit.png', 0)
  image.unlink()
  with pytest.raises(FileNotFoundError, match=f'listed in {manual}/gtFine/val') as info:
    prepare('cityscapes', manual, tmp_path)
  assert str(image) in str(info.value)


@pytest.mark.slow
def test_build_command(tmp_path):
  """The command a researcher runs: prepares the data and prints the splits."""
  fl.make_gta5_tree(tmp_path / 'manual', 2, {'trainIds': [1], 'valIds': [2], 'testIds': [2]})
  command = [
        sys.executable, '-m', 'aaf_jax.data.build', '--dataset=gta5',
        f'--manual_dir={tmp_path / "manual"}', f'--data_dir={tmp_path / "tfds"}',
    ]  # fmt: skip
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0, result.stderr
  assert f'gta5 prepared in {tmp_path}/tfds/gta5/1.0.0 (array_record):' in result.stdout
  assert '  train: 1 examples' in result.stdout
  assert 'Generating train examples' in result.stderr  # the progress bar
  builder = prepare('gta5', tmp_path / 'manual', tmp_path)  # reused, not rebuilt
  assert set(read_split(builder, 'val')) == {'00002'}


@pytest.mark.slow
def test_build_command_prepares_what_a_config_trains_on(tmp_path):
  """--config builds the synthetic set with the config's options, where training will look."""
  from tiny import TINY_FLAGS, tiny_config

  from aaf_jax.data import pipeline

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = tiny_config(str(tmp_path / 'tfds'))
  command = [
    sys.executable, '-m', 'aaf_jax.data.build', f'--config={root}/configs/synthetic.py',
    f'--data_dir={tmp_path / "tfds"}', *TINY_FLAGS,
  ]  # fmt: skip
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=root)
  assert result.returncode == 0, result.stderr
  assert '  validation: 10 examples' in result.stdout
  info = pipeline.dataset_info(config.data, prepare=False)  # found, not built now
  assert (info.num_train, info.num_eval) == (24, 10)
  with pytest.raises(SystemExit):
    build.main(['--data_dir=x'])  # neither --dataset nor --config


def test_prepared_voc_feeds_the_pipeline(voc_prepared):
  """The pipeline reads these builders' records: eval labels keep VOC's 255 boundary."""
  import ml_collections

  from aaf_jax.data import pipeline

  builder, seeds = voc_prepared
  data_cfg = ml_collections.ConfigDict({
        'name': 'voc', 'data_dir': str(builder.data_dir_root), 'manual_dir': None,
        'train_split': 'train_aug', 'eval_split': 'val', 'crop_size': 6, 'min_scale': 0.5,
        'max_scale': 2.0, 'mirror': True, 'mean': (122.675, 116.669, 104.008),
        'eval_size': (fl.H + 2, fl.W), 'prefetch': 1,
    })  # fmt: skip
  info = pipeline.dataset_info(data_cfg)
  assert (info.num_classes, info.num_train, info.num_eval) == (21, 5, 2)
  batches = list(pipeline.make_eval_iterator(data_cfg, split='val', global_batch_size=4))
  (batch,) = batches
  assert batch['valid'].tolist() == [True, True, False, False]
  labels = {tuple(fl.voc_masks(seeds[('voc', n)], 'voc')[0].ravel()) for n in VOC_TREE['voc_val']}
  assert {tuple(batch['label'][i, : fl.H].ravel()) for i in range(2)} == labels
  assert np.all(batch['label'][:2, fl.H :] == 255)
  # The instance masks come along for the instance-wise mIoU, padded with the band value.
  pairs = {tuple(np.concatenate([m.ravel() for m in fl.voc_masks(seeds[('voc', n)], 'voc')]))
           for n in VOC_TREE['voc_val']}  # fmt: skip
  assert {
    tuple(np.concatenate([batch[k][i, : fl.H].ravel() for k in ('label', 'instance')]))
    for i in range(2)
  } == pairs
  assert np.all(batch['instance'][:, fl.H :] == 255) and np.all(batch['instance'][2:] == 255)
  train = next(pipeline.make_train_iterator(data_cfg, global_batch_size=2, seed=0))
  assert train['image'].shape == (2, 6, 6, 3) and train['label'].shape == (2, 6, 6)
  assert set(np.unique(train['label'])) <= set(range(21)) | {255}
