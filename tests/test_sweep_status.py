"""Where a sweep stands, from its folder alone and without jax: finished, running (a marker with
a heartbeat), failed with its reason, interrupted, or not started; and the running sweep's log."""

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from tiny import tiny_config

from aaf_jax import run_record, sweep
from aaf_jax.sweep import status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()


def _write(path, payload):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(payload, f)


def _dead_pid() -> int:
  """The pid of a process that has ended (and been reaped)."""
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  child.wait()
  return child.pid


def _marker(pid, heartbeat, fingerprint, host=HOST):
  return {
    'host': host,
    'pid': pid,
    'started': heartbeat - 30,
    'heartbeat': heartbeat,
    'interval_s': 60.0,
    'fingerprint': fingerprint,
  }


@pytest.fixture
def sweep_folder(tmp_path):
  """A sweep of 3 margins x 2 seeds whose six runs stand each in another state."""
  workdir = str(tmp_path / 'sweep')
  runs = sweep.plan(
    tiny_config(str(tmp_path / 'tfds')), workdir, ['loss.margin=[1.0, 2.0, 3.0]'], 2
  )
  status.write_plan(workdir, runs)
  prints = [run_record.fingerprint(r.config) for r in runs]
  now = time.time()
  _write(os.path.join(runs[0].workdir, 'results.json'), {'miou': 0.4321, 'fingerprint': prints[0]})
  _write(
    os.path.join(runs[1].workdir, 'failed.json'),
    {'fingerprint': prints[1], 'error': 'FloatingPointError: Non-finite loss at step 3'},
  )
  _write(os.path.join(runs[2].workdir, 'running.json'), _marker(os.getpid(), now - 5, prints[2]))
  _write(os.path.join(runs[3].workdir, 'running.json'), _marker(_dead_pid(), now - 5, prints[3]))
  os.makedirs(os.path.join(runs[4].workdir, 'checkpoints', '20'))
  os.makedirs(os.path.join(runs[4].workdir, 'checkpoints', '40'))
  # A result of another config (fewer steps, say) does not finish the run.
  _write(os.path.join(runs[5].workdir, 'results.json'), {'miou': 0.9, 'fingerprint': 'other'})
  return workdir, runs


