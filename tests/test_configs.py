"""Config arguments and overrides: typos are errors, not silently ignored."""

import subprocess
import sys
import os

import pytest

from configs import common, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('arg,kind', [(None, 'aaf'), ('ce', 'ce'), ('affinity', 'affinity'),
                                      ('aaf,steps=7', 'aaf')])
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


def test_config_is_locked():
  config = synthetic.get_config()
  with pytest.raises(AttributeError):
    config.num_train_stpes = 3
  with pytest.raises(AttributeError):
    config.loss.margni = 2.0


def test_launch_rejects_an_unknown_override(tmp_path):
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'launch.py'),
       f'--config={os.path.join(ROOT, "configs", "synthetic.py")}',
       f'--workdir={tmp_path}', '--config.loss.margni=2.0'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert 'margni' in out.stderr
  assert not (tmp_path / 'checkpoints').exists()
