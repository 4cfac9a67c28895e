"""Where a run writes: its workdir and the data folder, nothing else in the working directory."""

import os
import subprocess

import pytest
from launching import ROOT, launch_command, synthetic_config
from tiny import tiny_flags


@pytest.mark.slow
def test_default_data_dir_is_the_home_folder_and_the_cwd_gets_only_the_workdir(tmp_path):
  """The configs' default `~/tensorflow_datasets` is expanded: no literal `./~` folder."""
  home, cwd = tmp_path / 'home', tmp_path / 'cwd'
  home.mkdir()
  cwd.mkdir()
  run = subprocess.run(
    launch_command(
      synthetic_config(None, steps=2),  # no data_dir: the config's default
      '--workdir=run',
      *tiny_flags(**{'data.synthetic.num_train': 8, 'data.synthetic.num_validation': 2}),
    ),
    cwd=cwd,
    env={**os.environ, 'HOME': str(home), 'PYTHONPATH': ROOT},
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert run.returncode == 0, run.stdout + run.stderr
  assert sorted(os.listdir(cwd)) == ['run']
  assert (cwd / 'run' / 'results.json').exists()
  assert any('synthetic' in name for name in os.listdir(home / 'tensorflow_datasets'))
