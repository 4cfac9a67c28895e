"""The grid of a sweep: its arguments parsed, every run's config and directory, and the baseline.

`plan` turns a base config, `--sweep` arguments, `--seeds` and named evaluation sets into the
list of runs, each config validated, before anything runs; `default_sweep` and `eval_sets` read
a config file's `get_sweep(arg)` and `get_eval_sets(arg)`. Imports no jax.
"""

import ast
import copy
import dataclasses
import importlib.util
import itertools
import json
import os
import re

import ml_collections

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
  # {evaluation set name: the run's config with that set's fields}, in the order named
  evaluations: dict = dataclasses.field(default_factory=dict)


def _value_text(value) -> str:
  if isinstance(value, (tuple, list)):
    return '-'.join(_value_text(v) for v in value) or 'none'
  return re.sub(r'[/\s]', '_', str(value))


def run_name(overrides: dict, seed: int) -> str:
  """The run directory's name: FIELD=VALUE,...,seed=S, each value written compactly (tuples as
  `1-2-3`, `/` and spaces as `_`); a grid of seeds alone gives `seed=S`."""
  return ','.join([f'{k}={_value_text(v)}' for k, v in overrides.items()] + [f'seed={seed}'])


def point_name(overrides: dict) -> str:
  """A grid point's name: its run names less `,seed=S` ('(base)' for a grid of seeds alone)."""
  return run_name(overrides, 0).rpartition(',seed=')[0] or '(base)'


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


def plan(config, workdir: str, sweep_arguments, seeds: int, eval_sets=None) -> list[Run]:
  """Every run of the sweep, checked (each grid point's config validated) before any runs.

  `eval_sets`: {name: {field: value}} (see `eval_sets`); each run then carries, per set, its
  config with the set's fields (validated too) in `Run.evaluations`.
  """
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
  _check_eval_set_fields(config, eval_sets or {})
  runs = []
  points = itertools.product(*axes)
  for point in points:
    overrides = {field: value for part in point for field, value in part.items()}
    for offset in range(seeds):
      seed = config.seed + offset
      run_config = grid_config(config, overrides, seed, arguments)
      runs.append(
        Run(
          index=len(runs),
          overrides=overrides,
          seed=seed,
          workdir=os.path.join(workdir, run_name(overrides, seed)),
          config=run_config,
          evaluations={
            name: eval_set_config(run_config, name, fields, overrides)
            for name, fields in (eval_sets or {}).items()
          },
        )
      )
  names = [r.workdir for r in runs]
  if len(set(names)) != len(names):
    raise SweepError(
      'Two grid points get the same run directory name; make the swept values distinct.'
    )
  for run in runs[:1]:
    files = {}
    for name, eval_config in run.evaluations.items():
      other = files.setdefault(run_record.eval_results_name(eval_config), name)
      if other != name:
        raise SweepError(
          f'--eval_sets={other},{name}: both write {run_record.eval_results_name(eval_config)} (the file '
          'is named by data.name and data.eval_split); name one of them.'
        )
  return runs


def _check_eval_set_fields(config, eval_sets: dict) -> None:
  """Every field an evaluation set names exists, and none is the seed."""
  flat = run_record.flatten(config)
  for name, fields in eval_sets.items():
    for field in fields:
      if field not in flat:
        raise SweepError(f'--eval_sets={name}: config has no field {field!r}.')
      if field == 'seed':
        raise SweepError(f'--eval_sets={name}: an evaluation set cannot change the seed.')


def eval_set_config(run_config, name: str, fields: dict, overrides: dict | None = None):
  """A run's config with evaluation set `name`'s fields, validated; errors name the set."""
  where = f'--eval_sets={name}'
  config = copy.deepcopy(run_config)
  for field, value in fields.items():
    _set(config, field, value, where)
  try:
    validation.validate(config)
  except validation.ConfigError as e:
    point = f' at grid point {point_name(overrides)}' if overrides is not None else ''
    raise SweepError(f'{where}{point}: {e}') from e
  return config


def value_text(value) -> str:
  """A swept value as names and tables show it: tuples as `1-2-3`, anything else as str()."""
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
  return given == value or value_text(given) == value_text(value) or text == value_text(value)


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
  names = ', '.join(repr(point_name(g)) for g in groups)
  if not matches:
    raise BaselineError(f'{where}: names no grid point; the grid points are {names}.')
  if len(matches) > 1:
    raise BaselineError(
      f'{where}: matches {len(matches)} grid points; name more fields to pick one of {names}.'
    )
  return matches[0]


def _config_module(config_spec: str):
  """The module of a config file, from what --config was given ('FILE' or 'FILE:ARG')."""
  path, _, arg = config_spec.partition('.py:')
  path = path if path.endswith('.py') else f'{path}.py'
  spec = importlib.util.spec_from_file_location('_sweep_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module, path, arg or None


def default_sweep(config_spec: str) -> list[str] | None:
  """The --sweep arguments of a config file's `get_sweep(arg)` (None when it has none).

  `config_spec`: what --config was given, 'FILE' or 'FILE:ARG'. get_sweep returns
  {field: [values]}.
  """
  module, _, arg = _config_module(config_spec)
  if not hasattr(module, 'get_sweep'):
    return None
  return [f'{field}={values!r}' for field, values in module.get_sweep(arg).items()]


def eval_set_names(arguments) -> list[str]:
  """`--eval_sets` values (repeated, or comma-separated) -> the names, in order, once each."""
  names = [n.strip() for text in arguments or () for n in text.split(',') if n.strip()]
  return list(dict.fromkeys(names))


def eval_sets(config_spec: str, names) -> dict:
  """{name: {field: value}} of the named evaluation sets of a config file's
  `get_eval_sets(arg)`, which returns {name: {field: value}}; SweepError naming what is wrong."""
  names = eval_set_names(names)
  if not names:
    return {}
  module, path, arg = _config_module(config_spec)
  where = f'--eval_sets={",".join(names)}'
  if not hasattr(module, 'get_eval_sets'):
    raise SweepError(
      f'{where}: {path} defines no evaluation sets (a function get_eval_sets(arg) returning '
      "{name: {field: value}}, e.g. {'shifted': {'data.eval_split': 'shifted'}})."
    )
  defined = module.get_eval_sets(arg)
  if not isinstance(defined, dict) or not all(isinstance(v, dict) for v in defined.values()):
    raise SweepError(f'{path}: get_eval_sets must return {{name: {{field: value}}}}.')
  unknown = [n for n in names if n not in defined]
  if unknown:
    raise SweepError(
      f'--eval_sets={unknown[0]}: {path} has no such evaluation set; it defines '
      f'{", ".join(defined) or "none"}.'
    )
  return {name: dict(defined[name]) for name in names}
