"""Sweeps: the grid, bad arguments, skip/resume/retry, shards, failed runs and the summary."""

import csv
import json
import os
import subprocess
import sys

import pytest
from tiny import tiny_config

from aaf_jax import run_record, sweep
from configs import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('background', 'disc')


def _fake_train(scores, calls):
  """A stand-in trainer writing results.json with the run's fingerprint and given scores."""

  def train(config, workdir):
    calls.append(workdir)
    key = (config.loss.margin, config.seed)
    if scores[key] is None:
      raise FloatingPointError('Non-finite loss or gradient at step 3; stopping.\nmore detail')
    os.makedirs(workdir, exist_ok=True)
    miou = scores[key]
    results = {
      'miou': miou,
      'boundary_iou': miou / 2,
      'pixel_acc': miou + 0.5,
      'per_class_iou': {'background': 0.9, 'disc': miou},
      'step': config.num_train_steps,
      'fingerprint': run_record.fingerprint(config),
    }
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f)

  return train


def test_grid_names_and_seeds(tmp_path):
  runs = sweep.plan(
    synthetic.get_config(),
    str(tmp_path),
    ['loss.margin=[1.0, 2.0]', 'loss.sizes=[(1,), (1, 2)]'],
    seeds=2,
  )
  assert [os.path.basename(r.workdir) for r in runs[:3]] == [
    'loss.margin=1.0,loss.sizes=1,seed=0',
    'loss.margin=1.0,loss.sizes=1,seed=1',
    'loss.margin=1.0,loss.sizes=1-2,seed=0',
  ]
  assert len(runs) == 8
  assert [(r.config.loss.margin, r.config.loss.sizes, r.config.seed) for r in runs[-2:]] == [
    (2.0, (1, 2), 0),
    (2.0, (1, 2), 1),
  ]
  kinds = sweep.plan(synthetic.get_config(), str(tmp_path), ["loss.kind=['ce', 'affinity']"], 1)
  assert [r.config.loss.sizes for r in kinds] == [(1, 2, 3), (1,)]


@pytest.mark.parametrize(
  'arguments,seeds,expected',
  [
    (['loss.margni=[1.0]'], 1, r"--sweep='loss.margni=\[1.0\]': config has no field"),
    (['loss.margin=1.0'], 1, r"--sweep='loss.margin=1.0': expected a list literal"),
    (['loss.margin=[1.0'], 1, r'is not a Python literal'),
    (["loss.margin=['big']"], 1, r"--sweep=\"loss.margin=\['big'\]\": value 'big' does not fit"),
    (['loss.margin=[-1.0]'], 1, r"--sweep='loss.margin=\[-1.0\]': config.loss.margin=-1.0"),
    (['loss.decay=[0, 1]'], 1, r"--sweep='loss.decay=\[0, 1\]': value 0 for config.loss.decay"),
    (['loss.margin=[]'], 1, r"--sweep='loss.margin=\[\]': the list of values is empty"),
    (['loss.margin=[1.0]', 'loss.margin=[2.0]'], 1, r'swept twice'),
    (['seed=[1, 2]'], 1, r'use --seeds'),
    ([], 0, r'--seeds=0: expected an integer >= 1'),
  ],
)
def test_bad_sweep_arguments_are_named(tmp_path, arguments, seeds, expected):
  with pytest.raises(sweep.SweepError, match=expected):
    sweep.plan(synthetic.get_config(), str(tmp_path), arguments, seeds)
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('text', ['2/2', '1/0', '-1/2', 'half', '1'])
def test_bad_shards_are_named(text):
  with pytest.raises(sweep.SweepError, match=rf'--shard={text!r}'):
    sweep.parse_shard(text)


