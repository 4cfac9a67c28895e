"""Sweeps: every point of a grid of config fields times several seeds, one workdir per run.

    python launch.py --mode=sweep --config=FILE --workdir=DIR \
        --sweep='loss.margin=[1.0,2.0,3.0]' --sweep='loss.sizes=[(1,),(1,2),(1,2,3)]' --seeds=3

Each `--sweep=FIELD=LIST` names a config field and a Python list literal of its values; the grid
is their product (fields in the order given), times `--seeds` seeds (config.seed, config.seed+1,
...). Tied fields move together as one axis of the grid: `--sweep='F1,F2=[(A1, B1), (A2, B2)]'`
gives the points F1=A1,F2=B1 and F1=A2,F2=B2, e.g. the paper's ablation
`loss.kind,loss.sizes=[('ce', (1, 2, 3)), ('affinity', (1,)), ('affinity', (2,)), ...]`.
Without `--sweep`, the config file's `get_sweep(arg)` gives the grid. A grid point that
sets `loss.kind` and not `loss.sizes` also sets `loss.sizes` to that kind's default, unless the
base config's sizes differ from its own kind's default (then they are kept as given).

Run directories: `DIR/FIELD=VALUE,FIELD=VALUE,seed=S` with the grid point's fields in the order
given and each value written compactly (tuples as `1-2-3`, strings as they are; `/` and spaces
become `_`); a grid of seeds alone gives `DIR/seed=S`. A run is finished when its
`results.json` carries the run's config fingerprint: a rerun skips it, resumes a run with a
checkpoint (the trainer's resume) and retries a failed one. A failed run (a NaN, a refused
checkpoint) is recorded in its `failed.json` with its error line and the sweep goes on.

`--shard=I/N` runs runs I, I+N, I+2N, ... so N machines or a job array split one sweep. The
invocation that finds every run done, or `--summarize`, writes DIR/summary.json (`runs`, one
row per run; `groups`, one row per grid point with means and standard deviations over seeds),
summary.csv, summary.md (mean ± std in %) and summary.png (mIoU against each swept field); for
each grid point whose runs learn AAF tables, the mean over seeds of their field-size weights
(`field_size_weights` of its group in summary.json) and their plot,
summary_field_sizes,FIELD=VALUE,....png.

`--baseline=FIELD=VALUE[,FIELD=VALUE]` names one grid point; the summary then adds each other
grid point's paired difference from it (`paired_differences` in summary.json, `*_diff_*`
columns in summary.csv, a second table in summary.md, summary_paired.png): per seed finished in
both (same seed, same data order), the point's score minus the baseline's, in mIoU, boundary
IoU and each class's IoU, with the mean, the sample std and a 95% Student-t interval over the
pairs. One pair gives the mean alone: one difference has no spread, so no interval.
"""

import ast
import copy
import dataclasses
import itertools
import json
import math
import os
import re
import time

import ml_collections
from absl import logging

from aaf_jax import errors, jsonio, loss_kinds, run_record, validation


class SweepError(errors.UserError):
  """A sweep argument that cannot work; the message names it."""


@dataclasses.dataclass(frozen=True)
class Run:
  index: int
  overrides: dict  # {field: value} of its grid point, in the order of the sweep arguments
  seed: int
  workdir: str
  config: ml_collections.ConfigDict


def _value_text(value) -> str:
  if isinstance(value, (tuple, list)):
    return '-'.join(_value_text(v) for v in value) or 'none'
  return re.sub(r'[/\s]', '_', str(value))


def run_name(overrides: dict, seed: int) -> str:
  """The run directory's name: FIELD=VALUE,...,seed=S (see the module docstring)."""
  return ','.join([f'{k}={_value_text(v)}' for k, v in overrides.items()] + [f'seed={seed}'])


