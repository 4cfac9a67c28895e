"""A sweep's summary files: summary.json, summary.csv, summary.md and the figures.

summary.md holds mean ± std per grid point in % and, with a baseline, each grid point's paired
difference from it in points (mean ± sample std [95% Student-t CI], `*` where the interval
excludes 0); each evaluation set adds the same two tables for its scores, and between them
the shift: each run's score on the set minus its own, paired run by run. summary.csv holds the
same numbers as fractions, one row per grid point (and, with evaluation sets, per set: column
`eval_set`, empty for the run's own evaluation). Imports no jax.
"""

import csv
import json
import os

from absl import logging

from aaf_jax import jsonio
from aaf_jax.sweep import grid, plots, stats

# The scores of a group's row, in the order of summary.csv's and summary.md's columns.
_SCORES = ('miou', 'boundary_iou', 'pixel_acc')
_STAT_COLUMNS = ('pairs', 'mean', 'std', 'ci_low', 'ci_high')
_text = grid.value_text


def _percent(mean, std) -> str:
  return '-' if mean is None else f'{100 * mean:.2f} ± {100 * std:.2f}'


def _stat_cells(stat: dict) -> list:
  ci = stat['ci'] or (None, None)
  return [stat['pairs'], stat['mean'], stat['std'], *ci]


def _classes(part: dict) -> list:
  """The class names of the first group with per-class scores."""
  return next((list(g['per_class_iou']) for g in part['groups'] if g['per_class_iou']), [])


def difference_text(stat: dict, seeds: int) -> str:
  """'+4.83 ± 2.10 [-0.40, +10.05]' in points; '*' when the interval excludes 0."""
  if not stat['pairs']:
    return '-'
  mean = f'{100 * stat["mean"]:+.2f}'
  if stat['ci'] is None:
    return f'{mean} (1 pair, no CI)'
  low, high = stat['ci']
  text = f'{mean} ± {100 * stat["std"]:.2f} [{100 * low:+.2f}, {100 * high:+.2f}]'
  text += ' *' if low > 0 or high < 0 else ''
  return text + (f' ({stat["pairs"]} pairs)' if stat['pairs'] != seeds else '')


