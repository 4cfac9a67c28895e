"""The real cluster engines launching a multi-process job: Slurm (sbatch) and Open MPI (mpirun).

Each test starts the engine itself on this machine, on loopback: a single-node Slurm cluster
(munged, slurmctld, slurmd under tmp_path; aaf_jax/local_slurm.py), or `mpirun -np 2`. Both run
two processes of one CPU device each, found by `launch.py --distributed` alone, and must train
the tiny config to exactly the results of one process with two CPU devices (the same two-way
split of every batch, so the same sums in the same order).

They need root and Debian's slurm-wlm, munge and openmpi-bin. Without them the tests skip,
saying what is missing; with AAF_REQUIRE_ENGINES=1 (set by .ci/run, which installs them) a
missing engine fails instead, so CI cannot pass without running them.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
from launching import (
  NO_COMPILATION_CACHE,
  ROOT,
  TINY_FLAGS,
  launch_command,
  sweep_summary,
  synthetic_config,
  xla_flags,
)
from loopback import Job

from aaf_jax import local_slurm

STEPS = 6
TIMEOUT_S = 900  # per job; one takes about a minute on an idle 2-core machine
HEARTBEAT_TIMEOUT_S = 10
FLAGS = (
  '--config.log_every_steps=2',
  '--config.checkpoint_every_steps=2',
  '--config.eval_every_steps=4',
  *TINY_FLAGS,
)
NOT_SCORES = ('step', 'fingerprint', 'inference', 'field_size_weights')
VENV_PYTHON = os.path.join(ROOT, '.venv', 'bin', 'python')  # what cluster/slurm.sbatch runs

pytestmark = pytest.mark.slow  # every test starts a cluster engine or its script


def _require(reason):
  """Skips the test for `reason`, or fails it where CI demands the engines."""
  if reason is None:
    return
  if os.environ.get('AAF_REQUIRE_ENGINES') == '1':
    pytest.fail(f'AAF_REQUIRE_ENGINES=1 but {reason}')
  pytest.skip(reason)


def _scores(workdir) -> dict:
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  scores = {k: v for k, v in results.items() if k not in NOT_SCORES}
  assert {'miou', 'pixel_acc', 'per_class_iou'} <= set(scores), workdir
  return scores


def _reference(tmp_path, data_dir) -> dict:
  """The scores of the tiny run in one process with two CPU devices."""
  workdir = tmp_path / 'one'
  command = launch_command(synthetic_config(data_dir, STEPS), f'--workdir={workdir}', *FLAGS)
  job = Job(command, str(tmp_path / 'logs'), num_processes=1, devices_per_process=2, name='one')
  job.wait_ok(TIMEOUT_S)
  return _scores(workdir)


def _log(path) -> str:
  with open(path, errors='replace') as f:
    return f.read()


def test_slurm_sbatch_trains_like_one_process_and_resumes_after_a_task_is_killed(
  tmp_path, tiny_data_dir
):
  _require(local_slurm.missing())
  _require(None if os.path.exists(VENV_PYTHON) else f'{VENV_PYTHON} missing (README set-up)')
  data_dir = tiny_data_dir
  expected = _reference(tmp_path, data_dir)

  def sbatch(workdir, name):
    return slurm.sbatch(
      '--nodes=1',
      '--ntasks-per-node=2',
      '--gpus-per-node=0',
      '--cpus-per-task=1',
      f'--output={tmp_path / name}.out',
      'cluster/slurm.sbatch',
      '--cpu',
      synthetic_config(data_dir, STEPS).removeprefix('--config='),
      str(workdir),
      *FLAGS,
      f'--heartbeat_timeout={HEARTBEAT_TIMEOUT_S}',
      '--initialization_timeout=300',
      cwd=ROOT,
    )

  with local_slurm.LocalSlurm(tmp_path / 'slurm') as slurm:
    slurm.env.update(NO_COMPILATION_CACHE)  # sbatch hands its environment to the job
    job = sbatch(tmp_path / 'two', 'two')
    state = slurm.wait(job, TIMEOUT_S)
    log = _log(tmp_path / 'two.out')
    assert state == ('COMPLETED', '0:0'), f'{state}\n{log[-20000:]}'
    for process in (0, 1):
      assert f'Process {process} of 2 joined the job at coordinator auto-detected; 1 of 2' in log
    assert _scores(tmp_path / 'two') == expected

    # One task killed once a checkpoint exists: srun stops the job at once, naming the task.
    job = sbatch(tmp_path / 'killed', 'killed')
    checkpoint = tmp_path / 'killed' / 'checkpoints' / '2'
    deadline = time.monotonic() + TIMEOUT_S
    while not checkpoint.exists():
      assert slurm.job(job)['JobState'] in ('PENDING', 'RUNNING'), _log(tmp_path / 'killed.out')
      assert time.monotonic() < deadline, 'no checkpoint in time'
      time.sleep(0.2)
    # By its pid, as the OOM killer would: `scancel --signal=KILL` signals every task of a step.
    pids = slurm.task_pids(job)
    assert 1 in pids, f'scontrol listpids found no task 1: {pids}'
    os.kill(pids[1], signal.SIGKILL)
    killed_at = time.monotonic()
    state = slurm.wait(job, HEARTBEAT_TIMEOUT_S + 60)
    took = time.monotonic() - killed_at
    log = _log(tmp_path / 'killed.out')
    assert state[0] == 'FAILED', f'{state}\n{log[-20000:]}'
    assert took < HEARTBEAT_TIMEOUT_S + 30, f'the job took {took:.0f} s to end\n{log[-20000:]}'
    assert 'task 1: Killed' in log, log[-20000:]
    assert not (tmp_path / 'killed' / 'results.json').exists()

    # The same command again resumes and ends as the uninterrupted run did.
    job = sbatch(tmp_path / 'killed', 'resumed')
    state = slurm.wait(job, TIMEOUT_S)
    log = _log(tmp_path / 'resumed.out')
    assert state == ('COMPLETED', '0:0'), f'{state}\n{log[-20000:]}'
    assert 'Resumed from' in log, log[-20000:]
    assert _scores(tmp_path / 'killed') == expected


SWEEP_FLAGS = ('--sweep=loss.margin=[2.0,3.0]', '--seeds=2', *FLAGS)


@pytest.mark.slow
def test_slurm_array_sweep_equals_a_local_sweep_and_resumes_a_killed_task(tmp_path):
  """cluster/submit_sweep.sh: 4 runs as an array of 2 tasks of 2 processes each (a
  multi-process sweep per shard), then the summary job. Shard 1's processes killed inside its
  first run (as a preemption or the OOM killer would): the summary job still writes the
  summary; submitting again finishes the sweep, equal to the same sweep in one process with two
  devices (every run's learned field-size weights, which differ with seed and margin, compared
  exactly)."""
  _require(local_slurm.missing())
  _require(None if os.path.exists(VENV_PYTHON) else f'{VENV_PYTHON} missing (README set-up)')
  data_dir = tmp_path / 'data'
  config = synthetic_config(data_dir, STEPS)
  local = Job(
    launch_command(config, f'--workdir={tmp_path / "local"}', '--mode=sweep', *SWEEP_FLAGS),
    str(tmp_path / 'logs'),
    num_processes=1,
    devices_per_process=2,
    name='local',
  )
  local.wait_ok(2 * TIMEOUT_S)
  expected = sweep_summary(tmp_path / 'local')
  assert [r['status'] for r in expected['runs']] == ['finished'] * 4, expected['runs']
  workdir = tmp_path / 'sweep'

  def submit(name):
    done = subprocess.run(
      [
        'cluster/submit_sweep.sh',
        '--cpu',
        '--sbatch=--ntasks-per-node=2',
        '--sbatch=--gpus-per-node=0',
        '--sbatch=--cpus-per-task=1',
        f'--sbatch=--output={tmp_path}/{name}-%a.out',
        '2',
        config.removeprefix('--config='),
        str(workdir),
        *SWEEP_FLAGS,
        f'--heartbeat_timeout={HEARTBEAT_TIMEOUT_S}',
        '--initialization_timeout=300',
      ],
      cwd=ROOT,
      env=slurm.env,
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert done.returncode == 0, done
    found = re.search(r'sweep array job (\d+) \(2 tasks\), summary job (\d+)', done.stdout)
    assert found, done.stdout
    return found.groups()

  def logs(name):
    return '\n'.join(
      f'===== {path.name} =====\n{_log(path)[-10000:]}'
      for path in [*sorted(tmp_path.glob(f'{name}-*.out')), *sorted(workdir.glob('summary-*.out'))]
    )

  with local_slurm.LocalSlurm(tmp_path / 'slurm') as slurm:
    slurm.env.update(NO_COMPILATION_CACHE)  # sbatch hands its environment to the job
    array, summary = submit('first')
    # Shard 1 runs runs 1 and 3; kill it once its first run has a checkpoint. Its two processes
    # are stopped (SIGSTOP, at once), checked to be inside run 1, then killed: scancel was tried
    # first, but its SIGTERM reaches the tasks late on a loaded machine (CI saw run 1 finish).
    checkpoint = workdir / 'loss.margin=2.0,seed=1' / 'checkpoints' / '2'
    deadline = time.monotonic() + TIMEOUT_S
    while not checkpoint.exists():
      assert slurm.job(f'{array}_1')['JobState'] in ('PENDING', 'RUNNING'), logs('first')
      assert time.monotonic() < deadline, 'no checkpoint in time'
      time.sleep(0.05)
    pids = slurm.task_pids(slurm.job(f'{array}_1')['JobId'])
    assert sorted(pids) == [0, 1], f'scontrol listpids found tasks {pids}'
    for pid in pids.values():
      os.kill(pid, signal.SIGSTOP)
    assert not (checkpoint.parent.parent / 'results.json').exists(), 'run 1 ended before the stop'
    for pid in pids.values():
      os.kill(pid, signal.SIGKILL)
    state = slurm.wait(summary, TIMEOUT_S)
    assert state == ('COMPLETED', '0:0'), f'{state}\n{logs("first")}'
    assert slurm.job(f'{array}_0')['JobState'] == 'COMPLETED', logs('first')
    assert slurm.job(f'{array}_1')['JobState'] == 'FAILED', logs('first')
    partial = sweep_summary(workdir)
    statuses = [r['status'] for r in partial['runs']]
    assert statuses == ['finished', 'interrupted', 'finished', 'pending'], logs('first')
    assert 'Process 1 of 2 joined the job at coordinator auto-detected' in _log(
      tmp_path / 'first-0.out'
    )

    array, summary = submit('again')
    state = slurm.wait(summary, 2 * TIMEOUT_S)
    assert state == ('COMPLETED', '0:0'), f'{state}\n{logs("again")}'
    assert 'Sweep: 4 runs, 2 in shard 0/2, 2 already finished.' in _log(tmp_path / 'again-0.out')
    assert 'Resumed from' in _log(tmp_path / 'again-1.out'), logs('again')
    assert sweep_summary(workdir) == expected


def _mpi_missing():
  if shutil.which('mpirun') is None:
    return 'mpirun not installed (apt-get install openmpi-bin; .ci/run does it)'
  return None


def test_open_mpi_mpirun_sweeps_and_trains_like_one_process(tmp_path, tiny_data_dir):
  """A one-run sweep (the tiny run at its own margin, seed 0) as a 2-process Open MPI job: the
  run trained over both processes scores as the one-process run, and process 0 writes the
  sweep's summary (issue 28: a sweep inside a multi-process job, under Open MPI)."""
  _require(_mpi_missing())
  data_dir = tiny_data_dir
  expected = _reference(tmp_path, data_dir)
  env = {
    **os.environ,
    'XLA_FLAGS': xla_flags(1),
    'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
    # Open MPI refuses root unless told twice (CI runs as root).
    'OMPI_ALLOW_RUN_AS_ROOT': '1',
    'OMPI_ALLOW_RUN_AS_ROOT_CONFIRM': '1',
    **NO_COMPILATION_CACHE,
  }
  command = [
    'mpirun',
    '-np',
    '2',
    '--oversubscribe',  # 2 processes may exceed the cores Open MPI counts
    '--bind-to',
    'none',
    '--mca',
    'oob_tcp_if_include',
    'lo',  # mpirun's own wiring, hence the coordinator address JAX derives, on loopback
    *launch_command(
      '--distributed',
      '--mode=sweep',
      '--sweep=loss.margin=[3.0]',  # the config's own margin: the run is the reference run
      synthetic_config(data_dir, STEPS),
      f'--workdir={tmp_path / "two"}',
      *FLAGS,
      f'--heartbeat_timeout={HEARTBEAT_TIMEOUT_S}',
      '--initialization_timeout=300',
    ),
  ]
  with open(tmp_path / 'mpirun.log', 'w') as out:
    done = subprocess.run(
      command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=TIMEOUT_S
    )
  log = _log(tmp_path / 'mpirun.log')
  assert done.returncode == 0, log[-20000:]
  for process in (0, 1):
    assert f'Process {process} of 2 joined the job at coordinator auto-detected; 1 of 2' in log
  assert _scores(tmp_path / 'two' / 'loss.margin=3.0,seed=0') == expected
  summary = sweep_summary(tmp_path / 'two')
  assert [r['status'] for r in summary['runs']] == ['finished'], summary['runs']
  assert summary['groups'][0]['miou_mean'] == expected['miou']


