"""Data-parallel scaling of the main job's train step over processes (one device each).

For each process count N it starts N processes of one job on a loopback coordinator (127.0.0.1,
one CPU device each) and times, side by side in each process, rounds alternating:

  job step     the main job's jitted train step (network, loss, optimizer of
               configs/synthetic.py) over the job's global mesh: a global batch of N x
               --batch_per_process crops, gradients and BatchNorm statistics all-reduced across
               the processes (gloo on the CPU)
  local step   the same step over this process's own device only: the same per-process work
               with no cross-process collective

and prints steps/s and images/s of the job step, and the share of its time spent beyond the
local step (1 - local/job: the collectives, and waiting for the slowest process). Batches are
fixed random crops: the input pipeline is left out (benchmarks/main_job.py times it).

    python benchmarks/scaling.py --processes=1,2,4

Under a cluster engine, the same measurement for the job the engine started (process 0 prints):

    srun python benchmarks/scaling.py --worker --distributed
    mpirun -np 2 python benchmarks/scaling.py --worker --distributed

On a machine with fewer cores than processes, the processes also share the cores: the figures
then measure that contention as much as the collectives.
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 7  # the synthetic set's


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _seconds_per_step(train_step, state, batch, steps: int):
  import jax

  start = time.perf_counter()
  for _ in range(steps):
    state, metrics, _ = train_step(state, batch)
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - start) / steps


def worker(args) -> None:
  """One process of the job: time the job step and the local step; process 0 prints JSON."""
  sys.path.insert(0, ROOT)
  from aaf_jax import distributed

  distributed.initialize(
    coordinator_address=args.coordinator_address,
    coordinator_bind_address=args.coordinator_address,
    num_processes=args.num_processes,
    process_id=args.process_id,
    auto_detect=args.distributed,
  )
  import jax
  import numpy as np

  from aaf_jax import builder, sharding, step
  from configs import synthetic

  config = synthetic.get_config('aaf')
  crop = config.data.crop_size
  trainable = builder.build(config, NUM_CLASSES)
  update = step.make_train_step(trainable.model, trainable.tx, config, NUM_CLASSES)
  rng = np.random.default_rng(jax.process_index())
  local = {
    'image': rng.normal(size=(args.batch_per_process, crop, crop, 3)).astype(np.float32),
    'label': rng.integers(0, NUM_CLASSES, (args.batch_per_process, crop, crop)).astype(np.int32),
  }

  runs = {}
  for name, devices in (('job', jax.devices()), ('local', jax.local_devices())):
    mesh = sharding.make_mesh(devices)
    replicated = sharding.replicated(mesh)
    shardings = trainable.state_sharding(mesh)
    state = trainable.init_state(shardings)
    train_step = jax.jit(
      update,
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=(shardings, replicated, replicated),
      donate_argnums=0,
    )
    if name == 'job':
      batch = sharding.global_batch(local, mesh)
    else:
      batch = jax.device_put(local, sharding.batch_sharding(mesh))
    state, _ = _seconds_per_step(train_step, state, batch, 2)  # compiles
    runs[name] = {'step': train_step, 'state': state, 'batch': batch, 'times': []}

  for _ in range(args.rounds):
    for run in runs.values():
      run['state'], seconds = _seconds_per_step(run['step'], run['state'], run['batch'], args.steps)
      run['times'].append(seconds)
  job_s, local_s = (min(runs[k]['times']) for k in ('job', 'local'))
  if jax.process_index() == 0:
    print(
      json.dumps(
        {
          'processes': jax.process_count(),
          'devices': jax.device_count(),
          'global_batch': args.batch_per_process * jax.process_count(),
          'job_step_s': job_s,
          'local_step_s': local_s,
        }
      ),
      flush=True,
    )
  distributed.shutdown()


def run_job(num_processes: int, args) -> dict:
  """Start `num_processes` workers on loopback, one CPU device each; process 0's figures."""
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, env.get('PYTHONPATH')]))
  common = [
    sys.executable,
    os.path.abspath(__file__),
    '--worker',
    f'--steps={args.steps}',
    f'--rounds={args.rounds}',
    f'--batch_per_process={args.batch_per_process}',
  ]
  if num_processes > 1:
    job = [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={num_processes}']
  else:
    job = []
  processes = [
    subprocess.Popen(
      [*common, *job, *([f'--process_id={i}'] if job else [])],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.DEVNULL,
      text=True,
    )
    for i in range(num_processes)
  ]
  outputs = [p.communicate(timeout=args.timeout)[0] for p in processes]
  failed = [i for i, p in enumerate(processes) if p.returncode]
  if failed:
    raise RuntimeError(f'{num_processes} processes: process {failed} failed')
  return json.loads(outputs[0].strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--processes', default='1,2,4', help='process counts, e.g. 1,2,4')
  parser.add_argument('--steps', type=int, default=10, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--batch_per_process', type=int, default=8)
  parser.add_argument('--timeout', type=int, default=1800, help='seconds per job')
  parser.add_argument('--worker', action='store_true', help='be one process of a job')
  parser.add_argument('--distributed', action='store_true', help='--worker: from the engine')
  parser.add_argument('--coordinator_address')
  parser.add_argument('--num_processes', type=int)
  parser.add_argument('--process_id', type=int)
  args = parser.parse_args()
  if args.worker:
    worker(args)
    return

  counts = [int(n) for n in args.processes.split(',')]
  print(
    f'{platform.node()}, {os.cpu_count()} cores, {platform.python_version()}; one CPU device '
    f'per process; {args.batch_per_process} crops per process; best of {args.rounds} rounds '
    f'of {args.steps} steps'
  )
  print(
    f'{"processes":>9} {"global batch":>12} {"job steps/s":>12} {"images/s":>9} '
    f'{"local steps/s":>14} {"beyond local":>13}'
  )
  for n in counts:
    r = run_job(n, args)
    share = 1 - r['local_step_s'] / r['job_step_s']
    print(
      f'{r["processes"]:>9} {r["global_batch"]:>12} {1 / r["job_step_s"]:>12.2f} '
      f'{r["global_batch"] / r["job_step_s"]:>9.1f} {1 / r["local_step_s"]:>14.2f} '
      f'{100 * share:>12.0f}%',
      flush=True,
    )


if __name__ == '__main__':
  main()
