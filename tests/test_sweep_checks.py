"""A sweep checks every grid point before its first run: a missing file or dataset stops it with
one line naming the grid point and the field, and nothing is started or written."""

import os
import subprocess
import sys

import pytest
from tiny import tiny_config

from aaf_jax import sweep
from aaf_jax.data import voc as voc_data
from aaf_jax.sweep import checks
from configs import voc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's VOC sweep example (section "Sweeps"): 3 margins x 3 size sets x 3 seeds.
README_VOC_SWEEP = ('--sweep=loss.margin=[1.0,2.0,3.0]', '--sweep=loss.sizes=[(1,),(1,2),(1,2,3)]')


def _never_train(calls):
  def train(config, workdir):
    calls.append(workdir)
    raise AssertionError('a run started although the checks should have stopped the sweep')

  return train


def _stops(runs, workdir, match):
  """run_sweep raises SweepCheckError matching `match`, trains nothing, writes nothing."""
  calls = []
  with pytest.raises(checks.SweepCheckError, match=match) as raised:
    sweep.run_sweep(runs, workdir, train_fn=_never_train(calls))
  assert '\n' not in str(raised.value)
  assert calls == []
  assert not os.path.exists(workdir) or not os.listdir(workdir)
  return str(raised.value)


def test_the_readme_voc_sweep_without_weights_stops_before_its_first_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # configs/voc.py names pretrained/resnet_v1_101.msgpack, absent
  workdir = str(tmp_path / 'sweep')
  arguments = [a.partition('=')[2] for a in README_VOC_SWEEP]
  runs = sweep.plan(voc.get_config('stage1,aaf'), workdir, arguments, 3)
  assert len(runs) == 27
  message = _stops(runs, workdir, r'config\.model\.pretrained')
  assert message.startswith(
    "grid point loss.margin=1.0,loss.sizes=1: config.model.pretrained='pretrained/"
    "resnet_v1_101.msgpack': no such file."
  )
  assert not os.path.exists(workdir)


@pytest.mark.slow
def test_launch_stops_the_readme_voc_sweep_with_one_line(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, 'launch.py'),
      '--mode=sweep',
      f'--config={os.path.join(ROOT, "configs", "voc.py")}:stage1,aaf',
      f'--workdir={tmp_path / "sweep"}',
      *README_VOC_SWEEP,
      '--seeds=3',
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'AAF_VERBOSE': '', 'PYTHONPATH': ROOT},
  )
  assert result.returncode == 2, result.stderr
  (line,) = result.stderr.strip().splitlines()  # one line, and nothing before it
  assert line.startswith(
    "error: grid point loss.margin=1.0,loss.sizes=1: config.model.pretrained='pretrained/"
  ), result.stderr
  assert not (tmp_path / 'sweep').exists()


def test_the_grid_point_named_is_the_one_at_fault(tmp_path):
  weights = tmp_path / 'backbone.msgpack'
  weights.write_bytes(b'weights')
  gone = tmp_path / 'gone.msgpack'
  workdir = str(tmp_path / 'sweep')
  runs = sweep.plan(
    tiny_config(str(tmp_path / 'tfds')),
    workdir,
    [f"model.pretrained=['{weights}', '{gone}']"],
    2,
  )
  point = sweep.point_name(runs[2].overrides)
  message = _stops(runs, workdir, 'no such file')
  assert message.startswith(f"grid point {point}: config.model.pretrained='{gone}': no such file")


@pytest.mark.parametrize(
  'field, value, expected',
  [
    ('init_checkpoint', 'nowhere', r"config\.init_checkpoint='.*nowhere': no checkpoints/ folder"),
    ('data.manual_dir', 'nowhere', r"config\.data\.manual_dir='.*nowhere': no such folder"),
    ('data.data_dir', 'a_file/tfds', r"config\.data\.data_dir='.*a_file/tfds': cannot be created"),
  ],
)
def test_each_file_a_config_names_is_checked(tmp_path, field, value, expected):
  (tmp_path / 'a_file').write_text('not a folder')
  config = tiny_config(str(tmp_path / 'tfds'), **{field: str(tmp_path / value)})
  workdir = str(tmp_path / 'sweep')
  runs = sweep.plan(config, workdir, ['loss.margin=[1.0, 2.0]'], 1)
  message = _stops(runs, workdir, expected)
  assert message.startswith('grid point loss.margin=1.0: ')


