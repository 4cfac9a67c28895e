"""Affinity-field losses (docs/method.md items 1-11) as pure, jit-able JAX functions.

Nothing here imports flax, a config or the file system: the functions take arrays and static
options and return arrays, so they drop into any training loop.

How the loss is computed without an [N,H,W,C,8] tensor. For a kept pair (i, j = i + o) the
binary KL of class c is, with a = clip(p), b = clip(1 - p) and their logs computed once per
pixel,

    kl_c(i, o) = a_j(c) (log a_j(c) - log a_i(c)) + b_j(c) (log b_j(c) - log b_i(c)).

Only the classes of the pair's two labels can be edges, so one pass over C per pair gives the
three sums that matter: over all classes (S), at y_i and at y_j. The edge sum is
relu(m - kl_{y_i}) + relu(m - kl_{y_j}) when y_i != y_j; the non-edge sum is S minus those two
KLs, or all of S when y_i == y_j. Each offset leaves only [N,H,W] values behind.

The gradient is a custom VJP, because plain autodiff would keep several [N,H,W,C] tensors per
offset. With e(i), n(i) the cotangents of pixel i's edge and non-edge sums, the cotangent of
kl_c(i, o) is

    G_c(i, o) = alpha + beta_i [c == y_i] + beta_j [c == y_j],   with [N,H,W] scalars
    alpha  = n(i) [pair kept],
    beta_i = -[y_i != y_j] (n(i) + e(i) [kl_{y_i} < m]),  beta_j the same with kl_{y_j}

(the non-edge sum leaves out the two edge classes; the relu's slope is its gate). Pixel k
enters kl_c(i, o) as the neighbour of i = k - o and as the centre of its own pairs, so taking
a and log a apart and then chaining through d log a = da / a,

    dL/da_k = sum_o G(k - o, o) (log a_k + 1 - log a_{k-o})  -  sum_o G(k, o) a_{k+o} / a_k,

and the same for b. Both sums run over the offsets of every size in one fused pass of shifted
[N,H,W] scalars times shifted per-pixel tensors. Finally dL/dp = dL/da clip'(p) - dL/db
clip'(1 - p), with jnp.clip's slopes (1 inside, 1/2 on a bound, 0 outside). The forward pass
saves only probs, labels and the [N,H,W] relu gates; a, b and their logs are recomputed.

For the adaptive loss the per-pixel sums are totalled by the centre's class first; the
softmax weights of that class then multiply the [C] totals, which is the same as weighting
every element by its centre's class and keeps the logit-table gradients cheap.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from aaf_jax import affinity_pallas, loss_kinds
from aaf_jax.affinity_core import EPS, PairSums, clip_slope, offsets

# How the per-pixel pair sums are computed: 'xla', the jnp form below; 'pallas', the fused
# kernels of affinity_pallas.py (Triton on GPUs, the Pallas interpreter on the CPU). Both give
# the same values and gradients; everything after the pair sums is shared. The names live in
# loss_kinds (imported by configs, without jax), the one place they are spelt.
IMPLEMENTATIONS = loss_kinds.IMPLEMENTATIONS


def loss_decay(step, num_steps):
  """The factor 10 ** (-step / num_steps) that scales the affinity term (spec item 10)."""
  if isinstance(num_steps, (int, float)) and num_steps <= 0:
    raise ValueError(f'loss_decay: num_steps must be positive, got {num_steps}.')
  step = jnp.asarray(step, jnp.float32)
  return jnp.power(jnp.float32(10.0), -step / jnp.asarray(num_steps, jnp.float32))


def affinity_loss(
  probs,
  labels,
  *,
  num_classes: int,
  size: int = 1,
  margin: float = 3.0,
  implementation: str = 'xla',
):
  """The affinity-field loss of one neighbourhood size (spec items 1-6).

  Args:
    probs: [N,H,W,C] float32 or bfloat16 softmax probabilities.
    labels: [N,H,W] integer labels; a value outside [0, num_classes) is ignored.
    num_classes: C.
    size: half-size s of the (2s+1)x(2s+1) field.
    margin: m, the edge margin.
    implementation: how the per-pixel pair sums are computed (see IMPLEMENTATIONS).

  Returns:
    (edge, nonedge): float32 scalars, the means over kept edge and non-edge elements
    (0 where there are none).
  """
  _check_inputs(probs, labels, num_classes, (size,), 'size', implementation)
  (sums,) = _pair_sums(probs, labels, num_classes, (size,), margin, implementation)
  return (
    _safe_mean(jnp.sum(sums.edge), jnp.sum(sums.edge_count)),
    _safe_mean(jnp.sum(sums.nonedge), jnp.sum(sums.nonedge_count)),
  )


def adaptive_affinity_loss(
  probs,
  labels,
  *,
  num_classes: int,
  sizes: Sequence[int] = (1, 2, 3),
  margin: float = 3.0,
  edge_logits,
  nonedge_logits,
  implementation: str = 'xla',
):
  """The adaptive affinity-field loss (spec item 8), one (edge, non-edge) pair per size.

  Args:
    probs: [N,H,W,C] float32 or bfloat16 softmax probabilities.
    labels: [N,H,W] integer labels; a value outside [0, num_classes) is ignored.
    num_classes: C.
    sizes: the half-sizes s_1..s_K.
    margin: m, the edge margin.
    edge_logits: [C,K] logits E; softmax over K of row y_i weights the edge elements of
      pairs centred on a pixel of class y_i.
    nonedge_logits: [C,K] logits N, the same for non-edge elements.
    implementation: how the per-pixel pair sums are computed (see IMPLEMENTATIONS).

  Returns:
    (edge, nonedge): float32 arrays of shape [K]; the total loss is
    sum_k lambda_edge * edge[k] + lambda_nonedge * nonedge[k].
  """
  sizes = tuple(sizes)
  _check_inputs(probs, labels, num_classes, sizes, 'sizes', implementation)
  expected = (num_classes, len(sizes))
  for name, table in (('edge_logits', edge_logits), ('nonedge_logits', nonedge_logits)):
    if tuple(jnp.shape(table)) != expected:
      raise ValueError(
        f'adaptive_affinity_loss: {name} must have shape [num_classes, '
        f'len(sizes)] = {list(expected)}, got {list(jnp.shape(table))}.'
      )
  edge_weights = jax.nn.softmax(jnp.asarray(edge_logits, jnp.float32), axis=-1)  # [C,K]
  nonedge_weights = jax.nn.softmax(jnp.asarray(nonedge_logits, jnp.float32), axis=-1)
  sums = _pair_sums(probs, labels, num_classes, sizes, margin, implementation)
  centre_class = _class_index(labels, num_classes)  # [N,H,W], C for ignored pixels
  edge_per_class = _per_class_totals([s.edge for s in sums], centre_class, num_classes)  # [K,C]
  nonedge_per_class = _per_class_totals([s.nonedge for s in sums], centre_class, num_classes)
  edge_counts = jnp.stack([jnp.sum(s.edge_count) for s in sums])  # [K]
  nonedge_counts = jnp.stack([jnp.sum(s.nonedge_count) for s in sums])
  return (
    _safe_mean(jnp.sum(edge_weights.T * edge_per_class, axis=1), edge_counts),
    _safe_mean(jnp.sum(nonedge_weights.T * nonedge_per_class, axis=1), nonedge_counts),
  )


def _pair_sums(probs, labels, num_classes, sizes, margin, implementation='xla'):
  """One PairSums per size, differentiable w.r.t. probs (any float dtype) by a custom VJP."""
  if implementation == 'pallas':
    return affinity_pallas.pair_sums(probs, labels, num_classes, sizes, margin)
  return _pair_sums_jit(
    jnp.asarray(probs), jnp.asarray(labels), num_classes, tuple(sizes), float(margin)
  )


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _pair_sums_jit(probs, labels, num_classes, sizes, margin):
  """Compiled as one program, so eager callers don't dispatch hundreds of small ops."""
  return _pair_sums_f32(probs.astype(jnp.float32), labels, num_classes, sizes, margin)


