import fcntl
import os
import shutil
import sys
import tempfile

import pytest

# Tests import helpers that live beside them (the float64 references, tiny configs) and the
# configs package at the repository root, also in pytest-xdist workers.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))

# XLA's CPU backend at optimisation level 0: the suite's programs are tiny and compiled once
# each, so LLVM's optimisations cost far more than they save (the suite ran about twice as fast;
# BENCHMARKS.md). Numerics are the same; benchmarks and real runs keep the default level.
_XLA_TEST_FLAGS = '--xla_backend_optimization_level=0'

# One JAX persistent compilation cache for the whole session: the xdist workers and every
# launch.py a test starts inherit these variables, so the tiny configs' train and eval steps,
# compiled again by test after test and process after process, are compiled once. It lives
# only as long as the session (a fresh folder, removed at the end), so no test depends on it.
_CACHE_VARIABLES = {
  'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
  'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
}


def pytest_configure(config):
  if hasattr(config, 'workerinput'):
    return  # an xdist worker: it inherited the controller's environment
  if _XLA_TEST_FLAGS not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {_XLA_TEST_FLAGS}'.strip()
  if 'JAX_COMPILATION_CACHE_DIR' in os.environ:
    return  # a cache set by the user
  folder = tempfile.mkdtemp(prefix='aaf-jax-test-compile-cache-')
  config._aaf_compile_cache = folder
  os.environ.update(_CACHE_VARIABLES, JAX_COMPILATION_CACHE_DIR=folder)


def pytest_collection_modifyitems(items):
  """The Pallas kernels' cases (`implementation='pallas'`) run in the Pallas interpreter, which
  compiles slowly on the CPU: they go to the slow tier, their XLA twins stay in the fast one."""
  for item in items:
    callspec = getattr(item, 'callspec', None)
    if callspec is not None and callspec.params.get('implementation') == 'pallas':
      item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
  folder = getattr(config, '_aaf_compile_cache', None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope='session')
def tiny_data_dir(tmp_path_factory) -> str:
  """The TFDS folder of tests/tiny.py's synthetic set, prepared once; tests only read it (a test
  that damages data damages a copy).

  pytest-xdist runs a session fixture once in every worker: the workers share one folder beside
  their own temporary folders and take turns under a file lock, so the first prepares the set and
  the others find it prepared.
  """
  from tiny import tiny_config

  from aaf_jax.data import pipeline

  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
  folder = shared / 'tiny-tfds'
  with open(shared / 'tiny-tfds.lock', 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      pipeline.dataset_info(tiny_config(str(folder)).data)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return str(folder)