def parse_sweep_argument(text: str, config) -> tuple[tuple[str, ...], list[tuple]]:
  """'FIELD=[v1, v2]' -> ((FIELD,), [(v1,), (v2,)]); tied fields 'F1,F2=[(a1, b1), (a2, b2)]'
  -> ((F1, F2), [(a1, b1), (a2, b2)]): the fields move together, one grid axis. SweepError
  naming the argument otherwise."""
  where = f'--sweep={text!r}'
  names, sep, literal = text.partition('=')
  fields = tuple(f.strip() for f in names.split(','))
  if not sep or not all(fields):
    raise SweepError(
      f'{where}: expected FIELD=[VALUE, ...], e.g. loss.margin=[1.0,2.0], or tied fields '
      "F1,F2=[(V1, V2), ...], e.g. loss.kind,loss.sizes=[('affinity', (2,)), ('aaf', (1, 2, 3))]."
    )
  if len(set(fields)) != len(fields):
    raise SweepError(f'{where}: a field is named twice.')
  flat = run_record.flatten(config)
  for field in fields:
    if field not in flat:
      near = [k for k in flat if k.split('.')[-1] == field.split('.')[-1]]
      raise SweepError(
        f'{where}: config has no field {field!r}'
        + (f' (did you mean {", ".join(near)}?)' if near else '')
        + '.'
      )
    if field == 'seed':
      raise SweepError(f'{where}: use --seeds=N to run several seeds.')
  try:
    values = ast.literal_eval(literal.strip())
  except (ValueError, SyntaxError) as e:
    raise SweepError(
      f'{where}: {literal.strip()!r} is not a Python literal; expected a list such as [1.0, 2.0].'
    ) from e
  if not isinstance(values, list):
    raise SweepError(
      f'{where}: expected a list literal of values in [...], got {type(values).__name__} '
      f'{values!r}.'
    )
  if not values:
    raise SweepError(f'{where}: the list of values is empty; the grid would have no run.')
  if len(fields) == 1:
    return fields, [(v,) for v in values]
  for value in values:
    if not isinstance(value, (tuple, list)) or len(value) != len(fields):
      raise SweepError(
        f'{where}: value {value!r} is not a tuple of {len(fields)} values, one for each of '
        f'{", ".join(fields)}.'
      )
  return fields, [tuple(v) for v in values]


def _set(config, field: str, value, where: str) -> None:
  node = config
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  current = node[leaf]
  if isinstance(value, bool) != isinstance(current, bool):
    raise SweepError(f'{where}: value {value!r} for config.{field}, which holds {current!r}.')
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise SweepError(f'{where}: value {value!r} does not fit config.{field}: {e}') from e


def grid_config(config, overrides: dict, seed: int, arguments: dict):
  """A copy of `config` with a grid point's values and the seed; errors name the argument."""
  run = copy.deepcopy(config)  # keeps a field typed `object` (eval.boundary_width) open to both
  for field, value in overrides.items():
    _set(run, field, value, arguments[field])
  base_kind = loss_kinds.get(config.loss.kind)
  if (
    'loss.kind' in overrides
    and 'loss.sizes' not in overrides
    and tuple(config.loss.sizes) == base_kind.default_sizes
  ):
    run.loss.sizes = loss_kinds.get(run.loss.kind).default_sizes
  run.seed = seed
  try:
    validation.validate(run)
  except validation.ConfigError as e:
    named = ', '.join(arguments[f] for f in overrides) or 'the base config'
    raise SweepError(f'{named}: {e}') from e
  return run


def parse_shard(text: str) -> tuple[int, int]:
  """'I/N' -> (I, N) with 0 <= I < N; SweepError naming --shard otherwise."""
  match = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', text or '')
  if not match:
    raise SweepError(f'--shard={text!r}: expected I/N, e.g. 0/4 (runs I, I+N, I+2N, ...).')
  index, count = int(match.group(1)), int(match.group(2))
  if count < 1 or index >= count:
    raise SweepError(f'--shard={text!r}: expected 0 <= I < N and N >= 1.')
  return index, count


