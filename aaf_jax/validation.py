"""One check of a whole config, run before anything is built (data, model, restore).

`validate(config)` checks that the config has exactly the fields of the contract (those of
`configs/common.py:base_config`, the model section those of its network) and that each value
has the expected type and range, then the rules that tie fields together. The first problem
raises a `ConfigError` naming the field, its value and what was expected. Imports no jax, flax
or optax, so launch.py and the sweep can check configs before starting anything heavy.
"""

import dataclasses
import numbers
from collections.abc import Callable, Mapping

from aaf_jax import errors, loss_kinds, presets

COMPUTE_DTYPES = ('float32', 'bfloat16')  # aaf_jax/builder.py maps them to jax dtypes
SYNTHETIC_LAYOUTS = ('shapes', 'multiscale')  # config.data.synthetic.layout (data/synthetic.py)
TABLE_MODES = tuple(
  loss_kinds.TABLE_MODES
)  # config.loss.tables (loss_kinds.py says how each learns)


class ConfigError(errors.UserError):
  """A config field whose value cannot work; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Field:
  """A leaf of the contract: `accepts(value)` and the text saying what is expected."""

  accepts: Callable[[object], bool]
  expected: str


def _is_int(v):
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def integer(low=None, high=None) -> Field:
  if high is None:
    text = 'an integer' if low is None else f'an integer >= {low}'
  else:
    text = f'an integer in [{low}, {high}]'
  return Field(
    lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high), text
  )


def number(low=None, high=None, *, low_open=False, high_open=False) -> Field:
  def accepts(v):
    if not _is_number(v) or v != v:  # v != v: NaN
      return False
    if low is not None and (v <= low if low_open else v < low):
      return False
    return high is None or (v < high if high_open else v <= high)

  if high is None:
    text = f'a number {">" if low_open else ">="} {low}'
  else:
    text = f'a number in {"(" if low_open else "["}{low}, {high}{")" if high_open else "]"}'
  return Field(accepts, text)


def pixels_or_fraction() -> Field:
  """An int >= 1 (pixels) or a float in (0, 1) (a fraction of each image's diagonal)."""
  return Field(
    lambda v: (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v < 1),
    "an integer >= 1 (pixels) or a float in (0, 1) (a fraction of each image's diagonal, e.g. "
    '0.02 as Cheng et al.)',
  )


def boolean() -> Field:
  return Field(lambda v: isinstance(v, bool), 'True or False')


def string(*, nonempty=False) -> Field:
  return Field(
    lambda v: isinstance(v, str) and (bool(v) or not nonempty),
    'a non-empty string' if nonempty else 'a string',
  )


def choice(options) -> Field:
  options = tuple(options)
  return Field(lambda v: v in options, f'one of {options}')


def sequence(item: Field, *, length=None, nonempty=False, distinct=False) -> Field:
  def accepts(v):
    if not isinstance(v, (tuple, list)) or not all(item.accepts(x) for x in v):
      return False
    if length is not None and len(v) != length:
      return False
    return (bool(v) or not nonempty) and (not distinct or len(set(v)) == len(v))

  size = f'{length} ' if length else ('a non-empty tuple of ' if nonempty else 'a tuple of ')
  text = f'{size}{"distinct " if distinct else ""}values, each {item.expected}'
  if length:
    text = f'a tuple of {text}'
  return Field(accepts, text)


# The contract's fields other than `model` (whose fields depend on the network, see below).
SCHEMA = {
  'seed': integer(0),
  'num_train_steps': integer(1),
  'batch_size': integer(1),
  'eval_batch_size': integer(1),
  'grad_accum_steps': integer(1),
  'compute_dtype': choice(COMPUTE_DTYPES),
  'init_checkpoint': string(),
  'optimizer': {
    'learning_rate': number(0, low_open=True),
    'poly_power': number(0),
    'momentum': number(0, 1, high_open=True),
    'weight_decay': number(0),
    'head_lr_mult': number(0, low_open=True),
  },
  'loss': {
    'kind': choice(loss_kinds.LOSS_KINDS),
    'sizes': sequence(integer(1), nonempty=True, distinct=True),
    'margin': number(0, low_open=True),
    'lambda_edge': number(0),
    'lambda_nonedge': number(0),
    'decay': boolean(),
    'implementation': choice(loss_kinds.IMPLEMENTATIONS),
    'tables': choice(TABLE_MODES),
  },
  'eval': {
    'window': integer(0),
    'stride': integer(0),
    'scales': sequence(number(0, low_open=True), nonempty=True),
    'flip': boolean(),
    'boundary_width': pixels_or_fraction(),
  },
  'data': {
    'name': string(nonempty=True),
    'data_dir': string(nonempty=True),
    'manual_dir': string(),
    'train_split': string(nonempty=True),
    'eval_split': string(nonempty=True),
    'crop_size': integer(1),
    'min_scale': number(0, low_open=True),
    'max_scale': number(0, low_open=True),
    'mirror': boolean(),
    'mean': sequence(number(0, 255), length=3),
    'eval_size': sequence(integer(1), length=2),
    'prefetch': integer(0),
    'num_threads': integer(0),
    'skip_bad_examples': boolean(),
    'synthetic': {
      'image_size': integer(32),
      'num_train': integer(1),
      'num_validation': integer(1),
      'seed': integer(0),
      'max_objects': integer(2),
      'noise_std': number(0, 100),
      'void_prob': number(0, 1),
      'thin_width': number(1, 8),
      'layout': choice(SYNTHETIC_LAYOUTS),
    },
  },
  'log_every_steps': integer(1),
  'eval_every_steps': integer(0),
  'checkpoint_every_steps': integer(1),
  'keep_checkpoints': integer(1),
  'num_summary_images': integer(0),
}

# Every network option, whichever network has it.
MODEL_OPTIONS = {
  'backbone': choice(presets.BACKBONES),
  'layout': choice(presets.LAYOUTS),
  'output_stride': choice((2, 4, 8, 16, 32)),
  'base_width': integer(1),
  'stem_width': integer(1),
  'stem': choice(presets.STEMS),
  'stem_pool': boolean(),
  'bn_momentum': number(0, 1, high_open=True),
  'bn_epsilon': number(0, low_open=True),
  'head_bn_momentum': number(0, 1, high_open=True),
  'head_bn_epsilon': number(0, low_open=True),
  'head_init': choice(presets.HEAD_INITS),
  'freeze_bn': boolean(),
  'dropout': number(0, 1, high_open=True),
  'aux_head': boolean(),
  'aux_width': integer(1),
  'dilated_conv': choice(presets.DILATED_CONV_FORMS),
  'head_width': integer(1),
  'bins': sequence(integer(1), nonempty=True, distinct=True),
  'aspp_rates': sequence(integer(1)),
  'pretrained': string(),
  'aux_weight': number(0),
}


def model_schema(name) -> dict:
  """The fields `config.model` must have for network `name`."""
  if name not in presets.NETWORK_OPTIONS:
    raise ConfigError(
      f'config.model.name={name!r} is unknown; expected one of {sorted(presets.NETWORK_OPTIONS)}.'
    )
  fields = [*presets.NETWORK_OPTIONS[name], *presets.TRAINER_FIELDS]
  return {'name': choice(presets.NETWORK_OPTIONS), **{f: MODEL_OPTIONS[f] for f in fields}}


def schema(config) -> dict:
  """The whole contract for this config (the model section follows `config.model.name`)."""
  model = config.get('model') if isinstance(config, Mapping) or hasattr(config, 'get') else None
  name = model.get('name') if model is not None and hasattr(model, 'get') else None
  return {**SCHEMA, 'model': model_schema(name)}


def _items(node) -> dict:
  return dict(node.items()) if hasattr(node, 'items') else None


def _check_node(node, spec: dict, path: str) -> None:
  items = _items(node)
  if items is None:
    raise ConfigError(f'config{path}={node!r}: expected a section with fields {sorted(spec)}.')
  missing = sorted(set(spec) - set(items))
  unknown = sorted(set(items) - set(spec))
  if missing or unknown:
    raise ConfigError(
      f'config{path or ""} does not match the contract of configs/common.py: '
      + '; '.join(
        [f'missing field(s) {[f"config{path}.{k}" for k in missing]}'] * bool(missing)
        + [f'unknown field(s) {[f"config{path}.{k}" for k in unknown]}'] * bool(unknown)
      )
      + '. Set-up configs override base fields; they do not add or remove them.'
    )
  for key, rule in spec.items():
    where = f'{path}.{key}'
    if isinstance(rule, dict):
      _check_node(items[key], rule, where)
    elif not rule.accepts(items[key]):
      raise ConfigError(f'config{where}={items[key]!r}: expected {rule.expected}.')


def _check_relations(config) -> None:
  """Rules between fields (each field's own range is already checked)."""

  def fail(message):
    raise ConfigError(message)

  kind = loss_kinds.get(config.loss.kind)
  sizes = tuple(config.loss.sizes)
  if kind.max_sizes is not None and len(sizes) > kind.max_sizes:
    fail(
      f'config.loss.sizes={sizes}: loss kind {kind.name!r} takes at most {kind.max_sizes} '
      "size(s) (use kind 'aaf' to learn among several)."
    )
  if not kind.learns_tables and config.loss.tables != loss_kinds.DEFAULT_TABLES:
    fail(
      f'config.loss.tables={config.loss.tables!r}: loss kind {kind.name!r} has no field-size '
      f"tables; expected {loss_kinds.DEFAULT_TABLES!r} (the default) or loss kind 'aaf'."
    )
  if config.batch_size % config.grad_accum_steps:
    fail(
      f'config.batch_size={config.batch_size} must be a multiple of '
      f'config.grad_accum_steps={config.grad_accum_steps}.'
    )
  if config.data.min_scale > config.data.max_scale:
    fail(
      f'config.data.min_scale={config.data.min_scale} > config.data.max_scale='
      f'{config.data.max_scale}: expected min_scale <= max_scale.'
    )
  window = config.eval.window
  check_window_stride(window, config.eval.stride)
  model = config.model
  reachable = [(4 if model.stem_pool else 2) * 2**k for k in range(4)]
  if model.output_stride not in reachable:
    fail(
      f'config.model.output_stride={model.output_stride}: with config.model.stem_pool='
      f'{model.stem_pool} expected one of {reachable}.'
    )
  for field, size in (('data.crop_size', config.data.crop_size), ('eval.window', window)):
    if size and size < model.output_stride:
      fail(
        f'config.{field}={size}: too small for config.model.output_stride='
        f'{model.output_stride}; expected >= {model.output_stride}.'
      )
  if model.name == 'deeplabv2' and not model.aspp_rates:
    fail('config.model.aspp_rates=(): deeplabv2 needs at least one rate.')
  if config.init_checkpoint and model.pretrained:
    fail(
      f'config.init_checkpoint={config.init_checkpoint!r} and config.model.pretrained='
      f"{model.pretrained!r}: set at most one (the other to '')."
    )


def check_window_stride(window, stride) -> None:
  """The sliding-window rule (evaluate.py places the windows): with a window, the stride is an
  integer in 1..window, so windows overlap or touch and cover every pixel."""
  if window and not (isinstance(stride, int) and 0 < stride <= window):
    raise ConfigError(
      f'config.eval.stride={stride!r}: with config.eval.window={window} expected 1..{window} '
      '(an integer).'
    )


def validate(config) -> None:
  """ConfigError naming the first field that is missing, unknown, mistyped or out of range."""
  _check_node(config, schema(config), '')
  _check_relations(config)
