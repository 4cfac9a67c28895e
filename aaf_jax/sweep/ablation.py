"""Reads a finished sweep's summary.json: which grid point wins each class, and one grid point
against every other, paired over seeds.

    python -m aaf_jax.sweep.ablation --workdir=DIR --among='loss.kind=affinity' \
        --of='loss.kind=aaf'

Prints (and writes to DIR/ablation_report.md):
1. per class, the mean IoU over seeds of each grid point that `--among` names (the fixed field
   sizes, say), the best of them, and the best minus the runner-up paired over seeds (mean,
   sample std, 95% Student-t interval; `*` where it excludes 0): does each point win some class?
2. `--of`'s grid point minus every other grid point, paired over seeds, in mIoU, boundary IoU
   and each class's IoU: does it beat each of them, by how much, with what confidence?

`--eval_set=NAME` reports the scores on one of the sweep's evaluation sets (`--eval_sets`) into
DIR/ablation_report-NAME.md. The pairs and intervals are the sweep's own
(`stats.paired_differences`); a grid point is named as `--baseline` names one
(FIELD=VALUE[,FIELD=VALUE]). Needs no jax.
"""

import argparse
import json
import os

from aaf_jax.sweep import grid, stats
from aaf_jax.sweep.report import difference_text


class ReportError(ValueError):
  """A sweep folder or grid-point name the report cannot use; the message names it."""


def _name(overrides: dict) -> str:
  """'kind=affinity,sizes=3': each field's last part and its value, as in run names."""
  short = {field.rpartition('.')[2]: value for field, value in overrides.items()}
  return grid.point_name(short)


def _one(groups: list[dict], text: str, flag: str) -> dict:
  found = grid.matching(groups, text)
  if len(found) != 1:
    names = ', '.join(_name(g) for g in groups)
    raise ReportError(
      f'{flag}={text!r} names {len(found)} grid points, expected one; the grid points are {names}.'
    )
  return found[0]


def _pairing(summary: dict):
  """against(point, baseline) -> `point` minus `baseline` paired over seeds (the sweep's
  paired_differences row); each baseline's differences are computed once."""
  by_baseline = {}

  def against(point: dict, baseline: dict) -> dict:
    key = json.dumps(baseline)
    if key not in by_baseline:
      rows = stats.paired_differences(summary, baseline)
      by_baseline[key] = {json.dumps(r['overrides']): r for r in rows}
    return by_baseline[key][json.dumps(point)]

  return against


def report(summary: dict, among: str, of: str | None) -> list[str]:
  """The report's markdown lines (see the module docstring)."""
  groups = {json.dumps(g['overrides']): g for g in summary['groups']}
  against = _pairing(summary)
  overrides = [g['overrides'] for g in summary['groups']]
  contenders = grid.matching(overrides, among)
  if len(contenders) < 2:
    raise ReportError(
      f'--among={among!r} names {len(contenders)} grid point(s), expected two or more; the grid '
      f'points are {", ".join(_name(o) for o in overrides)}.'
    )
  classes = next((list(g['per_class_iou']) for g in summary['groups'] if g['per_class_iou']), [])
  seeds = max(len(groups[json.dumps(c)]['seeds']) for c in contenders)
  names = [_name(c) for c in contenders]
  lines = [
    f'Per class: mean IoU over seeds (%) of the grid points {among!r} names, the best, and the '
    'best minus the runner-up paired over seeds (points, mean ± std [95% CI], * where the '
    'interval excludes 0).',
    '',
    '| class | ' + ' | '.join(names) + ' | best | best minus runner-up |',
    '|' + '---|' * (len(names) + 3),
  ]
  wins = {name: [] for name in names}
  for c in classes:
    means = [groups[json.dumps(o)]['per_class_iou'].get(c, {}).get('mean') for o in contenders]
    ranked = sorted(
      (i for i, m in enumerate(means) if m is not None), key=lambda i: means[i], reverse=True
    )
    if len(ranked) < 2:
      continue
    best, runner_up = ranked[0], ranked[1]
    wins[names[best]].append(c)
    gap = against(contenders[best], contenders[runner_up])['per_class_iou'][c]
    cells = [f'{100 * m:.2f}' if m is not None else '-' for m in means]
    lines.append(
      f'| {c} | ' + ' | '.join(cells) + f' | {names[best]} | {difference_text(gap, seeds)} |'
    )
  lines += [
    '',
    'Classes won: ' + '; '.join(f'{n}: {", ".join(w) or "none"}' for n, w in wins.items()),
  ]
  if of is None:
    return lines
  point = _one(overrides, of, '--of')
  lines += [
    '',
    f'{_name(point)} minus each other grid point, paired over seeds (points, mean ± std '
    '[95% CI], * where the interval excludes 0):',
    '',
    '| minus | seeds | mIoU | boundary IoU | ' + ' | '.join(classes) + ' |',
    '|' + '---|' * (len(classes) + 4),
  ]
  for other in overrides:
    if other == point:
      continue
    row = against(point, other)
    n = len(row['seeds'])
    cells = [difference_text(row[k], n) for k in ('miou', 'boundary_iou')]
    cells += [difference_text(row['per_class_iou'][c], n) for c in classes]
    lines.append(f'| {_name(other)} | {n} | ' + ' | '.join(cells) + ' |')
  return lines


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a sweep folder holding summary.json')
  parser.add_argument(
    '--among', required=True, help="grid points compared class by class, e.g. 'loss.kind=affinity'"
  )
  parser.add_argument(
    '--of', default=None, help="the point set against every other, e.g. 'loss.kind=aaf'"
  )
  parser.add_argument(
    '--eval_set',
    default=None,
    help='report the scores on this evaluation set of the sweep (--eval_sets) instead of the '
    "runs' own; writes ablation_report-NAME.md",
  )
  args = parser.parse_args(argv)
  path = os.path.join(args.workdir, 'summary.json')
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError) as e:
    raise SystemExit(
      f'{path}: no readable sweep summary ({e}); run the sweep (or --summarize).'
    ) from None
  name = 'ablation_report.md'
  if args.eval_set is not None:
    sets = summary.get('eval_sets', {})
    if args.eval_set not in sets:
      raise SystemExit(
        f'{path}: --eval_set={args.eval_set}: the sweep has no such evaluation set (it has '
        f'{", ".join(sets) or "none"}).'
      )
    summary, name = sets[args.eval_set], f'ablation_report-{args.eval_set}.md'
  try:
    lines = report(summary, args.among, args.of)
  except (ReportError, grid.SweepError) as e:
    raise SystemExit(f'{path}: {e}') from None
  text = '\n'.join(lines) + '\n'
  print(text, end='')
  with open(os.path.join(args.workdir, name), 'w') as f:
    f.write(text)


if __name__ == '__main__':
  main()
