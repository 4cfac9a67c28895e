"""Several processes of one job on this machine: loopback coordinator, CPU devices, timeouts.

Every process gets `--xla_force_host_platform_device_count` simulated CPU devices and joins a
coordinator on 127.0.0.1 (never another address) at a free port. Output goes to one log file
per process (a full pipe would stall a process); every wait has a deadline, after which the
processes are killed and the test fails with their logs, so a broken job never hangs the suite.
"""

import os
import signal
import socket
import subprocess
import time

from launching import NO_COMPILATION_CACHE, ROOT, xla_flags

HEARTBEAT_TIMEOUT_S = 10  # short, so a dead process is noticed quickly in tests


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def job_flags(process_id: int, num_processes: int, port: int) -> list[str]:
  """launch.py's flags for one process of a loopback-only job."""
  return [
    f'--coordinator_address=127.0.0.1:{port}',
    f'--coordinator_bind_address=127.0.0.1:{port}',
    f'--num_processes={num_processes}',
    f'--process_id={process_id}',
    '--initialization_timeout=120',
    f'--heartbeat_timeout={HEARTBEAT_TIMEOUT_S}',
  ]


class Job:
  """`num_processes` processes of `command` (+ job flags when more than one), started now."""

  def __init__(self, command, log_dir, *, num_processes=2, devices_per_process=2, name='job'):
    os.makedirs(log_dir, exist_ok=True)
    port = free_port()
    env = {
      **os.environ,
      'XLA_FLAGS': xla_flags(devices_per_process),
      'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])),
      'AAF_VERBOSE': '',
      **(NO_COMPILATION_CACHE if num_processes > 1 else {}),
    }
    self.logs = [os.path.join(log_dir, f'{name}.{i}.log') for i in range(num_processes)]
    self.processes = []
    for i, log in enumerate(self.logs):
      flags = job_flags(i, num_processes, port) if num_processes > 1 else []
      with open(log, 'w') as out:
        self.processes.append(
          subprocess.Popen(
            [*command, *flags], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
          )
        )

  def output(self, i: int) -> str:
    with open(self.logs[i]) as f:
      return f.read()

  def all_output(self) -> str:
    return '\n'.join(f'===== process {i} =====\n{self.output(i)}' for i in range(len(self.logs)))

  def kill(self) -> None:
    for process in self.processes:
      if process.poll() is None:
        process.kill()
        process.wait()

  def wait(self, timeout_s: float) -> list[int]:
    """Every process's exit status; kills them all and fails if one runs past `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    for process in self.processes:
      try:
        process.wait(timeout=max(0.1, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        self.kill()
        raise AssertionError(
          f'job still running after {timeout_s} s; killed it.\n{self.all_output()}'
        ) from None
    return [p.returncode for p in self.processes]

  def wait_ok(self, timeout_s: float) -> None:
    statuses = self.wait(timeout_s)
    assert statuses == [0] * len(statuses), f'exit statuses {statuses}\n{self.all_output()}'

  def wait_for(self, condition, timeout_s: float, what: str) -> None:
    """Polls `condition()` while every process runs; fails if one exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
      ended = [i for i, p in enumerate(self.processes) if p.poll() is not None]
      if ended or time.monotonic() > deadline:
        self.kill()
        raise AssertionError(
          f'waiting for {what}: processes {ended} ended / timed out.\n{self.all_output()}'
        )
      time.sleep(0.05)

  def kill_process(self, i: int) -> None:
    self.processes[i].send_signal(signal.SIGKILL)
    self.processes[i].wait()
