"""The main job's train step at other crop sizes and batch sizes: ms per step and images/s.

Builds the main job's network and optimizer (configs/synthetic.py) once per (batch, crop)
setting and times the jitted update on one fixed random batch, rounds alternating between the
settings so the load of a shared machine hits all alike. No dataset is needed. The step is
built as benchmarks/main_job.py builds it.

    python benchmarks/crop_batch.py --settings 8x64 8x48 16x48 --loss aaf
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from main_job import build_step  # benchmarks/ is on the path when this runs as a script

from configs import synthetic

NUM_CLASSES = 7  # the synthetic set's


def build(loss: str, batch: int, crop: int):
  """(jitted step, state, batch) for the main job's config at this batch and crop size."""
  config = synthetic.get_config(f'{loss},batch={batch}')
  config.unlock()
  config.data.crop_size = crop
  config.lock()
  state, train_step = build_step(config, NUM_CLASSES)
  rng = np.random.default_rng(0)
  data = {
    'image': jnp.asarray(rng.normal(size=(batch, crop, crop, 3)), jnp.float32),
    'label': jnp.asarray(rng.integers(0, NUM_CLASSES, size=(batch, crop, crop)), jnp.int32),
  }
  # Two warm-up steps: the first compiles for the initial state's placement, the second for
  # the placement of a step's output (one more compile, then none).
  for _ in range(2):
    state, _, _ = train_step(state, data)
  jax.block_until_ready(state)
  return train_step, state, data


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--settings', nargs='+', default=['8x64', '8x48'], help='BATCHxCROP')
  parser.add_argument('--loss', default='aaf', choices=['ce', 'affinity', 'aaf'])
  parser.add_argument('--steps', type=int, default=30, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()

  settings = []
  for text in args.settings:
    batch, _, crop = text.partition('x')
    settings.append((int(batch), int(crop)))
  built = {s: list(build(args.loss, *s)) for s in settings}
  times = {s: [] for s in settings}
  for _ in range(args.rounds):
    for s, entry in built.items():
      train_step, state, data = entry
      start = time.perf_counter()
      for _ in range(args.steps):
        state, _, _ = train_step(state, data)
      jax.block_until_ready(state)
      times[s].append((time.perf_counter() - start) / args.steps)
      entry[1] = state

  print(
    f'# {platform.node()}, {jax.devices()[0].device_kind}, jax {jax.__version__}, loss '
    f'{args.loss}, median of {args.rounds} rounds of {args.steps} steps'
  )
  print('| batch x crop | ms per step | images/s | pixels/s (M) |')
  print('|---|---|---|---|')
  for (batch, crop), values in times.items():
    seconds = statistics.median(values)
    print(
      f'| {batch} x {crop} | {1000 * seconds:.1f} | {batch / seconds:.0f} | '
      f'{batch * crop * crop / seconds / 1e6:.2f} |'
    )


if __name__ == '__main__':
  main()
