"""The config contract: one complete base, one validation before anything is built."""

import os
import subprocess
import sys

import pytest

from aaf_jax import loss_kinds, presets, validation
from configs import common, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _with(config, **overrides):
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    with node.ignore_type():
      node[leaf] = value
  return config


def test_every_set_up_config_passes():
  from configs import cityscapes, voc

  for config in (
    synthetic.get_config(),
    synthetic.get_config('affinity'),
    synthetic.get_config('ce'),
    voc.get_config('stage1'),
    voc.get_config('stage2,init=/runs/voc1'),
    cityscapes.get_config('aaf'),
  ):
    validation.validate(config)


def test_set_up_configs_only_override_the_base():
  from configs import cityscapes, voc

  base = common.base_config()
  for config in (synthetic.get_config(), voc.get_config('stage1'), cityscapes.get_config()):
    assert set(_paths(config.to_dict())) == set(_paths(base.to_dict()))


def _paths(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _paths(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


@pytest.mark.parametrize(
  'field,value,expected',
  [
    ('loss.margin', -1.0, r'config.loss.margin=-1.0: expected a number > 0'),
    (
      'optimizer.learning_rate',
      -0.1,
      r'config.optimizer.learning_rate=-0.1: expected a number > 0',
    ),
    ('loss.sizes', (0,), r'config.loss.sizes=\(0,\): expected .*integer >= 1'),
    ('loss.sizes', (), r'config.loss.sizes=\(\): expected a non-empty'),
    ('loss.lambda_edge', -1.0, r'config.loss.lambda_edge=-1.0'),
    ('loss.kind', 'crf', r"config.loss.kind='crf': expected one of \('ce', 'affinity', 'aaf'\)"),
    (
      'loss.implementation',
      'triton',
      r"config.loss.implementation='triton': expected one of \('xla', 'pallas'\)",
    ),
    (
      'loss.tables',
      'ascent',
      r"config.loss.tables='ascent': expected one of \('adversarial', 'descent', 'uniform'\)",
    ),
    ('data.eval_size', (72,), r'config.data.eval_size=\(72,\): expected a tuple of 2'),
    ('data.eval_size', 'big', r"config.data.eval_size='big'"),
    ('data.mean', (1.0, 2.0), r'config.data.mean'),
    ('data.synthetic.void_prob', 1.5, r'config.data.synthetic.void_prob=1.5'),
    (
      'data.synthetic.layout',
      'wide',
      r"config.data.synthetic.layout='wide': expected one of \('shapes', 'multiscale'\)",
    ),
    ('batch_size', 0, r'config.batch_size=0: expected an integer >= 1'),
    ('num_train_steps', 2.5, r'config.num_train_steps=2.5'),
    ('seed', True, r'config.seed=True'),
    ('compute_dtype', 'float16', r"config.compute_dtype='float16'"),
    ('eval.scales', (1.0, -0.5), r'config.eval.scales'),
    ('eval.flip', 'yes', r"config.eval.flip='yes': expected True or False"),
    (
      'eval.boundary_width',
      1.5,
      r'config.eval.boundary_width=1.5: expected an integer >= 1 \(pixels\) or a float in \(0, 1\)',
    ),
    ('eval.boundary_width', 0, r'config.eval.boundary_width=0: expected an integer >= 1'),
    ('eval.boundary_width', 0.0, r'config.eval.boundary_width=0.0: expected'),
    ('eval.boundary_width', 'wide', r"config.eval.boundary_width='wide': expected"),
    ('model.backbone', 'resnet9', r"config.model.backbone='resnet9'"),
    ('model.dropout', 1.0, r'config.model.dropout=1.0: expected a number in \[0, 1\)'),
    ('model.bins', (1, 1), r'config.model.bins=\(1, 1\)'),
    ('model.name', 'unet', r"config.model.name='unet' is unknown"),
    ('optimizer.momentum', 1.0, r'config.optimizer.momentum=1.0'),
    ('eval_every_steps', -1, r'config.eval_every_steps=-1'),
  ],
)
def test_each_field_is_checked(field, value, expected):
  with pytest.raises(validation.ConfigError, match=expected):
    validation.validate(_with(synthetic.get_config(), **{field: value}))


@pytest.mark.parametrize(
  'overrides,expected',
  [
    ({'loss.kind': 'affinity', 'loss.sizes': (1, 2)}, r"kind 'affinity' takes at most 1"),
    # Only 'aaf' has tables: another mode on ce or affinity would record a run that is not one.
    (
      {'loss.kind': 'ce', 'loss.tables': 'descent'},
      r"config.loss.tables='descent': loss kind 'ce'",
    ),
    (
      {'loss.kind': 'affinity', 'loss.sizes': (1,), 'loss.tables': 'uniform'},
      r"config.loss.tables='uniform': loss kind 'affinity' has no field-size tables",
    ),
    ({'batch_size': 8, 'grad_accum_steps': 3}, r'config.batch_size=8 must be a multiple'),
    ({'data.min_scale': 2.0, 'data.max_scale': 1.0}, r'min_scale <= max_scale'),
    ({'eval.window': 32, 'eval.stride': 0}, r'config.eval.stride=0: .*expected 1..32'),
    ({'model.output_stride': 4, 'data.crop_size': 2}, r'config.data.crop_size=2: too small'),
    ({'model.output_stride': 32}, r'config.model.output_stride=32: with .*stem_pool=False'),
    ({'init_checkpoint': '/a', 'model.pretrained': '/b'}, r'set at most one'),
  ],
)
def test_relations_between_fields(overrides, expected):
  with pytest.raises(validation.ConfigError, match=expected):
    validation.validate(_with(synthetic.get_config(), **overrides))


def test_missing_and_unknown_fields_are_named():
  config = synthetic.get_config().to_dict()
  del config['loss']['decay']
  config['loss']['decya'] = True
  with pytest.raises(validation.ConfigError, match=r'missing .*config.loss.decay.*unknown.*decya'):
    validation.validate(common.ml_collections.ConfigDict(config))


def test_model_section_follows_the_network():
  config = synthetic.get_config().to_dict()
  config['model'] = presets.preset('deeplabv3_resnet101')
  validation.validate(common.ml_collections.ConfigDict(config))
  config['model']['bins'] = (1, 2)
  with pytest.raises(validation.ConfigError, match=r"unknown field\(s\) \['config.model.bins'\]"):
    validation.validate(common.ml_collections.ConfigDict(config))


def test_presets_match_the_network_classes():
  """The jax-free defaults in aaf_jax.presets are the networks' own."""
  from aaf_jax import models
  from aaf_jax.models import resnet

  for name, options in presets.NETWORK_OPTIONS.items():
    assert options == models.option_defaults(name), name
    assert set(validation.model_schema(name)) == {'name', *options, *presets.TRAINER_FIELDS}
  assert presets.BACKBONES == tuple(resnet.BACKBONES)


def test_synthetic_layouts_are_spelt_as_the_dataset_spells_them():
  from aaf_jax.data import synthetic as synthetic_data

  field = validation.SCHEMA['data']['synthetic']['layout']
  assert [v for v in ('shapes', 'multiscale', 'wide') if field.accepts(v)] == list(
    synthetic_data.LAYOUTS
  )


def test_loss_kinds_are_defined_once():
  assert loss_kinds.LOSS_KINDS == ('ce', 'affinity', 'aaf')
  for name in loss_kinds.LOSS_KINDS:
    config = synthetic.get_config(name)
    assert tuple(config.loss.sizes) == loss_kinds.get(name).default_sizes
  assert [k for k in loss_kinds.LOSS_KINDS if loss_kinds.get(k).learns_tables] == ['aaf']


@pytest.mark.slow
def test_loading_configs_imports_no_jax():
  code = (
    'import sys\n'
    'from configs import synthetic, voc, cityscapes\n'
    'from aaf_jax import validation\n'
    'validation.validate(synthetic.get_config())\n'
    "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'optax', 'clu', "
    "'tensorflow', 'orbax'})\n"
    'assert not heavy, heavy\n'
  )
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
  'override, message',
  [
    ('--config.loss.margin=-2.0', 'config.loss.margin=-2.0: expected a number > 0'),
    # A float arrives as a float (an int-typed field would have refused any float before
    # validation) and is refused by name.
    (
      '--config.eval.boundary_width=1.5',
      'config.eval.boundary_width=1.5: expected an integer >= 1 (pixels) or a float',
    ),
  ],
)
def test_launch_rejects_a_bad_value_before_building_anything(tmp_path, override, message):
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, 'launch.py'),
      f'--config={os.path.join(ROOT, "configs", "synthetic.py")}',
      f'--workdir={tmp_path / "run"}',
      f'--config.data.data_dir={tmp_path / "tfds"}',
      override,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode != 0
  assert message in out.stderr
  assert not (tmp_path / 'tfds').exists() and not (tmp_path / 'run').exists()