def test_skip_finished_retry_failed_and_summary(tmp_path):
  scores = {(1.0, 0): 0.2, (1.0, 1): 0.4, (2.0, 0): 0.3, (2.0, 1): None}
  runs = sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), ['loss.margin=[1.0, 2.0]'], 2)
  calls = []
  counts = sweep.run_sweep(runs, str(tmp_path), train_fn=_fake_train(scores, calls))
  assert counts == {'trained': 3, 'skipped': 0, 'failed': 1}
  summary = json.loads((tmp_path / 'summary.json').read_text())
  failed = summary['runs'][3]
  assert failed['status'] == 'failed' and failed['seed'] == 1
  assert failed['error'] == 'FloatingPointError: Non-finite loss or gradient at step 3; stopping.'
  first, second = summary['groups']
  assert first['overrides'] == {'loss.margin': 1.0} and first['seeds'] == [0, 1]
  assert first['miou_mean'] == pytest.approx(0.3)
  assert first['miou_std'] == pytest.approx(0.1414213562)  # sample std of 0.2, 0.4
  assert first['pixel_acc_mean'] == pytest.approx(0.8)
  assert first['boundary_iou_mean'] == pytest.approx(0.15)
  assert first['boundary_iou_std'] == pytest.approx(0.0707106781)
  assert first['per_class_iou']['disc'] == {
    'mean': pytest.approx(0.3),
    'std': pytest.approx(0.1414213562),
  }
  assert second['seeds'] == [0] and second['failed_seeds'] == [1]
  assert (second['miou_mean'], second['miou_std']) == (pytest.approx(0.3), 0.0)
  table = (tmp_path / 'summary.md').read_text().splitlines()
  assert table[0] == '| loss.margin | seeds | mIoU | boundary IoU | pixel acc | background | disc |'
  assert table[2] == (
    '| 1.0 | 2 | 30.00 ± 14.14 | 15.00 ± 7.07 | 80.00 ± 14.14 | 90.00 ± 0.00 | 30.00 ± 14.14 |'
  )
  assert table[3].startswith('| 2.0 | 1 (1 failed) | 30.00 ± 0.00 |')
  rows = list(csv.DictReader(open(tmp_path / 'summary.csv')))
  assert [r['loss.margin'] for r in rows] == ['1.0', '2.0']
  assert float(rows[0]['miou_std']) == pytest.approx(0.1414213562)
  assert float(rows[0]['boundary_iou_mean']) == pytest.approx(0.15)
  assert (tmp_path / 'summary.png').stat().st_size > 0

  # A rerun skips the finished runs and retries the failed one, which now succeeds.
  scores[(2.0, 1)] = 0.5
  calls.clear()
  counts = sweep.run_sweep(runs, str(tmp_path), train_fn=_fake_train(scores, calls))
  assert counts == {'trained': 1, 'skipped': 3, 'failed': 0}
  assert calls == [runs[3].workdir]
  assert not os.path.exists(os.path.join(runs[3].workdir, 'failed.json'))
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['groups'][1]['seeds'] == [0, 1]
  assert summary['groups'][1]['miou_mean'] == pytest.approx(0.4)


def test_a_changed_config_is_not_taken_as_finished(tmp_path):
  scores = {(1.0, 0): 0.2}
  runs = sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), ['loss.margin=[1.0]'], 1)
  sweep.run_sweep(runs, str(tmp_path), train_fn=_fake_train(scores, []))
  longer = sweep.plan(
    tiny_config(str(tmp_path), num_train_steps=9), str(tmp_path), ['loss.margin=[1.0]'], 1
  )
  assert sweep.status(runs[0])['status'] == 'finished'
  assert sweep.status(longer[0])['status'] == 'pending'


def test_shards_split_the_runs_and_the_last_writes_the_summary(tmp_path):
  scores = {(m, s): 0.1 * m + 0.01 * s for m in (1.0, 2.0) for s in (0, 1)}
  runs = sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), ['loss.margin=[1.0, 2.0]'], 2)
  first, second = [], []
  sweep.run_sweep(runs, str(tmp_path), shard=(0, 2), train_fn=_fake_train(scores, first))
  assert first == [runs[0].workdir, runs[2].workdir]
  assert not (tmp_path / 'summary.json').exists()
  assert sweep.status(runs[1])['status'] == 'pending'
  sweep.run_sweep(runs, str(tmp_path), shard=(1, 2), train_fn=_fake_train(scores, second))
  assert second == [runs[1].workdir, runs[3].workdir]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert [r['status'] for r in summary['runs']] == ['finished'] * 4


def test_real_sweep_trains_then_a_rerun_trains_nothing(tmp_path):
  """Two grid points of real tiny runs; the rerun finds both finished and skips them."""
  data_dir = str(tmp_path / 'tfds')
  config = tiny_config(data_dir, num_train_steps=2)
  runs = sweep.plan(config, str(tmp_path / 'sweep'), ['loss.margin=[1.0, 2.0]'], 1)
  assert sweep.run_sweep(runs, str(tmp_path / 'sweep')) == {'trained': 2, 'skipped': 0, 'failed': 0}
  summary = json.loads((tmp_path / 'sweep' / 'summary.json').read_text())
  for row, run in zip(summary['runs'], runs):
    results = json.loads(open(os.path.join(run.workdir, 'results.json')).read())
    assert row['miou'] == results['miou'] and row['status'] == 'finished'
    assert (
      json.loads(open(os.path.join(run.workdir, 'config.json')).read())['config']['loss']['margin']
      == run.config.loss.margin
    )
  assert sweep.run_sweep(runs, str(tmp_path / 'sweep')) == {'trained': 0, 'skipped': 2, 'failed': 0}


def test_launch_names_a_bad_sweep_argument_before_anything_runs(tmp_path):
  def launch(*flags):
    return subprocess.run(
      [
        sys.executable,
        os.path.join(ROOT, 'launch.py'),
        '--mode=sweep',
        f'--config={os.path.join(ROOT, "configs", "synthetic.py")}',
        f'--workdir={tmp_path / "sweep"}',
        f'--config.data.data_dir={tmp_path / "tfds"}',
        *flags,
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )

  out = launch('--sweep=loss.margin=[1.0,2.0]', '--shard=2/2')
  assert out.returncode != 0 and "--shard='2/2'" in out.stderr
  out = launch('--sweep=loss.margin=[1.0,-2.0]')
  assert out.returncode != 0 and 'config.loss.margin=-2.0' in out.stderr
  assert not (tmp_path / 'sweep').exists() and not (tmp_path / 'tfds').exists()
