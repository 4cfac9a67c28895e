"""Multi-process start-up and coordination: one job of several processes, or one process.

`initialize` starts `jax.distributed` from explicit settings (launch.py's flags), from the
variables JAX reads (JAX_COORDINATOR_ADDRESS, ...), or from a cluster JAX detects (Cloud TPU,
SLURM, Open MPI); with none of them the run is a single process and nothing here does anything.

What the processes need to agree on outside the train step goes through JAX's coordination
service (a key-value store and barriers served by process 0), never through a device collective:
on CPU a first collective fails when processes reach it more than ~30 s apart, so it cannot wait
for a slow dataset build. On top of it:
- `first_on_process_0`: process 0 does some work (prepare the data) while the others wait;
- `check_shared_workdir`: every process must see the files process 0 writes;
- a watchdog thread: every process publishes a heartbeat; process 0 notices one that stopped
  (killed, crashed, hung) and a process that fails announces it, and every process then stops
  at once with one error naming the process and why, instead of hanging at its next collective
  or being aborted natively by JAX a minute later. A collective that fails because its peer
  died (gloo's 'Connection reset by peer' on CPU) waits for the watchdog to name that peer. If
  process 0 itself dies, JAX stops the others at once (its coordination service is gone).
"""

import atexit
import contextlib
import json
import os
import sys
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging

from aaf_jax import errors

_PREFIX = 'aaf_jax/'
# Long enough for any dataset build: a failing or dead process 0 stops the waiting ones through
# the watchdog long before this.
FIRST_ON_PROCESS_0_TIMEOUT_S = 7 * 24 * 3600
_WORKDIR_CHECK_TIMEOUT_S = 600
_FAILED_STATUS = 1
_ACK_WAIT_S = 10.0


class _State:
  """This process's part of a multi-process job (None/0 when single-process)."""

  client = None
  process_id = 0
  num_processes = 1
  watchdog = None
  barrier_count = 0
  scope = ''  # prefixes barrier keys; a sweep gives each run its own (Lockstep.begin)
  exit_status = None  # set when this process failed: skip JAX's shutdown, exit with it


_state = _State()


def initialize(
  *,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  coordinator_bind_address: str | None = None,
  auto_detect: bool = False,
  initialization_timeout: int = 300,
  heartbeat_timeout: int = 60,
) -> bool:
  """Starts the multi-process job if anything asks for one; returns whether it did.

  A job is asked for by any argument, by JAX_COORDINATOR_ADDRESS, or by `auto_detect` (let JAX
  find a Cloud TPU pod, SLURM or Open MPI job). `heartbeat_timeout`: seconds without a
  heartbeat after which a process counts as dead and every process stops. Must run before
  anything touches a JAX device.
  """
  explicit = (coordinator_address, num_processes, process_id, coordinator_bind_address)
  if not (
    auto_detect or any(v is not None for v in explicit) or os.environ.get('JAX_COORDINATOR_ADDRESS')
  ):
    return False
  if _state.client is not None:
    raise RuntimeError('aaf_jax.distributed.initialize was already called in this process.')
  _check_settings(num_processes, process_id, initialization_timeout, heartbeat_timeout)
  where = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS') or 'auto-detected'
  # If the others never come, JAX aborts the process natively: this line says what it waited for.
  logging.info(
    'Process %s of %s joining the job at coordinator %s; waiting up to %d s for every process '
    '(--initialization_timeout).',
    '?' if process_id is None else process_id,
    '?' if num_processes is None else num_processes,
    where,
    initialization_timeout,
  )
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      coordinator_bind_address=coordinator_bind_address,
      initialization_timeout=initialization_timeout,
      # JAX's own detection aborts natively: keep it behind the watchdog's.
      heartbeat_timeout_seconds=3 * heartbeat_timeout,
      shutdown_timeout_seconds=max(60, 2 * heartbeat_timeout),
    )
  except ValueError as e:  # settings missing and no cluster detected
    raise errors.UserError(
      f'Cannot start the multi-process job ({e}): give --coordinator_address, '
      '--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS and the flags), or run '
      'with --distributed inside a Cloud TPU pod, SLURM or Open MPI job.'
    ) from e
  except Exception as e:  # jax's runtime errors: an address it cannot use, say
    raise errors.UserError(
      f'Process {process_id if process_id is not None else "?"} could not join the job at '
      f'coordinator {where} ({errors.one_line(e)[:300]}). Start every process with the same '
      '--coordinator_address and --num_processes, each with its own --process_id; process 0 '
      'serves the coordinator.'
    ) from e
  from jax._src import distributed as jax_distributed  # the client; Orbax reads it there too

  _state.client = jax_distributed.global_state.client
  _state.process_id = jax.process_index()
  _state.num_processes = jax.process_count()
  logging.info(
    'Process %d of %d joined the job at coordinator %s; %d of %d devices are local.',
    _state.process_id,
    _state.num_processes,
    where,
    jax.local_device_count(),
    jax.device_count(),
  )
  _warm_up_collectives()
  _state.watchdog = _Watchdog(heartbeat_timeout)
  _state.watchdog.start()
  atexit.register(_exit_after_failure)  # registered after JAX's, so it runs before it
  return True


