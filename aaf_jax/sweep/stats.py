"""A sweep's statistics: per-run rows, mean ± std per grid point, paired differences.

Reads each run's results (and its evaluation sets' files) through `status`; writes nothing.
Imports no jax (scipy for the t quantile).
"""

import json
import math

from absl import logging

from aaf_jax import run_record
from aaf_jax.sweep import grid, status


def _mean_std(values):
  """(mean, sample standard deviation) of the non-None values; std 0 for one value."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  mean = sum(values) / len(values)
  if len(values) == 1:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(runs: list[grid.Run], baseline: dict | None = None) -> dict:
  """{'runs': one row per run, 'groups': one row per grid point with means and sample standard
  deviations over seeds}, and with a `baseline` grid point's overrides, 'baseline' and
  'paired_differences'. With evaluation sets, 'eval_sets': {name: {'fields', 'runs',
  'groups'[, 'paired_differences']}}, the same tables from each run's scores on that set."""
  rows = []
  for run in runs:
    state = status.run_status(run)
    rows.append(_row(run, state, state.get('results')))
  summary = {'runs': rows, 'groups': groups(rows)}
  if baseline is not None:
    summary['baseline'] = baseline
    summary['paired_differences'] = paired_differences(summary, baseline)
  names = list(runs[0].evaluations) if runs else []
  if names:
    summary['eval_sets'] = {name: _eval_set(runs, rows, name, baseline) for name in names}
  return summary


def _row(run: grid.Run, state: dict, results: dict | None) -> dict:
  row = {
    'overrides': run.overrides,
    'seed': run.seed,
    'workdir': run.workdir,
    'status': state['status'],
  }
  if results is not None:
    row.update(
      miou=results['miou'],
      boundary_iou=results.get('boundary_iou'),  # None in results written before it existed
      pixel_acc=results['pixel_acc'],
      per_class_iou=results['per_class_iou'],
    )
    if 'field_size_weights' in results:  # aaf runs: the learned tables' softmax per class
      row['field_size_weights'] = results['field_size_weights']
  if state['status'] == 'failed':
    row['error'] = state['error']
  return row


def _eval_set(runs: list[grid.Run], rows: list[dict], name: str, baseline) -> dict:
  """The summary of evaluation set `name`: a run not yet evaluated on it is 'not evaluated'."""
  set_rows = []
  for run, row in zip(runs, rows):
    config = run.evaluations[name]
    scores = status.evaluation_done(run.workdir, config) if row['status'] == 'finished' else None
    if row['status'] == 'finished':
      state = {'status': 'finished' if scores is not None else 'not evaluated'}
    else:
      state = {'status': row['status'], 'error': row.get('error')}
    set_rows.append(_row(run, state, scores))
    set_rows[-1].pop('field_size_weights', None)
  part = {'fields': set_fields(runs[0], name), 'runs': set_rows, 'groups': groups(set_rows)}
  if baseline is not None:
    part['paired_differences'] = paired_differences(part, baseline)
  part.update(_shifts(rows, set_rows, baseline))
  return part


def _shift_runs(rows: list[dict], set_rows: list[dict]) -> list[dict]:
  """One row per run finished in both: its scores on the set minus its own (negative: the set
  costs that many points)."""

  def minus(a, b):
    return None if a is None or b is None else a - b

  return [
    {
      'overrides': own['overrides'],
      'seed': own['seed'],
      'status': 'finished',
      'miou': minus(there['miou'], own['miou']),
      'boundary_iou': minus(there['boundary_iou'], own['boundary_iou']),
      'per_class_iou': {
        c: minus(there['per_class_iou'].get(c), v) for c, v in own['per_class_iou'].items()
      },
    }
    for own, there in zip(rows, set_rows)
    if own['status'] == 'finished' and there['status'] == 'finished'
  ]


def _shifts(rows: list[dict], set_rows: list[dict], baseline) -> dict:
  """{'shift': per grid point, the mean shift over its runs with its paired statistics (the drop
  from in-domain to the set)} and, with a baseline, 'shift_paired_differences': each point's
  shift minus the baseline's, seed by seed (does a point lose fewer points than the baseline?)."""
  runs = _shift_runs(rows, set_rows)
  by_point = {}
  for run in runs:
    by_point.setdefault(json.dumps(run['overrides']), []).append(run)
  shift = []
  for members in by_point.values():
    classes = list(members[0]['per_class_iou'])

    def stat(get, members=members):
      return paired_stats([get(m) for m in members])

    shift.append(
      {
        'overrides': members[0]['overrides'],
        'seeds': [m['seed'] for m in members],
        'miou': stat(lambda r: r['miou']),
        'boundary_iou': stat(lambda r: r['boundary_iou']),
        'per_class_iou': {c: stat(lambda r, c=c: r['per_class_iou'].get(c)) for c in classes},
      }
    )
  shifts = {'shift': shift}
  if baseline is not None:
    # paired_differences reads the points' order and class names from 'groups'.
    shifted_summary = {'runs': runs, 'groups': shift}
    shifts['shift_paired_differences'] = paired_differences(shifted_summary, baseline)
  return shifts


