"""Extra evaluation sets: every run of a sweep evaluated on the sets a config file names (finished
runs without training again), and a table per set in the summary."""

import csv
import json
import os
import subprocess

import pytest
from launching import TINY_FLAGS, launch_command
from tiny import tiny_config

from aaf_jax import run_record, sweep
from aaf_jax.sweep import status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A config file as a user writes one: the synthetic config and two evaluation sets, each
# differing from the run's config in one field.
CONFIG_FILE = """
from configs import synthetic


def get_config(arg=None):
  return synthetic.get_config(arg)


def get_eval_sets(arg=None):
  return {'train': {'data.eval_split': 'train'}, 'flip': {'eval.flip': True}}
"""


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / 'with_sets.py'
  path.write_text(CONFIG_FILE)
  return str(path)


def test_a_config_file_names_its_evaluation_sets(config_file, tmp_path):
  assert sweep.eval_sets(config_file, ['flip']) == {'flip': {'eval.flip': True}}
  both = sweep.eval_sets(f'{config_file}:aaf', ['train,flip', 'train'])
  assert list(both) == ['train', 'flip']
  assert sweep.eval_sets(config_file, []) == {}
  with pytest.raises(sweep.SweepError, match=r'--eval_sets=shifted: .* defines train, flip'):
    sweep.eval_sets(config_file, ['train', 'shifted'])
  plain = os.path.join(ROOT, 'configs', 'voc.py')
  with pytest.raises(sweep.SweepError, match=r'voc.py defines no evaluation sets'):
    sweep.eval_sets(f'{plain}:stage1', ['shifted'])


def test_each_run_carries_its_config_with_the_set_fields(tmp_path):
  sets = {'train': {'data.eval_split': 'train'}}
  runs = sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), ['loss.margin=[1.0, 2.0]'], 2, sets)
  for run in runs:
    evaluated = run.evaluations['train']
    assert evaluated.data.eval_split == 'train' and run.config.data.eval_split == 'validation'
    differing = {
      k for k, v in run_record.flatten(evaluated).items() if run_record.flatten(run.config)[k] != v
    }
    assert differing == {'data.eval_split'}
    assert (evaluated.loss.margin, evaluated.seed) == (run.config.loss.margin, run.seed)


@pytest.mark.parametrize(
  'sets, expected',
  [
    (
      {'bad': {'data.eval_splt': 'train'}},
      r"--eval_sets=bad: config has no field 'data.eval_splt'",
    ),
    (
      {'bad': {'eval.scales': ()}},
      r'--eval_sets=bad at grid point loss.margin=1.0: config.eval.sc',
    ),
    ({'bad': {'eval.flip': 1}}, r'--eval_sets=bad: value 1 for config.eval.flip'),
    ({'bad': {'seed': 3}}, r'--eval_sets=bad: an evaluation set cannot change the seed'),
    (
      {'a': {'eval.flip': True}, 'b': {'eval.scales': (0.5, 1.0)}},
      r'--eval_sets=a,b: both write eval-synthetic-validation.json',
    ),
  ],
)
def test_bad_evaluation_sets_are_named(tmp_path, sets, expected):
  with pytest.raises(sweep.SweepError, match=expected):
    sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), ['loss.margin=[1.0]'], 1, sets)


def _scores(miou, disc, config):
  return {
    'miou': miou,
    'boundary_iou': miou / 2,
    'pixel_acc': 0.9,
    'per_class_iou': {'background': 0.9, 'disc': disc},
    'fingerprint': run_record.fingerprint(config),
  }


# (margin, seed) -> mIoU on the validation split; on the set 'train' each run scores 0.1 more
# at margin 1.0 and 0.2 more at margin 2.0.
VALIDATION = {(1.0, 0): 0.50, (1.0, 1): 0.60, (2.0, 0): 0.52, (2.0, 1): 0.66}
SHIFT = {1.0: 0.1, 2.0: 0.2}


def _fake_train(trained):
  def train(config, workdir):
    trained.append(workdir)
    os.makedirs(workdir, exist_ok=True)
    miou = VALIDATION[(config.loss.margin, config.seed)]
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(_scores(miou, miou, config), f)

  return train