def _check_settings(num_processes, process_id, initialization_timeout, heartbeat_timeout):
  if num_processes is not None and num_processes < 1:
    raise errors.UserError(f'--num_processes={num_processes}: expected a positive integer.')
  if process_id is not None and (
    process_id < 0 or (num_processes is not None and process_id >= num_processes)
  ):
    raise errors.UserError(
      f'--process_id={process_id}: expected 0 <= process_id < --num_processes={num_processes}.'
    )
  for name, value in (
    ('initialization_timeout', initialization_timeout),
    ('heartbeat_timeout', heartbeat_timeout),
  ):
    if value <= 0:
      raise errors.UserError(f'--{name}={value}: expected a positive number of seconds.')


def _warm_up_collectives() -> None:
  """On CPU, sets up the cross-process (gloo) connections now, while every process is here.

  Gloo connects at the first collective and gives up when the processes reach it more than
  ~30 s apart (one may still be compiling); later collectives wait as long as needed.
  """
  if jax.default_backend() != 'cpu':
    return
  from jax.sharding import NamedSharding, PartitionSpec

  from aaf_jax import sharding

  mesh = sharding.make_mesh()
  ones = jax.make_array_from_process_local_data(
    NamedSharding(mesh, PartitionSpec(sharding.DATA_AXIS)),
    np.ones((jax.local_device_count(),), np.int32),
  )
  total = jax.jit(lambda x: x.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(ones)
  if int(total) != jax.device_count():
    raise RuntimeError(f'Cross-process sum over {jax.device_count()} devices gave {int(total)}.')


def shutdown() -> None:
  """The end of a successful run: stop the watchdog, then leave the job with the others."""
  if _state.client is None:
    return
  _state.client.key_value_set(f'{_PREFIX}done/{_state.process_id}', '')
  _state.watchdog.stop()
  jax.distributed.shutdown()
  _state.client = None


@contextlib.contextmanager
def stop_all_on_failure():
  """Runs the body; if it raises in a multi-process job, every other process stops too.

  The failure is announced through the coordination service (the others log it, naming this
  process, and exit with the same status); this process then re-raises, and at exit skips
  JAX's shutdown barrier, which would wait for processes that are stopping.
  """
  try:
    yield
  except BaseException as e:
    if _state.client is None:
      raise
    if isinstance(e, SystemExit):
      status = e.code if isinstance(e.code, int) else _FAILED_STATUS
    elif isinstance(e, errors.UserError):
      status = 2
    else:
      status = _FAILED_STATUS
    if _peer_failure_suspected(e):
      _let_the_watchdog_name_the_peer(e)
    _state.exit_status = status
    _announce_stop(
      f'process {_state.process_id} of {_state.num_processes} failed: '
      f'{type(e).__name__}: {errors.one_line(e)}',
      status,
    )
    raise


# What a CPU collective (gloo) raises when the process at the other end of a socket has died.
_PEER_LOST_MARKERS = (
  'gloo',
  'Connection reset by peer',
  'Connection closed by peer',
  'Broken pipe',
)


def _peer_failure_suspected(error: BaseException) -> bool:
  """Whether `error` is a collective that failed because another process went away."""
  if type(error).__name__ not in ('XlaRuntimeError', 'JaxRuntimeError'):  # jaxlib's names
    return False
  text = str(error)
  return any(marker in text for marker in _PEER_LOST_MARKERS)


def _let_the_watchdog_name_the_peer(error: BaseException) -> None:
  """A collective failed because a peer went away: give the watchdog the time it needs to name
  that process (it ends this one with the heartbeat message), instead of reporting the socket
  error, which names no process. Returns only if the watchdog finds nobody by then."""
  watchdog = _state.watchdog
  if watchdog is None or not watchdog.is_alive():
    return
  wait_s = watchdog.timeout_s + 5 * watchdog.interval_s
  logging.warning(
    'Process %d: a collective failed (%s); waiting up to %g s for the watchdog to tell which '
    'process stopped.',
    _state.process_id,
    errors.one_line(error)[:200],
    wait_s,
  )
  deadline = time.monotonic() + wait_s
  while time.monotonic() < deadline and watchdog.is_alive():
    time.sleep(0.1)


def _announce_stop(message: str, status: int) -> None:
  """Publishes why the job stops; process 0 then waits until the others have seen it."""
  client = _state.client
  try:
    client.key_value_set(f'{_PREFIX}stop/{_state.process_id}', f'{status} {message}')
    client.key_value_set(f'{_PREFIX}ack/{_state.process_id}', '')
    if _state.process_id == 0:  # the others need the coordinator to read the message
      _wait_for_acknowledgements(client)
  except Exception as e:  # the coordinator is gone: JAX stops the others by itself
    logging.warning('Could not tell the other processes to stop: %s', errors.one_line(e))


def _wait_for_acknowledgements(client) -> None:
  deadline = time.monotonic() + _ACK_WAIT_S
  others = set(range(1, _state.num_processes))
  while time.monotonic() < deadline:
    stopped = {int(key.rsplit('/', 1)[1]) for key, _ in client.key_value_dir_get(f'{_PREFIX}ack/')}
    done = {int(key.rsplit('/', 1)[1]) for key, _ in client.key_value_dir_get(f'{_PREFIX}done/')}
    if others <= stopped | done | _state.watchdog.dead:
      return
    time.sleep(0.1)


def _exit_after_failure() -> None:
  if _state.exit_status is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_state.exit_status)


