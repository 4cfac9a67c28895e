"""Sweeps: the grid, bad arguments, skip/resume/retry, shards, failed runs and the summary."""

import csv
import json
import math
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
  widths = sweep.plan(synthetic.get_config(), str(tmp_path), ['eval.boundary_width=[3, 0.02]'], 1)
  assert [r.config.eval.boundary_width for r in widths] == [3, 0.02]  # px, or a fraction


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
  assert sweep.run_status(runs[0])['status'] == 'finished'
  assert sweep.run_status(longer[0])['status'] == 'pending'


def test_shards_split_the_runs_and_the_last_writes_the_summary(tmp_path):
  scores = {(m, s): 0.1 * m + 0.01 * s for m in (1.0, 2.0) for s in (0, 1)}
  runs = sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), ['loss.margin=[1.0, 2.0]'], 2)
  first, second = [], []
  sweep.run_sweep(runs, str(tmp_path), shard=(0, 2), train_fn=_fake_train(scores, first))
  assert first == [runs[0].workdir, runs[2].workdir]
  assert not (tmp_path / 'summary.json').exists()
  assert sweep.run_status(runs[1])['status'] == 'pending'
  sweep.run_sweep(runs, str(tmp_path), shard=(1, 2), train_fn=_fake_train(scores, second))
  assert second == [runs[1].workdir, runs[3].workdir]
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert [r['status'] for r in summary['runs']] == ['finished'] * 4


@pytest.mark.slow
def test_real_sweep_trains_then_a_rerun_trains_nothing(tmp_path, tiny_data_dir):
  """Two grid points of real tiny runs; the rerun finds both finished and skips them."""
  config = tiny_config(tiny_data_dir, num_train_steps=2)
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


@pytest.mark.slow
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
  out = launch('--sweep=loss.margin=[1.0,2.0]', '--seeds=2', '--baseline=loss.margin=5.0')
  assert out.returncode != 0 and "--baseline='loss.margin=5.0': names no grid point" in out.stderr
  assert not (tmp_path / 'sweep').exists() and not (tmp_path / 'tfds').exists()


# t quantiles from their closed forms, independent of scipy: with 1 degree of freedom t is
# Cauchy, t_{0.975,1} = tan(0.475 pi); with 2, F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so
# t_{0.975,2} = 0.95 sqrt(2 / (1 - 0.95^2)). Both agree with the printed tables.
T_975_1 = math.tan(0.475 * math.pi)
T_975_2 = 0.95 * math.sqrt(2 / (1 - 0.95**2))


def test_t_quantiles_match_the_tables():
  assert round(T_975_1, 3) == 12.706 and round(T_975_2, 3) == 4.303


def _hand_made_runs(tmp_path, scores, sweep_arguments, seeds, field='margin'):
  """Run folders as a finished sweep leaves them: results.json (or failed.json for None).

  scores: {(config.loss.FIELD, seed): (mIoU, disc IoU) or None}.
  """
  runs = sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), sweep_arguments, seeds)
  for run in runs:
    os.makedirs(run.workdir)
    miou, disc = scores[(run.config.loss[field], run.seed)] or (None, None)
    fingerprint = run_record.fingerprint(run.config)
    if miou is None:
      with open(os.path.join(run.workdir, 'failed.json'), 'w') as f:
        json.dump({'fingerprint': fingerprint, 'error': 'FloatingPointError: NaN'}, f)
      continue
    results = {
      'miou': miou,
      'boundary_iou': miou / 2,
      'pixel_acc': 0.9,
      'per_class_iou': {'background': 0.9, 'disc': disc},
      'fingerprint': fingerprint,
    }
    with open(os.path.join(run.workdir, 'results.json'), 'w') as f:
      json.dump(results, f)
  return runs


def _interval(differences, t):
  """(mean, sample std, 95% CI) from the textbook formula mean ± t * std / sqrt(n)."""
  n = len(differences)
  mean = sum(differences) / n
  std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
  return mean, std, (mean - t * std / math.sqrt(n), mean + t * std / math.sqrt(n))


