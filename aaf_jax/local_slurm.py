"""A real single-node Slurm cluster on localhost, started under a temporary folder and stopped
by process id: munged with its own key and socket, slurmctld and slurmd (Debian's slurm-wlm).
What tests/test_engines.py and benchmarks/slurm_scaling.py run cluster/slurm.sbatch under.

No cgroups here: processes are tracked by /proc (proctrack/linuxproc) and tasks are not bound
(task/none). Every daemon listens on free ports, talks to the others on 127.0.0.1 and keeps
its state, logs and pid file in the folder; nothing of the machine's own Slurm or munge (if
any) is read or touched. The daemons run as root, as slurmd must (CI runs as root).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

PROGRAMS = ('munged', 'slurmctld', 'slurmd', 'sbatch', 'sinfo', 'scontrol', 'scancel')
_START_TIMEOUT_S = 60


def missing() -> str | None:
  """Why a local cluster cannot start here (a missing program, not root), or None."""
  absent = [name for name in PROGRAMS if shutil.which(name) is None]
  if absent:
    return f'{", ".join(absent)} not installed (apt-get install slurm-wlm munge; .ci/run does it)'
  if os.geteuid() != 0:
    return 'slurmd must run as root'
  return None


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class LocalSlurm:
  """munged + slurmctld + slurmd in `folder`; `with LocalSlurm(folder) as slurm: ...`."""

  def __init__(self, folder):
    self.folder = os.path.abspath(folder)
    self.conf = os.path.join(self.folder, 'slurm.conf')
    self.socket = os.path.join(self.folder, 'munge', 'munge.socket')
    self.env = {**os.environ, 'SLURM_CONF': self.conf}
    self._pid_files = []

  def __enter__(self):
    try:
      self.start()
    except BaseException:
      self.stop()
      raise
    return self

  def __exit__(self, *exc):
    self.stop()

  def _path(self, *parts) -> str:
    return os.path.join(self.folder, *parts)

  def start(self) -> None:
    for sub in ('munge', 'state', 'spool', 'log'):
      os.makedirs(self._path(sub), exist_ok=True)
    os.chmod(self.folder, 0o755)  # munged refuses a socket in a folder others may write
    os.chmod(self._path('munge'), 0o755)
    key = self._path('munge', 'munge.key')
    with open(key, 'wb') as f:
      f.write(os.urandom(1024))
    os.chmod(key, 0o400)
    self._pid_files.append(self._path('munge', 'munged.pid'))
    subprocess.run(
      [
        'munged',
        '--force',  # root, and a key in a folder of our own
        f'--socket={self.socket}',
        f'--key-file={key}',
        f'--log-file={self._path("log", "munged.log")}',
        f'--pid-file={self._pid_files[-1]}',
        f'--seed-file={self._path("munge", "munged.seed")}',
      ],
      check=True,
      capture_output=True,
    )
    self._write_conf()
    for daemon in ('slurmctld', 'slurmd'):
      self._pid_files.append(self._path(f'{daemon}.pid'))
      # slurmctld -i: ignore any state from before (a fresh cluster every time).
      flags = ['-i'] if daemon == 'slurmctld' else []
      subprocess.run([daemon, '-f', self.conf, *flags], check=True, env=self.env)
    self._wait_until_idle()

  def _write_conf(self) -> None:
    node = socket.gethostname().split('.')[0]
    lines = {
      'ClusterName': 'aafjaxci',
      'SlurmctldHost': f'{node}(127.0.0.1)',
      'SlurmctldPort': _free_port(),
      'SlurmdPort': _free_port(),
      'SlurmUser': 'root',
      'SlurmdUser': 'root',
      'AuthType': 'auth/munge',
      'CredType': 'cred/munge',
      'AuthInfo': f'socket={self.socket}',
      'StateSaveLocation': self._path('state'),
      'SlurmdSpoolDir': self._path('spool'),
      'SlurmctldPidFile': self._path('slurmctld.pid'),
      'SlurmdPidFile': self._path('slurmd.pid'),
      'SlurmctldLogFile': self._path('log', 'slurmctld.log'),
      'SlurmdLogFile': self._path('log', 'slurmd.log'),
      'ProctrackType': 'proctrack/linuxproc',
      'TaskPlugin': 'task/none',
      'JobAcctGatherType': 'jobacct_gather/none',
      'AccountingStorageType': 'accounting_storage/none',
      'SchedulerType': 'sched/builtin',
      'SelectType': 'select/cons_tres',
      'SelectTypeParameters': 'CR_CPU',
      'MpiDefault': 'none',
      'ReturnToService': 2,
      'KillWait': 5,
      'MinJobAge': 3600,  # finished jobs stay visible to scontrol
      'SlurmdParameters': 'config_overrides',  # the node's CPUs below, not the machine's
    }
    cpus = os.cpu_count() or 1
    with open(self.conf, 'w') as f:
      f.writelines(f'{key}={value}\n' for key, value in lines.items())
      # Tasks may share the cores: the benchmark runs up to 4 tasks on a 2-core machine.
      f.write(f'NodeName={node} NodeAddr=127.0.0.1 CPUs={max(cpus, 4)} State=UNKNOWN\n')
      f.write(f'PartitionName=ci Nodes={node} Default=YES MaxTime=INFINITE State=UP\n')

  def _wait_until_idle(self) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
      state = subprocess.run(
        ['sinfo', '-h', '-o', '%T'], env=self.env, capture_output=True, text=True
      )
      if state.returncode == 0 and state.stdout.strip() == 'idle':
        return
      if time.monotonic() > deadline:
        raise RuntimeError(
          f'the local Slurm node is not idle after {_START_TIMEOUT_S} s '
          f'(sinfo: {state.stdout.strip()!r} {state.stderr.strip()!r}).\n{self.logs()}'
        )
      time.sleep(0.5)

  def logs(self) -> str:
    out = []
    for name in sorted(os.listdir(self._path('log'))):
      with open(self._path('log', name), errors='replace') as f:
        out.append(f'===== {name} =====\n{f.read()[-4000:]}')
    return '\n'.join(out)

  def stop(self) -> None:
    """Stops the daemons this object started, by the pids in their pid files."""
    for pid_file in reversed(self._pid_files):
      try:
        with open(pid_file) as f:
          pid = int(f.read().split()[0])
      except (OSError, ValueError, IndexError):
        continue
      _terminate(pid)
    self._pid_files = []

  # ---- jobs

  def sbatch(self, *args, cwd) -> int:
    """Submits a batch job; returns its id."""
    out = subprocess.run(
      ['sbatch', '--parsable', *args], cwd=cwd, env=self.env, capture_output=True, text=True
    )
    if out.returncode != 0:
      raise RuntimeError(f'sbatch {" ".join(args)} failed: {out.stderr}\n{self.logs()}')
    return int(out.stdout.strip().split(';')[0])

  def job(self, job_id: int) -> dict[str, str]:
    out = subprocess.run(
      ['scontrol', 'show', 'job', '-o', str(job_id)],
      env=self.env,
      capture_output=True,
      text=True,
      check=True,
    )
    return dict(re.findall(r'(\w+)=(\S*)', out.stdout))

  def wait(self, job_id: int, timeout_s: float) -> tuple[str, str]:
    """(JobState, ExitCode) once the job has ended; cancels it and fails past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
      info = self.job(job_id)
      if info['JobState'] not in ('PENDING', 'CONFIGURING', 'RUNNING', 'COMPLETING'):
        return info['JobState'], info['ExitCode']
      if time.monotonic() > deadline:
        self.scancel(str(job_id))
        raise AssertionError(f'job {job_id} still {info["JobState"]} after {timeout_s} s')
      time.sleep(0.5)

  def scancel(self, *args) -> None:
    subprocess.run(['scancel', *args], env=self.env, check=True)

  def task_pids(self, job_id: int) -> dict[int, int]:
    """Global task id -> pid of the job's running tasks (its steps other than the batch one)."""
    out = subprocess.run(
      ['scontrol', 'listpids', str(job_id)], env=self.env, capture_output=True, text=True
    )
    pids = {}
    for line in out.stdout.splitlines()[1:]:  # PID JOBID STEPID LOCALID GLOBALID
      pid, _, step, _, global_id = line.split()
      if step.isdigit() and global_id.isdigit():
        pids.setdefault(int(global_id), int(pid))
    return pids


def _terminate(pid: int) -> None:
  try:
    os.kill(pid, signal.SIGTERM)
  except ProcessLookupError:
    return
  deadline = time.monotonic() + 15
  while time.monotonic() < deadline:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return
    time.sleep(0.1)
  try:
    os.kill(pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