def _exit_now(message: str, status: int) -> None:
  """Logs why and ends this process at once (the main thread may be blocked in a collective)."""
  logging.error('%s', message)
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


class _Watchdog(threading.Thread):
  """Heartbeats out; a stop announced by any process, or a silent process, stops this one."""

  def __init__(self, timeout_s: float):
    super().__init__(name='aaf-jax-watchdog', daemon=True)
    self.timeout_s = float(timeout_s)
    self.interval_s = min(1.0, self.timeout_s / 10)
    self._stopping = threading.Event()
    self.dead = set()  # processes this one (process 0) found silent

  def stop(self) -> None:
    self._stopping.set()
    self.join()

  def run(self) -> None:
    client, me = _state.client, _state.process_id
    beat = 0
    last_change = {}  # process -> (its last heartbeat value, when it changed)
    while not self._stopping.wait(self.interval_s):
      beat += 1
      try:
        client.key_value_set(f'{_PREFIX}heartbeat/{me}', str(beat), allow_overwrite=True)
        stops = client.key_value_dir_get(f'{_PREFIX}stop/')
        silent = self._silent_processes(client, last_change) if me == 0 else []
      except Exception as e:
        if self._stopping.is_set():
          return
        _exit_now(
          f'Process {me} of {_state.num_processes} lost the coordination service '
          f'(process 0): {errors.one_line(e)[:300]}. Stopping.',
          _FAILED_STATUS,
        )
      if stops and _state.exit_status is None:
        status, _, message = min(stops)[1].partition(' ')
        with contextlib.suppress(Exception):
          client.key_value_set(f'{_PREFIX}ack/{me}', '')
        if me == 0:
          _wait_for_acknowledgements(client)
        _exit_now(f'Stopping process {me}: {message.rstrip(".")}.', int(status))
      if silent:
        self.dead.update(silent)
        names = ', '.join(str(p) for p in silent)
        message = (
          f'process {names} of {_state.num_processes} sent no heartbeat for '
          f'{self.timeout_s:g} s (killed, crashed or hung). Restart every process to resume '
          'from the last checkpoint'
        )
        with contextlib.suppress(Exception):
          client.key_value_set(f'{_PREFIX}stop/0', f'{_FAILED_STATUS} {message}')
          _wait_for_acknowledgements(client)
        _exit_now(f'Stopping process 0: {message}.', _FAILED_STATUS)

  def _silent_processes(self, client, last_change) -> list[int]:
    now = time.monotonic()
    beats = dict(client.key_value_dir_get(f'{_PREFIX}heartbeat/'))
    done = {int(key.rsplit('/', 1)[1]) for key, _ in client.key_value_dir_get(f'{_PREFIX}done/')}
    silent = []
    for process in range(1, _state.num_processes):
      beat = beats.get(f'{_PREFIX}heartbeat/{process}')
      if process not in last_change or last_change[process][0] != beat:
        last_change[process] = (beat, now)
      elif process not in done and now - last_change[process][1] > self.timeout_s:
        silent.append(process)
    return silent