def test_paired_differences_over_seeds_finished_in_both(tmp_path):
  # (margin, seed): (mIoU, disc IoU); None: the run failed. disc has no IoU (None) in margin
  # 2.0's seed 2, so disc pairs only seeds 0 and 1 there. The baseline is margin 1.0.
  scores = {
    (1.0, 0): (0.50, 0.30),
    (1.0, 1): (0.60, 0.40),
    (1.0, 2): (0.55, 0.35),
    (2.0, 0): (0.51, 0.36),
    (2.0, 1): (0.64, 0.42),
    (2.0, 2): (0.62, None),
    (3.0, 0): None,
    (3.0, 1): (0.70, 0.40),
    (3.0, 2): (0.50, 0.35),
  }
  runs = _hand_made_runs(tmp_path, scores, ['loss.margin=[1.0, 2.0, 3.0]'], 3)
  baseline = sweep.baseline_group(runs, 'loss.margin=1.0')
  assert baseline == {'loss.margin': 1.0}
  summary = sweep.write_summary(runs, str(tmp_path), baseline)
  assert json.loads((tmp_path / 'summary.json').read_text()) == json.loads(json.dumps(summary))
  assert summary['baseline'] == {'loss.margin': 1.0}
  two, three = summary['paired_differences']
  assert two['overrides'] == {'loss.margin': 2.0} and two['seeds'] == [0, 1, 2]
  assert three['overrides'] == {'loss.margin': 3.0} and three['seeds'] == [1, 2]

  def check(stat, differences, t):
    mean, std, (low, high) = _interval(differences, t)
    assert stat['pairs'] == len(differences)
    assert stat['mean'] == pytest.approx(mean) and stat['std'] == pytest.approx(std)
    assert stat['ci'] == [pytest.approx(low), pytest.approx(high)]

  check(two['miou'], [0.01, 0.04, 0.07], T_975_2)  # mean 0.04, std 0.03
  check(two['boundary_iou'], [0.005, 0.02, 0.035], T_975_2)
  check(two['per_class_iou']['disc'], [0.06, 0.02], T_975_1)
  check(three['miou'], [0.10, -0.05], T_975_1)  # seed 1 with seed 1, seed 2 with seed 2
  check(three['per_class_iou']['disc'], [0.0, 0.0], T_975_1)
  assert two['per_class_iou']['background'] == {'pairs': 3, 'mean': 0.0, 'std': 0.0, 'ci': [0, 0]}

  table = (tmp_path / 'summary.md').read_text().splitlines()
  start = table.index('| loss.margin | pairs | mIoU | boundary IoU | background | disc |')
  assert 'baseline loss.margin=1.0' in table[start - 2]
  half = 100 * T_975_2 * 0.03 / math.sqrt(3)
  assert table[start + 2].startswith(
    f'| 2.0 | 3 | +4.00 ± 3.00 [{4 - half:+.2f}, {4 + half:+.2f}] | +2.00 ± 1.50 ['
  )
  assert table[start + 2].endswith(' [+0.00, +0.00] | +4.00 ± 2.83 [-21.41, +29.41] (2 pairs) |')
  assert table[start + 3].startswith('| 3.0 | 2 | +2.50 ± 10.61 [-92.80, +97.80] |')

  rows = list(csv.DictReader(open(tmp_path / 'summary.csv')))
  assert [r['loss.margin'] for r in rows] == ['1.0', '2.0', '3.0']
  assert rows[0]['miou_diff_mean'] == '' and rows[0]['disc_diff_ci_low'] == ''
  assert float(rows[1]['miou_diff_mean']) == pytest.approx(0.04)
  assert float(rows[1]['miou_diff_std']) == pytest.approx(0.03)
  assert float(rows[1]['miou_diff_ci_high']) == pytest.approx(0.04 + half / 100)
  assert (rows[1]['disc_diff_pairs'], rows[2]['miou_diff_pairs']) == ('2', '2')
  assert (tmp_path / 'summary_paired.png').stat().st_size > 0


def test_one_pair_gives_a_mean_and_no_interval(tmp_path):
  scores = {(1.0, 0): (0.5, 0.3), (1.0, 1): (0.6, 0.4), (2.0, 0): (0.55, 0.2), (2.0, 1): None}
  runs = _hand_made_runs(tmp_path, scores, ['loss.margin=[1.0, 2.0]'], 2)
  summary = sweep.write_summary(runs, str(tmp_path), {'loss.margin': 1.0})
  (two,) = summary['paired_differences']
  assert two['seeds'] == [0]
  assert two['miou'] == {'pairs': 1, 'mean': pytest.approx(0.05), 'std': None, 'ci': None}
  table = (tmp_path / 'summary.md').read_text()
  assert '| 2.0 | 1 | +5.00 (1 pair, no CI) | +2.50 (1 pair, no CI) |' in table
  rows = list(csv.DictReader(open(tmp_path / 'summary.csv')))
  assert rows[1]['miou_diff_pairs'] == '1' and rows[1]['miou_diff_std'] == ''
  assert rows[1]['miou_diff_ci_low'] == '' and rows[1]['miou_diff_ci_high'] == ''
  assert (tmp_path / 'summary_paired.png').stat().st_size > 0