def plan(config, workdir: str, sweep_arguments, seeds: int) -> list[Run]:
  """Every run of the sweep, checked (each grid point's config validated) before any runs."""
  if not isinstance(seeds, int) or seeds < 1:
    raise SweepError(f'--seeds={seeds!r}: expected an integer >= 1.')
  arguments, axes = {}, []
  for text in sweep_arguments:
    fields, values = parse_sweep_argument(text, config)
    for field in fields:
      if field in arguments:
        raise SweepError(f'--sweep={text!r}: field {field!r} is swept twice.')
      arguments[field] = f'--sweep={text!r}'
    axes.append([dict(zip(fields, value)) for value in values])
  runs = []
  points = itertools.product(*axes)
  for point in points:
    overrides = {field: value for part in point for field, value in part.items()}
    for offset in range(seeds):
      seed = config.seed + offset
      runs.append(
        Run(
          index=len(runs),
          overrides=overrides,
          seed=seed,
          workdir=os.path.join(workdir, run_name(overrides, seed)),
          config=grid_config(config, overrides, seed, arguments),
        )
      )
  names = [r.workdir for r in runs]
  if len(set(names)) != len(names):
    raise SweepError(
      'Two grid points get the same run directory name; make the swept values distinct.'
    )
  return runs


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def status(run: Run) -> dict:
  """{'status': finished|failed|interrupted|pending, ...} of a run, from its workdir."""
  fingerprint = run_record.fingerprint(run.config)
  results = _read_json(os.path.join(run.workdir, 'results.json'))
  if results is not None and results.get('fingerprint') == fingerprint:
    return {'status': 'finished', 'results': results}
  failed = _read_json(os.path.join(run.workdir, 'failed.json'))
  if failed is not None and failed.get('fingerprint') == fingerprint:
    return {'status': 'failed', 'error': failed['error']}
  if os.path.isdir(os.path.join(run.workdir, 'checkpoints')):
    return {'status': 'interrupted'}
  return {'status': 'pending'}


def _train(config, workdir):
  from aaf_jax import train  # the sweep's planning and summaries need no jax

  return train.train_and_evaluate(config, workdir)


def run_sweep(
  runs: list[Run],
  workdir: str,
  shard=(0, 1),
  train_fn=_train,
  baseline: dict | None = None,
  job=None,
) -> dict:
  """Train this shard's unfinished runs in order; write the summary when every run is done
  (with each grid point's paired difference from the `baseline` grid point, when given).

  `job`: in a multi-process job, an aaf_jax.distributed.Lockstep: every process then trains
  each run together, in the order process 0 found, and only process 0 writes failed.json and
  the summary. Returns {'trained', 'skipped', 'failed'} counts of this invocation.
  """
  index, count = shard
  writes = job is None or job.writes
  mine = [r for r in runs if r.index % count == index]
  counts = {'trained': 0, 'skipped': 0, 'failed': 0}
  todo = [r.index for r in mine if status(r)['status'] != 'finished']
  if job is not None:  # one plan for every process, whatever each sees of the files
    todo = job.from_process_0('todo', todo)
  by_index = {r.index: r for r in mine}
  todo = [by_index[i] for i in todo]
  counts['skipped'] = len(mine) - len(todo)
  logging.info(
    'Sweep: %d runs, %d in shard %d/%d, %d already finished.',
    len(runs),
    len(mine),
    index,
    count,
    counts['skipped'],
  )
  started = time.time()
  for done, run in enumerate(todo, 1):
    logging.info('Sweep run %s (%d of %d in this shard).', run.workdir, run.index + 1, len(runs))
    failed_path = os.path.join(run.workdir, 'failed.json')
    if writes and os.path.exists(failed_path):
      os.remove(failed_path)
    if job is not None:
      job.begin(run.index)
    error = None
    try:
      train_fn(run.config, run.workdir)
    except Exception as e:  # a failed run is recorded and the sweep goes on
      error = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'.strip()
      logging.error('Sweep run %s failed: %s', run.workdir, error)
    if job is not None:  # failed on any process: failed on all, recorded once
      error = job.agree(run.index, error)
    if error is None:
      counts['trained'] += 1
    else:
      counts['failed'] += 1
      if writes:
        os.makedirs(run.workdir, exist_ok=True)
        with open(failed_path, 'w') as f:
          json.dump({'fingerprint': run_record.fingerprint(run.config), 'error': error}, f)
    elapsed = time.time() - started
    eta = elapsed / done * (len(todo) - done)
    logging.info(
      'Sweep progress: %d/%d runs of this shard done (%d failed, %d skipped), ETA %s.',
      counts['skipped'] + done,
      len(mine),
      counts['failed'],
      counts['skipped'],
      time.strftime('%H:%M:%S', time.gmtime(eta)),
    )
  if not writes:  # process 0 writes the summary
    return counts
  if all(status(r)['status'] in ('finished', 'failed') for r in runs):
    write_summary(runs, workdir, baseline)
  else:
    logging.info('Sweep: runs of other shards are not done yet; no summary written.')
  return counts


