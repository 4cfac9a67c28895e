"""aaf_jax.distributed on loopback: 2 processes x 2 CPU devices, without training.

Each test starts a small job of tests/loopback_probe.py (see tests/loopback.py for the ports,
devices and timeouts); the end-to-end training runs are in test_multiprocess.py.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from launching import ROOT, launch_command, xla_flags
from loopback import HEARTBEAT_TIMEOUT_S, Job

from aaf_jax import distributed

PROBE = [sys.executable, os.path.join(ROOT, 'tests', 'loopback_probe.py')]
# A stopped process must be gone within this after the event that stops it: the heartbeat
# timeout plus the time to notice, tell the others and exit on a busy 2-core machine, well
# under JAX's own detection (3 heartbeat timeouts, then a native abort).
PROMPT_S = HEARTBEAT_TIMEOUT_S + 12


def _probe(tmp_path, *steps, name='probe', **options):
  flags = [f'--{k}={v}' for k, v in options.items()]
  return Job([*PROBE, *steps, *flags], str(tmp_path / 'logs'), name=name)


def test_single_process_needs_no_job():
  assert distributed.initialize() is False
  distributed.check_shared_workdir('/nonexistent')  # nothing to check with one process
  assert distributed.first_on_process_0(lambda first: first, 'nothing') is True


@pytest.mark.slow
def test_shared_workdir_fresh_data_and_gathered_evaluation(tmp_path):
  """Process 0 builds a fresh data_dir while process 1 waits; evaluation across processes
  equals a one-process reference (confusion matrix and kept examples, uneven last batch)."""
  job = _probe(tmp_path, 'workdir', 'eval', workdir=tmp_path / 'work', data_dir=tmp_path / 'data')
  job.wait_ok(600)
  for i in range(2):
    out = job.output(i)
    assert 'workdir shared' in out and ', 9 examples' in out, out
  assert not [f for f in os.listdir(tmp_path / 'work') if f.startswith('.shared-check')]


@pytest.mark.slow
def test_unshared_workdir_is_refused_by_every_process(tmp_path):
  job = _probe(tmp_path, 'workdir', workdir=tmp_path / 'work{process}')
  assert job.wait(300) == [2, 2], job.all_output()
  for i in range(2):
    errors = [line for line in job.output(i).splitlines() if line.startswith('error:')]
    assert (
      len(errors) == 1 and 'is not shared by all processes: process 1 cannot see' in errors[0]
    ), job.all_output()


@pytest.mark.slow
def test_a_failing_process_stops_the_others_at_once(tmp_path):
  job = _probe(tmp_path, 'fail')
  start = time.monotonic()
  statuses = job.wait(300)
  assert statuses == [1, 1], job.all_output()
  assert 'RuntimeError: probe failure on purpose' in job.output(1)
  survivor = job.output(0)
  assert 'Stopping process 0: process 1 of 2 failed: RuntimeError: probe failure on purpose' in (
    survivor
  ), job.all_output()
  # The survivor exits without waiting for a heartbeat timeout.
  assert time.monotonic() - start < 120, job.all_output()


@pytest.mark.slow
@pytest.mark.parametrize('victim', [1, 0])
def test_a_killed_process_stops_the_others_promptly(tmp_path, victim):
  job = _probe(tmp_path, 'idle')
  job.wait_for(lambda: all('idle' in job.output(i) for i in range(2)), 300, 'both processes idle')
  job.kill_process(victim)
  killed_at = time.monotonic()
  survivor = 1 - victim
  status = job.wait(PROMPT_S + 60)[survivor]
  elapsed = time.monotonic() - killed_at
  out = job.output(survivor)
  assert status != 0 and elapsed < PROMPT_S, (status, elapsed, out)
  if victim == 1:  # named by our watchdog
    assert f'Stopping process 0: process 1 of 2 sent no heartbeat for {HEARTBEAT_TIMEOUT_S} s' in (
      out
    )
  else:  # the coordinator is gone: JAX stops the others at once, naming the leader
    assert 'leader task was preempted/died' in out, out


@pytest.mark.slow
@pytest.mark.parametrize(
  'flags, expected',
  [
    (['--distributed'], 'Cannot start the multi-process job (coordinator_address should be'),
    (['--num_processes=2', '--process_id=2'], '--process_id=2: expected 0 <= process_id < '),
  ],
)
def test_job_flag_mistakes_are_one_line(tmp_path, flags, expected):
  env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'OMPI_', 'JAX_'))}
  result = subprocess.run(
    [*launch_command(f'--config={ROOT}/configs/synthetic.py', f'--workdir={tmp_path}'), *flags],
    capture_output=True,
    text=True,
    timeout=300,
    env={**env, 'AAF_VERBOSE': ''},
    cwd=ROOT,
  )
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {expected}'), result.stderr


class _FakeClient:
  """The coordination service's key-value calls, recorded."""

  def __init__(self, events):
    self.events = events

  def key_value_set(self, key, value, allow_overwrite=False):
    self.events.append(f'set {key}')

  def key_value_dir_get(self, prefix):
    return []


