"""Where a sweep stands, from its folder alone: each run finished, running, failed or not started.

    python -m aaf_jax.sweep.status WORKDIR

A sweep writes its plan to WORKDIR/sweep.json before its first run, and each run leaves
`running.json` (host, pid, a heartbeat renewed every minute) in its folder while it trains. A
run is finished when its results.json carries its config's fingerprint, failed when its
failed.json does, running while its marker's process is alive (on this host) and its heartbeat
fresh; a marker left by a process that is gone reads as interrupted. Imports no jax, so it runs
on a login node.
"""

import argparse
import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time

from aaf_jax import errors, jsonio, run_record
from aaf_jax.sweep import grid

PLAN = 'sweep.json'
RESULTS = 'results.json'
FAILED = 'failed.json'
RUNNING = 'running.json'
HEARTBEAT_S = 60.0
# A heartbeat older than this many intervals means the run's process is gone.
STALE_AFTER_BEATS = 3


def read_json(path):
  """The JSON in `path`, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def state(run_dir: str, fingerprint: str | None) -> dict:
  """{'status': finished|running|failed|interrupted|pending, ...} of the run in `run_dir`.

  finished: 'results'; running: 'marker' (running.json); failed: 'error'; interrupted (a
  checkpoint, or a marker whose process is gone): 'marker' when there is one. `fingerprint`
  None accepts a result of any config (a folder without its sweep's plan).
  """

  def mine(record):
    return record is not None and fingerprint in (None, record.get('fingerprint'))

  results = read_json(os.path.join(run_dir, RESULTS))
  if mine(results):
    return {'status': 'finished', 'results': results}
  marker = read_json(os.path.join(run_dir, RUNNING))
  marker = marker if mine(marker) else None
  if marker is not None and alive(marker):
    return {'status': 'running', 'marker': marker}
  failed = read_json(os.path.join(run_dir, FAILED))
  if mine(failed):
    return {'status': 'failed', 'error': failed['error']}
  if os.path.isdir(os.path.join(run_dir, 'checkpoints')) or marker is not None:
    return {'status': 'interrupted', **({'marker': marker} if marker else {})}
  return {'status': 'pending'}


def run_status(run: grid.Run) -> dict:
  """`state` of a planned run (its results must carry its config's fingerprint)."""
  return state(run.workdir, run_record.fingerprint(run.config))


def evaluation_done(run_dir: str, eval_config) -> dict | None:
  """The scores of an evaluation set's file in `run_dir` when they are of `eval_config`."""
  scores = read_json(os.path.join(run_dir, run_record.eval_results_name(eval_config)))
  if scores is not None and scores.get('fingerprint') == run_record.fingerprint(eval_config):
    return scores
  return None


def alive(marker: dict, now: float | None = None) -> bool:
  """Whether the process that wrote a running.json still runs: a fresh heartbeat and, on this
  host, its pid still there."""
  now = time.time() if now is None else now
  limit = STALE_AFTER_BEATS * float(marker.get('interval_s', HEARTBEAT_S))
  if now - float(marker.get('heartbeat', 0)) > limit:
    return False
  if marker.get('host') == socket.gethostname():
    try:
      os.kill(int(marker['pid']), 0)
    except ProcessLookupError:
      return False
    except (PermissionError, KeyError, ValueError, TypeError):
      pass  # another user's process, or a marker without a pid: the heartbeat decides
  return True


@contextlib.contextmanager
def running_marker(run_dir: str, fingerprint: str, interval_s: float = HEARTBEAT_S):
  """RUN_DIR/running.json while the block runs: host, pid, start, a heartbeat renewed every
  `interval_s` by a thread; removed when the block ends, however it ends."""
  path = os.path.join(run_dir, RUNNING)
  now = time.time()
  record = {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'started': now,
    'heartbeat': now,
    'interval_s': interval_s,
    'fingerprint': fingerprint,
  }
  jsonio.write_json_atomically(path, record)
  stop = threading.Event()

  def beat():
    while not stop.wait(interval_s):
      record['heartbeat'] = time.time()
      with contextlib.suppress(OSError):  # a full disk must not stop the run
        jsonio.write_json_atomically(path, record)

  thread = threading.Thread(target=beat, name='sweep-heartbeat', daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)


def write_plan(workdir: str, runs: list[grid.Run]) -> None:
  """WORKDIR/sweep.json: every run's name, grid point, seed, fingerprint and evaluation sets."""
  jsonio.write_json_atomically(
    os.path.join(workdir, PLAN),
    {
      'runs': [
        {
          'name': os.path.basename(run.workdir),
          'overrides': json.loads(json.dumps(run.overrides)),
          'seed': run.seed,
          'fingerprint': run_record.fingerprint(run.config),
          'evaluations': {
            name: {
              'file': run_record.eval_results_name(config),
              'fingerprint': run_record.fingerprint(config),
            }
            for name, config in run.evaluations.items()
          },
        }
        for run in runs
      ]
    },
  )


def _planned_runs(workdir: str) -> tuple[list[dict], bool]:
  """(the runs of WORKDIR/sweep.json, True), or the run folders found there and False."""
  plan = read_json(os.path.join(workdir, PLAN))
  if plan is not None:
    return plan['runs'], True
  if not os.path.isdir(workdir):
    raise errors.MissingFileError(f'{workdir}: no such folder.')
  found = []
  for name in sorted(os.listdir(workdir)):
    folder = os.path.join(workdir, name)
    if os.path.isdir(folder) and any(
      os.path.exists(os.path.join(folder, f)) for f in (RESULTS, FAILED, RUNNING, 'checkpoints')
    ):
      found.append({'name': name, 'overrides': None, 'seed': None, 'fingerprint': None})
  if not found:
    raise errors.MissingFileError(
      f'{workdir}: no {PLAN} and no run folders; not a sweep folder (a sweep writes {PLAN} '
      'before its first run).'
    )
  return found, False


def _clock(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime('%H:%M:%S UTC')


def _steps(run_dir: str) -> list[int]:
  folder = os.path.join(run_dir, 'checkpoints')
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(n) for n in names if n.isdigit())


def describe(run_dir: str, found: dict, now: float) -> str:
  """One line for a run's `state`: what it is, and the reason or the score."""
  status = found['status']
  if status == 'finished':
    return f'finished: mIoU {100 * found["results"]["miou"]:.2f}%'
  if status == 'failed':
    return f'failed: {found["error"]}'
  if status == 'running':
    marker = found['marker']
    return (
      f'running on {marker.get("host")} (pid {marker.get("pid")}), started '
      f'{_clock(marker["started"])}, last heartbeat {now - marker["heartbeat"]:.0f} s ago'
    )
  if status == 'interrupted':
    steps = _steps(run_dir)
    text = 'interrupted: ' + (f'checkpoint at step {steps[-1]}' if steps else 'started, no result')
    marker = found.get('marker')
    if marker is not None:
      text += (
        f'; its process (pid {marker.get("pid")} on {marker.get("host")}) is gone, last '
        f'heartbeat {_clock(marker["heartbeat"])}'
      )
    return text + '; the next sweep invocation resumes it'
  return 'not started'


def report(workdir: str, now: float | None = None) -> list[str]:
  """The status command's lines: a total, then each grid point and its runs."""
  now = time.time() if now is None else now
  runs, planned = _planned_runs(workdir)
  counts = dict.fromkeys(('finished', 'running', 'failed', 'interrupted', 'pending'), 0)
  groups = {}
  for run in runs:
    run_dir = os.path.join(workdir, run['name'])
    found = state(run_dir, run['fingerprint'])
    counts[found['status']] += 1
    line = describe(run_dir, found, now)
    if found['status'] == 'finished':
      for name, evaluation in run.get('evaluations', {}).items():
        scores = read_json(os.path.join(run_dir, evaluation['file']))
        done = scores is not None and scores.get('fingerprint') == evaluation['fingerprint']
        line += f'; {name}: ' + (f'mIoU {100 * scores["miou"]:.2f}%' if done else 'not evaluated')
    if planned:
      point, seed = grid.point_name(run['overrides']), f'seed={run["seed"]}'
    else:
      point, seed = '(run folders, no sweep.json)', run['name']
    groups.setdefault(point, []).append(f'  {seed}  {line}')
  points = f' of {len(groups)} grid points' if planned else ''
  lines = [
    f'{workdir}: {len(runs)} runs{points}: {counts["finished"]} finished, {counts["running"]} '
    f'running, {counts["failed"]} failed, {counts["interrupted"]} interrupted, '
    f'{counts["pending"]} not started'
  ]
  for point, members in groups.items():
    lines += [point, *members]
  if not planned:
    lines.append(f'(no {PLAN}: runs not yet started are not listed, and results are not checked')
    lines[-1] += " against the sweep's config)"
  return lines


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('workdir', help='the folder a sweep was given as --workdir')
  args = parser.parse_args(argv)
  try:
    lines = report(args.workdir)
  except errors.UserError as e:
    print(f'error: {errors.one_line(str(e))}', file=sys.stderr)
    return 2
  try:
    print('\n'.join(lines), flush=True)
  except BrokenPipeError:  # `| head`: the reader has what it wanted
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  return 0


if __name__ == '__main__':
  sys.exit(main())
