"""launch.py as a user meets it: a mistake gives one line and status 2, a bug its traceback."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 'synthetic.py')

pytestmark = pytest.mark.slow  # every test starts launch.py


def _launch(*args, env=None, code=None):
  command = [sys.executable, '-c', code] if code else [sys.executable, 'launch.py']
  return subprocess.run(
    [*command, *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'AAF_VERBOSE': '', **(env or {})},
  )


def _error_line(result) -> str:
  """The run's single stderr line starting with 'error:', checked to be the last one."""
  assert result.returncode == 2, result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  lines = result.stderr.strip().splitlines()
  errors = [line for line in lines if line.startswith('error:')]
  assert errors == [lines[-1]], result.stderr
  return errors[0]


@pytest.mark.parametrize(
  'args, expected',
  [
    (
      [f'--config={CONFIG}', '--config.loss.marginn=2'],
      "--config.loss.marginn: the config has no field 'marginn'; did you mean 'margin'?",
    ),
    ([f'--config={CONFIG}:stepz=3'], "Unknown config argument 'stepz'"),
    ([f'--config={CONFIG}', '--config.loss.margin=abc'], '--config.loss.margin=abc'),
    (['--config=configs/nope.py'], '--config=configs/nope.py: cannot load it: [Errno 2] No such'),
    ([f'--config={CONFIG}', '--mode=fit'], '--mode'),
    ([f'--config={CONFIG}', 'stray'], "unexpected arguments ['stray']"),
  ],
)
def test_a_flag_mistake_is_one_line_and_status_2(tmp_path, args, expected):
  line = _error_line(_launch(*args, f'--workdir={tmp_path}'))
  assert expected in line


@pytest.mark.parametrize(
  'args, expected',
  [
    (['--config.loss.margin=-1'], 'error: config.loss.margin=-1.0: expected a number > 0.'),
    (
      ['--mode=sweep', '--sweep=loss.margin=[1.0,-2.0]'],
      "error: --sweep='loss.margin=[1.0,-2.0]': config.loss.margin=-2.0: expected a number > 0.",
    ),
  ],
)
def test_a_config_mistake_is_the_only_line_on_stderr(tmp_path, args, expected):
  """The config is logged after it is checked, so its ~96 lines never come before the error."""
  result = _launch(f'--config={CONFIG}', *args, f'--workdir={tmp_path / "run"}')
  assert _error_line(result) == expected
  assert result.stderr.strip().splitlines() == [expected]
  assert not (tmp_path / 'run').exists()


def test_a_missing_workdir_flag_is_named():
  assert '--workdir' in _error_line(_launch(f'--config={CONFIG}'))


def test_a_missing_file_named_by_the_config_is_one_line(tmp_path):
  missing = tmp_path / 'nowhere.msgpack'
  line = _error_line(
    _launch(f'--config={CONFIG}', f'--config.model.pretrained={missing}', f'--workdir={tmp_path}')
  )
  assert f"config.model.pretrained='{missing}': no such file" in line


@pytest.mark.parametrize('how', [['--verbose'], []])
def test_verbose_shows_the_traceback(tmp_path, how):
  env = {} if how else {'AAF_VERBOSE': '1'}
  result = _launch(
    f'--config={CONFIG}', '--config.loss.marginn=2', *how, f'--workdir={tmp_path}', env=env
  )
  assert result.returncode == 2
  assert 'Traceback' in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith('error: --config.loss.marginn')


def test_a_programming_error_keeps_its_traceback(tmp_path):
  """Only user errors are shortened: a bug anywhere else still shows where it happened."""
  code = (
    'import sys; sys.argv[0] = "launch.py"; import launch; from aaf_jax import train\n'
    'def broken(config, workdir): raise KeyError("a bug")\n'
    'train.train_and_evaluate = broken\n'
    'from absl import app; app.run(launch.main, flags_parser=launch._parse_flags)\n'
  )
  result = _launch(f'--config={CONFIG}', f'--workdir={tmp_path}', code=code)
  assert result.returncode not in (0, 2), result.stderr
  assert 'Traceback' in result.stderr and "KeyError: 'a bug'" in result.stderr
