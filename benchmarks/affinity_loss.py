"""AAF loss (sizes 1,2,3), forward + backward under jit: fused, current and stacked columns.

The yardstick does what the authors' TensorFlow code does: for each size it stacks the 8 shifted
neighbours into [N,H,W,C,8] tensors and computes every (pixel, offset, class) element with masks.
The columns: fused (aaf_jax's loss with implementation='pallas', the kernels of
affinity_pallas.py; in the Pallas interpreter on a CPU, which is no speed figure), current
(implementation='xla') and stacked (the yardstick). All are timed alternately in one process
(the machine is shared and noisy, so only the ratios are meaningful), after checking that each
computes the yardstick's loss and gradients. A column that fails (a kernel that does not lower)
prints its error in its cell and the others go on. Each row is printed once measured. Needs
only jax and numpy (and this repository on the path).

    python benchmarks/affinity_loss.py [--shapes 8,42,42,21 2,90,90,19] [--repeats 20]
    python benchmarks/affinity_loss.py --smoke
    python benchmarks/affinity_loss.py --columns current,stacked   # skip the interpreter on a CPU
"""

import argparse
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax import affinity

EPS = 1e-4


def _shift(x, dy, dx, fill):
  """x at i + (dy, dx) for every i, `fill` where that falls outside the image."""
  _, h, w = x.shape[:3]
  s = max(abs(dy), abs(dx))
  pad = [(0, 0), (s, s), (s, s)] + [(0, 0)] * (x.ndim - 3)
  x = jnp.pad(x, pad, constant_values=fill)
  return x[:, s + dy : s + dy + h, s + dx : s + dx + w]


