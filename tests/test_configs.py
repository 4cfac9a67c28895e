"""Config arguments and overrides: typos are errors, not silently ignored."""

import json
import os
import subprocess
import sys

import pytest

from configs import common, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  'arg,kind', [(None, 'aaf'), ('ce', 'ce'), ('affinity', 'affinity'), ('aaf,steps=7', 'aaf')]
)
def test_loss_kind_arguments(arg, kind):
  config = synthetic.get_config(arg)
  assert config.loss.kind == kind
  assert config.loss.sizes == ((1,) if kind == 'affinity' else (1, 2, 3))


def test_argument_types_and_unknown_arguments():
  assert synthetic.get_config('steps=7,batch=4').num_train_steps == 7
  with pytest.raises(ValueError, match=r"Unknown config argument 'stpes'"):
    synthetic.get_config('stpes=7')
  with pytest.raises(ValueError, match=r"steps='many': expected a int"):
    synthetic.get_config('steps=many')
  with pytest.raises(ValueError, match=r"config.loss.kind='crf' is unknown"):
    common.base_config('crf')


def test_multiscale_argument_sets_the_comparison_set_and_its_ablation(tmp_path):
  from aaf_jax import sweep

  main, multi = synthetic.get_config(), synthetic.get_config('multiscale')
  assert main.data.synthetic.layout == 'shapes'
  assert main.num_train_steps == synthetic.MAIN_STEPS == 9000
  assert main.data.synthetic.num_validation == 1000
  assert multi.data.synthetic.layout == 'multiscale'
  assert multi.num_train_steps == synthetic.MULTISCALE_STEPS
  assert multi.data.synthetic.num_validation == 1000
  assert synthetic.get_config('multiscale,steps=7').num_train_steps == 7
  assert synthetic.get_sweep() == {'loss.kind': ['ce', 'affinity', 'aaf']}
  grid = synthetic.get_sweep('multiscale')
  runs = sweep.plan(multi, str(tmp_path), [f'{k}={v!r}' for k, v in grid.items()], 1)
  assert [(r.config.loss.kind, r.config.loss.sizes) for r in runs] == [
    ('ce', (1, 2, 3)),
    ('affinity', (1,)),
    ('affinity', (2,)),
    ('affinity', (3,)),
    ('aaf', (1, 2, 3)),
  ]
  assert all(r.config.data.synthetic.layout == 'multiscale' for r in runs)


def test_config_is_locked():
  config = synthetic.get_config()
  with pytest.raises(AttributeError):
    config.num_train_stpes = 3
  with pytest.raises(AttributeError):
    config.loss.margni = 2.0


@pytest.mark.slow
def test_launch_rejects_an_unknown_override(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, 'launch.py'),
      f'--config={os.path.join(ROOT, "configs", "synthetic.py")}',
      f'--workdir={tmp_path}',
      '--config.loss.margni=2.0',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode != 0
  assert 'margni' in out.stderr
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('loss', ['ce', 'affinity', 'aaf'])
def test_paper_configs(loss):
  from configs import cityscapes, voc

  stage1 = voc.get_config(f'stage1,{loss}')
  assert (stage1.data.train_split, stage1.optimizer.learning_rate) == ('train_aug', 1e-3)
  assert stage1.data.crop_size == 336 and stage1.batch_size == 8
  assert stage1.num_train_steps == 30_000 and stage1.optimizer.poly_power == 0.9
  assert stage1.optimizer.weight_decay == 5e-4 and stage1.optimizer.head_lr_mult == 10.0
  assert stage1.model.backbone == 'resnet101' and stage1.model.output_stride == 8
  assert stage1.model.pretrained and not stage1.init_checkpoint
  stage2 = voc.get_config(f'stage2,{loss},init=/runs/voc1')
  assert (stage2.data.train_split, stage2.optimizer.learning_rate) == ('train', 1e-4)
  assert stage2.init_checkpoint == '/runs/voc1' and not stage2.model.pretrained
  city = cityscapes.get_config(loss)
  assert (city.data.crop_size, city.num_train_steps, city.data.name) == (720, 90_000, 'cityscapes')
  for config in (stage1, stage2, city):
    assert config.loss.kind == loss
    assert (config.data.min_scale, config.data.max_scale) == (0.5, 2.0)
    assert tuple(config.data.mean) == (122.675, 116.669, 104.008)


def test_voc_stage_arguments_are_checked():
  from configs import voc

  with pytest.raises(ValueError, match='exactly one of stage1, stage2'):
    voc.get_config('aaf')
  with pytest.raises(ValueError, match='stage2 needs init='):
    voc.get_config('stage2')


def test_missing_pretrained_file_fails_at_start_up(tmp_path):
  from aaf_jax import train
  from configs import voc

  config = voc.get_config(f'stage1,pretrained={tmp_path}/missing.msgpack')
  with pytest.raises(FileNotFoundError, match=r'config.model.pretrained=.*missing.msgpack'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


@pytest.mark.parametrize(
  'module,base,name',
  [
    ('synthetic', 'multiscale', 'shifted'),
    ('synthetic', 'ce', 'shifted'),
    ('cityscapes', 'aaf', 'gta5'),
  ],
)
def test_an_eval_set_argument_changes_exactly_its_fields(module, base, name):
  """`configs/FILE.py:BASE,NAME` is BASE's config with get_eval_sets()[NAME]'s fields set, and
  nothing else: the extra evaluation of a trained run (--mode=eval, or a sweep's --eval_sets)."""
  import importlib

  from aaf_jax import run_record

  config_file = importlib.import_module(f'configs.{module}')
  overrides = config_file.get_eval_sets()[name]
  trained = run_record.flatten(config_file.get_config(base))
  evaluated = run_record.flatten(config_file.get_config(f'{base},{name}'))
  changed = {k: evaluated[k] for k in evaluated if evaluated[k] != trained[k]}
  assert changed == {k: json.loads(json.dumps(v)) for k, v in overrides.items()}
  assert set(evaluated) == set(trained)


def test_the_eval_sets_are_the_shifted_split_and_gta5():
  from configs import cityscapes

  assert synthetic.get_eval_sets() == {'shifted': {'data.eval_split': 'shifted'}}
  assert synthetic.get_eval_sets('multiscale') == synthetic.get_eval_sets()
  # The values the `gta5` argument set before get_eval_sets existed.
  assert cityscapes.get_eval_sets() == {
    'gta5': {'data.name': 'gta5', 'data.eval_split': 'full', 'data.eval_size': (1052, 1914)}
  }


def test_the_table_modes_sweep_like_any_field(tmp_path):
  from aaf_jax import sweep

  base = synthetic.get_config('multiscale')
  runs = sweep.plan(base, str(tmp_path), ["loss.tables=['descent', 'uniform']"], 2)
  assert [(r.config.loss.tables, r.seed) for r in runs] == [
    ('descent', 0),
    ('descent', 1),
    ('uniform', 0),
    ('uniform', 1),
  ]
  assert os.path.basename(runs[0].workdir) == 'loss.tables=descent,seed=0'
  assert all(r.config.loss.kind == 'aaf' for r in runs)
  with pytest.raises(sweep.SweepError, match=r"config.loss.tables='descent': loss kind 'ce'"):
    sweep.plan(synthetic.get_config('ce'), str(tmp_path), ["loss.tables=['descent']"], 1)