def test_boundary_width_takes_pixels_or_a_fraction_of_the_diagonal():
  config = synthetic.get_config()  # locked, as launch.py's overrides find it
  assert config.eval.boundary_width == 2
  config.eval.boundary_width = 0.02  # the field takes a float over the int default
  validation.validate(config)
  config.eval.boundary_width = 5
  validation.validate(config)


def test_the_loss_implementation_may_change_on_resume():
  from aaf_jax import run_record

  assert (
    run_record.differences({'loss.implementation': 'xla'}, {'loss.implementation': 'pallas'}) == []
  )
  assert run_record.differences({}, {'loss.implementation': 'xla'}) == []  # older checkpoints
  assert run_record.differences({'loss.margin': 3.0}, {'loss.margin': 2.0})  # others still count


def test_every_table_mode_is_accepted_for_aaf_and_the_default_for_every_kind():
  assert synthetic.get_config().loss.tables == 'adversarial'
  for mode in validation.TABLE_MODES:
    validation.validate(_with(synthetic.get_config('aaf'), **{'loss.tables': mode}))
  for kind in ('ce', 'affinity'):
    validation.validate(synthetic.get_config(kind))  # the default is fine for every kind


def test_records_written_before_loss_tables_match_the_default_mode():
  """Workdirs, checkpoints and results of the code before config.loss.tables have no such
  field: they are runs of 'adversarial' (the tables always ascended), so they resume, count as
  finished in a sweep and evaluate; against another mode they are refused by name."""
  from aaf_jax import run_record, same_run

  config = synthetic.get_config('aaf')
  old = config.to_dict()
  del old['loss']['tables']
  old_flat = run_record.flatten(old)
  assert 'loss.tables' not in old_flat
  # The fingerprint (results.json, checkpoint meta, a sweep's finished check) is unchanged...
  assert run_record.fingerprint(old) == run_record.fingerprint(config)
  # ...for the default mode only.
  for mode in ('descent', 'uniform'):
    other = _with(config, **{'loss.tables': mode})
    assert run_record.fingerprint(other) != run_record.fingerprint(config)
    assert run_record.differences(old_flat, run_record.flatten(other)) == [
      f"config.loss.tables: checkpoint 'adversarial', config {mode!r}"
    ]
  assert run_record.differences(old_flat, run_record.flatten(config)) == []
  meta = {'config': old_flat, 'fingerprint': run_record.fingerprint(old), 'num_classes': 7}
  same_run.check_meta(meta, config, 7, 'old workdir')  # resuming
  same_run.check_meta(meta, config, 7, 'old workdir', network_only=True)  # evaluating
  with pytest.raises(same_run.ConfigMismatchError, match=r"config.loss.tables: checkpoint 'adv"):
    same_run.check_meta(meta, _with(config, **{'loss.tables': 'descent'}), 7, 'old workdir')