class _Shifter:
  """Shifted views of [N,H,W,...] arrays, padded once by the largest half-size.

  Padding with an invalid value turns "i + o lies inside the image" into a test on a view.
  """

  def __init__(self, height, width, border):
    self.height, self.width, self.border = height, width, border

  def pad(self, x, value):
    b = self.border
    return jnp.pad(x, [(0, 0), (b, b), (b, b)] + [(0, 0)] * (x.ndim - 3), constant_values=value)

  def at(self, padded, dy, dx):
    """padded viewed at i + (dy, dx) for every pixel i of the image."""
    y0, x0 = self.border + dy, self.border + dx
    return jax.lax.slice_in_dim(
      jax.lax.slice_in_dim(padded, y0, y0 + self.height, axis=1), x0, x0 + self.width, axis=2
    )


class _Pixels(NamedTuple):
  """Per-pixel tensors shared by all offsets, each with its padded copy where views need it."""

  pos: jax.Array  # a = clip(p)  [N,H,W,C]
  neg: jax.Array  # b = clip(1 - p)
  log_pos: jax.Array
  log_neg: jax.Array
  cls: jax.Array  # [N,H,W] label, num_classes where ignored
  valid: jax.Array  # [N,H,W] bool
  padded: dict  # the same names, padded by the shifter's border


