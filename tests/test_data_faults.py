"""Damaged prepared data: one error naming the file and the remedy, at start-up where possible.

Each test damages a copy of the session's tiny prepared synthetic set (conftest.py). Runs of
launch.py happen in a subprocess with a timeout: a damaged file once left the process hanging
after its error.
"""

import glob
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from launching import ROOT, launch_command, synthetic_config
from tiny import tiny_config, tiny_flags

from aaf_jax.data import integrity, pipeline


@pytest.fixture
def damaged(tiny_data_dir, tmp_path):
  """(data_dir, version folder) of a fresh copy of the prepared set."""
  data_dir = tmp_path / 'tfds'
  shutil.copytree(tiny_data_dir, data_dir)
  (folder,) = glob.glob(str(data_dir / 'synthetic_shapes' / '*' / '*.*.*'))  # config/version
  return data_dir, folder


def _shard(folder, split):
  (path,) = glob.glob(os.path.join(folder, f'synthetic_shapes-{split}.array_record-*'))
  return path


def _flip_bytes(path, start=20000, count=50):
  """Bit rot in the middle of a record file: its length and footer stay intact."""
  data = bytearray(open(path, 'rb').read())
  data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
  open(path, 'wb').write(bytes(data))


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)


DAMAGES = {
  'metadata deleted': (lambda f: os.remove(f'{f}/dataset_info.json'), 'dataset_info.json'),
  'metadata garbage': (lambda f: _write(f'{f}/dataset_info.json', '{"spl'), 'dataset_info.json'),
  'metadata empty': (lambda f: _write(f'{f}/dataset_info.json', '{}'), 'dataset_info.json'),
  'metadata lists no splits': (
    lambda f: _write(
      f'{f}/dataset_info.json',
      json.dumps({**json.load(open(f'{f}/dataset_info.json')), 'splits': []}),
    ),
    'dataset_info.json',
  ),
  'train file deleted': (lambda f: os.remove(_shard(f, 'train')), 'train.array_record'),
  'train file truncated': (
    lambda f: os.truncate(_shard(f, 'train'), os.path.getsize(_shard(f, 'train')) // 2),
    'train.array_record',
  ),
  'train file empty': (lambda f: os.truncate(_shard(f, 'train'), 0), 'train.array_record'),
  'validation file truncated': (
    lambda f: os.truncate(_shard(f, 'validation'), 70000),
    'validation.array_record',
  ),
  'validation file rotten': (
    lambda f: _flip_bytes(_shard(f, 'validation')),
    'validation.array_record',
  ),
  'train file of another build': (
    lambda f: shutil.copy(_shard(f, 'validation'), _shard(f, 'train')),
    'train.array_record',
  ),
}


@pytest.mark.parametrize('damage', sorted(DAMAGES))
def test_damage_is_found_at_start_up_naming_the_file(damaged, damage):
  data_dir, folder = damaged
  damage_fn, culprit = DAMAGES[damage]
  damage_fn(folder)
  with pytest.raises(integrity.DamagedDataError) as info:
    pipeline.dataset_info(tiny_config(data_dir).data)
  message = str(info.value)
  assert message.startswith(folder) and culprit in message.split(':')[0], message
  assert f'delete {folder} and run again' in message
  assert '\n' not in message


def test_preparing_announces_no_download(tmp_path, capfd, caplog):
  caplog.set_level('INFO')
  pipeline.dataset_info(tiny_config(tmp_path).data)
  assert 'Download' not in capfd.readouterr().out
  assert any('nothing is downloaded' in r.getMessage() for r in caplog.records)


def test_rebuild_hint_names_the_build_command_for_real_datasets():
  hint = integrity.rebuild_hint('voc', '/data/tfds', '/data/tfds/voc_aug/1.0.0')
  assert 'python -m aaf_jax.data.build --dataset=voc' in hint and '--data_dir=/data/tfds' in hint


def test_rotten_train_record_is_named_when_read(damaged):
  """Bit rot inside a record passes the start-up check; the failing read names file and example."""
  data_dir, folder = damaged
  _flip_bytes(_shard(folder, 'train'))
  config = tiny_config(data_dir)
  pipeline.dataset_info(config.data)
  split = pipeline._Split(config.data, 'train', 'config.data.train_split')
  records = split._read(np.arange(24))
  assert list(records) == [b''] * 24  # records that cannot decode: the pipeline stops
  assert split.damage.startswith(_shard(folder, 'train') + ': damaged record (example ')
  with pytest.raises(integrity.DamagedDataError):
    split.raise_if_damaged()


def _launch(data_dir, workdir, steps=4):
  return subprocess.run(
    launch_command(
      synthetic_config(data_dir, steps),
      f'--workdir={workdir}',
      *tiny_flags(cadence=True),
    ),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=400,
    env={**os.environ, 'AAF_VERBOSE': ''},
  )


@pytest.mark.slow
def test_launch_stops_before_training_on_a_rotten_validation_file(damaged, tmp_path):
  data_dir, folder = damaged
  _flip_bytes(_shard(folder, 'validation'))
  result = _launch(data_dir, tmp_path / 'work')
  assert result.returncode == 2, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {_shard(folder, "validation")}: damaged or truncated')
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'work' / 'checkpoints').exists()  # nothing was trained


@pytest.mark.slow
def test_launch_exits_promptly_on_a_rotten_train_record(damaged, tmp_path):
  """The read fails inside tf.data mid-run: one line, status 2, and the process ends."""
  data_dir, folder = damaged
  _flip_bytes(_shard(folder, 'train'))
  result = _launch(data_dir, tmp_path / 'work')
  assert result.returncode == 2, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {_shard(folder, "train")}: damaged record (example ')
  assert last.endswith('the synthetic set is regenerated on first use.')
  assert 'Traceback' not in result.stderr