def _fake_evaluate(evaluated, fail=()):
  def evaluate(config, workdir):
    evaluated.append((os.path.basename(workdir), config.data.eval_split))
    if (config.loss.margin, config.seed) in fail:
      raise FloatingPointError('NaN in the evaluation')
    assert config.data.eval_split == 'train'
    miou = VALIDATION[(config.loss.margin, config.seed)] + SHIFT[config.loss.margin]
    with open(os.path.join(workdir, run_record.eval_results_name(config)), 'w') as f:
      json.dump(_scores(miou, miou, config), f)

  return evaluate


def test_finished_runs_are_evaluated_without_training_and_each_set_gets_its_tables(tmp_path):
  workdir = str(tmp_path / 'sweep')
  config = tiny_config(str(tmp_path / 'tfds'))
  trained, evaluated = [], []
  plain = sweep.plan(config, workdir, ['loss.margin=[1.0, 2.0]'], 2)
  sweep.run_sweep(plain, workdir, train_fn=_fake_train(trained), baseline={'loss.margin': 1.0})
  assert len(trained) == 4
  plain_md = open(os.path.join(workdir, 'summary.md')).read()

  sets = {'train': {'data.eval_split': 'train'}}
  runs = sweep.plan(config, workdir, ['loss.margin=[1.0, 2.0]'], 2, sets)
  trained.clear()
  counts = sweep.run_sweep(
    runs,
    workdir,
    train_fn=_fake_train(trained),
    baseline={'loss.margin': 1.0},
    evaluate_fn=_fake_evaluate(evaluated),
  )
  assert trained == []  # finished runs are not trained again
  assert counts == {'trained': 0, 'skipped': 4, 'failed': 0, 'evaluated': 4, 'evaluation_failed': 0}
  assert sorted(evaluated) == sorted((os.path.basename(r.workdir), 'train') for r in runs)

  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  part = summary['eval_sets']['train']
  assert part['fields'] == {'data.eval_split': 'train'}
  one, two = part['groups']
  assert one['seeds'] == [0, 1] and one['miou_mean'] == pytest.approx(0.65)
  assert two['miou_mean'] == pytest.approx(0.79)
  assert two['miou_std'] == pytest.approx(0.0989949494)  # sample std of 0.72 and 0.86
  (paired,) = part['paired_differences']  # margin 2.0 minus 1.0 on the set: 0.12 and 0.16
  assert paired['miou']['mean'] == pytest.approx(0.14) and paired['seeds'] == [0, 1]
  assert paired['miou']['std'] == pytest.approx(0.0282842712)
  # The run's own tables are those of the sweep without the set, unchanged.
  assert summary['groups'][1]['miou_mean'] == pytest.approx(0.59)
  assert summary['paired_differences'][0]['miou']['mean'] == pytest.approx(0.04)

  md = open(os.path.join(workdir, 'summary.md')).read()
  assert md.startswith(plain_md)
  extra = md[len(plain_md) :].splitlines()
  assert extra[1] == (
    'Evaluation set train (data.eval_split=train): mean ± sample std over seeds in %:'
  )
  assert extra[3] == '| loss.margin | seeds | mIoU | boundary IoU | pixel acc | background | disc |'
  assert extra[6].startswith('| 2.0 | 2 | 79.00 ± 9.90 | 39.50 ± 4.95 |')
  # The shift: each run's score on the set minus its own, paired run by run (+0.1 and +0.2).
  assert [(d['overrides'], d['seeds']) for d in part['shift']] == [
    ({'loss.margin': 1.0}, [0, 1]),
    ({'loss.margin': 2.0}, [0, 1]),
  ]
  assert [d['miou']['mean'] for d in part['shift']] == pytest.approx([0.1, 0.2])
  assert part['shift'][1]['boundary_iou']['mean'] == pytest.approx(0.1)  # half of the mIoU's
  assert extra[8].startswith("Shift to train (each run's score on train minus its own")
  assert extra[12].startswith('| 1.0 | 2 | +10.00 ± 0.00 [+10.00, +10.00] * |')
  assert extra[13].startswith('| 2.0 | 2 | +20.00 ± 0.00 [+20.00, +20.00] * |')
  assert extra[15].startswith('Paired differences from the baseline loss.margin=1.0 on train (')
  assert extra[19].startswith('| 2.0 | 2 | +14.00 ± 2.83 [')
  # Each point's shift against the baseline's, seed by seed: margin 2.0 gains 0.1 more.
  (shift_paired,) = part['shift_paired_differences']
  assert shift_paired['overrides'] == {'loss.margin': 2.0} and shift_paired['seeds'] == [0, 1]
  assert shift_paired['miou']['mean'] == pytest.approx(0.1)
  assert extra[21].startswith('Paired differences from the baseline loss.margin=1.0 in the shift')
  assert extra[25].startswith('| 2.0 | 2 | +10.00 ± 0.00 [+10.00, +10.00] * |')

  rows = list(csv.DictReader(open(os.path.join(workdir, 'summary.csv'))))
  assert [(r['eval_set'], r['loss.margin']) for r in rows] == [
    ('', '1.0'),
    ('', '2.0'),
    ('train', '1.0'),
    ('train', '2.0'),
  ]
  assert float(rows[3]['miou_mean']) == pytest.approx(0.79)
  assert float(rows[3]['miou_diff_mean']) == pytest.approx(0.14)
  assert float(rows[1]['miou_diff_mean']) == pytest.approx(0.04)

  evaluated.clear()  # a rerun finds every evaluation there
  counts = sweep.run_sweep(
    runs, workdir, train_fn=_fake_train(trained), evaluate_fn=_fake_evaluate(evaluated)
  )
  assert evaluated == [] and trained == [] and counts['evaluated'] == 0


