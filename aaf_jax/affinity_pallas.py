"""The affinity pair sums of affinity.py as two fused Pallas kernels (forward and backward).

Same math, same outputs as the XLA form in affinity.py (what both share sits below both, in
affinity_core.py): per size, the [N,H,W] edge and non-edge sums and counts of every centre
pixel (the derivation is affinity.py's module docstring). The XLA form builds one shifted
[N,H,W,C] tensor per offset; here one program per (image, row, block of BLOCK_WIDTH columns)
loops over the offsets of all sizes and keeps everything per class in registers, so only
[N,H,W] values (forward) and dL/dprobs (backward) reach memory.

Written for Pallas's Triton lowering: every shifted neighbour is loaded straight from a
pre-padded ref (`pl.ds` with a shifted start), never sliced from a loaded value; every array
in the kernel has power-of-two dimensions (classes padded to a power of two, the width to
whole blocks); there is no data-dependent Python control flow. Padding is done in XLA: the
probabilities with 0 (a padded class then has KL exactly 0), the labels with -1 (ignored), by
twice the largest half-size so that the backward's pixels k - 2o are in bounds too.

The backward recomputes the relu gates rather than saving them: for pixel k and offset o it
rebuilds the KLs of the pair (k, k + o), where k is the centre, and of (k - o, k), where k is
the neighbour, and accumulates G times a_{k+o} and G times (log a_k + 1 - log a_{k-o}) (and the
same for b) in [BLOCK_WIDTH, C] registers.

`interpret=True` runs the kernels in Pallas's interpreter (the CPU, tests); it is a choice of
how to run them, never of which implementation runs (that is the caller's `implementation`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from aaf_jax.affinity_core import EPS, PairSums, clip_slope, offsets

BLOCK_WIDTH = 32  # columns per program; a power of two (Triton's rule)

# Selects Pallas's Triton lowering on GPUs (jax 0.10's default for a GPU pallas_call is Mosaic
# GPU, which stages whole blocks in shared memory); ignored by the interpreter.
_TRITON = pltriton.CompilerParams(num_warps=4, num_stages=1)


def pair_sums(probs, labels, num_classes, sizes, margin, *, interpret=None):
  """The pair sums (one affinity_core.PairSums per size) by the fused kernels; interpret=None interprets on the CPU only."""
  backend = jax.default_backend()
  if interpret is None:
    interpret = backend == 'cpu'
  if not interpret and backend != 'gpu':
    raise ValueError(
      f"implementation='pallas' runs its kernels through Triton on GPUs (or interpreted on the "
      f"CPU); on backend {backend!r} use implementation='xla'."
    )
  return _pair_sums_jit(
    jnp.asarray(probs), jnp.asarray(labels), num_classes, tuple(sizes), float(margin), interpret
  )


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _pair_sums_jit(probs, labels, num_classes, sizes, margin, interpret):
  return _pair_sums_f32(
    probs.astype(jnp.float32), labels, num_classes, sizes, margin, bool(interpret)
  )


def _next_pow2(n):
  return 1 << max(int(n) - 1, 0).bit_length()


class _Layout(NamedTuple):
  """How the inputs are padded and split among programs."""

  pad: int  # rows and columns of padding on each side: 2 * max(sizes)
  block: int  # columns per program, a power of two
  blocks: int  # column blocks per row
  channels: int  # C padded to a power of two


def _layout(shape, sizes):
  _, _, width, channels = shape
  block = min(_next_pow2(width), BLOCK_WIDTH)
  return _Layout(2 * max(sizes), block, -(-width // block), _next_pow2(channels))


def _padded_inputs(probs, labels, num_classes, layout):
  """probs [N,Hp,Wp,Cp] padded with 0 and class indices [N,Hp,Wp] padded with -1 (ignored)."""
  _, _, width, channels = probs.shape
  p = layout.pad
  right = p + layout.blocks * layout.block - width
  probs = jnp.pad(probs, [(0, 0), (p, p), (p, right), (0, layout.channels - channels)])
  valid = (labels >= 0) & (labels < num_classes)
  cls = jnp.where(valid, labels.astype(jnp.int32), -1)  # any integer dtype (uint8 too)
  return probs, jnp.pad(cls, [(0, 0), (p, p), (p, right)], constant_values=-1)


class _Row(NamedTuple):
  """One [BLOCK_WIDTH] run of pixels at a shift: a, b, their logs [BW,Cp] and classes [BW]."""

  pos: jax.Array
  neg: jax.Array
  log_pos: jax.Array
  log_neg: jax.Array
  cls: jax.Array


class _Loader:
  """Loads of the current program's pixels shifted by (dy, dx), straight from padded refs."""

  def __init__(self, probs_ref, cls_ref, layout):
    self.probs_ref, self.cls_ref, self.layout = probs_ref, cls_ref, layout
    self.image, self.y = pl.program_id(0), pl.program_id(1)
    self.x0 = pl.program_id(2) * layout.block

  def cls(self, dy, dx):
    p = self.layout.pad
    return self.cls_ref[self.image, self.y + p + dy, pl.ds(self.x0 + p + dx, self.layout.block)]

  def probs(self, dy, dx):
    p = self.layout.pad
    return self.probs_ref[
      self.image, self.y + p + dy, pl.ds(self.x0 + p + dx, self.layout.block), :
    ]

  def row(self, dy, dx):
    probs = self.probs(dy, dx)
    pos = jnp.clip(probs, EPS, 1.0)
    neg = jnp.clip(1.0 - probs, EPS, 1.0)  # from the unclipped p
    return _Row(pos, neg, jnp.log(pos), jnp.log(neg), self.cls(dy, dx))