def test_a_tuple_valued_baseline_is_not_compared_with_itself(tmp_path):
  scores = {((1,), 0): (0.5, 0.3), ((1,), 1): (0.6, 0.4), ((1, 2), 0): (0.7, 0.3)}
  scores[((1, 2), 1)] = (0.6, 0.4)
  runs = _hand_made_runs(tmp_path, scores, ['loss.sizes=[(1,), (1, 2)]'], 2, field='sizes')
  baseline = sweep.baseline_group(runs, 'loss.sizes=(1,)')
  (other,) = sweep.write_summary(runs, str(tmp_path), baseline)['paired_differences']
  assert other['overrides'] == {'loss.sizes': [1, 2]}
  assert other['miou']['mean'] == pytest.approx(0.1) and other['miou']['std'] == pytest.approx(
    0.1414213562
  )


def test_no_shared_seed_gives_no_difference(tmp_path):
  scores = {(1.0, 0): None, (1.0, 1): (0.6, 0.4), (2.0, 0): (0.55, 0.2), (2.0, 1): None}
  runs = _hand_made_runs(tmp_path, scores, ['loss.margin=[1.0, 2.0]'], 2)
  (two,) = sweep.write_summary(runs, str(tmp_path), {'loss.margin': 1.0})['paired_differences']
  assert two['seeds'] == [] and two['miou'] == {'pairs': 0, 'mean': None, 'std': None, 'ci': None}
  assert '| 2.0 | 0 | - | - | - | - |' in (tmp_path / 'summary.md').read_text()


def test_baseline_names_one_grid_point(tmp_path):
  config = synthetic.get_config()
  kinds = sweep.plan(config, str(tmp_path), ["loss.kind=['ce', 'affinity', 'aaf']"], 1)
  assert sweep.baseline_group(kinds, 'loss.kind=ce') == {'loss.kind': 'ce'}
  assert sweep.baseline_group(kinds, "loss.kind='aaf'") == {'loss.kind': 'aaf'}
  grid = sweep.plan(
    config, str(tmp_path), ['loss.margin=[1.0, 2.0]', 'loss.sizes=[(1,), (1, 2)]'], 1
  )
  both = {'loss.margin': 2.0, 'loss.sizes': (1, 2)}
  assert sweep.baseline_group(grid, 'loss.margin=2.0,loss.sizes=(1, 2)') == both
  assert sweep.baseline_group(grid, 'loss.sizes=1-2, loss.margin=2') == both


@pytest.mark.parametrize(
  'text,expected',
  [
    (
      'loss.margin=5.0',
      r"--baseline='loss.margin=5.0': names no grid point; the grid points are "
      r"'loss.margin=1.0,loss.sizes=1', ",
    ),
    ('loss.margin=1.0', r'matches 2 grid points; name more fields'),
    ('loss.kind=ce', r"'loss.kind' is not a swept field; the swept fields are loss.margin, "),
    ('ce', r"--baseline='ce': expected FIELD=VALUE"),
    ('loss.margin=', r'expected FIELD=VALUE'),
  ],
)
def test_bad_baselines_are_named(tmp_path, text, expected):
  grid = sweep.plan(
    synthetic.get_config(),
    str(tmp_path),
    ['loss.margin=[1.0, 2.0]', 'loss.sizes=[(1,), (1, 2)]'],
    1,
  )
  with pytest.raises(sweep.SweepError, match=expected):
    sweep.baseline_group(grid, text)


def test_a_baseline_needs_another_grid_point(tmp_path):
  runs = sweep.plan(synthetic.get_config(), str(tmp_path), ['loss.margin=[1.0]'], 3)
  with pytest.raises(sweep.SweepError, match='one grid point, so nothing to compare'):
    sweep.baseline_group(runs, 'loss.margin=1.0')


ABLATION_ARGUMENT = (
  "loss.kind,loss.sizes=[('ce', (1, 2, 3)), ('affinity', (1,)), ('affinity', (3,)), "
  "('aaf', (1, 2, 3))]"
)


def test_tied_fields_move_together(tmp_path):
  runs = sweep.plan(
    synthetic.get_config(), str(tmp_path), [ABLATION_ARGUMENT, 'loss.margin=[1.0, 2.0]'], 1
  )
  assert [(r.config.loss.kind, r.config.loss.sizes, r.config.loss.margin) for r in runs] == [
    ('ce', (1, 2, 3), 1.0),
    ('ce', (1, 2, 3), 2.0),
    ('affinity', (1,), 1.0),
    ('affinity', (1,), 2.0),
    ('affinity', (3,), 1.0),
    ('affinity', (3,), 2.0),
    ('aaf', (1, 2, 3), 1.0),
    ('aaf', (1, 2, 3), 2.0),
  ]
  assert os.path.basename(runs[4].workdir) == (
    'loss.kind=affinity,loss.sizes=3,loss.margin=1.0,seed=0'
  )
  assert runs[4].overrides == {'loss.kind': 'affinity', 'loss.sizes': (3,), 'loss.margin': 1.0}
  grid = sweep.plan(synthetic.get_config(), str(tmp_path), [ABLATION_ARGUMENT], 1)
  assert sweep.baseline_group(grid, 'loss.kind=ce') == {'loss.kind': 'ce', 'loss.sizes': (1, 2, 3)}
  with pytest.raises(sweep.SweepError, match='matches 2 grid points'):
    sweep.baseline_group(grid, 'loss.kind=affinity')
  assert sweep.baseline_group(grid, 'loss.kind=affinity,loss.sizes=(3,)')['loss.sizes'] == (3,)


