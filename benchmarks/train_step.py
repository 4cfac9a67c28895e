"""Train-step throughput, 'ce' against 'aaf' (and 'affinity'), on random data in one process.

Prints images/s per loss kind, the AAF overhead as a step-time ratio, the FLOPs per image and
the achieved FLOP/s. FLOPs are counted from the step's jaxpr (every convolution and matrix
product, forward and backward): XLA's cost analysis leaves out convolutions that run as library
calls (cuDNN), so it undercounts on GPUs. Needs no TensorFlow.

    python benchmarks/train_step.py                                   # tiny synthetic net, CPU
    python benchmarks/train_step.py --preset=pspnet_resnet101 --crop=336 --batch=8 \
        --dtype=bfloat16                                              # the paper's net, GPU
"""

import argparse
import platform
import statistics
import time

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from aaf_jax import builder, presets, step, validation
from configs import common


def count_flops(jaxpr) -> float:
  """2 x multiply-adds of every conv_general_dilated and dot_general, sub-jaxprs included."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(rhs) / out_features
    elif name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in lhs_contract])
    repeat = eqn.params.get('length', 1) if name == 'scan' else 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += repeat * count_flops(sub)
  return total


def random_batch(batch, crop, classes, seed=0):
  """Random images and 16 px label blocks with 2% ignored pixels: edges everywhere, like data."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, size=(batch, crop // 16 + 1, crop // 16 + 1))
  labels = labels.repeat(16, 1).repeat(16, 2)[:, :crop, :crop]
  labels[rng.random(labels.shape) < 0.02] = 255
  return {
    'image': jnp.asarray(rng.normal(size=(batch, crop, crop, 3)) * 50, jnp.float32),
    'label': jnp.asarray(labels, jnp.int32),
  }


def build(preset, kind, crop, batch, num_classes, dtype, steps, dilated_conv=None):
  config = common.base_config(kind, preset)
  if dilated_conv:
    config.model.dilated_conv = dilated_conv
  config.num_train_steps = steps
  config.batch_size = batch
  config.compute_dtype = dtype
  config.data.crop_size = crop
  trainable = builder.build(config, num_classes)
  state = trainable.init_state()
  train_step = jax.jit(
    step.make_train_step(trainable.model, trainable.tx, config, num_classes), donate_argnums=0
  )
  return state, train_step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--preset', default='pspnet_tiny')
  parser.add_argument('--crop', type=int, default=96)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--classes', type=int, default=21)
  parser.add_argument('--dtype', default='float32', choices=validation.COMPUTE_DTYPES)
  parser.add_argument('--steps', type=int, default=10, help='timed steps per round')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--kinds', nargs='+', default=['ce', 'aaf'])
  parser.add_argument(
    '--dilated_conv',
    choices=presets.DILATED_CONV_FORMS,
    default=None,
    help="how dilated convs compute (config.model.dilated_conv); default: the preset's",
  )
  parser.add_argument(
    '--peak_tflops',
    type=float,
    default=0.0,
    help='measured bf16 matmul rate (benchmarks/matmul_peak.py), for MFU',
  )
  args = parser.parse_args()

  batch = random_batch(args.batch, args.crop, args.classes)

  runs = {}
  for kind in args.kinds:
    state, train_step = build(
      args.preset, kind, args.crop, args.batch, args.classes, args.dtype, 1000, args.dilated_conv
    )
    flops = count_flops(jax.make_jaxpr(train_step)(state, batch).jaxpr)
    state, _, _ = train_step(state, batch)  # warm-up
    jax.block_until_ready(state)
    runs[kind] = dict(state=state, step=train_step, flops=flops, times=[])
  for _ in range(args.rounds):  # alternate kinds so machine noise hits all alike
    for run in runs.values():
      start = time.perf_counter()
      for _ in range(args.steps):
        run['state'], metrics, _ = run['step'](run['state'], batch)
      jax.block_until_ready(run['state'])
      run['times'].append((time.perf_counter() - start) / args.steps)

  device = jax.devices()[0]
  runs_form = args.dilated_conv or common.base_config('ce', args.preset).model.dilated_conv
  print(
    f'# {args.preset}, crop {args.crop}, batch {args.batch}, {args.classes} classes, '
    f'{args.dtype}, dilated_conv {runs_form}; device {device.device_kind} x{jax.device_count()} '
    f'({jax.default_backend()}), jax {jax.__version__}, {platform.node()}'
  )
  print(
    '| loss | step ms (median) | images/s | GFLOPs/image | achieved TFLOP/s | MFU | '
    'step time vs ce |'
  )
  print('|---|---|---|---|---|---|---|')
  base = statistics.median(runs[args.kinds[0]]['times'])
  for kind, run in runs.items():
    t = statistics.median(run['times'])
    achieved = run['flops'] / t / 1e12
    mfu = f'{achieved / args.peak_tflops:.3f}' if args.peak_tflops else '-'
    print(
      f'| {kind} | {1e3 * t:.1f} | {args.batch / t:.4g} | '
      f'{run["flops"] / args.batch / 1e9:.2f} | {achieved:.3f} | {mfu} | '
      f'{t / base:.3f} |',
      flush=True,
    )


if __name__ == '__main__':
  main()
