"""The device's measured bf16 matrix-multiply rate: the yardstick for model FLOP utilisation.

python benchmarks/matmul_peak.py [--size 8192] [--repeats 20]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', type=int, default=8192)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  n = args.size
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  matmul = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(matmul(a, b))
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    times.append(time.perf_counter() - start)
  t = statistics.median(times)
  print(f'# {jax.devices()[0].device_kind}, jax {jax.__version__}')
  print(f'bf16 {n}x{n}x{n} matmul: {1e3 * t:.2f} ms, {2 * n**3 / t / 1e12:.1f} TFLOP/s')


if __name__ == '__main__':
  main()
