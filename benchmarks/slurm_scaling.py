"""Steps/s and images/s of the main job's network under a real Slurm, at 1, 2 and 4 tasks.

Starts a single-node Slurm cluster on localhost (aaf_jax/local_slurm.py: munged, slurmctld,
slurmd under a temporary folder, stopped by pid at the end), then submits
`cluster/slurm.sbatch --cpu` once per task count: configs/synthetic.py (batch 8 in all, split
over the tasks, one CPU device each) for --steps steps, timing the last --log_every steps as
the run reports them (clu's steps/s over that interval, after compilation). Needs root and
Debian's slurm-wlm and munge; run from the repository root, with .venv set up:

    .venv/bin/python benchmarks/slurm_scaling.py [--tasks=1,2,4] [--steps=300] [--log_every=100]
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time

from aaf_jax import local_slurm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BATCH = 8


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--tasks', default='1,2,4')
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--log_every', type=int, default=100)
  parser.add_argument('--timeout_s', type=int, default=1800)
  parser.add_argument('--logs', default='', help="a folder to keep the jobs' output in")
  args = parser.parse_args()
  reason = local_slurm.missing()
  if reason:
    sys.exit(f'error: cannot start a local Slurm: {reason}')

  with tempfile.TemporaryDirectory(prefix='aaf-slurm-scaling-') as folder:
    data_dir = os.path.join(folder, 'data')
    rows = []
    with local_slurm.LocalSlurm(os.path.join(folder, 'slurm')) as slurm:
      for tasks in [int(t) for t in args.tasks.split(',')]:
        out = os.path.join(folder, f'tasks{tasks}.out')
        started = time.monotonic()
        job = slurm.sbatch(
          '--nodes=1',
          f'--ntasks-per-node={tasks}',
          '--gpus-per-node=0',
          '--cpus-per-task=1',
          f'--output={out}',
          'cluster/slurm.sbatch',
          '--cpu',
          f'configs/synthetic.py:aaf,steps={args.steps},batch={BATCH},data_dir={data_dir}',
          os.path.join(folder, f'run{tasks}'),
          f'--config.log_every_steps={args.log_every}',
          f'--config.checkpoint_every_steps={args.steps}',
          cwd=ROOT,
        )
        state = slurm.wait(job, args.timeout_s)
        wall = time.monotonic() - started
        with open(out, errors='replace') as f:
          log = f.read()
        if args.logs:
          os.makedirs(args.logs, exist_ok=True)
          shutil.copy(out, args.logs)
        rates = re.findall(rf'\[{args.steps}\] .*?steps/s=([0-9.]+)', log)
        if not rates:
          sys.exit(
            f'error: {tasks} task(s): job {state}, no steps/s at step {args.steps}\n{log[-5000:]}'
          )
        # Training's figure stands even if the job failed afterwards (its final evaluation).
        ended = 'ok' if state == ('COMPLETED', '0:0') else f'{state[0]} {state[1]} after training'
        steps_s = float(rates[0])
        rows.append((tasks, steps_s, steps_s * BATCH, wall, ended))
        print(f'{tasks} task(s): {steps_s:.2f} steps/s, job wall {wall:.0f} s, {ended}', flush=True)

  print(f'\nmain job network, global batch {BATCH}, 1 CPU device per task, {os.cpu_count()} cores')
  print('| tasks | steps/s | images/s | vs the first | job wall (s) | job |')
  print('|---|---|---|---|---|---|')
  base = rows[0][1]
  for tasks, steps_s, images_s, wall, ended in rows:
    print(
      f'| {tasks} | {steps_s:.2f} | {images_s:.1f} | {steps_s / base:.2f}x | {wall:.0f} | {ended} |'
    )


if __name__ == '__main__':
  main()