def test_the_status_command_runs_without_jax_and_names_every_state(sweep_folder):
  workdir, _ = sweep_folder
  code = (
    'import sys\n'
    'from aaf_jax.sweep import status\n'
    'code = status.main(sys.argv[1:])\n'
    "assert 'jax' not in sys.modules, 'the status command imported jax'\n"
    'sys.exit(code)\n'
  )
  result = subprocess.run(
    [sys.executable, '-c', code, workdir], capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == (
    f'{workdir}: 6 runs of 3 grid points: 1 finished, 1 running, 1 failed, 2 interrupted, '
    '1 not started'
  )
  assert lines[1] == 'loss.margin=1.0'
  assert lines[2] == '  seed=0  finished: mIoU 43.21%'
  assert lines[3] == '  seed=1  failed: FloatingPointError: Non-finite loss at step 3'
  assert lines[4] == 'loss.margin=2.0'
  assert lines[5].startswith(f'  seed=0  running on {HOST} (pid {os.getpid()}), started ')
  assert re.search(r', last heartbeat [5-9] s ago$', lines[5]), lines[5]
  assert re.fullmatch(
    rf'  seed=1  interrupted: started, no result; its process \(pid \d+ on {HOST}\) is gone, '
    r'last heartbeat \d\d:\d\d:\d\d UTC; the next sweep invocation resumes it',
    lines[6],
  ), lines[6]
  assert lines[7] == 'loss.margin=3.0'
  assert lines[8] == (
    '  seed=0  interrupted: checkpoint at step 40; the next sweep invocation resumes it'
  )
  assert lines[9] == '  seed=1  not started'
  assert len(lines) == 10

  module = subprocess.run(
    [sys.executable, '-m', 'aaf_jax.sweep.status', workdir],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert module.returncode == 0 and module.stdout.splitlines()[1:5] == lines[1:5]
  assert module.stderr == ''  # no warning, no traceback


def test_a_folder_that_is_no_sweep_is_one_line(tmp_path):
  assert status.main([str(tmp_path / 'nowhere')]) == 2
  (tmp_path / 'empty').mkdir()
  assert status.main([str(tmp_path / 'empty')]) == 2


def test_without_a_plan_the_run_folders_are_listed(tmp_path):
  _write(str(tmp_path / 'loss.margin=1.0,seed=0' / 'results.json'), {'miou': 0.5})
  (tmp_path / 'loss.margin=2.0,seed=0' / 'checkpoints').mkdir(parents=True)
  lines = status.report(str(tmp_path))
  assert lines[0].startswith(f'{tmp_path}: 2 runs: 1 finished, 0 running, 0 failed, 1 inter')
  assert lines[2] == '  loss.margin=1.0,seed=0  finished: mIoU 50.00%'
  assert lines[-1].startswith('(no sweep.json: runs not yet started are not listed')


@pytest.mark.parametrize(
  'host, heartbeat_age, pid_alive, expected',
  [
    (HOST, 10, True, True),
    (HOST, 10, False, False),  # this host, the pid is gone
    (HOST, 181, True, False),  # no heartbeat for 3 intervals
    ('elsewhere', 10, False, True),  # another host: the heartbeat decides
    ('elsewhere', 181, False, False),
  ],
)
def test_a_marker_is_alive_while_its_process_beats(host, heartbeat_age, pid_alive, expected):
  now = 1_000_000.0
  pid = os.getpid() if pid_alive else _dead_pid()
  assert status.alive(_marker(pid, now - heartbeat_age, 'f', host), now) is expected


def test_the_marker_beats_while_the_block_runs_and_goes_after(tmp_path):
  run_dir = str(tmp_path / 'run')
  path = os.path.join(run_dir, 'running.json')
  with status.running_marker(run_dir, 'abc', interval_s=0.05):
    first = json.load(open(path))
    assert (first['host'], first['pid'], first['fingerprint']) == (HOST, os.getpid(), 'abc')
    assert status.state(run_dir, 'abc')['status'] == 'running'
    deadline = time.time() + 10
    while json.load(open(path))['heartbeat'] == first['heartbeat'] and time.time() < deadline:
      time.sleep(0.02)
    assert json.load(open(path))['heartbeat'] > first['heartbeat']
  assert not os.path.exists(path)
  with pytest.raises(RuntimeError), status.running_marker(run_dir, 'abc', interval_s=0.05):
    raise RuntimeError('the run crashed')
  assert not os.path.exists(path)


def test_a_running_sweep_is_seen_running_and_logs_which_run_it_is_on(tmp_path, caplog):
  workdir = str(tmp_path / 'sweep')
  runs = sweep.plan(tiny_config(str(tmp_path / 'tfds')), workdir, ['loss.margin=[1.0, 2.0]'], 1)
  seen = []

  def train(config, run_workdir):
    seen.append(status.report(workdir))
    _write(
      os.path.join(run_workdir, 'results.json'),
      {
        'miou': config.loss.margin / 10,
        'boundary_iou': 0.1,
        'pixel_acc': 0.9,
        'per_class_iou': {'disc': 0.1},
        'fingerprint': run_record.fingerprint(config),
      },
    )

  with caplog.at_level(logging.INFO):
    sweep.run_sweep(runs, workdir, train_fn=train)
  first, second = seen
  assert first[2].startswith(f'  seed=0  running on {HOST} (pid {os.getpid()})')
  assert first[4] == '  seed=0  not started'
  assert second[2] == '  seed=0  finished: mIoU 10.00%' and 'running on' in second[4]
  assert status.report(workdir)[0].endswith(
    '2 finished, 0 running, 0 failed, 0 interrupted, 0 not started'
  )
  assert not os.path.exists(os.path.join(runs[0].workdir, 'running.json'))
  messages = [r.getMessage() for r in caplog.records]
  assert 'Sweep: run 1 of 2: loss.margin=1.0,seed=0' in messages
  assert 'Sweep: run 2 of 2: loss.margin=2.0,seed=0' in messages


def test_a_run_with_a_live_marker_is_named_when_trained_again(tmp_path, caplog):
  workdir = str(tmp_path / 'sweep')
  (run,) = sweep.plan(tiny_config(str(tmp_path / 'tfds')), workdir, ['loss.margin=[1.0]'], 1)
  fingerprint = run_record.fingerprint(run.config)
  _write(os.path.join(run.workdir, 'running.json'), _marker(os.getpid(), time.time(), fingerprint))
  with caplog.at_level(logging.WARNING):
    sweep.run_sweep([run], workdir, train_fn=lambda config, run_workdir: None)
  assert f'Sweep: {run.workdir} has a live marker (pid {os.getpid()} on {HOST}); two processes' in (
    caplog.text
  )
  assert not os.path.exists(os.path.join(run.workdir, 'running.json'))