class _FakeWatchdog:
  """A watchdog that is still running for its first two checks, then gone (as when it ends the
  process after naming a silent peer)."""

  timeout_s, interval_s = 0.5, 0.05

  def __init__(self, events):
    self.events, self.checks = events, 0

  def is_alive(self):
    self.checks += 1
    if self.checks == 3:
      self.events.append('watchdog ended')
    return self.checks < 3


class XlaRuntimeError(RuntimeError):
  """Named like jaxlib's error, which is what a failed collective raises."""


@pytest.mark.parametrize(
  'error, waits',
  [
    (
      XlaRuntimeError(
        'INTERNAL: [gloo/transport/tcp/pair.cc:538] Read error: Connection reset by peer'
      ),
      True,
    ),
    (RuntimeError('a bug in process 1'), False),
    (XlaRuntimeError('RESOURCE_EXHAUSTED: out of memory'), False),
  ],
)
def test_a_collective_that_lost_its_peer_waits_for_the_watchdog_to_name_it(
  monkeypatch, error, waits
):
  # A peer killed mid-collective can make gloo raise 'Connection reset by peer' on this
  # process before the watchdog notices the silence; that error names no process, so the
  # failure path gives the watchdog its time first. Other errors are announced at once.
  events = []
  watchdog = _FakeWatchdog(events)
  for name, value in [
    ('client', _FakeClient(events)),
    ('watchdog', watchdog),
    ('process_id', 1),
    ('num_processes', 2),
    ('exit_status', None),
  ]:
    monkeypatch.setattr(distributed._state, name, value)
  with pytest.raises(type(error)):
    with distributed.stop_all_on_failure():
      raise error
  announced = events.index('set aaf_jax/stop/1')
  if waits:
    assert events.index('watchdog ended') < announced, events
  else:
    assert watchdog.checks == 0 and 'watchdog ended' not in events, events
  assert distributed._state.exit_status == 1


# Compiles the tiny config's train step and eval steps over 2 CPU devices and prints, per step,
# {computation: number of cross-device collectives in it} of the compiled program.
_COLLECTIVE_SITES = """
import json, re, jax, jax.numpy as jnp
from tiny import tiny_config
from aaf_jax import evaluate, models, optim, sharding
from aaf_jax.step import init_state_fn, make_train_step

COLLECTIVE = re.compile(r'= .*\\b(all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)(-start)?\\(')

def sites(text):
  found, computation = {}, None
  for line in text.splitlines():
    if line and not line.startswith(' ') and line.rstrip().endswith('{'):
      computation = line.split('(')[0].split()[-1]
    elif COLLECTIVE.search(line):
      found[computation] = found.get(computation, 0) + 1
  return found

config = tiny_config('/unused', grad_accum_steps=2)
mesh = sharding.make_mesh()
assert mesh.devices.size == 2, mesh
model = models.build_model(config.model, num_classes=7)
tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
init = init_state_fn(model, tx, config, 7, 32)
state = jax.eval_shape(init, jax.random.key(0))
replicated = sharding.replicated(mesh)
state_sharding = jax.tree.map(lambda _: replicated, state)
train_step = jax.jit(
  make_train_step(model, tx, config, 7),
  in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
  out_shardings=(state_sharding, replicated, replicated),
)
crops = {'image': jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32),
         'label': jax.ShapeDtypeStruct((4, 32, 32), jnp.int32)}
print('train', json.dumps(sites(train_step.lower(state, crops).compile().as_text())))
variables = {'params': state.params['model'], 'batch_stats': state.batch_stats}
batch = {'image': jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32),
         'label': jax.ShapeDtypeStruct((4, 32, 32), jnp.int32),
         'valid': jax.ShapeDtypeStruct((4,), jnp.bool_),
         'size': jax.ShapeDtypeStruct((4, 2), jnp.int32)}
for name, options in [('whole', {}), ('windows', dict(window=16, stride=8, flip=True))]:
  step = evaluate.jit_eval_step(model, 7, mesh, replicated, **options).step
  print(f'eval-{name}', json.dumps(sites(step.lower(variables, batch).compile().as_text())))
"""