class _Pair(NamedTuple):
  """The pair (centre i, neighbour j = i + o) for a run of centres, each [BW] (onehots [BW,Cp])."""

  differ: jax.Array  # kept and y_i != y_j
  same: jax.Array  # kept and y_i == y_j
  kept: jax.Array
  kl_all: jax.Array
  kl_centre: jax.Array  # KL at class y_i
  kl_neighbour: jax.Array  # KL at class y_j
  at_centre: jax.Array  # [BW,Cp] bool, c == y_i
  at_neighbour: jax.Array


def _pair(centre, neighbour, mirrored_cls):
  """Labels tests (spec items 2-3) and the three KL sums over classes of one pair per pixel."""
  kl = neighbour.pos * (neighbour.log_pos - centre.log_pos) + neighbour.neg * (
    neighbour.log_neg - centre.log_neg
  )  # [BW,Cp]; exactly 0 in padded classes
  classes = jax.lax.broadcasted_iota(jnp.int32, kl.shape, 1)
  at_centre = classes == centre.cls[:, None]
  at_neighbour = classes == neighbour.cls[:, None]
  kept = (centre.cls >= 0) & (neighbour.cls >= 0) & (mirrored_cls >= 0)
  return _Pair(
    differ=kept & (centre.cls != neighbour.cls),
    same=kept & (centre.cls == neighbour.cls),
    kept=kept,
    kl_all=jnp.sum(kl, axis=1),
    kl_centre=jnp.sum(jnp.where(at_centre, kl, 0.0), axis=1),
    kl_neighbour=jnp.sum(jnp.where(at_neighbour, kl, 0.0), axis=1),
    at_centre=at_centre,
    at_neighbour=at_neighbour,
  )


def _forward_kernel(probs_ref, cls_ref, *out_refs, sizes, margin, num_classes, layout):
  """Per size, the edge and non-edge sums and counts of a run of centre pixels."""
  load = _Loader(probs_ref, cls_ref, layout)
  centre = load.row(0, 0)
  for k, size in enumerate(sizes):
    zeros = jnp.zeros((layout.block,), jnp.float32)
    edge, nonedge, edge_count, nonedge_count = zeros, zeros, zeros, zeros
    for dy, dx in offsets(size):
      pair = _pair(centre, load.row(dy, dx), load.cls(-dy, -dx))
      edge += jnp.where(pair.differ & (pair.kl_centre < margin), margin - pair.kl_centre, 0.0)
      edge += jnp.where(pair.differ & (pair.kl_neighbour < margin), margin - pair.kl_neighbour, 0.0)
      nonedge += jnp.where(
        pair.differ,
        pair.kl_all - pair.kl_centre - pair.kl_neighbour,
        jnp.where(pair.same, pair.kl_all, 0.0),
      )
      edge_count += jnp.where(pair.differ, 2.0, 0.0)
      nonedge_count += jnp.where(
        pair.differ, num_classes - 2.0, jnp.where(pair.same, float(num_classes), 0.0)
      )
    for j, value in enumerate((edge, nonedge, edge_count, nonedge_count)):
      out_refs[4 * k + j][...] = value


def _pair_cotangent(pair, edge_bar, nonedge_bar, margin):
  """G_c of the pair [BW,Cp]: alpha + beta_i [c == y_i] + beta_j [c == y_j] (affinity.py)."""
  alpha = jnp.where(pair.kept, nonedge_bar, 0.0)
  shared = jnp.where(pair.differ, nonedge_bar, 0.0)
  beta_centre = -(shared + jnp.where(pair.differ & (pair.kl_centre < margin), edge_bar, 0.0))
  beta_neighbour = -(shared + jnp.where(pair.differ & (pair.kl_neighbour < margin), edge_bar, 0.0))
  return (
    alpha[:, None]
    + jnp.where(pair.at_centre, beta_centre[:, None], 0.0)
    + jnp.where(pair.at_neighbour, beta_neighbour[:, None], 0.0)
  )


