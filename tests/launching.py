"""Running launch.py in a subprocess on the tiny config: the flags, the command, the devices."""

import json
import os
import sys

from tiny import BATCH, TINY_FLAGS, config_argument

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ['ROOT', 'TINY_FLAGS', 'launch_command', 'synthetic_config', 'xla_flags']


def synthetic_config(data_dir, steps: int, loss: str = 'aaf', batch: int = BATCH) -> str:
  """The `--config=` flag of configs/synthetic.py; add TINY_FLAGS for the tiny set-up."""
  config_file = os.path.join(ROOT, 'configs', 'synthetic.py')
  return f'--config={config_file}:{config_argument(data_dir, loss, steps, batch)}'


def launch_command(*args) -> list[str]:
  return [sys.executable, os.path.join(ROOT, 'launch.py'), *args]


# A multi-process job in the tests compiles its own programs instead of reading the session's
# persistent compilation cache (tests/conftest.py): with jax 0.12.1, two CPU processes that
# loaded programs with collectives from that cache waited on each other forever (the second run
# of a two-process sweep; `--mode=eval` after a two-process training). With the cache off the
# same tests pass; jax 0.10.2 never hung. Each test's multi-process jobs set this.
NO_COMPILATION_CACHE = {'JAX_ENABLE_COMPILATION_CACHE': 'false'}


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for `devices` simulated CPU devices, keeping the flags the suite runs with."""
  inherited = os.environ.get('XLA_FLAGS', '')
  return f'{inherited} --xla_force_host_platform_device_count={devices}'.strip()


def sweep_summary(workdir) -> dict:
  """A sweep's summary.json without the run folders, which differ between two sweeps."""
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  for row in summary['runs']:
    assert row.pop('workdir').startswith(str(workdir)), row
  return summary
