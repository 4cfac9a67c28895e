"""One dilated 3x3 conv, forward + backward, jitted: the native form against space-to-batch.

Times the gradient of the output's sum with respect to the input and the kernel, for the two
forms of `aaf_jax/models/dilated.py` (the modules the networks use: bf16 or f32 compute, f32
kernel), alternately in one process so that machine noise hits both alike; only the ratio is
meant to be compared across machines. Each row is printed the moment it is measured. The last
column is the largest absolute difference between the forms over the output and both gradients.
Imports only jax, numpy and flax (no TensorFlow, no ml_collections).

    python benchmarks/dilated_conv.py [--shapes 8,42,42,256,2 ...] [--repeats 20] \
        [--dtype bfloat16]                 # shapes: N,H,W,C,rate (C in and out)
    python benchmarks/dilated_conv.py --smoke   # tiny shapes, for CI
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax.models import dilated

# The shapes of the issue-22 H200 measurement (stages 3 and 4 of ResNet-101 at crops 336, 720).
SHAPES = ('8,42,42,256,2', '8,44,44,512,4', '8,90,90,256,2', '8,92,92,512,4')
SMOKE_SHAPES = ('1,9,11,8,2', '1,5,5,8,24')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def parse_shape(text):
  try:
    n, h, w, c, rate = (int(v) for v in text.split(','))
  except ValueError:
    raise SystemExit(f'--shapes {text!r}: expected N,H,W,C,rate (five integers)') from None
  if min(n, h, w, c, rate) < 1:
    raise SystemExit(f'--shapes {text!r}: every number must be positive')
  return n, h, w, c, rate


def conv_and_grads(form, features, rate, dtype):
  """jitted (x, kernel) -> (y, dy/dx of sum, dy/dkernel of sum) for one form."""
  module = dilated.conv(features, 3, rate=rate, dtype=dtype, name='conv', form=form)

  def forward(x, kernel):
    return module.apply({'params': {'kernel': kernel}}, x)

  def total(x, kernel):
    return jnp.sum(forward(x, kernel).astype(jnp.float32))

  grads = jax.jit(jax.grad(total, argnums=(0, 1)))
  return jax.jit(forward), grads


def measure(grads, x, kernel, times):
  start = time.perf_counter()
  jax.block_until_ready(grads(x, kernel))
  times.append(time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shapes', nargs='+', default=list(SHAPES), help='N,H,W,C,rate each')
  parser.add_argument('--repeats', type=int, default=20, help='timed calls per form and shape')
  parser.add_argument(
    '--dtype', choices=sorted(DTYPES), default=None, help='default: bfloat16, float32 on a CPU'
  )
  parser.add_argument('--smoke', action='store_true', help='tiny shapes, 2 repeats (CI)')
  args = parser.parse_args()
  shapes = SMOKE_SHAPES if args.smoke else args.shapes
  repeats = 2 if args.smoke else args.repeats
  if repeats < 1:
    raise SystemExit(f'--repeats={repeats}: expected at least 1')
  dtype_name = args.dtype or ('float32' if jax.default_backend() == 'cpu' else 'bfloat16')
  dtype = DTYPES[dtype_name]

  device = jax.devices()[0]
  print(
    f'# dilated 3x3 conv fwd+bwd, {dtype_name} compute, f32 kernel, median of {repeats}; '
    f'device {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, '
    f'{platform.node()}'
  )
  print('| input (N,H,W,C), rate | native ms | space_to_batch ms | native / s2b | max abs diff |')
  print('|---|---|---|---|---|', flush=True)
  for text in shapes:
    n, h, w, c, rate = parse_shape(text)
    keys = jax.random.split(jax.random.key(0))
    x = jax.random.normal(keys[0], (n, h, w, c), jnp.float32).astype(dtype)
    kernel = jax.random.normal(keys[1], (3, 3, c, c), jnp.float32) * (2.0 / (9 * c)) ** 0.5
    forms = {form: conv_and_grads(form, c, rate, dtype) for form in ('native', 'space_to_batch')}
    results = {}
    for form, (forward, grads) in forms.items():
      y = forward(x, kernel)
      results[form] = [np.asarray(a, np.float32) for a in (y, *grads(x, kernel))]  # compiles
    diff = max(
      float(np.max(np.abs(a - b)))
      for a, b in zip(results['native'], results['space_to_batch'], strict=True)
    )
    times = {form: [] for form in forms}
    for _ in range(repeats):
      for form, (_, grads) in forms.items():
        measure(grads, x, kernel, times[form])
    native, s2b = (1e3 * statistics.median(times[f]) for f in forms)
    print(
      f'| ({n},{h},{w},{c}), {rate} | {native:.3f} | {s2b:.3f} | {native / s2b:.2f} | {diff:.3g} |',
      flush=True,
    )


if __name__ == '__main__':
  main()
