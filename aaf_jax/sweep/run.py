"""Running a sweep: every grid point checked, then this shard's runs trained one after another.

Each unfinished run trains in its own workdir (the trainer resumes one with a checkpoint); a
run that fails (a NaN, a crash) is recorded in its failed.json and the sweep goes on. A
finished run is evaluated on each evaluation set whose file it lacks, without training again.
The invocation that finds every run done writes the summary. Imports jax only through the
trainer, when a run trains.
"""

import contextlib
import os
import time

from absl import logging

from aaf_jax import jsonio, run_record
from aaf_jax.sweep import checks, grid, report, status


def _train(config, workdir):
  from aaf_jax import train  # the sweep's planning and summaries need no jax

  return train.train_and_evaluate(config, workdir)


def _evaluate(config, workdir):
  from aaf_jax import train

  return train.evaluate_checkpoint(config, workdir)


def _error_line(error: Exception) -> str:
  return f'{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}'.strip()


def run_sweep(
  runs: list[grid.Run],
  workdir: str,
  shard=(0, 1),
  train_fn=_train,
  baseline: dict | None = None,
  evaluate_fn=_evaluate,
  job=None,
) -> dict:
  """Check every run (`checks.check_runs`), then train this shard's unfinished runs in order
  and evaluate its finished ones on their evaluation sets; write the summary when every run is
  done (with each grid point's paired difference from the `baseline` grid point, when given).

  `job`: in a multi-process job, an aaf_jax.distributed.Lockstep: every process then trains
  (and evaluates) each run together, in the order process 0 found, and only process 0 writes
  the plan, the running markers, failed.json and the summary.

  Returns {'trained', 'skipped', 'failed'} counts of this invocation, and with evaluation sets
  {'evaluated', 'evaluation_failed'}.
  """
  checks.check_runs(runs, workdir)  # reads only: every process checks
  writes = job is None or job.writes
  if writes:
    status.write_plan(workdir, runs)
  index, count = shard
  mine = [r for r in runs if r.index % count == index]
  counts = {'trained': 0, 'skipped': 0, 'failed': 0}
  if any(r.evaluations for r in runs):
    counts.update(evaluated=0, evaluation_failed=0)
  todo = [r.index for r in mine if status.run_status(r)['status'] != 'finished']
  if job is not None:  # one plan for every process, whatever each sees of the files
    todo = job.from_process_0('todo', todo)
  by_index = {r.index: r for r in mine}
  todo = [by_index[i] for i in todo]
  counts['skipped'] = len(mine) - len(todo)
  logging.info(
    'Sweep: %d runs, %d in shard %d/%d, %d already finished.',
    len(runs),
    len(mine),
    index,
    count,
    counts['skipped'],
  )
  started = time.time()
  for done, run in enumerate(todo, 1):
    logging.info('Sweep: run %d of %d: %s', run.index + 1, len(runs), os.path.basename(run.workdir))
    found = status.run_status(run)
    if writes and found['status'] == 'running':  # the same sweep started twice, say
      logging.warning(
        'Sweep: %s has a live marker (pid %s on %s); two processes now train it.',
        run.workdir,
        found['marker'].get('pid'),
        found['marker'].get('host'),
      )
    failed_path = os.path.join(run.workdir, status.FAILED)
    if writes and os.path.exists(failed_path):
      os.remove(failed_path)
    fingerprint = run_record.fingerprint(run.config)
    if job is not None:
      job.begin(run.index)
    marker = status.running_marker(run.workdir, fingerprint) if writes else contextlib.nullcontext()
    error = None
    try:
      with marker:
        train_fn(run.config, run.workdir)
    except Exception as e:  # a failed run is recorded and the sweep goes on
      error = _error_line(e)
      logging.error('Sweep run %s failed: %s', run.workdir, error)
    if job is not None:  # failed on any process: failed on all, recorded once
      error = job.agree(run.index, error)
    if error is None:
      counts['trained'] += 1
    else:
      counts['failed'] += 1
      if writes:
        jsonio.write_json_atomically(failed_path, {'fingerprint': fingerprint, 'error': error})
    elapsed = time.time() - started
    eta = elapsed / done * (len(todo) - done)
    logging.info(
      'Sweep progress: %d/%d runs of this shard done (%d failed, %d skipped), ETA %s.',
      counts['skipped'] + done,
      len(mine),
      counts['failed'],
      counts['skipped'],
      time.strftime('%H:%M:%S', time.gmtime(eta)),
    )
  _evaluate_sets(mine, counts, evaluate_fn, job)
  if not writes:  # process 0 writes the summary
    return counts
  if all(status.run_status(r)['status'] in ('finished', 'failed') for r in runs):
    report.write_summary(runs, workdir, baseline)
  else:
    logging.info('Sweep: runs of other shards are not done yet; no summary written.')
  return counts


def _evaluate_sets(runs: list[grid.Run], counts: dict, evaluate_fn, job=None) -> None:
  """Each finished run on each of its evaluation sets whose scores are not there yet
  (`--mode=eval`'s path: the run's latest checkpoint, eval-DATASET-SPLIT.json). In a job,
  every process evaluates together the list process 0 found."""
  todo = [
    (run.index, name)
    for run in runs
    if run.evaluations and status.run_status(run)['status'] == 'finished'
    for name, config in run.evaluations.items()
    if status.evaluation_done(run.workdir, config) is None
  ]
  if job is not None:
    todo = [tuple(item) for item in job.from_process_0('evaluations', todo)]
  by_index = {r.index: r for r in runs}
  for number, (index, name) in enumerate(todo):
    run = by_index[index]
    logging.info('Sweep: evaluating %s on %s.', os.path.basename(run.workdir), name)
    if job is not None:
      job.begin(f'eval-{number}')
    error = None
    try:
      evaluate_fn(run.evaluations[name], run.workdir)
    except Exception as e:  # recorded in the log; the summary counts it as not evaluated
      error = _error_line(e)
    if job is not None:
      error = job.agree(f'eval-{number}', error)
    if error is None:
      counts['evaluated'] += 1
    else:
      counts['evaluation_failed'] += 1
      logging.error('Sweep: %s on %s failed: %s', run.workdir, name, error)
