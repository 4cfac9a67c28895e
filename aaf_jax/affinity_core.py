"""What both implementations of the affinity pair sums share (the XLA form in affinity.py, the
fused Pallas kernels in affinity_pallas.py): the clipping floor, the offsets of a field, the
slope of the clip and the record of per-pixel sums. It sits below both, so neither imports the
other's internals.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

EPS = 1e-4  # the spec's clipping floor for q, 1-q, p and 1-p


class PairSums(NamedTuple):
  """Per-centre-pixel sums over the 8 offsets of one size, each [N,H,W] float32."""

  edge: jax.Array
  nonedge: jax.Array
  edge_count: jax.Array
  nonedge_count: jax.Array


def offsets(size):
  """Spec item 1: the 8 offsets (dy, dx) in {-s, 0, s}^2 other than (0, 0)."""
  return tuple((dy, dx) for dy in (-size, 0, size) for dx in (-size, 0, size) if (dy, dx) != (0, 0))


def clip_slope(x):
  """d clip(x, EPS, 1) / dx as jnp.clip's autodiff gives it: 1 inside, 1/2 on a bound, 0 out."""
  inside = (x > EPS) & (x < 1.0)
  on_bound = (x == EPS) | (x == 1.0)
  return jnp.where(inside, 1.0, jnp.where(on_bound, 0.5, 0.0))
