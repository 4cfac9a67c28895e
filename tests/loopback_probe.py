"""One process of a loopback job that exercises aaf_jax.distributed without training.

python tests/loopback_probe.py STEP [STEP ...] --workdir=DIR --data_dir=DIR + launch.py's job
flags. Steps, in order: `workdir` (the shared-workdir check; '{process}' in --workdir gives each
process its own folder), `eval` (evaluation gathered across processes against a one-process
reference), `fail` (process 1 raises), `idle` (wait to be killed), `sweep` (a sweep of three stand-in runs
in lockstep: one fails on process 1 only after the last exchange, one fails on both at
different points, one succeeds), `sweep_stuck` (a run fails on process 1 while process 0 waits in an exchange with
it). Prints one line per step
passed; a user error prints 'error: ...' and exits with status 2, as launch.py does.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from tiny import tiny_config  # noqa: E402

from aaf_jax import distributed, errors, evaluate, jsonio, run_record, sharding, sweep  # noqa: E402

NUM_KEEP = 9  # more than one process's share of the first batch, and into the uneven last one


class _PixelRule:
  """A stand-in network whose prediction is a fixed function of each pixel (exact on any host)."""

  def __init__(self, num_classes):
    self.num_classes = num_classes

  def apply(self, variables, images, train):
    del variables, train
    classes = jnp.floor(images[..., 0]).astype(jnp.int32) % self.num_classes
    return {'logits': 10.0 * jax.nn.one_hot(classes, self.num_classes)}


def _reference(data_cfg, num_classes):
  """Confusion matrix and first NUM_KEEP examples, from one process reading the whole split."""
  from aaf_jax.data import pipeline

  confusion = np.zeros((num_classes, num_classes), np.int64)
  kept = []
  for batch in pipeline.make_eval_iterator(
    data_cfg, split='validation', global_batch_size=8, process_index=0, process_count=1
  ):
    preds = np.floor(batch['image'][..., 0]).astype(np.int32) % num_classes
    counted = (batch['label'] < num_classes) & batch['valid'][:, None, None]
    np.add.at(confusion, (batch['label'][counted], preds[counted]), 1)
    for i in np.flatnonzero(batch['valid']):
      kept.append((batch['image'][i], batch['label'][i], preds[i]))
  return confusion, kept[:NUM_KEEP]


def check_evaluation(data_dir):
  from aaf_jax.data import pipeline

  config = tiny_config(data_dir)
  info = distributed.first_on_process_0(
    lambda first: pipeline.dataset_info(config.data, prepare=first), 'probe data'
  )
  mesh = sharding.make_mesh()
  eval_step = evaluate.jit_eval_step(
    _PixelRule(info.num_classes), info.num_classes, mesh, sharding.replicated(mesh)
  )
  batches = pipeline.make_eval_iterator(config.data, split='validation', global_batch_size=8)
  with jax.set_mesh(mesh):
    sums, kept = evaluate.run_evaluation(
      eval_step, jnp.zeros(()), batches, mesh, info.num_classes, NUM_KEEP
    )
  confusion = sums['confusion']
  expected_confusion, expected_kept = _reference(config.data, info.num_classes)
  np.testing.assert_array_equal(confusion, expected_confusion)
  assert len(kept) == len(expected_kept) == NUM_KEEP, (len(kept), len(expected_kept))
  for got, expected in zip(kept, expected_kept):
    for a, b in zip(got, expected):
      np.testing.assert_array_equal(a, b)
  print(f'evaluation gathered: {int(confusion.sum())} pixels, {len(kept)} examples', flush=True)


def _stand_in_run(config, workdir):
  """A sweep run without training: a barrier stands for the train step's collectives."""
  me = jax.process_index()
  margin = config.loss.margin
  if margin == 2.0 and me == 0:  # process 1 then fails in the barrier, at another count
    raise FloatingPointError('fails on process 0 before the collective')
  distributed.barrier('collective', timeout_s=5 if margin == 2.0 else 120)
  if margin == 1.0 and me == 1:
    raise ValueError('fails on process 1 only, after the last collective')
  if margin == 3.0 and me == 0:
    os.makedirs(workdir, exist_ok=True)
    results = {'miou': 0.5, 'pixel_acc': 0.75, 'per_class_iou': {'a': 0.5}}
    results['fingerprint'] = run_record.fingerprint(config)
    jsonio.write_json_atomically(os.path.join(workdir, 'results.json'), results)


def _stuck_run(config, workdir):
  """Process 1 fails before the collective that process 0 waits in."""
  del config, workdir
  if jax.process_index() == 1:
    raise ValueError('fails on process 1 before the collective')
  distributed.barrier('collective', timeout_s=600)


def check_sweep(workdir, data_dir, train_fn):
  from absl import logging

  logging.set_verbosity(logging.INFO)  # the sweep's own lines: who writes the summary
  runs = sweep.plan(tiny_config(data_dir), workdir, ['loss.margin=[1.0,2.0,3.0]'], 1)
  counts = sweep.run_sweep(runs, workdir, train_fn=train_fn, job=distributed.Lockstep())
  print(f'sweep counts {json.dumps(counts, sort_keys=True)}', flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument(
    'steps', nargs='+', choices=['workdir', 'eval', 'fail', 'idle', 'sweep', 'sweep_stuck']
  )
  parser.add_argument('--workdir', default='')
  parser.add_argument('--data_dir', default='')
  parser.add_argument('--coordinator_address')
  parser.add_argument('--coordinator_bind_address')
  parser.add_argument('--num_processes', type=int)
  parser.add_argument('--process_id', type=int)
  parser.add_argument('--initialization_timeout', type=int)
  parser.add_argument('--heartbeat_timeout', type=int)
  args = parser.parse_args()
  try:
    distributed.initialize(
      coordinator_address=args.coordinator_address,
      coordinator_bind_address=args.coordinator_bind_address,
      num_processes=args.num_processes,
      process_id=args.process_id,
      initialization_timeout=args.initialization_timeout,
      heartbeat_timeout=args.heartbeat_timeout,
    )
    print(f'joined as process {jax.process_index()} of {jax.process_count()}', flush=True)
    with distributed.stop_all_on_failure():
      for step in args.steps:
        if step == 'workdir':
          workdir = args.workdir.format(process=jax.process_index())
          os.makedirs(workdir, exist_ok=True)
          distributed.check_shared_workdir(workdir)
          print('workdir shared', flush=True)
        elif step == 'eval':
          check_evaluation(args.data_dir)
        elif step == 'fail':
          distributed.barrier('probe_ready', timeout_s=120)
          if jax.process_index() == 1:
            raise RuntimeError('probe failure on purpose')
          time.sleep(300)
        elif step == 'sweep':
          check_sweep(args.workdir, args.data_dir, _stand_in_run)
        elif step == 'sweep_stuck':
          check_sweep(args.workdir, args.data_dir, _stuck_run)
        elif step == 'idle':
          print('idle', flush=True)
          time.sleep(300)
  except errors.UserError as e:
    print(f'error: {errors.one_line(e)}', file=sys.stderr, flush=True)
    sys.exit(2)
  distributed.shutdown()


if __name__ == '__main__':
  main()