def test_a_failed_evaluation_is_logged_and_the_sweep_goes_on(tmp_path):
  workdir = str(tmp_path / 'sweep')
  sets = {'train': {'data.eval_split': 'train'}}
  runs = sweep.plan(
    tiny_config(str(tmp_path / 'tfds')), workdir, ['loss.margin=[1.0, 2.0]'], 2, sets
  )
  evaluated = []
  counts = sweep.run_sweep(
    runs,
    workdir,
    train_fn=_fake_train([]),
    evaluate_fn=_fake_evaluate(evaluated, fail={(2.0, 1)}),
  )
  assert counts['evaluated'] == 3 and counts['evaluation_failed'] == 1 and len(evaluated) == 4
  part = json.load(open(os.path.join(workdir, 'summary.json')))['eval_sets']['train']
  assert part['groups'][1]['seeds'] == [0]
  assert [r['status'] for r in part['runs']] == ['finished'] * 3 + ['not evaluated']
  lines = status.report(workdir)  # the status command shows each set's score or its absence
  assert lines[2] == '  seed=0  finished: mIoU 50.00%; train: mIoU 60.00%'
  assert lines[6] == '  seed=1  finished: mIoU 66.00%; train: not evaluated'
  evaluated.clear()  # the next invocation tries the missing one again
  sweep.run_sweep(runs, workdir, train_fn=_fake_train([]), evaluate_fn=_fake_evaluate(evaluated))
  assert evaluated == [(os.path.basename(runs[3].workdir), 'train')]


@pytest.mark.slow
def test_a_real_sweep_evaluates_each_run_on_a_set_that_differs_in_one_field(tmp_path, config_file):
  """Two tiny runs trained, each evaluated on the training split through --mode=eval's path;
  the rerun trains and evaluates nothing."""
  workdir = tmp_path / 'sweep'
  command = launch_command(
    '--mode=sweep',
    f'--config={config_file}:aaf,steps=2,data_dir={tmp_path / "tfds"}',
    f'--workdir={workdir}',
    '--sweep=loss.margin=[1.0,2.0]',
    '--eval_sets=train',
    '--baseline=loss.margin=1.0',
    *TINY_FLAGS,
  )
  env = {**os.environ, 'PYTHONPATH': ROOT}
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  part = summary['eval_sets']['train']
  assert part['fields'] == {'data.eval_split': 'train'}
  for row, run_row in zip(part['runs'], summary['runs']):
    scores = json.loads(
      (workdir / os.path.basename(row['workdir']) / 'eval-synthetic-train.json').read_text()
    )
    assert scores['inference']['split'] == 'train' and scores['step'] == 2
    assert row['status'] == 'finished' and row['miou'] == scores['miou']
    assert run_row['miou'] != row['miou']  # another split, another score
  assert 'Evaluation set train (data.eval_split=train)' in (workdir / 'summary.md').read_text()

  marker = workdir / '.before-rerun'
  marker.touch()
  rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  before = marker.stat().st_mtime
  changed = [
    str(p)
    for run in workdir.iterdir()
    if run.is_dir()
    for p in run.rglob('*')
    if p.stat().st_mtime > before
  ]
  assert not changed, changed
