"""Sweeps: every point of a grid of config fields times several seeds, one workdir per run.

    python launch.py --mode=sweep --config=FILE --workdir=DIR \
        --sweep='loss.margin=[1.0,2.0,3.0]' --sweep='loss.sizes=[(1,),(1,2),(1,2,3)]' --seeds=3

Each `--sweep=FIELD=LIST` names a config field and a Python list literal of its values; the grid
is their product (fields in the order given), times `--seeds` seeds (config.seed, config.seed+1,
...). Without `--sweep`, the config file's `get_sweep(arg)` gives the grid. A grid point that
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
summary.csv, summary.md (mean ± std in %) and summary.png (mIoU against each swept field).
"""

import ast
import dataclasses
import itertools
import json
import math
import os
import re
import time

import ml_collections
from absl import logging

from aaf_jax import errors, loss_kinds, run_record, validation


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


def parse_sweep_argument(text: str, config) -> tuple[str, list]:
  """'FIELD=[v1, v2]' -> (FIELD, [v1, v2]); SweepError naming the argument otherwise."""
  where = f'--sweep={text!r}'
  field, sep, literal = text.partition('=')
  field = field.strip()
  if not sep or not field:
    raise SweepError(f'{where}: expected FIELD=[VALUE, ...], e.g. loss.margin=[1.0,2.0].')
  flat = run_record.flatten(config)
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
  return field, values


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
  run = config.copy_and_resolve_references()
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
  arguments, grid = {}, {}
  for text in sweep_arguments:
    field, values = parse_sweep_argument(text, config)
    if field in grid:
      raise SweepError(f'--sweep={text!r}: field {field!r} is swept twice.')
    arguments[field], grid[field] = f'--sweep={text!r}', values
  runs = []
  points = itertools.product(*grid.values())
  for point in points:
    overrides = dict(zip(grid, point))
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


def run_sweep(runs: list[Run], workdir: str, shard=(0, 1), train_fn=_train) -> dict:
  """Train this shard's unfinished runs in order; write the summary when every run is done.

  Returns {'trained', 'skipped', 'failed'} counts of this invocation.
  """
  index, count = shard
  mine = [r for r in runs if r.index % count == index]
  counts = {'trained': 0, 'skipped': 0, 'failed': 0}
  todo = [r for r in mine if status(r)['status'] != 'finished']
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
    if os.path.exists(failed_path):
      os.remove(failed_path)
    try:
      train_fn(run.config, run.workdir)
      counts['trained'] += 1
    except Exception as e:  # a failed run is recorded and the sweep goes on
      counts['failed'] += 1
      error = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'.strip()
      logging.error('Sweep run %s failed: %s', run.workdir, error)
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
  if all(status(r)['status'] in ('finished', 'failed') for r in runs):
    write_summary(runs, workdir)
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


def summarize(runs: list[Run]) -> dict:
  """{'runs': one row per run, 'groups': one row per grid point} (see the module docstring)."""
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
  return {'runs': rows, 'groups': group_rows}


# The scores of a group's row, in the order of summary.csv's and summary.md's columns.
_SCORES = ('miou', 'boundary_iou', 'pixel_acc')


def _text(value) -> str:
  return _value_text(value) if isinstance(value, (tuple, list)) else str(value)


def _percent(mean, std) -> str:
  return '-' if mean is None else f'{100 * mean:.2f} ± {100 * std:.2f}'


def write_summary(runs: list[Run], workdir: str) -> dict:
  """DIR/summary.json, summary.csv, summary.md and summary.png; returns the summary."""
  import csv

  from aaf_jax import evaluate

  summary = summarize(runs)
  evaluate.write_json_atomically(os.path.join(workdir, 'summary.json'), summary)
  fields = list(runs[0].overrides) if runs else []
  classes = next((list(g['per_class_iou']) for g in summary['groups'] if g['per_class_iou']), [])
  with open(os.path.join(workdir, 'summary.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(
      [*fields, 'seeds', 'failed', *(f'{s}_{m}' for s in _SCORES for m in ('mean', 'std'))]
      + [f'{c}_{s}' for c in classes for s in ('mean', 'std')]
    )
    for g in summary['groups']:
      writer.writerow(
        [_text(g['overrides'][k]) for k in fields]
        + [len(g['seeds']), len(g['failed_seeds'])]
        + [g[f'{s}_{m}'] for s in _SCORES for m in ('mean', 'std')]
        + [g['per_class_iou'].get(c, {}).get(s) for c in classes for s in ('mean', 'std')]
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
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  _plot(summary, fields, os.path.join(workdir, 'summary.png'))
  logging.info('Sweep summary (%s):\n%s', os.path.join(workdir, 'summary.md'), '\n'.join(lines))
  return summary


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