def _backward_kernel(
  probs_ref, cls_ref, edge_bar_ref, nonedge_bar_ref, dprobs_ref, *, sizes, margin, layout
):
  """dL/dprobs of a run of pixels k: pixel k as the centre and as the neighbour of every pair."""
  load = _Loader(probs_ref, cls_ref, layout)
  p = layout.pad

  def bar(ref, k, dy, dx):  # the cotangent of size k's sum at pixel (k's position) + (dy, dx)
    return ref[k, load.image, load.y + p + dy, pl.ds(load.x0 + p + dx, layout.block)]

  here = load.row(0, 0)
  zeros = jnp.zeros((layout.block, layout.channels), jnp.float32)
  as_centre_pos, as_centre_neg, as_neighbour_pos, as_neighbour_neg = zeros, zeros, zeros, zeros
  for k, size in enumerate(sizes):
    for dy, dx in offsets(size):
      # The pair (k, k + o): k is its centre.
      neighbour = load.row(dy, dx)
      g = _pair_cotangent(
        _pair(here, neighbour, load.cls(-dy, -dx)),
        bar(edge_bar_ref, k, 0, 0),
        bar(nonedge_bar_ref, k, 0, 0),
        margin,
      )
      as_centre_pos += g * neighbour.pos
      as_centre_neg += g * neighbour.neg
      # The pair (k - o, k): k is its neighbour.
      centre = load.row(-dy, -dx)
      g = _pair_cotangent(
        _pair(centre, here, load.cls(-2 * dy, -2 * dx)),
        bar(edge_bar_ref, k, -dy, -dx),
        bar(nonedge_bar_ref, k, -dy, -dx),
        margin,
      )
      as_neighbour_pos += g * (here.log_pos + 1.0 - centre.log_pos)
      as_neighbour_neg += g * (here.log_neg + 1.0 - centre.log_neg)
  probs = load.probs(0, 0)
  d_pos = as_neighbour_pos - as_centre_pos / here.pos
  d_neg = as_neighbour_neg - as_centre_neg / here.neg
  dprobs_ref[...] = d_pos * clip_slope(probs) - d_neg * clip_slope(1.0 - probs)


def _full_spec(shape):
  """The whole array visible to every program (the kernels index it themselves)."""
  return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def _forward(probs, labels, num_classes, sizes, margin, interpret):
  n, h, _, _ = probs.shape
  layout = _layout(probs.shape, sizes)
  probs_p, cls_p = _padded_inputs(probs, labels, num_classes, layout)
  padded_width = layout.blocks * layout.block
  outs = pl.pallas_call(
    functools.partial(
      _forward_kernel, sizes=sizes, margin=margin, num_classes=num_classes, layout=layout
    ),
    grid=(n, h, layout.blocks),
    in_specs=[_full_spec(probs_p.shape), _full_spec(cls_p.shape)],
    out_specs=[pl.BlockSpec((None, None, layout.block), lambda i, y, x: (i, y, x))]
    * (4 * len(sizes)),
    out_shape=[jax.ShapeDtypeStruct((n, h, padded_width), jnp.float32)] * (4 * len(sizes)),
    interpret=interpret,
    compiler_params=_TRITON,
  )(probs_p, cls_p)
  width = probs.shape[2]
  return tuple(
    PairSums(*(x[:, :, :width] for x in outs[4 * k : 4 * k + 4])) for k in range(len(sizes))
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _pair_sums_f32(probs, labels, num_classes, sizes, margin, interpret):
  """The pair sums of float32 probs; the gradient is the backward kernel's."""
  return _forward(probs, labels, num_classes, sizes, margin, interpret)


def _pair_sums_fwd(probs, labels, num_classes, sizes, margin, interpret):
  return _forward(probs, labels, num_classes, sizes, margin, interpret), (probs, labels)


def _pair_sums_bwd(num_classes, sizes, margin, interpret, residuals, sums_bar):
  probs, labels = residuals
  n, h, width, channels = probs.shape
  layout = _layout(probs.shape, sizes)
  probs_p, cls_p = _padded_inputs(probs, labels, num_classes, layout)
  p = layout.pad
  right = p + layout.blocks * layout.block - width

  def padded_bars(name):  # [K,N,Hp,Wp], 0 outside the image
    bars = jnp.stack([getattr(b, name).astype(jnp.float32) for b in sums_bar])
    return jnp.pad(bars, [(0, 0), (0, 0), (p, p), (p, right)])

  edge_bar, nonedge_bar = padded_bars('edge'), padded_bars('nonedge')
  dprobs = pl.pallas_call(
    functools.partial(_backward_kernel, sizes=sizes, margin=margin, layout=layout),
    grid=(n, h, layout.blocks),
    in_specs=[_full_spec(x.shape) for x in (probs_p, cls_p, edge_bar, nonedge_bar)],
    out_specs=pl.BlockSpec(
      (None, None, layout.block, layout.channels), lambda i, y, x: (i, y, x, 0)
    ),
    out_shape=jax.ShapeDtypeStruct(
      (n, h, layout.blocks * layout.block, layout.channels), jnp.float32
    ),
    interpret=interpret,
    compiler_params=_TRITON,
  )(probs_p, cls_p, edge_bar, nonedge_bar)
  return dprobs[:, :, :width, :channels], None


_pair_sums_f32.defvjp(_pair_sums_fwd, _pair_sums_bwd)