def _mean_std(values):
  """(mean, sample standard deviation) of the non-None values; std 0 for one value."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  mean = sum(values) / len(values)
  if len(values) == 1:
    return mean, 0.0
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(runs: list[Run], baseline: dict | None = None) -> dict:
  """{'runs': one row per run, 'groups': one row per grid point} (see the module docstring),
  and with a `baseline` grid point's overrides, 'baseline' and 'paired_differences'."""
  rows, groups = [], {}
  for run in runs:
    state = status(run)
    row = {
      'overrides': run.overrides,
      'seed': run.seed,
      'workdir': run.workdir,
      'status': state['status'],
    }
    if state['status'] == 'finished':
      results = state['results']
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
    rows.append(row)
    groups.setdefault(json.dumps(run.overrides), []).append(row)
  group_rows = []
  for key, members in groups.items():
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
  summary = {'runs': rows, 'groups': group_rows}
  if baseline is not None:
    summary['baseline'] = baseline
    summary['paired_differences'] = paired_differences(summary, baseline)
  return summary


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


# The scores of a group's row, in the order of summary.csv's and summary.md's columns.
_SCORES = ('miou', 'boundary_iou', 'pixel_acc')


def _text(value) -> str:
  return _value_text(value) if isinstance(value, (tuple, list)) else str(value)


class BaselineError(SweepError):
  """A --baseline that names no single grid point of the sweep."""


def _baseline_items(text: str) -> list[tuple[str, str]]:
  """'FIELD=VALUE,FIELD=VALUE' -> [(FIELD, VALUE text)]; a comma splits only before FIELD=."""
  items = re.split(r',(?=\s*[A-Za-z_][\w.]*\s*=)', text)
  pairs = []
  for item in items:
    field, sep, value = item.partition('=')
    if not sep or not field.strip() or not value.strip():
      raise BaselineError(
        f'--baseline={text!r}: expected FIELD=VALUE[,FIELD=VALUE...] naming one grid point, '
        "e.g. --baseline='loss.kind=ce'."
      )
    pairs.append((field.strip(), value.strip()))
  return pairs


def _same_value(text: str, value) -> bool:
  """Whether a --baseline value (a literal, or a bare word such as ce) is a grid value."""
  try:
    given = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    given = text
  if isinstance(given, bool) != isinstance(value, bool):
    return False
  return given == value or _text(given) == _text(value) or text == _text(value)


def matching(overrides: list[dict], text: str) -> list[dict]:
  """The grid points among `overrides` that 'FIELD=VALUE[,FIELD=VALUE]' names (every named
  field has that value; a field a point lacks does not match)."""
  items = _baseline_items(text)
  return [o for o in overrides if all(f in o and _same_value(v, o[f]) for f, v in items)]


def baseline_group(runs: list[Run], text: str) -> dict:
  """The overrides of the one grid point `--baseline=text` names; BaselineError otherwise.

  `text` is FIELD=VALUE pairs joined by commas; fields left out may take any value as long as
  exactly one grid point matches.
  """
  groups = list({json.dumps(r.overrides): r.overrides for r in runs}.values())
  where = f'--baseline={text!r}'
  swept = list(runs[0].overrides) if runs else []
  if len(groups) < 2:
    raise BaselineError(f'{where}: the sweep has one grid point, so nothing to compare against.')
  items = _baseline_items(text)
  for field, _ in items:
    if field not in swept:
      raise BaselineError(
        f'{where}: {field!r} is not a swept field; the swept fields are {", ".join(swept)}.'
      )
  matches = matching(groups, text)
  names = ', '.join(repr(run_name(g, 0).rpartition(',seed=')[0] or '(base)') for g in groups)
  if not matches:
    raise BaselineError(f'{where}: names no grid point; the grid points are {names}.')
  if len(matches) > 1:
    raise BaselineError(
      f'{where}: matches {len(matches)} grid points; name more fields to pick one of {names}.'
    )
  return matches[0]


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


def _percent(mean, std) -> str:
  return '-' if mean is None else f'{100 * mean:.2f} ± {100 * std:.2f}'


# The paired-difference scores, in the order of the paired columns and the plot's first points.
_PAIRED_SCORES = (('miou', 'mIoU'), ('boundary_iou', 'boundary IoU'))
_STAT_COLUMNS = ('pairs', 'mean', 'std', 'ci_low', 'ci_high')