@pytest.mark.parametrize(
  'argument,expected',
  [
    ("loss.kind,loss.sizes=[('ce',)]", r"value \('ce',\) is not a tuple of 2 values, one for"),
    ("loss.kind,loss.sizes=['ce']", r"value 'ce' is not a tuple of 2 values"),
    ("loss.kind,loss.kind=[('ce', 'ce')]", r'a field is named twice'),
    ("loss.kind,loss.szes=[('ce', (1,))]", r"config has no field 'loss.szes'"),
    ("loss.kind,=[('ce', (1,))]", r'expected FIELD=\[VALUE, ...\]'),
    ("loss.kind,loss.sizes=[('affinity', (1, 2))]", r'config.loss.sizes'),
  ],
)
def test_bad_tied_fields_are_named(tmp_path, argument, expected):
  with pytest.raises(sweep.SweepError, match=expected):
    sweep.plan(synthetic.get_config(), str(tmp_path), [argument], 1)


def test_a_tied_field_swept_again_is_named(tmp_path):
  with pytest.raises(sweep.SweepError, match="field 'loss.sizes' is swept twice"):
    sweep.plan(synthetic.get_config(), str(tmp_path), [ABLATION_ARGUMENT, 'loss.sizes=[(1,)]'], 1)


def test_the_summary_averages_learned_field_sizes_over_seeds(tmp_path):
  """aaf runs' field_size_weights: the group's mean over its finished seeds, and its plot."""
  runs = _hand_made_runs(
    tmp_path,
    {(m, s): (0.5, 0.5) for m in (1.0, 2.0) for s in (0, 1)},
    ['loss.margin=[1.0, 2.0]'],
    2,
  )
  given = {  # margin 1.0's seeds learn (edge, non-edge) weights over sizes (1, 2, 3)
    0: ([0.2, 0.3, 0.5], [1.0, 0.0, 0.0]),
    1: ([0.4, 0.5, 0.1], [0.0, 0.5, 0.5]),
  }
  for run in runs[:2]:
    path = os.path.join(run.workdir, 'results.json')
    results = json.load(open(path))
    edge, nonedge = given[run.seed]
    results['field_size_weights'] = {
      'sizes': [1, 2, 3],
      'edge': {'background': edge, 'disc': edge[::-1]},
      'nonedge': {'background': nonedge, 'disc': nonedge},
    }
    json.dump(results, open(path, 'w'))
  summary = sweep.write_summary(runs, str(tmp_path))
  one, two = summary['groups']
  assert 'field_size_weights' not in two
  weights = one['field_size_weights']
  assert weights['sizes'] == [1, 2, 3] and weights['seeds'] == 2
  assert weights['edge']['background'] == pytest.approx([0.3, 0.4, 0.3])
  assert weights['edge']['disc'] == pytest.approx([0.3, 0.4, 0.3][::-1])
  assert weights['nonedge']['disc'] == pytest.approx([0.5, 0.25, 0.25])
  assert (tmp_path / 'summary_field_sizes,loss.margin=1.0.png').stat().st_size > 0
  assert not (tmp_path / 'summary_field_sizes,loss.margin=2.0.png').exists()


def test_planning_checks_status_and_reports_import_no_jax(tmp_path):
  """Only training imports jax: a summary is written on a login node's Python."""
  scores = {(1.0, 0): (0.5, 0.3), (2.0, 0): (0.6, 0.4)}
  _hand_made_runs(tmp_path, scores, ['loss.margin=[1.0, 2.0]'], 1)
  code = (
    'import sys\n'
    'from aaf_jax.sweep import ablation, checks, grid, plots, report, run, stats, status\n'
    'from tiny import tiny_config\n'
    f'runs = grid.plan(tiny_config({str(tmp_path)!r}), {str(tmp_path)!r}, '
    "['loss.margin=[1.0, 2.0]'], 1)\n"
    f"report.write_summary(runs, {str(tmp_path)!r}, {{'loss.margin': 1.0}})\n"
    "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))\n"
  )
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join([ROOT, os.path.join(ROOT, 'tests')])}
  result = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, timeout=300, env=env
  )
  assert result.returncode == 0, result.stderr
  summary = json.loads((tmp_path / 'summary.json').read_text())
  assert summary['paired_differences'][0]['miou']['mean'] == pytest.approx(0.1)
