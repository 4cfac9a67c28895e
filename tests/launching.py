"""Running launch.py in a subprocess on the tiny config: the flags, the command, the devices."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `--config.FIELD=` flags that shrink configs/synthetic.py to the tiny set-up of tests/tiny.py.
TINY_FLAGS = (
  '--config.data.synthetic.image_size=32',
  '--config.data.synthetic.num_train=24',
  '--config.data.synthetic.num_validation=10',
  '--config.data.crop_size=32',
  '--config.data.eval_size=(32, 32)',
  '--config.model.base_width=8',
  '--config.model.stem_width=8',
  '--config.model.head_width=8',
)


def synthetic_config(data_dir, steps: int, loss: str = 'aaf', batch: int = 8) -> str:
  return (
    f'--config={os.path.join(ROOT, "configs", "synthetic.py")}:{loss},steps={steps},'
    f'batch={batch},data_dir={data_dir}'
  )


def launch_command(*args) -> list[str]:
  return [sys.executable, os.path.join(ROOT, 'launch.py'), *args]


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for `devices` simulated CPU devices, keeping the flags the suite runs with."""
  inherited = os.environ.get('XLA_FLAGS', '')
  return f'{inherited} --xla_force_host_platform_device_count={devices}'.strip()