@pytest.mark.slow
def test_every_step_runs_its_collectives_in_one_order():
  """Over gloo (CPU), two processes pair their collectives' messages only by order. A compiled
  step whose collectives sit in independent places (one in a loop, one outside) may run them in
  a different order on each process, and the job aborts with 'collective mismatch' (issue 17:
  boundary IoU's loop against the confusion matrix, one device per process). Each step keeps
  them in one computation, run in sequence: the eval step has exactly one."""
  env = dict(
    os.environ, XLA_FLAGS=xla_flags(2), PYTHONPATH=os.pathsep.join([ROOT, f'{ROOT}/tests'])
  )
  out = subprocess.run(
    [sys.executable, '-c', _COLLECTIVE_SITES],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  found = dict(line.split(' ', 1) for line in out.stdout.strip().splitlines())
  train = json.loads(found['train'])  # {computation: number of collectives}
  assert len(train) == 1 and sum(train.values()) > 1, train
  for name in ('eval-whole', 'eval-windows'):
    assert list(json.loads(found[name]).values()) == [1], (name, found[name])


@pytest.mark.slow
def test_a_sweep_keeps_every_process_on_one_run_and_records_failures_once(tmp_path):
  """Three stand-in runs in lockstep: one failing on process 1 only, after its last exchange
  with process 0; one failing on both, process 0 before an exchange and process 1 in it (their
  barrier counts then differ); one succeeding. Both processes go on in step, process 0 alone
  records; a rerun skips the finished run and retries the failed ones."""
  expected = {
    'margin=1.0': 'on process 1 of 2: ValueError: fails on process 1 only, after the last',
    'margin=2.0': 'on process 0, 1 of 2: FloatingPointError: fails on process 0 before the',
  }
  for attempt, counts in enumerate(
    ['{"failed": 2, "skipped": 0, "trained": 1}', '{"failed": 2, "skipped": 1, "trained": 0}']
  ):
    job = _probe(
      tmp_path,
      'sweep',
      workdir=tmp_path / 'sweep',
      data_dir=tmp_path / 'data',
      name=f'sweep{attempt}',
    )
    job.wait_ok(300)
    for i in range(2):
      assert f'sweep counts {counts}' in job.output(i), job.all_output()
    with open(tmp_path / 'sweep' / 'summary.json') as f:
      summary = json.load(f)
    rows = {f'margin={r["overrides"]["loss.margin"]}': r for r in summary['runs']}
    assert [r['status'] for r in rows.values()] == ['failed', 'failed', 'finished'], rows
    for name, error in expected.items():
      assert rows[name]['error'].startswith(error), rows[name]
    assert rows['margin=3.0']['miou'] == 0.5
    assert 'Sweep summary' in job.output(0) and 'Sweep summary' not in job.output(1)


@pytest.mark.slow
def test_a_sweep_run_failing_on_one_process_inside_a_collective_stops_the_job(tmp_path):
  """Process 1 fails while process 0 waits for it in an exchange: no hang, the job stops
  within the heartbeat timeout, naming the run and the process."""
  job = _probe(tmp_path, 'sweep_stuck', workdir=tmp_path / 'sweep', data_dir=tmp_path / 'data')
  start = time.monotonic()
  statuses = job.wait(300)
  assert all(s != 0 for s in statuses), job.all_output()
  assert time.monotonic() - start < 120 + PROMPT_S, job.all_output()
  message = 'sweep run 0 failed on process 1 (ValueError: fails on process 1 before the collective)'
  assert message in job.output(1), job.all_output()
  assert f'Stopping process 0: process 1 of 2 failed: RunOutOfStep: {message}' in job.output(0), (
    job.all_output()
  )