def _group_table(part: dict, fields: list, classes: list) -> list[str]:
  """summary.md's first table: mean ± std over seeds per grid point, in %."""
  header = [*fields, 'seeds', 'mIoU', 'boundary IoU', 'pixel acc', *classes]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for g in part['groups']:
    seeds = f'{len(g["seeds"])}' + (f' ({len(g["failed_seeds"])} failed)' * bool(g['failed_seeds']))
    cells = [_text(g['overrides'][k]) for k in fields] + [seeds]
    cells += [_percent(g[f'{s}_mean'], g[f'{s}_std']) for s in _SCORES]
    cells += [
      _percent(**g['per_class_iou'][c]) if c in g['per_class_iou'] else '-' for c in classes
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def _difference_table(
  title: str, differences: list[dict], fields: list, classes: list
) -> list[str]:
  """A table of per-point paired statistics (`stats.paired_stats` per score and class), in
  points: the differences from a baseline, or the shifts to an evaluation set."""
  lines = [
    '',
    f'{title}; mean ± sample std [95% Student-t CI] in points; * the CI excludes 0):',
    '',
  ]
  header = [*fields, 'pairs', *(name for _, name in plots.PAIRED_SCORES), *classes]
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  missing = stats.paired_stats([])
  for d in differences:
    seeds = len(d['seeds'])
    cells = [_text(d['overrides'][k]) for k in fields] + [str(seeds)]
    cells += [difference_text(d[key], seeds) for key, _ in plots.PAIRED_SCORES]
    cells += [difference_text(d['per_class_iou'].get(c, missing), seeds) for c in classes]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def _paired_table(differences: list[dict], baseline: dict, fields, classes, on='') -> list[str]:
  """Each grid point minus the baseline, over paired seeds."""
  baseline = ', '.join(f'{k}={_text(v)}' for k, v in baseline.items()) or '(base)'
  title = (
    f'Paired differences from the baseline {baseline}{on} (grid point minus baseline, seed by '
    'seed over the seeds finished in both'
  )
  return _difference_table(title, differences, fields, classes)


def _csv_rows(part: dict, fields: list, classes: list, paired_with: bool) -> list[list]:
  """summary.csv's rows of one table: scores, then the paired differences when a baseline."""
  paired = {json.dumps(d['overrides']): d for d in part.get('paired_differences', [])}
  paired_scores = [key for key, _ in plots.PAIRED_SCORES] + classes
  rows = []
  for g in part['groups']:
    d = paired.get(json.dumps(g['overrides']))
    differences = []
    if d is not None:
      numbers = [d[key] for key, _ in plots.PAIRED_SCORES]
      numbers += [d['per_class_iou'].get(c, stats.paired_stats([])) for c in classes]
      differences = [cell for stat in numbers for cell in _stat_cells(stat)]
    elif paired_with:  # the baseline's own row
      differences = [None] * (len(paired_scores) * len(_STAT_COLUMNS))
    rows.append(
      [_text(g['overrides'][k]) for k in fields]
      + [len(g['seeds']), len(g['failed_seeds'])]
      + [g[f'{s}_{m}'] for s in _SCORES for m in ('mean', 'std')]
      + [g['per_class_iou'].get(c, {}).get(s) for c in classes for s in ('mean', 'std')]
      + differences
    )
  return rows


def _eval_set_title(name: str, part: dict) -> str:
  fields = ', '.join(f'{k}={_text(v)}' for k, v in part['fields'].items()) or 'no field changed'
  return f'Evaluation set {name} ({fields}): mean ± sample std over seeds in %:'


def write_summary(runs: list[grid.Run], workdir: str, baseline: dict | None = None) -> dict:
  """DIR/summary.json, summary.csv, summary.md and summary.png; returns the summary.

  With a `baseline` grid point (its overrides), summary.csv gains each grid point's paired
  differences from it, summary.md a second table of them and summary_paired.png their plot.
  Each evaluation set of the runs adds its own tables to summary.md and rows to summary.csv.
  """
  summary = stats.summarize(runs, baseline)
  jsonio.write_json_atomically(os.path.join(workdir, 'summary.json'), summary)
  fields = list(runs[0].overrides) if runs else []
  classes = _classes(summary)
  eval_sets = summary.get('eval_sets', {})
  for part in eval_sets.values():  # every class any table has, the run's own first
    classes += [c for c in _classes(part) if c not in classes]
  paired_scores = [key for key, _ in plots.PAIRED_SCORES] + classes
  with open(os.path.join(workdir, 'summary.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(
      ['eval_set'] * bool(eval_sets)
      + [*fields, 'seeds', 'failed', *(f'{s}_{m}' for s in _SCORES for m in ('mean', 'std'))]
      + [f'{c}_{s}' for c in classes for s in ('mean', 'std')]
      + [f'{s}_diff_{m}' for s in paired_scores for m in _STAT_COLUMNS] * (baseline is not None)
    )
    for name, part in [('', summary), *eval_sets.items()]:
      for row in _csv_rows(part, fields, classes, baseline is not None):
        writer.writerow([name] * bool(eval_sets) + row)
  own = _classes(summary)
  lines = _group_table(summary, fields, own)
  if baseline is not None:
    lines += _paired_table(summary['paired_differences'], baseline, fields, own)
    plots.paired(summary, own, os.path.join(workdir, 'summary_paired.png'))
  for name, part in eval_sets.items():
    classes = _classes(part)
    lines += ['', _eval_set_title(name, part), '']
    lines += _group_table(part, fields, classes)
    lines += _difference_table(
      f"Shift to {name} (each run's score on {name} minus its own evaluation, seed by seed",
      part['shift'],
      fields,
      classes,
    )
    if baseline is not None:
      lines += _paired_table(part['paired_differences'], baseline, fields, classes, f' on {name}')
      lines += _paired_table(
        part['shift_paired_differences'],
        baseline,
        fields,
        classes,
        f' in the shift to {name} (a positive difference: the point loses fewer points than '
        'the baseline)',
      )
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  plots.points(summary, fields, os.path.join(workdir, 'summary.png'))
  for g in summary['groups']:
    if 'field_size_weights' in g:
      plots.field_sizes(g, workdir)
  logging.info('Sweep summary (%s):\n%s', os.path.join(workdir, 'summary.md'), '\n'.join(lines))
  return summary
