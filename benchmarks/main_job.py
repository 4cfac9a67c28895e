"""The main job's speed on this machine and where its step time goes.

Builds exactly what `launch.py --config=configs/synthetic.py` trains (network, optimizer, input
pipeline) and times, side by side in one process:

  input pipeline   a batch from the training iterator alone (decode, augment, batch)
  step, ce         the jitted update with loss 'ce': forward, backward, optimizer
  step, aaf        the same with loss 'aaf' (the main job's step)
  AAF term         'aaf' minus 'ce', and the adaptive loss alone (forward + backward)
  fed loop         iterator + aaf step, once waiting for each step and once dispatching them
                   as train.py does (JAX runs a step while Python fetches the next batch)

Rounds alternate between the measurements so the load of a shared machine hits all alike.

    python benchmarks/main_job.py --data_dir=/tmp/tfds
"""

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from aaf_jax import affinity, builder, sharding, step
from aaf_jax.data import pipeline
from configs import synthetic


def build_step(config, num_classes: int):
  """(initial state, jitted train step, network) of what `config` names (aaf_jax/builder.py)."""
  trainable = builder.build(config, num_classes)
  state = trainable.init_state()
  train_step = jax.jit(
    step.make_train_step(trainable.model, trainable.tx, config, num_classes), donate_argnums=0
  )
  return state, train_step, trainable.model


def time_it(fn, repeats: int) -> float:
  """Seconds per call of fn() (which blocks), over `repeats` calls."""
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default='~/tensorflow_datasets')
  parser.add_argument('--steps', type=int, default=20, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  data_dir = os.path.expanduser(args.data_dir)

  config = synthetic.get_config(f'aaf,data_dir={data_dir}')
  info = pipeline.dataset_info(config.data)
  num_classes = info.num_classes
  mesh = sharding.make_mesh()
  iterator = pipeline.make_train_iterator(
    config.data, global_batch_size=config.batch_size, seed=0, process_index=0, process_count=1
  )
  batch = sharding.global_batch(next(iterator), mesh)

  runs = {}
  for kind in ('ce', 'aaf'):
    state, train_step, model = build_step(
      synthetic.get_config(f'{kind},data_dir={data_dir}'), num_classes
    )
    # Two warm-up steps: the first compiles for the initial state's placement, the second for
    # the placement of a step's output (one more compile, then none).
    for _ in range(2):
      state, _, _ = train_step(state, batch)
    jax.block_until_ready(state)
    runs[kind] = {'state': state, 'step': train_step, 'model': model}

  logits_shape = jax.eval_shape(
    lambda s: runs['aaf']['model'].apply(
      {'params': s.params['model'], 'batch_stats': s.batch_stats},
      batch['image'],
      train=False,
    ),
    runs['aaf']['state'],
  )['logits'].shape
  probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), logits_shape), -1)
  labels = jax.random.randint(jax.random.key(2), logits_shape[:3], 0, num_classes)
  tables = jnp.zeros((num_classes, len(config.loss.sizes)))

  @jax.jit
  def aaf_term(probs, edge_logits, nonedge_logits):
    def loss(p, e, n):
      edges, nonedges = affinity.adaptive_affinity_loss(
        p,
        labels,
        num_classes=num_classes,
        sizes=tuple(config.loss.sizes),
        margin=config.loss.margin,
        edge_logits=e,
        nonedge_logits=n,
      )
      return jnp.sum(edges + nonedges)

    return jax.grad(loss, argnums=(0, 1, 2))(probs, edge_logits, nonedge_logits)

  jax.block_until_ready(aaf_term(probs, tables, tables))

  def run_step(kind):
    run = runs[kind]
    run['state'], _, _ = run['step'](run['state'], batch)
    jax.block_until_ready(run['state'])

  def fed_step():
    run = runs['aaf']
    run['state'], _, finite = run['step'](run['state'], sharding.global_batch(next(iterator), mesh))
    return finite

  def fed_loop():
    """Seconds per step of args.steps steps run as train.py runs them: it waits for a step's
    finite flag only once the next step is queued, so one step runs while Python fetches and
    places the next batch."""
    start, pending = time.perf_counter(), None
    for _ in range(args.steps):
      finite = fed_step()
      if pending is not None:
        jax.device_get(pending)
      pending = finite
    jax.block_until_ready(runs['aaf']['state'])
    return (time.perf_counter() - start) / args.steps

  times = {name: [] for name in ('pipeline', 'ce', 'aaf', 'aaf_term', 'fed', 'fed_async')}
  for _ in range(args.rounds):
    times['pipeline'].append(time_it(lambda: next(iterator), args.steps))
    times['ce'].append(time_it(lambda: run_step('ce'), args.steps))
    times['aaf'].append(time_it(lambda: run_step('aaf'), args.steps))
    times['aaf_term'].append(
      time_it(lambda: jax.block_until_ready(aaf_term(probs, tables, tables)), args.steps)
    )
    times['fed'].append(time_it(lambda: jax.block_until_ready(fed_step()), args.steps))
    times['fed_async'].append(fed_loop())
  ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}

  print(
    f'# main job: crop {config.data.crop_size}, batch {config.batch_size}, logits '
    f'{tuple(logits_shape[1:3])}, {num_classes} classes; {os.cpu_count()} CPUs, '
    f'load {os.getloadavg()[0]:.1f} at the end; jax {jax.__version__}, {platform.node()}; '
    f'median of {args.rounds} rounds of {args.steps}'
  )
  print('| part | ms per step | share of the aaf step |')
  print('|---|---|---|')
  rows = [
    ('input pipeline alone (one batch)', ms['pipeline'], None),
    ('forward + backward + update (ce step)', ms['ce'], ms['ce'] / ms['aaf']),
    ('AAF term (aaf step - ce step)', ms['aaf'] - ms['ce'], (ms['aaf'] - ms['ce']) / ms['aaf']),
    ('AAF loss alone, forward + backward', ms['aaf_term'], ms['aaf_term'] / ms['aaf']),
    ('aaf step (on one fixed batch)', ms['aaf'], 1.0),
    ('fed loop: iterator + aaf step, waiting for each', ms['fed'], ms['fed'] / ms['aaf']),
    (
      'fed loop as train.py runs it (one step queued ahead)',
      ms['fed_async'],
      ms['fed_async'] / ms['aaf'],
    ),
  ]
  for name, value, share in rows:
    print(f'| {name} | {value:.1f} | {"-" if share is None else f"{share:.2f}"} |')
  for name, key in (('waiting for each step', 'fed'), ('as train.py runs it', 'fed_async')):
    print(
      f'fed loop, {name}: {1e3 / ms[key]:.2f} steps/s, '
      f'{1e3 * config.batch_size / ms[key]:.1f} images/s'
    )


if __name__ == '__main__':
  main()
