"""Predictions on a user's own images: files, sizes, palettes, Cityscapes labelIds, bad input."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from aaf_jax import evaluate, predict


class ColourNet(nn.Module):
  """Logits from the image's channels, at output stride 2, plus the image mean (so padding
  that entered a run would show)."""

  @nn.compact
  def __call__(self, images, train=False):
    local = nn.Conv(3, (3, 3), strides=2)(images)
    return {'logits': local + nn.Dense(3)(images.mean(axis=(1, 2)))[:, None, None]}


@pytest.fixture(scope='module')
def net():
  model = ColourNet()
  variables = model.init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
  return model, variables


MEAN = (120.0, 110.0, 100.0)
SLIDING = dict(window=16, stride=12, scales=(0.75, 1.0), flip=True)


def _write_images(folder, sizes, seed=0):
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  images = {}
  for i, (h, w) in enumerate(sizes):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / f'img{i}.png')
    images[f'img{i}'] = image
  return images


@pytest.mark.parametrize(
  'options',
  [
    pytest.param(SLIDING, marks=pytest.mark.slow),  # a program per window, scale and image size
    dict(window=0, stride=0, scales=(1.0,), flip=True),
  ],
)
def test_predictions_are_each_images_own_at_its_size(tmp_path, net, options):
  model, variables = net
  images = _write_images(tmp_path / 'in', [(20, 31), (9, 40), (300, 17)])
  predictor = predict.Predictor(model, variables, 3, MEAN, options)
  failed = predict.predict_folder(predictor, str(tmp_path / 'in'), str(tmp_path / 'out'))
  assert failed == []
  apply_fn = lambda x: model.apply(variables, x)['logits']
  for stem, image in images.items():
    written = Image.open(tmp_path / 'out' / f'{stem}.png')
    assert written.mode == 'P' and written.size == (image.shape[1], image.shape[0])
    alone = evaluate.predict_probs(
      apply_fn, (image.astype(np.float32) - np.float32(MEAN))[None], 3, **options
    )
    np.testing.assert_array_equal(np.asarray(written), np.asarray(alone.argmax(-1))[0])
    overlay = Image.open(tmp_path / 'out' / f'{stem}_overlay.jpg')
    assert overlay.size == written.size and overlay.mode == 'RGB'
  assert not (tmp_path / 'out' / 'labelIds').exists()


def test_unreadable_image_is_named_and_the_others_are_written(tmp_path, net, capsys):
  model, variables = net
  _write_images(tmp_path / 'in', [(12, 14), (15, 11)])
  (tmp_path / 'in' / 'broken.jpg').write_bytes(b'not an image at all')
  predictor = predict.Predictor(model, variables, 3, MEAN, SLIDING)
  failed = predict.predict_folder(predictor, str(tmp_path / 'in' / '*'), str(tmp_path / 'out'))
  assert failed == [str(tmp_path / 'in' / 'broken.jpg')]
  assert f'cannot read {tmp_path / "in" / "broken.jpg"}' in capsys.readouterr().err
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == [
    'img0.png',
    'img0_overlay.jpg',
    'img1.png',
    'img1_overlay.jpg',
  ]


def test_cityscapes_label_ids_in_the_layout_the_benchmark_reads(tmp_path, net, monkeypatch):
  from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

  model, variables = net
  stem = 'berlin_000123_000019_leftImg8bit'
  folder = tmp_path / 'in'
  folder.mkdir()
  image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
  Image.fromarray(image).save(folder / f'{stem}.png')
  predictor = predict.Predictor(model, variables, 3, MEAN, SLIDING)
  output = tmp_path / 'out'
  predict.predict_folder(predictor, str(folder), str(output), predict.cityscapes_label_ids())
  classes = np.asarray(Image.open(output / f'{stem}.png'))
  label_ids = np.asarray(Image.open(output / 'labelIds' / f'{stem}.png'))
  np.testing.assert_array_equal(label_ids, predict.cityscapes_label_ids()[classes])
  assert set(np.unique(label_ids)) <= {7, 8, 11}  # road, sidewalk, building: train ids 0-2
  # The official evaluator finds the prediction of the matching ground truth file by name.
  args = official.args
  monkeypatch.setattr(args, 'predictionPath', str(output / 'labelIds'))
  monkeypatch.setattr(args, 'predictionWalk', None)
  gt = tmp_path / 'gtFine' / 'test' / 'berlin' / 'berlin_000123_000019_gtFine_labelIds.png'
  assert official.getPrediction(args, str(gt)) == str(output / 'labelIds' / f'{stem}.png')


def test_bad_inputs_are_errors_naming_them(tmp_path, net):
  model, variables = net
  predictor = predict.Predictor(model, variables, 3, MEAN, SLIDING)
  with pytest.raises(FileNotFoundError, match='--input=.*nothing-here'):
    predict.predict_folder(predictor, str(tmp_path / 'nothing-here'), str(tmp_path / 'out'))
  _write_images(tmp_path / 'in', [(8, 8)])
  with pytest.raises(ValueError, match='--output=.*overwrite'):
    predict.predict_folder(predictor, str(tmp_path / 'in'), str(tmp_path / 'in'))
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'in' / 'img0.jpg')
  with pytest.raises(ValueError, match='img0.jpg and .*img0.png|img0.png and .*img0.jpg'):
    predict.predict_folder(predictor, str(tmp_path / 'in'), str(tmp_path / 'out'))


@pytest.mark.slow
def test_launch_predict_end_to_end(tmp_path, tiny_data_dir):
  """Train a tiny model, then segment a folder with `launch.py --mode=predict` as a user
  would: one file per image at its size, an error line and status 1 for an unreadable one."""
  import os
  import subprocess
  import sys

  from tiny import tiny_config

  from aaf_jax import train

  workdir = tmp_path / 'run'
  train.train_and_evaluate(tiny_config(tiny_data_dir, 'ce'), str(workdir))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config_file = tmp_path / 'tiny_ce.py'
  config_file.write_text(
    'import sys\n'
    f'sys.path.insert(0, {os.path.join(root, "tests")!r})\n'
    'from tiny import tiny_config\n\n\n'
    f'def get_config():\n  return tiny_config({tiny_data_dir!r}, "ce")\n'
  )
  images = _write_images(tmp_path / 'photos', [(40, 52), (23, 30)])
  (tmp_path / 'photos' / 'broken.png').write_bytes(b'\x89PNG truncated')
  result = subprocess.run(
    [
      sys.executable,
      'launch.py',
      f'--config={config_file}',
      f'--workdir={workdir}',
      '--mode=predict',
      f'--input={tmp_path / "photos"}',
      f'--output={tmp_path / "out"}',
    ],
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
    env={**os.environ, 'PYTHONPATH': root},
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert f'cannot read {tmp_path / "photos" / "broken.png"}' in result.stderr
  assert 'predict: 100%' in result.stderr  # the progress bar ran to the end
  for stem, image in images.items():
    written = Image.open(tmp_path / 'out' / f'{stem}.png')
    assert written.size == (image.shape[1], image.shape[0])
    assert set(np.unique(np.asarray(written))) <= set(range(7))


@pytest.mark.slow
def test_inference_has_zero_overhead_whatever_the_training_loss(
  tmp_path, tmp_path_factory, monkeypatch
):
  """The paper's 'zero overhead during inference' (issue 29 item 5): networks trained with 'aaf'
  and with 'ce' (configs differing in loss.kind alone) are evaluated (--mode=eval) and applied
  (--mode=predict) by the same program, lowered to the same text, from the same variables; the
  AAF tables, trained and saved in the aaf run's checkpoints, are neither loaded nor used."""
  import jax.numpy as jnp
  from tiny import tiny_config

  from aaf_jax import train

  class Captured(Exception):
    """Stops --mode=eval where its eval step meets the restored variables."""

  def capture(eval_step, variables, *args, **kwargs):
    raise Captured(eval_step, variables)

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  batch = {
    'image': jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((8, 32, 32), jnp.int32),
    'valid': jax.ShapeDtypeStruct((8,), jnp.bool_),
    'size': jax.ShapeDtypeStruct((8, 2), jnp.int32),
  }
  image, sizes = np.zeros((1, 32, 32, 3), np.float32), np.array([[32, 32]], np.int32)
  programs, variables = {}, {}
  for loss in ('ce', 'aaf'):
    config = tiny_config(data_dir, loss)
    workdir = str(tmp_path / loss)
    results = train.train_and_evaluate(config, workdir)
    if loss == 'aaf':  # the tables were trained: they left their zero start
      weights = np.array(list(results['field_size_weights']['edge'].values()))
      assert np.abs(weights - 1 / 3).max() > 1e-6
    with monkeypatch.context() as patch, pytest.raises(Captured) as got:
      patch.setattr(evaluate, 'run_evaluation', capture)  # --mode=eval up to its first batch
      train.evaluate_checkpoint(config, workdir)
    eval_step, variables[loss, 'eval'] = got.value.args
    programs[loss, 'eval'] = eval_step.step.lower(variables[loss, 'eval'], batch).as_text()
    model, variables[loss, 'predict'], names = predict.restore_network(config, workdir)
    predictor = predict.Predictor(
      model, variables[loss, 'predict'], len(names), config.data.mean, config.eval.to_dict()
    )
    lowered = predictor._classes.lower(variables[loss, 'predict'], image, sizes)
    programs[loss, 'predict'] = lowered.as_text()
  for mode in ('eval', 'predict'):
    assert programs['aaf', mode] == programs['ce', mode], mode
    ce, aaf = variables['ce', mode], variables['aaf', mode]
    assert set(aaf) == {'params', 'batch_stats'}
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(aaf)]
    assert not any('aaf' in p or 'logits' in p for p in paths), mode
    assert jax.tree.structure(aaf) == jax.tree.structure(ce)
    assert [x.shape for x in jax.tree.leaves(aaf)] == [x.shape for x in jax.tree.leaves(ce)]