def _pixels(probs, labels, num_classes, shifter):
  """a, b, their logs, the labels and their validity, plus padded copies for shifted views."""
  pos = jnp.clip(probs, EPS, 1.0)
  neg = jnp.clip(1.0 - probs, EPS, 1.0)  # from the unclipped p
  cls = _class_index(labels, num_classes)
  valid = cls < num_classes
  tensors = dict(pos=pos, neg=neg, log_pos=jnp.log(pos), log_neg=jnp.log(neg))
  padded = {name: shifter.pad(x, 0.0) for name, x in tensors.items()}
  padded.update(cls=shifter.pad(cls, num_classes), valid=shifter.pad(valid, False))
  return _Pixels(cls=cls, valid=valid, padded=padded, **tensors)


class _PairLabels(NamedTuple):
  """Label tests of the pairs (i, i + o) for one offset o, each [N,H,W]."""

  neighbour_cls: jax.Array
  differ: jax.Array  # kept and y_i != y_j: an edge for y_i and y_j, a non-edge otherwise
  same: jax.Array  # kept and y_i == y_j: a non-edge for every class
  kept: jax.Array


def _pair_labels(px, shifter, dy, dx):
  """Spec items 2-3 for the offset (dy, dx): which pairs are kept, edges or non-edges."""
  kept = (
    px.valid & shifter.at(px.padded['valid'], dy, dx) & shifter.at(px.padded['valid'], -dy, -dx)
  )
  neighbour_cls = shifter.at(px.padded['cls'], dy, dx)
  return _PairLabels(
    neighbour_cls, kept & (px.cls != neighbour_cls), kept & (px.cls == neighbour_cls), kept
  )


def _at_class(cls, num_classes):
  """[N,H,W] labels -> [N,H,W,C] bool, true at each pixel's class (nowhere if ignored)."""
  return cls[..., None] == jnp.arange(num_classes, dtype=cls.dtype)


