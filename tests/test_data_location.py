"""Where a run writes: its workdir and the data folder, nothing else in the working directory."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_data_dir_is_the_home_folder_and_the_cwd_gets_only_the_workdir(tmp_path):
  """The configs' default `~/tensorflow_datasets` is expanded: no literal `./~` folder."""
  home, cwd = tmp_path / 'home', tmp_path / 'cwd'
  home.mkdir()
  cwd.mkdir()
  run = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, 'launch.py'),
      f'--config={os.path.join(ROOT, "configs", "synthetic.py")}:aaf,steps=2,batch=8',
      '--workdir=run',
      '--config.data.synthetic.image_size=32',
      '--config.data.synthetic.num_train=8',
      '--config.data.synthetic.num_validation=2',
      '--config.data.crop_size=32',
      '--config.data.eval_size=(32, 32)',
      '--config.model.base_width=8',
      '--config.model.stem_width=8',
      '--config.model.head_width=8',
    ],
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