@pytest.mark.parametrize(
  'args, fault',
  [
    (['--cpu', 'configs/synthetic.py'], 'CONFIG and WORKDIR are both required; got 1 argument'),
    (['--config=configs/synthetic.py', '/tmp/run'], "got '--config=configs/synthetic.py'"),
    (['configs/synthetic.py', '--cpu', '/tmp/run'], "got 'configs/synthetic.py' '--cpu'"),
  ],
)
def test_sbatch_script_names_a_misplaced_or_missing_argument(args, fault):
  """Caught before srun starts anything; needs no Slurm."""
  done = subprocess.run(
    ['bash', 'cluster/slurm.sbatch', *args], cwd=ROOT, capture_output=True, text=True, timeout=60
  )
  assert done.returncode == 2, done
  assert fault in done.stderr and 'usage: sbatch' in done.stderr, done.stderr


@pytest.mark.parametrize(
  'script, args, fault',
  [
    ('sweep.sbatch', ['--cpu', 'configs/synthetic.py'], 'CONFIG and WORKDIR are both required'),
    ('sweep.sbatch', ['configs/synthetic.py', '--summarize', '/tmp/s'], "got 'configs/synthetic"),
    ('sweep.sbatch', ['configs/synthetic.py', '/tmp/s'], 'not a job array task'),
    ('submit_sweep.sh', ['configs/synthetic.py', '/tmp/s'], 'expected SHARDS (a positive integer)'),
    ('submit_sweep.sh', ['0', 'configs/synthetic.py', '/tmp/s'], 'expected SHARDS'),
    ('submit_sweep.sh', ['2', '--cpu', 'configs/synthetic.py', '/tmp/s'], 'got: 2 --cpu'),
  ],
)
def test_sweep_scripts_name_a_misplaced_or_missing_argument(script, args, fault):
  """Caught before sbatch or srun starts anything; needs no Slurm."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_ARRAY')}
  done = subprocess.run(
    ['bash', f'cluster/{script}', *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
    env=env,
  )
  assert done.returncode == 2, done
  assert fault in done.stderr, done.stderr