def _stat_cells(stat: dict) -> list:
  ci = stat['ci'] or (None, None)
  return [stat['pairs'], stat['mean'], stat['std'], *ci]


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


def _paired_table(summary: dict, fields: list, classes: list) -> list[str]:
  """summary.md's second table: each grid point minus the baseline, over paired seeds."""
  baseline = ', '.join(f'{k}={_text(v)}' for k, v in summary['baseline'].items()) or '(base)'
  lines = [
    '',
    f'Paired differences from the baseline {baseline} (grid point minus baseline, seed by seed '
    'over the seeds finished in both; mean ± sample std [95% Student-t CI] in points; '
    '* the CI excludes 0):',
    '',
  ]
  header = [*fields, 'pairs', *(name for _, name in _PAIRED_SCORES), *classes]
  lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for d in summary['paired_differences']:
    seeds = len(d['seeds'])
    cells = [_text(d['overrides'][k]) for k in fields] + [str(seeds)]
    cells += [difference_text(d[key], seeds) for key, _ in _PAIRED_SCORES]
    cells += [difference_text(d['per_class_iou'][c], seeds) for c in classes]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def write_summary(runs: list[Run], workdir: str, baseline: dict | None = None) -> dict:
  """DIR/summary.json, summary.csv, summary.md and summary.png; returns the summary.

  With a `baseline` grid point (its overrides), summary.csv gains each grid point's paired
  differences from it, summary.md a second table of them and summary_paired.png their plot.
  """
  import csv

  summary = summarize(runs, baseline)
  jsonio.write_json_atomically(os.path.join(workdir, 'summary.json'), summary)
  fields = list(runs[0].overrides) if runs else []
  classes = next((list(g['per_class_iou']) for g in summary['groups'] if g['per_class_iou']), [])
  paired = {json.dumps(d['overrides']): d for d in summary.get('paired_differences', [])}
  paired_scores = [key for key, _ in _PAIRED_SCORES] + classes
  with open(os.path.join(workdir, 'summary.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(
      [*fields, 'seeds', 'failed', *(f'{s}_{m}' for s in _SCORES for m in ('mean', 'std'))]
      + [f'{c}_{s}' for c in classes for s in ('mean', 'std')]
      + [f'{s}_diff_{m}' for s in paired_scores for m in _STAT_COLUMNS] * (baseline is not None)
    )
    for g in summary['groups']:
      d = paired.get(json.dumps(g['overrides']))
      differences = []
      if d is not None:
        stats = [d[key] for key, _ in _PAIRED_SCORES] + [d['per_class_iou'][c] for c in classes]
        differences = [cell for stat in stats for cell in _stat_cells(stat)]
      elif baseline is not None:  # the baseline's own row
        differences = [None] * (len(paired_scores) * len(_STAT_COLUMNS))
      writer.writerow(
        [_text(g['overrides'][k]) for k in fields]
        + [len(g['seeds']), len(g['failed_seeds'])]
        + [g[f'{s}_{m}'] for s in _SCORES for m in ('mean', 'std')]
        + [g['per_class_iou'].get(c, {}).get(s) for c in classes for s in ('mean', 'std')]
        + differences
      )
  header = [*fields, 'seeds', 'mIoU', 'boundary IoU', 'pixel acc', *classes]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for g in summary['groups']:
    seeds = f'{len(g["seeds"])}' + (f' ({len(g["failed_seeds"])} failed)' * bool(g['failed_seeds']))
    cells = [_text(g['overrides'][k]) for k in fields] + [seeds]
    cells += [_percent(g[f'{s}_mean'], g[f'{s}_std']) for s in _SCORES]
    cells += [
      _percent(**g['per_class_iou'][c]) if c in g['per_class_iou'] else '-' for c in classes
    ]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if baseline is not None:
    lines += _paired_table(summary, fields, classes)
    _plot_paired(summary, classes, os.path.join(workdir, 'summary_paired.png'))
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  _plot(summary, fields, os.path.join(workdir, 'summary.png'))
  for g in summary['groups']:
    if 'field_size_weights' in g:
      _plot_field_sizes(g, os.path.join(workdir, _field_sizes_name(g['overrides'])))
  logging.info('Sweep summary (%s):\n%s', os.path.join(workdir, 'summary.md'), '\n'.join(lines))
  return summary


def _field_sizes_name(overrides: dict) -> str:
  """summary_field_sizes[,FIELD=VALUE...].png: a grid point's mean learned field sizes."""
  point = run_name(overrides, 0).rpartition('seed=')[0].rstrip(',')
  return f'summary_field_sizes{"," + point if point else ""}.png'


def _plot_field_sizes(group: dict, path: str) -> None:
  from aaf_jax import viz

  weights = group['field_size_weights']
  classes = list(weights['edge'])
  viz.plot_field_sizes(
    path,
    classes,
    weights['sizes'],
    [weights['edge'][c] for c in classes],
    [weights['nonedge'][c] for c in classes],
    note=f'mean of {weights["seeds"]} seed(s)',
  )


def _plot(summary: dict, fields: list, path: str) -> None:
  """mIoU (mean ± std over seeds) against each swept field, one line per other-field setting."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  axes_fields = fields or ['(base)']
  fig, axes = plt.subplots(1, len(axes_fields), figsize=(4.5 * len(axes_fields), 3.5))
  axes = axes if len(axes_fields) > 1 else [axes]
  groups = [g for g in summary['groups'] if g['miou_mean'] is not None]
  for ax, field in zip(axes, axes_fields):
    values = list(dict.fromkeys(_text(g['overrides'].get(field, '')) for g in groups))
    lines = {}
    for g in groups:
      others = ', '.join(f'{k}={_text(v)}' for k, v in g['overrides'].items() if k != field)
      lines.setdefault(others, []).append(g)
    for label, members in lines.items():
      xs = [values.index(_text(g['overrides'].get(field, ''))) for g in members]
      ax.errorbar(
        xs,
        [100 * g['miou_mean'] for g in members],
        yerr=[100 * g['miou_std'] for g in members],
        marker='o',
        capsize=3,
        label=label or None,
      )
    ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(field)
    ax.set_ylabel('mIoU (%)')
    if any(lines):
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _plot_paired(summary: dict, classes: list, path: str) -> None:
  """Each grid point's paired difference from the baseline in mIoU, boundary IoU and each
  class's IoU: the mean with its 95% CI as an error bar; a hollow marker for a single pair
  (no CI)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = [name for _, name in _PAIRED_SCORES] + classes
  rows = summary['paired_differences']
  fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 3.8))
  ax.axhline(0.0, color='gray', linewidth=0.8)
  width = 0.8 / max(len(rows), 1)
  for i, d in enumerate(rows):
    stats = [d[key] for key, _ in _PAIRED_SCORES] + [d['per_class_iou'][c] for c in classes]
    label = ', '.join(f'{k}={_text(v)}' for k, v in d['overrides'].items())
    offset = (i - (len(rows) - 1) / 2) * width
    with_ci = [(x, s) for x, s in enumerate(stats) if s['ci'] is not None]
    single = [(x, s) for x, s in enumerate(stats) if s['pairs'] == 1]
    if with_ci:
      ax.errorbar(
        [x + offset for x, _ in with_ci],
        [100 * s['mean'] for _, s in with_ci],
        yerr=[
          [100 * (s['mean'] - s['ci'][0]) for _, s in with_ci],
          [100 * (s['ci'][1] - s['mean']) for _, s in with_ci],
        ],
        fmt='o',
        capsize=3,
        color=f'C{i}',
        label=label,
      )
    if single:
      ax.plot(
        [x + offset for x, _ in single],
        [100 * s['mean'] for _, s in single],
        'o',
        markerfacecolor='none',
        color=f'C{i}',
        label=None if with_ci else f'{label} (1 pair, no CI)',
      )
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right')
  baseline = ', '.join(f'{k}={_text(v)}' for k, v in summary['baseline'].items())
  ax.set_ylabel(f'minus {baseline} (points)')
  ax.set_title('Paired difference over seeds, mean and 95% CI', fontsize=9)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def default_sweep(config_spec: str) -> list[str] | None:
  """The --sweep arguments of a config file's `get_sweep(arg)` (None when it has none).

  `config_spec`: what --config was given, 'FILE' or 'FILE:ARG'. get_sweep returns
  {field: [values]}.
  """
  import importlib.util

  path, _, arg = config_spec.partition('.py:')
  path = path if path.endswith('.py') else f'{path}.py'
  spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    return None
  return [f'{field}={values!r}' for field, values in module.get_sweep(arg or None).items()]