def barrier(name: str, timeout_s: float) -> None:
  """Every process waits here until all have arrived (no device collective involved)."""
  if _state.client is None:
    return
  _state.barrier_count += 1
  _state.client.wait_at_barrier(
    f'{_PREFIX}{_state.scope}{name}/{_state.barrier_count}', int(timeout_s * 1000)
  )


def first_on_process_0(work, description: str, timeout_s: float = FIRST_ON_PROCESS_0_TIMEOUT_S):
  """`work(True)` on process 0, then `work(False)` on the others once it has finished.

  The others wait at a coordination-service barrier, as long as process 0 needs (up to
  `timeout_s`); if process 0 fails or dies meanwhile, the watchdog stops them.
  """
  if _state.client is None:
    return work(True)
  if _state.process_id == 0:
    logging.info('%s on process 0; the other processes wait for it.', description)
    result = work(True)
    barrier('first_on_process_0', timeout_s)
    return result
  logging.info('Waiting for process 0: %s.', description)
  barrier('first_on_process_0', timeout_s)
  return work(False)


def check_shared_workdir(workdir: str) -> None:
  """UserError unless every process sees a file process 0 has just written into `workdir`.

  Checkpoints are written by all processes together and read back by each: a workdir on a
  disk local to each machine would silently give every machine a different run.
  """
  if _state.client is None:
    return
  client, me = _state.client, _state.process_id
  _state.barrier_count += 1
  key = f'{_PREFIX}{_state.scope}workdir/{_state.barrier_count}'
  timeout_ms = _WORKDIR_CHECK_TIMEOUT_S * 1000
  if me == 0:
    token = uuid.uuid4().hex
    with open(os.path.join(workdir, f'.shared-check-{token}'), 'w') as f:
      f.write(token)
    client.key_value_set(key, token)
  token = client.blocking_key_value_get(key, timeout_ms)
  probe = os.path.join(workdir, f'.shared-check-{token}')  # as this process names the workdir
  try:
    with open(probe) as f:
      seen = f.read() == token
  except OSError:
    seen = False
  client.key_value_set(f'{key}/seen/{me}', 'yes' if seen else 'no')
  client.wait_at_barrier(f'{key}/barrier', timeout_ms)
  blind = sorted(
    int(k.rsplit('/', 1)[1]) for k, v in client.key_value_dir_get(f'{key}/seen/') if v != 'yes'
  )
  if me == 0:
    os.remove(probe)
  if blind:
    raise errors.UserError(
      f'--workdir={workdir} is not shared by all processes: '
      f'{"process" if len(blind) == 1 else "processes"} {", ".join(map(str, blind))} cannot '
      'see the file process 0 wrote there. Every process '
      'reads and writes the same checkpoints: put the workdir on a filesystem that all '
      'machines mount (NFS, Lustre, a GCS FUSE mount).'
    )