def _forward(probs, labels, num_classes, sizes, margin):
  """The pair sums per size, plus the relu gates of every edge term (the backward's residuals)."""
  _, height, width, _ = probs.shape
  shifter = _Shifter(height, width, max(sizes))
  px = _pixels(probs, labels, num_classes, shifter)
  centre_onehot = _at_class(px.cls, num_classes)
  all_sums, all_gates = [], []
  for size in sizes:
    edge = nonedge = edge_count = nonedge_count = 0.0
    gates = []
    for dy, dx in offsets(size):
      pair = _pair_labels(px, shifter, dy, dx)
      pos_j, neg_j, log_pos_j, log_neg_j = (
        shifter.at(px.padded[name], dy, dx) for name in ('pos', 'neg', 'log_pos', 'log_neg')
      )
      kl = pos_j * (log_pos_j - px.log_pos) + neg_j * (log_neg_j - px.log_neg)  # [N,H,W,C]
      # One pass over C for the three sums (a variadic reduce), so kl is never stored.
      kl_all, kl_centre, kl_neighbour = jax.lax.reduce(
        (
          kl,
          jnp.where(centre_onehot, kl, 0.0),
          jnp.where(_at_class(pair.neighbour_cls, num_classes), kl, 0.0),
        ),
        (jnp.float32(0),) * 3,
        lambda x, y: tuple(a + b for a, b in zip(x, y)),
        (3,),
      )
      gate_centre = pair.differ & (kl_centre < margin)  # relu(m - kl) is active
      gate_neighbour = pair.differ & (kl_neighbour < margin)
      gates.append((gate_centre, gate_neighbour))
      edge += jnp.where(gate_centre, margin - kl_centre, 0.0) + jnp.where(
        gate_neighbour, margin - kl_neighbour, 0.0
      )
      nonedge += jnp.where(
        pair.differ, kl_all - kl_centre - kl_neighbour, jnp.where(pair.same, kl_all, 0.0)
      )
      edge_count += jnp.where(pair.differ, 2.0, 0.0)
      nonedge_count += jnp.where(
        pair.differ, num_classes - 2.0, jnp.where(pair.same, float(num_classes), 0.0)
      )
    all_sums.append(PairSums(edge, nonedge, edge_count, nonedge_count))
    all_gates.append(tuple(gates))
  return tuple(all_sums), tuple(all_gates)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _pair_sums_f32(probs, labels, num_classes, sizes, margin):
  """_pair_sums on float32 probs; the gradient is _pair_sums_bwd's, not autodiff's."""
  return _forward(probs, labels, num_classes, sizes, margin)[0]


def _pair_sums_fwd(probs, labels, num_classes, sizes, margin):
  sums, gates = _forward(probs, labels, num_classes, sizes, margin)
  return sums, (probs, labels, gates)


def _pair_sums_bwd(num_classes, sizes, margin, residuals, sums_bar):
  """dL/dprobs as one sum over the offsets of all sizes (derivation in the module docstring)."""
  del margin  # it acts through the saved gates
  probs, labels, gates = residuals
  _, height, width, _ = probs.shape
  shifter = _Shifter(height, width, max(sizes))
  px = _pixels(probs, labels, num_classes, shifter)
  centre_onehot = _at_class(px.cls, num_classes)
  # [N,H,W,C]: sum_o G(k - o, o) (log a_k + 1 - log a_{k-o}), pixel k as a neighbour ...
  as_neighbour_pos = as_neighbour_neg = 0.0
  # ... and sum_o G(k, o) a_{k+o}, pixel k as a centre (the same for b).
  as_centre_pos = as_centre_neg = 0.0
  for size, bar, size_gates in zip(sizes, sums_bar, gates):
    for (dy, dx), (gate_centre, gate_neighbour) in zip(offsets(size), size_gates):
      pair = _pair_labels(px, shifter, dy, dx)
      alpha = jnp.where(pair.kept, bar.nonedge, 0.0)  # [N,H,W]
      beta_centre = -(
        jnp.where(pair.differ, bar.nonedge, 0.0) + jnp.where(gate_centre, bar.edge, 0.0)
      )
      beta_neighbour = -(
        jnp.where(pair.differ, bar.nonedge, 0.0) + jnp.where(gate_neighbour, bar.edge, 0.0)
      )
      g_centre = (
        alpha[..., None]
        + jnp.where(centre_onehot, beta_centre[..., None], 0.0)
        + jnp.where(_at_class(pair.neighbour_cls, num_classes), beta_neighbour[..., None], 0.0)
      )  # G(k, o)
      as_centre_pos += g_centre * shifter.at(px.padded['pos'], dy, dx)
      as_centre_neg += g_centre * shifter.at(px.padded['neg'], dy, dx)
      alpha_in, beta_centre_in, beta_neighbour_in = (
        shifter.at(shifter.pad(x, 0.0), -dy, -dx) for x in (alpha, beta_centre, beta_neighbour)
      )  # the pair (k - o, k)'s scalars
      centre_cls_in = shifter.at(px.padded['cls'], -dy, -dx)
      g_neighbour = (
        alpha_in[..., None]
        + jnp.where(_at_class(centre_cls_in, num_classes), beta_centre_in[..., None], 0.0)
        + jnp.where(centre_onehot, beta_neighbour_in[..., None], 0.0)
      )  # G(k-o, o)
      as_neighbour_pos += g_neighbour * (
        px.log_pos + 1.0 - shifter.at(px.padded['log_pos'], -dy, -dx)
      )
      as_neighbour_neg += g_neighbour * (
        px.log_neg + 1.0 - shifter.at(px.padded['log_neg'], -dy, -dx)
      )
  d_pos = as_neighbour_pos - as_centre_pos / px.pos
  d_neg = as_neighbour_neg - as_centre_neg / px.neg
  return d_pos * clip_slope(probs) - d_neg * clip_slope(1.0 - probs), None