def set_fields(run: grid.Run, name: str) -> dict:
  """{field: value} where evaluation set `name`'s config differs from the run's."""
  mine, theirs = run_record.flatten(run.config), run_record.flatten(run.evaluations[name])
  return {k: v for k, v in theirs.items() if mine.get(k) != v}


def groups(rows: list[dict]) -> list[dict]:
  """One row per grid point (in order of appearance): its finished and failed seeds, the mean
  and sample std over finished seeds of each score and class, and the mean learned field sizes."""
  by_point = {}
  for row in rows:
    by_point.setdefault(json.dumps(row['overrides']), []).append(row)
  group_rows = []
  for key, members in by_point.items():
    done = [m for m in members if m['status'] == 'finished']
    miou = _mean_std([m['miou'] for m in done])
    boundary_iou = _mean_std([m['boundary_iou'] for m in done])
    pixel_acc = _mean_std([m['pixel_acc'] for m in done])
    classes = list(done[0]['per_class_iou']) if done else []
    group_rows.append(
      {
        'overrides': json.loads(key),
        'seeds': [m['seed'] for m in done],
        'failed_seeds': [m['seed'] for m in members if m['status'] == 'failed'],
        'miou_mean': miou[0],
        'miou_std': miou[1],
        'boundary_iou_mean': boundary_iou[0],
        'boundary_iou_std': boundary_iou[1],
        'pixel_acc_mean': pixel_acc[0],
        'pixel_acc_std': pixel_acc[1],
        'per_class_iou': {
          c: dict(zip(('mean', 'std'), _mean_std([m['per_class_iou'][c] for m in done])))
          for c in classes
        },
      }
    )
    weights = _mean_field_sizes(
      [m['field_size_weights'] for m in done if 'field_size_weights' in m]
    )
    if weights is not None:
      group_rows[-1]['field_size_weights'] = weights
  return group_rows


def _mean_field_sizes(weights: list) -> dict | None:
  """The mean over seeds of runs' `field_size_weights` ({'sizes', 'edge': {class: [w per size]},
  'nonedge': ...}), with 'seeds' (how many); None when no run has them or their sizes differ."""
  if not weights or any(w['sizes'] != weights[0]['sizes'] for w in weights):
    return None
  mean = {'sizes': weights[0]['sizes'], 'seeds': len(weights)}
  for table in ('edge', 'nonedge'):
    mean[table] = {
      c: [sum(w[table][c][k] for w in weights) / len(weights) for k in range(len(rows))]
      for c, rows in weights[0][table].items()
    }
  return mean


def paired_stats(differences) -> dict:
  """{'pairs', 'mean', 'std', 'ci'} of per-seed differences (None values are left out).

  std is the sample standard deviation (ddof=1) and ci the 95% Student-t interval of the mean
  (n-1 degrees of freedom); with one pair both are None, since one difference gives no spread.
  """
  from scipy import stats

  values = [d for d in differences if d is not None]
  n = len(values)
  if n == 0:
    return {'pairs': 0, 'mean': None, 'std': None, 'ci': None}
  mean, std = _mean_std(values)
  if n == 1:
    return {'pairs': 1, 'mean': mean, 'std': None, 'ci': None}
  half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
  return {'pairs': n, 'mean': mean, 'std': std, 'ci': [mean - half, mean + half]}


def paired_differences(summary: dict, baseline: dict) -> list[dict]:
  """Each other grid point minus the baseline, seed by seed (same seed: same data order).

  Only seeds finished in both pair; a score missing from either run of a pair (a class with no
  IoU, a boundary IoU from an older results.json) leaves that pair out of that score only.
  """
  by_group = {}
  for row in summary['runs']:
    if row['status'] == 'finished':
      by_group.setdefault(json.dumps(row['overrides']), {})[row['seed']] = row
  reference = by_group.get(json.dumps(baseline), {})
  classes = next((list(g['per_class_iou']) for g in summary['groups'] if g['per_class_iou']), [])
  rows = []
  for group in summary['groups']:
    if json.dumps(group['overrides']) == json.dumps(baseline):  # tuples read back as lists
      continue
    mine = by_group.get(json.dumps(group['overrides']), {})
    seeds = sorted(set(mine) & set(reference))
    if not seeds:
      logging.warning(
        'Sweep: %s shares no finished seed with the baseline %s (seeds %s vs %s); no difference.',
        group['overrides'],
        baseline,
        sorted(mine),
        sorted(reference),
      )

    def diff(get, mine=mine, seeds=seeds):
      pairs = [(get(mine[s]), get(reference[s])) for s in seeds]
      return paired_stats([a - b for a, b in pairs if a is not None and b is not None])

    rows.append(
      {
        'overrides': group['overrides'],
        'seeds': seeds,
        'miou': diff(lambda r: r['miou']),
        'boundary_iou': diff(lambda r: r['boundary_iou']),
        'per_class_iou': {c: diff(lambda r, c=c: r['per_class_iou'].get(c)) for c in classes},
      }
    )
  return rows
