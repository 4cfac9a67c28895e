"""aaf_jax.sweep.ablation (the ablation report) on a hand-made finished sweep with known answers."""

import json
import os

import pytest
from tiny import tiny_config

from aaf_jax import run_record, sweep
from aaf_jax.sweep import ablation as ablation_report

GRID = (
  "loss.kind,loss.margin=[('ce', 3.0), ('affinity', 1.0), ('affinity', 2.0), ('affinity', 3.0)]"
)
# (kind, margin) -> per seed 0, 1, 2: (background IoU, disc IoU)
SCORES = {
  ('ce', 3.0): [(0.9, 0.3), (0.9, 0.3), (0.9, 0.3)],
  ('affinity', 1.0): [(0.8, 0.5), (0.8, 0.6), (0.8, 0.7)],
  ('affinity', 2.0): [(0.82, 0.4), (0.86, 0.5), (0.87, 0.5)],
  ('affinity', 3.0): [(0.9, 0.1), (0.9, 0.2), (0.9, 0.3)],
}


@pytest.fixture
def summary(tmp_path):
  runs = sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), [GRID], 3)
  for run in runs:
    background, disc = SCORES[(run.config.loss.kind, run.config.loss.margin)][run.seed]
    os.makedirs(run.workdir)
    results = {
      'miou': (background + disc) / 2,
      'boundary_iou': disc / 2,
      'pixel_acc': 0.9,
      'per_class_iou': {'background': background, 'disc': disc},
      'fingerprint': run_record.fingerprint(run.config),
    }
    with open(os.path.join(run.workdir, 'results.json'), 'w') as f:
      json.dump(results, f)
  sweep.write_summary(runs, str(tmp_path))
  return json.loads((tmp_path / 'summary.json').read_text())


def test_winners_per_class_and_one_point_against_each_other(summary):
  lines = ablation_report.report(summary, 'loss.kind=affinity', 'loss.kind=ce')
  table = {line.split(' | ')[0]: line for line in lines if line.startswith('| ')}
  # disc: margin 1.0 (mean 60) beats margin 2.0 (46.67) by 10, 10, 20 points at seeds 0-2.
  assert table['| disc'] == (
    '| disc | 60.00 | 46.67 | 20.00 | kind=affinity,margin=1.0 | +13.33 ± 5.77 [-1.01, +27.68] |'
  )
  # background: margin 3.0 (90) beats margin 2.0 (85) by 8, 4, 3 points.
  assert table['| background'].startswith('| background | 80.00 | 85.00 | 90.00 | kind=affinity,')
  assert table['| background'].endswith('margin=3.0 | +5.00 ± 2.65 [-1.57, +11.57] |')
  assert (
    'Classes won: kind=affinity,margin=1.0: disc; kind=affinity,margin=2.0: none; '
    'kind=affinity,margin=3.0: background'
  ) in lines
  # ce minus affinity at margin 1.0 in disc: -20, -30, -40 points: mean -30, std 10, 95% CI
  # -30 ± 4.303 * 10 / sqrt(3), excluding 0.
  minus_one = next(line for line in lines if line.startswith('| kind=affinity,margin=1.0 | 3 |'))
  assert minus_one.endswith(
    '| +10.00 ± 0.00 [+10.00, +10.00] * | -30.00 ± 10.00 [-54.84, -5.16] * |'
  )
  assert sum(line.startswith('| kind=affinity,') and ' | 3 | ' in line for line in lines) == 3


def test_bad_names_are_errors_that_name_the_grid(summary, tmp_path, capsys):
  with pytest.raises(ablation_report.ReportError, match=r"--among='loss.kind=ce' names 1 grid"):
    ablation_report.report(summary, 'loss.kind=ce', None)
  with pytest.raises(ablation_report.ReportError, match=r"--of='loss.kind=affinity' names 3 grid"):
    ablation_report.report(summary, 'loss.kind=affinity', 'loss.kind=affinity')
  with pytest.raises(SystemExit, match=r'summary.json: no readable sweep summary'):
    ablation_report.main(['--workdir', str(tmp_path / 'nowhere'), '--among', 'loss.kind=ce'])
  ablation_report.main(['--workdir', str(tmp_path), '--among', 'loss.kind=affinity'])
  assert 'Classes won:' in (tmp_path / 'ablation_report.md').read_text()
  assert 'Classes won:' in capsys.readouterr().out


def test_the_report_of_an_evaluation_set_reads_that_set(tmp_path, capsys):
  """With --eval_set the winners come from the set's scores: here margin 3.0 wins disc on the
  set (the runs' own scores give it to margin 1.0)."""
  sets = {'shifted': {'data.eval_split': 'train'}}
  runs = sweep.plan(tiny_config(str(tmp_path)), str(tmp_path), [GRID], 3, sets)
  flipped = {1.0: 3.0, 2.0: 2.0, 3.0: 1.0}
  for run in runs:
    kind, margin = run.config.loss.kind, run.config.loss.margin
    os.makedirs(run.workdir)
    for config, key, name in (
      (run.config, (kind, margin), 'results.json'),
      (run.evaluations['shifted'], (kind, flipped[margin] if kind == 'affinity' else margin),
       'eval-synthetic-train.json'),
    ):  # fmt: skip
      background, disc = SCORES[key][run.seed]
      with open(os.path.join(run.workdir, name), 'w') as f:
        json.dump(
          {
            'miou': (background + disc) / 2,
            'boundary_iou': disc / 2,
            'pixel_acc': 0.9,
            'per_class_iou': {'background': SCORES[(kind, margin)][run.seed][0], 'disc': disc},
            'fingerprint': run_record.fingerprint(config),
          },
          f,
        )
  sweep.write_summary(runs, str(tmp_path))
  ablation_report.main(['--workdir', str(tmp_path), '--among', 'loss.kind=affinity'])
  own = (tmp_path / 'ablation_report.md').read_text()
  assert 'kind=affinity,margin=1.0: disc; kind=affinity,margin=2.0: none; ' in own
  args = ['--workdir', str(tmp_path), '--among', 'loss.kind=affinity', '--eval_set', 'shifted']
  ablation_report.main(args)
  shifted = (tmp_path / 'ablation_report-shifted.md').read_text()
  assert (
    'Classes won: kind=affinity,margin=1.0: none; kind=affinity,margin=2.0: none; '
    'kind=affinity,margin=3.0: background, disc'
  ) in shifted
  assert (tmp_path / 'ablation_report.md').read_text() == own
  with pytest.raises(SystemExit, match=r'--eval_set=gta5: the sweep has no such evaluation set'):
    ablation_report.main([*args[:4], '--eval_set', 'gta5'])