class RunOutOfStep(RuntimeError):
  """A sweep run failed on some processes while others are still inside it."""


class Lockstep:
  """Keeps every process of a job on the same run of a sweep (aaf_jax.sweep.run_sweep's `job`).

  Process 0 decides which runs remain (`from_process_0`) and alone writes files (`writes`).
  Every run starts at a barrier, with barrier names of its own, so a run that failed part-way
  leaves no count behind. After a run each process publishes its outcome; the run counts as
  failed when it failed on any process, and every process goes on to the next one. A process
  whose run failed waits at most `timeout_s` (the heartbeat timeout) for the others' outcomes:
  one still missing then is waiting in a collective this process left, so the whole job stops
  (RunOutOfStep, which `stop_all_on_failure` spreads) rather than hang; a rerun resumes.
  With one process every method is trivial.
  """

  _POLL_S = 0.1

  def __init__(self, timeout_s: float | None = None):
    watchdog = _state.watchdog
    self.timeout_s = timeout_s or (watchdog.timeout_s if watchdog is not None else 60.0)
    self.writes = _state.process_id == 0

  def from_process_0(self, name: str, value):
    """Process 0's `value` (JSON-able) on every process."""
    if _state.client is None:
      return value
    key = f'{_PREFIX}sweep/{name}'
    if _state.process_id == 0:
      _state.client.key_value_set(key, json.dumps(value))
    timeout_ms = int(FIRST_ON_PROCESS_0_TIMEOUT_S * 1000)
    return json.loads(_state.client.blocking_key_value_get(key, timeout_ms))

  def begin(self, index: int | str) -> None:
    """Every process starts run `index` together."""
    _state.scope = f'sweep-run-{index}/'
    _state.barrier_count = 0
    barrier('start', FIRST_ON_PROCESS_0_TIMEOUT_S)

  def agree(self, index: int | str, error: str | None) -> str | None:
    """The run's error on any process (None when it succeeded everywhere), the same on all."""
    if _state.client is None:
      return error
    client, me, count = _state.client, _state.process_id, _state.num_processes
    prefix = f'{_PREFIX}sweep/outcome/{index}/'
    client.key_value_set(f'{prefix}{me}', 'ok' if error is None else f'failed {error}')
    deadline = None if error is None else time.monotonic() + self.timeout_s
    while True:
      outcomes = {int(k.rsplit('/', 1)[1]): v for k, v in client.key_value_dir_get(prefix)}
      if len(outcomes) == count:
        break
      if deadline is not None and time.monotonic() > deadline:
        missing = ', '.join(str(p) for p in range(count) if p not in outcomes)
        raise RunOutOfStep(
          f'sweep run {index} failed on process {me} ({error}) while process(es) {missing} '
          f'stayed inside it for {self.timeout_s:g} s (waiting in a collective for this one). '
          'The job stops; rerun the same command to resume the sweep'
        )
      time.sleep(self._POLL_S)
    failed = {p: v.removeprefix('failed ') for p, v in sorted(outcomes.items()) if v != 'ok'}
    if not failed:
      return None
    message = next(iter(failed.values()))
    if len(failed) == count and len(set(failed.values())) == 1:
      return message
    where = ', '.join(str(p) for p in failed)
    return f'on process {where} of {count}: {message}'
