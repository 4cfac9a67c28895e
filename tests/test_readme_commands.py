"""Every command the README, CONTRIBUTING.md and docs/ show runs as written (or a fast variant).

launch.py commands run with `--only_check_args` (flags and config, overrides included, are
parsed and checked; nothing trains: the tiny end-to-end tests do that); other scripts and
modules run with `--help`, which imports everything they import. They run as from a fresh
clone: `aaf_jax` importable (pip install -e . puts it on the path), nothing else added.
Not run here: the set-up commands (CI runs them verbatim, test_readme.py keeps them identical),
cluster commands (`sbatch`, `mpirun`, `gcloud`: tests/test_engines.py runs the Slurm and Open MPI
paths), `bash benchmarks/gpu_suite.sh --cpu-smoke` (CI runs it) and BENCHMARKS.md's commands
(records of what was measured, with the flags of their day). Links: tests/test_docs.py.
"""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [
  os.path.join(ROOT, 'README.md'),
  os.path.join(ROOT, 'CONTRIBUTING.md'),
  *sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md'))),
]
# `python launch.py ...`, `python -m package.module ...`, `python path/script.py ...`, but not
# the set-up commands' `.venv/bin/python` (CI runs those verbatim, see test_readme.py).
_COMMAND = re.compile(r'(?<![/\w.])python3? ((?:-m [\w.]+)|[\w/.]+\.py)((?:[^`\n\\#]|\\\n)*)')


def documented_commands() -> list[tuple[str, str]]:
  """(script or `-m module`, its arguments): launch.py's each, other targets once."""
  found = set()
  for path in DOCS:
    for match in _COMMAND.finditer(open(path).read()):
      target, args = match.group(1), ' '.join(match.group(2).replace('\\\n', ' ').split())
      if target != '-m venv':  # the set-up commands: test_readme.py
        found.add((target, args if target == 'launch.py' else ''))
  return sorted(found)


def test_the_readme_documents_commands():
  targets = {target for target, _ in documented_commands()}
  assert {'launch.py', '-m aaf_jax.weights', '-m aaf_jax.data.build'} <= targets, targets


@pytest.fixture(scope='module')
def fresh_clone_path(tmp_path_factory):
  """A PYTHONPATH holding only the installed package, as `pip install -e .` leaves it."""
  site = tmp_path_factory.mktemp('site')
  os.symlink(os.path.join(ROOT, 'aaf_jax'), site / 'aaf_jax')
  return str(site)


@pytest.mark.slow
@pytest.mark.parametrize('target, args', documented_commands())
def test_documented_command_runs(target, args, tmp_path, fresh_clone_path):
  if target == 'launch.py':
    args = shlex.split(args.replace('DIR', str(tmp_path / 'work'))) + ['--only_check_args']
    if not any(a.startswith('--workdir=') for a in args):  # a fragment quoted in the prose
      args.append(f'--workdir={tmp_path / "work"}')
  else:
    args = ['--help']
  result = subprocess.run(
    [sys.executable, *target.split(), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'PYTHONPATH': fresh_clone_path},
  )
  assert result.returncode == 0, result.stderr[-3000:]