def test_an_unwritable_workdir_is_named(tmp_path):
  (tmp_path / 'a_file').write_text('not a folder')
  workdir = str(tmp_path / 'a_file' / 'sweep')
  runs = sweep.plan(tiny_config(str(tmp_path / 'tfds')), workdir, ['loss.margin=[1.0]'], 1)
  _stops(runs, workdir, r'--workdir=.*a_file/sweep: cannot be created or written')


def _voc_config(tmp_path, manual_dir=''):
  config = voc.get_config(f'stage1,aaf,data_dir={tmp_path / "tfds"}')
  config.model.pretrained = ''
  config.data.manual_dir = manual_dir
  return config


def test_an_unprepared_dataset_needs_its_manual_dir(tmp_path):
  workdir = str(tmp_path / 'sweep')
  runs = sweep.plan(_voc_config(tmp_path), workdir, ['loss.margin=[1.0]'], 1)
  _stops(runs, workdir, r"config\.data\.manual_dir='': dataset 'voc' is not prepared in ")


def test_the_manual_dir_layout_is_checked_as_the_builder_checks_it(tmp_path):
  manual = tmp_path / 'voc'
  (manual / 'VOCdevkit' / 'VOC2012' / 'JPEGImages').mkdir(parents=True)
  workdir = str(tmp_path / 'sweep')
  runs = sweep.plan(_voc_config(tmp_path, str(manual)), workdir, ['loss.margin=[1.0]'], 1)
  message = _stops(runs, workdir, r'config\.data\.manual_dir=.*preparing it needs ')
  assert 'benchmark_RELEASE/dataset/img' in message
  assert 'VOCdevkit/VOC2012/SegmentationClass' in message
  assert 'VOCdevkit/VOC2012/JPEGImages,' not in message  # present, so not listed


def test_a_complete_layout_passes_and_the_runs_start(tmp_path):
  manual = tmp_path / 'voc'
  for path in voc_data.VocAug.REQUIRED:
    target = manual / path
    if path.endswith('.txt'):
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_text('2007_000032\n')
    else:
      target.mkdir(parents=True, exist_ok=True)
  workdir = str(tmp_path / 'sweep')
  runs = sweep.plan(_voc_config(tmp_path, str(manual)), workdir, ['loss.margin=[1.0]'], 1)
  calls = []

  def train(config, run_workdir):
    calls.append(run_workdir)
    raise FloatingPointError('NaN at step 1')  # what only training can show

  counts = sweep.run_sweep(runs, workdir, train_fn=train)
  assert calls == [runs[0].workdir]
  assert counts == {'trained': 0, 'skipped': 0, 'failed': 1}
  assert os.path.exists(os.path.join(runs[0].workdir, 'failed.json'))


def test_a_prepared_dataset_must_have_the_splits_named(tmp_path):
  from aaf_jax import data as data_lib

  config = tiny_config(str(tmp_path / 'tfds'))
  data_lib.get_builder(config.data)  # prepares the tiny set
  workdir = str(tmp_path / 'sweep')
  ok = sweep.plan(config, workdir, ['loss.margin=[1.0]'], 1)
  checks.check_runs(ok, workdir)  # prepared, both splits there
  runs = sweep.plan(config, workdir, ["data.eval_split=['validation', 'validaton']"], 1)
  message = _stops(runs, workdir, r"config\.data\.eval_split='validaton' is not a split of")
  assert message.startswith('grid point data.eval_split=validaton: ')


def test_an_evaluation_set_is_checked_as_well(tmp_path):
  workdir = str(tmp_path / 'sweep')
  config = tiny_config(str(tmp_path / 'tfds'))
  eval_sets = {'gta': {'data.name': 'gta5', 'data.eval_split': 'full'}}
  runs = sweep.plan(config, workdir, ['loss.margin=[1.0]'], 1, eval_sets)
  _stops(
    runs,
    workdir,
    r"^grid point loss\.margin=1\.0, evaluation set gta: config\.data\.manual_dir='': "
    r"dataset 'gta5' is not prepared",
  )