def yardstick_aaf(probs, labels, *, num_classes, sizes, margin, edge_logits, nonedge_logits):
  """The straightforward stacked formulation (the authors' layout), jit-friendly."""
  probs = probs.astype(jnp.float32)
  valid = (labels >= 0) & (labels < num_classes)
  one_hot = jax.nn.one_hot(jnp.where(valid, labels, -1), num_classes)  # [N,H,W,C]
  w_edge = jax.nn.softmax(edge_logits, -1)
  w_nonedge = jax.nn.softmax(nonedge_logits, -1)
  edges, nonedges = [], []
  for k, s in enumerate(sizes):
    offs = [(dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if (dy, dx) != (0, 0)]
    paired = jnp.stack([_shift(probs, dy, dx, 0.0) for dy, dx in offs], -1)  # [N,H,W,C,8]
    paired_oh = jnp.stack([_shift(one_hot, dy, dx, 0.0) for dy, dx in offs], -1)
    kept = jnp.stack(
      [valid & _shift(valid, dy, dx, False) & _shift(valid, -dy, -dx, False) for dy, dx in offs], -1
    )[:, :, :, None, :]  # [N,H,W,1,8]
    edge = (one_hot[..., None] != paired_oh) & kept
    nonedge = (one_hot[..., None] == paired_oh) & kept
    centre = probs[..., None]
    q, nq = jnp.clip(paired, EPS, 1.0), jnp.clip(1.0 - paired, EPS, 1.0)
    p, npr = jnp.clip(centre, EPS, 1.0), jnp.clip(1.0 - centre, EPS, 1.0)
    kl = q * jnp.log(q / p) + nq * jnp.log(nq / npr)
    we = jnp.einsum('nhwc,c->nhw', one_hot, w_edge[:, k])[..., None, None]
    wn = jnp.einsum('nhwc,c->nhw', one_hot, w_nonedge[:, k])[..., None, None]
    e_sum = jnp.sum(jnp.where(edge, jax.nn.relu(margin - kl) * we, 0.0))
    n_sum = jnp.sum(jnp.where(nonedge, kl * wn, 0.0))
    e_cnt, n_cnt = jnp.sum(edge), jnp.sum(nonedge)
    edges.append(jnp.where(e_cnt > 0, e_sum / jnp.maximum(e_cnt, 1), 0.0))
    nonedges.append(jnp.where(n_cnt > 0, n_sum / jnp.maximum(n_cnt, 1), 0.0))
  return jnp.stack(edges), jnp.stack(nonedges)


def make_step(loss_fn, num_classes, **options):
  def total(probs, labels, e, n):
    edge, nonedge = loss_fn(
      probs,
      labels,
      num_classes=num_classes,
      sizes=(1, 2, 3),
      margin=3.0,
      edge_logits=e,
      nonedge_logits=n,
      **options,
    )
    return jnp.sum(edge) + jnp.sum(nonedge)

  return jax.jit(jax.value_and_grad(total, argnums=(0, 2, 3)))


def inputs(shape, seed=0):
  n, h, w, c = shape
  rng = np.random.default_rng(seed)
  probs = jax.nn.softmax(jnp.asarray(rng.normal(size=shape) * 2, jnp.float32), -1)
  labels = rng.integers(0, c, size=(n, h // 6 + 1, w // 6 + 1)).repeat(6, 1).repeat(6, 2)
  labels = labels[:, :h, :w]
  labels[rng.random(labels.shape) < 0.05] = 255
  tables = jnp.asarray(rng.normal(size=(2, c, 3)), jnp.float32)
  return probs, jnp.asarray(labels, jnp.int32), tables[0], tables[1]


def median_seconds(fn, args, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


COLUMNS = {
  'fused': lambda c: make_step(affinity.adaptive_affinity_loss, c, implementation='pallas'),
  'current': lambda c: make_step(affinity.adaptive_affinity_loss, c, implementation='xla'),
  'stacked': lambda c: make_step(yardstick_aaf, c),
}
SMOKE_SHAPES = ['2,12,12,5', '1,9,20,3']


def check_same(step, reference, batch):
  """The column's loss and gradients against the yardstick's (its tolerances, see below)."""
  (v_ours, g_ours), (v_theirs, g_theirs) = step(*batch), reference(*batch)
  np.testing.assert_allclose(v_ours, v_theirs, rtol=1e-4)
  # The yardstick's own float32 rounding reaches ~3e-4 of the largest logit-table gradient
  # at 2,256,256,19 (checked against a float64 run), hence atol 1e-3 of the scale.
  for a, b in zip(g_ours, g_theirs):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()))


def measure_row(shape, columns, repeats):
  """{column: (ms, temp MiB) or an error string}; a column that fails leaves the others."""
  batch = inputs(shape)
  reference = COLUMNS['stacked'](shape[-1])  # compiled once, used as a check and as a column
  steps, results = {}, {}
  for name in columns:
    try:
      steps[name] = reference if name == 'stacked' else COLUMNS[name](shape[-1])
      if name != 'stacked':
        check_same(steps[name], reference, batch)
      mib = steps[name].lower(*batch).compile().memory_analysis().temp_size_in_bytes / 2**20
      results[name] = [[], mib]
    except Exception as error:  # noqa: BLE001 (a kernel that fails to lower: say so, go on)
      steps.pop(name, None)
      results[name] = f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'
  for _ in range(repeats):  # alternate so drift on a shared machine hits every column
    for name, step in steps.items():
      results[name][0].append(median_seconds(step, batch, 1))
  for name in steps:
    results[name] = (statistics.median(results[name][0]) * 1e3, results[name][1])
  return results


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--shapes', nargs='+', default=['8,42,42,21', '2,90,90,19', '2,256,256,19'])
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument(
    '--columns',
    default='fused,current,stacked',
    help='comma-separated subset of fused (config.loss.implementation=pallas), current (=xla), '
    'stacked (the yardstick)',
  )
  parser.add_argument(
    '--smoke', action='store_true', help=f'tiny shapes {SMOKE_SHAPES}, 2 repeats: does it run'
  )
  args = parser.parse_args()
  columns = [c for c in args.columns.split(',') if c]
  unknown = sorted(set(columns) - set(COLUMNS))
  if unknown or not columns:
    parser.error(f'--columns: expected names from {sorted(COLUMNS)}, got {args.columns!r}')
  shapes, repeats = (SMOKE_SHAPES, 2) if args.smoke else (args.shapes, args.repeats)
  device = jax.devices()[0]
  interpreted = ' (fused runs in the Pallas interpreter: not a speed figure)'
  print(
    f'# device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, '
    f'{platform.node()}; fwd+bwd ms, median of {repeats}'
    + (interpreted if jax.default_backend() == 'cpu' and 'fused' in columns else ''),
    flush=True,
  )
  ratios = [f'{c} / stacked' for c in columns if c != 'stacked' and 'stacked' in columns]
  header = [f'{c} ms' for c in columns] + ratios + [f'{c} temp MiB' for c in columns]
  print('| N,H,W,C | ' + ' | '.join(header) + ' |', flush=True)
  print('|---' * (len(header) + 1) + '|', flush=True)
  for spec in shapes:
    shape = tuple(int(v) for v in spec.split(','))
    results = measure_row(shape, columns, repeats)
    timed = {c: r for c, r in results.items() if not isinstance(r, str)}
    cells = [f'{timed[c][0]:.2f}' if c in timed else results[c] for c in columns]
    for c in columns:
      if c != 'stacked' and 'stacked' in columns:
        both = c in timed and 'stacked' in timed
        cells.append(f'{timed[c][0] / timed["stacked"][0]:.3f}' if both else '-')
    cells += [f'{timed[c][1]:.2f}' if c in timed else '-' for c in columns]
    print(f'| {spec} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
  main()