_pair_sums_f32.defvjp(_pair_sums_fwd, _pair_sums_bwd)


def _class_index(labels, num_classes):
  """Labels with every ignored value mapped to num_classes (a class no pixel can match)."""
  labels = jnp.asarray(labels)
  valid = (labels >= 0) & (labels < num_classes)
  return jnp.where(valid, labels, num_classes).astype(jnp.int32)


def _per_class_totals(values, centre_class, num_classes):
  """Sums of K [N,H,W] arrays by the centre pixel's class: [K,C] (ignored centres dropped).

  One matmul with the one-hot labels rather than scatter-adds: as accurate as a tree sum in
  float32 over millions of pixels, and its transpose is a matmul again.
  """
  centre_onehot = _at_class(centre_class, num_classes).astype(jnp.float32)  # [N,H,W,C]
  return jnp.einsum(
    'knhw,nhwc->kc', jnp.stack(values), centre_onehot, precision=jax.lax.Precision.HIGHEST
  )


def _safe_mean(total, count):
  """total / count, and 0 (not NaN) when nothing was counted."""
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def _check_inputs(probs, labels, num_classes, sizes, sizes_name, implementation):
  """Trace-time checks: shapes, dtypes and static options, with messages that say what's wrong."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f'implementation must be one of {IMPLEMENTATIONS} (the pair sums: XLA ops or the fused '
      f'Pallas kernels of affinity_pallas.py), got {implementation!r}.'
    )
  probs_shape, labels_shape = tuple(jnp.shape(probs)), tuple(jnp.shape(labels))
  if len(probs_shape) != 4:
    raise ValueError(f'probs must be [N,H,W,C] (rank 4), got shape {list(probs_shape)}.')
  if len(labels_shape) != 3:
    raise ValueError(f'labels must be [N,H,W] (rank 3), got shape {list(labels_shape)}.')
  if probs_shape[:3] != labels_shape:
    raise ValueError(
      f'probs and labels must agree on [N,H,W]: probs {list(probs_shape)}, '
      f'labels {list(labels_shape)}.'
    )
  if not jnp.issubdtype(jnp.result_type(probs), jnp.floating):
    raise ValueError(
      f'probs must be a floating dtype (float32 or bfloat16), got {jnp.result_type(probs)}.'
    )
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(f'labels must be an integer dtype, got {jnp.result_type(labels)}.')
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  if probs_shape[3] != num_classes:
    raise ValueError(f'probs has {probs_shape[3]} channels but num_classes={num_classes}.')
  if not sizes:
    raise ValueError(f'{sizes_name} must name at least one neighbourhood half-size, got {sizes!r}.')
  for s in sizes:
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
      raise ValueError(f'{sizes_name} must hold ints >= 1 (half-sizes of the field), got {s!r}.')
