"""Affinity-field losses (AAF_SPEC.md items 1-11) as pure, jit-able JAX functions.

Nothing here imports flax, a config or the file system: the functions take arrays and static
options and return arrays, so they drop into any training loop.

How the loss is computed without an [N,H,W,C,8] tensor. For a kept pair (i, j = i + o) the
binary KL of class c is, with a = clip(p), b = clip(1 - p) and their logs computed once per
pixel,

    kl_c(i, o) = a_j(c) (log a_j(c) - log a_i(c)) + b_j(c) (log b_j(c) - log b_i(c)).

Only the classes of the pair's two labels can be edges, so one pass over C per pair gives the
three sums that matter: over all classes (S), at y_i and at y_j. The edge sum is
relu(m - kl_{y_i}) + relu(m - kl_{y_j}) when y_i != y_j; the non-edge sum is S minus those two
KLs, or all of S when y_i == y_j. Each offset leaves only [N,H,W] values behind, kept as
[N,H,W,O] arrays over the O = 8K offsets of all K sizes.

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

and the same for b. Both sums run over the offsets of every size, shifted [N,H,W] scalars
times shifted per-pixel tensors. Finally dL/dp = dL/da clip'(p) - dL/db clip'(1 - p), with
jnp.clip's slopes (1 inside, 1/2 on a bound, 0 outside). The forward pass saves only probs,
labels and the [N,H,W,O] relu gates; a, b and their logs are recomputed.

Two forms of the same sums, picked per platform when compiling (_by_platform). On a GPU the
O shifted [N,H,W,C] terms are stacked into one [N,H,W,O,C] operand of a single reduce, forward
(over C) and backward (over O): fewer, larger kernels, which measured faster on an H100. XLA's
CPU backend would store every such stack, so on CPU each offset is reduced on its own and the
backward is one elementwise sum.

For the adaptive loss the per-pixel sums are totalled by the centre's class first; the
softmax weights of that class then multiply the [C] totals, which is the same as weighting
every element by its centre's class and keeps the logit-table gradients cheap.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

_EPS = 1e-4  # the spec's clipping floor for q, 1-q, p and 1-p


def loss_decay(step, num_steps):
  """The factor 10 ** (-step / num_steps) that scales the affinity term (spec item 10)."""
  if isinstance(num_steps, (int, float)) and num_steps <= 0:
    raise ValueError(f'loss_decay: num_steps must be positive, got {num_steps}.')
  step = jnp.asarray(step, jnp.float32)
  return jnp.power(jnp.float32(10.0), -step / jnp.asarray(num_steps, jnp.float32))


def affinity_loss(probs, labels, *, num_classes: int, size: int = 1, margin: float = 3.0):
  """The affinity-field loss of one neighbourhood size (spec items 1-6).

  Args:
    probs: [N,H,W,C] float32 or bfloat16 softmax probabilities.
    labels: [N,H,W] integer labels; a value outside [0, num_classes) is ignored.
    num_classes: C.
    size: half-size s of the (2s+1)x(2s+1) field.
    margin: m, the edge margin.

  Returns:
    (edge, nonedge): float32 scalars, the means over kept edge and non-edge elements
    (0 where there are none).
  """
  _check_inputs(probs, labels, num_classes, (size,), 'size')
  sums = _pair_sums(probs, labels, num_classes, (size,), margin)
  return (_safe_mean(jnp.sum(sums.edge), jnp.sum(sums.edge_count)),
          _safe_mean(jnp.sum(sums.nonedge), jnp.sum(sums.nonedge_count)))


def adaptive_affinity_loss(probs, labels, *, num_classes: int,
                           sizes: Sequence[int] = (1, 2, 3), margin: float = 3.0,
                           edge_logits, nonedge_logits):
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

  Returns:
    (edge, nonedge): float32 arrays of shape [K]; the total loss is
    sum_k lambda_edge * edge[k] + lambda_nonedge * nonedge[k].
  """
  sizes = tuple(sizes)
  _check_inputs(probs, labels, num_classes, sizes, 'sizes')
  expected = (num_classes, len(sizes))
  for name, table in (('edge_logits', edge_logits), ('nonedge_logits', nonedge_logits)):
    if tuple(jnp.shape(table)) != expected:
      raise ValueError(f'adaptive_affinity_loss: {name} must have shape [num_classes, '
                       f'len(sizes)] = {list(expected)}, got {list(jnp.shape(table))}.')
  sums = _pair_sums(probs, labels, num_classes, sizes, margin)
  centre_class = _class_index(labels, num_classes)  # [N,H,W], C for ignored pixels
  num_sizes = len(sizes)
  # Edge then non-edge values of every size, totalled by the centre's class in one matmul.
  per_class = _group_by_size(_per_class_totals(  # [2K,C]
      jnp.concatenate([sums.edge, sums.nonedge], axis=3), centre_class, num_classes).T,
      2 * num_sizes).T
  counts = _group_by_size(jnp.sum(  # [2K]
      jnp.concatenate([sums.edge_count, sums.nonedge_count], axis=3), axis=(0, 1, 2)),
      2 * num_sizes)
  # Softmax over K of each class's row, edge table then non-edge table: [2K,C] like per_class.
  weights = jax.nn.softmax(jnp.asarray(jnp.stack([edge_logits, nonedge_logits]), jnp.float32),
                           axis=-1)  # [2,C,K]
  weighted = jnp.sum(weights.transpose(0, 2, 1).reshape(2 * num_sizes, num_classes)
                     * per_class, axis=1)
  means = _safe_mean(weighted, counts)  # [2K]
  return means[:num_sizes], means[num_sizes:]


class _PairSums(NamedTuple):
  """Per-centre-pixel values of every offset of every size, each [N,H,W,O] float32.

  O = 8 * len(sizes), size-major: offsets 8k..8k+7 are those of sizes[k].
  """
  edge: jax.Array
  nonedge: jax.Array
  edge_count: jax.Array
  nonedge_count: jax.Array


def _pair_sums(probs, labels, num_classes, sizes, margin, fused=None):
  """_PairSums for all sizes, differentiable w.r.t. probs (any float dtype) by the custom VJP."""
  return _pair_sums_jit(jnp.asarray(probs), jnp.asarray(labels), num_classes, tuple(sizes),
                        float(margin), fused)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _pair_sums_jit(probs, labels, num_classes, sizes, margin, fused):
  """Compiled as one program, so eager callers don't dispatch hundreds of small ops."""
  return _pair_sums_f32(probs.astype(jnp.float32), labels, num_classes, sizes, margin, fused)


def _offsets(size):
  """Spec item 1: the 8 offsets (dy, dx) in {-s, 0, s}^2 other than (0, 0)."""
  return tuple((dy, dx) for dy in (-size, 0, size) for dx in (-size, 0, size)
               if (dy, dx) != (0, 0))


def _all_offsets(sizes):
  """The offsets of every size, size-major: the O axis of _PairSums."""
  return tuple(o for size in sizes for o in _offsets(size))


def _group_by_size(x, num_sizes):
  """[..., O] -> [..., K]: the sum over each size's 8 offsets."""
  return jnp.sum(x.reshape(x.shape[:-1] + (num_sizes, 8)), axis=-1)


class _Shifter:
  """Shifted views of [N,H,W,...] arrays, padded once by the largest half-size.

  Padding with an invalid value turns "i + o lies inside the image" into a test on a view.
  """

  def __init__(self, height, width, border, offsets):
    self.height, self.width, self.border, self.offsets = height, width, border, offsets

  def pad(self, x, value):
    b = self.border
    return jnp.pad(x, [(0, 0), (b, b), (b, b)] + [(0, 0)] * (x.ndim - 3),
                   constant_values=value)

  def at(self, padded, dy, dx):
    """padded viewed at i + (dy, dx) for every pixel i of the image."""
    y0, x0 = self.border + dy, self.border + dx
    return jax.lax.slice_in_dim(
        jax.lax.slice_in_dim(padded, y0, y0 + self.height, axis=1),
        x0, x0 + self.width, axis=2)

  def each(self, fn, sign=1):
    """[fn(o, dy, dx) for the o-th offset (dy, dx)], or with (-dy, -dx) for sign=-1."""
    return [fn(o, sign * dy, sign * dx) for o, (dy, dx) in enumerate(self.offsets)]

  def stack(self, fn, sign=1):
    """self.each(fn, sign) stacked on a new axis 3.

    With [N,H,W,C] terms the stack is rank 5, meant to be fused into the reduce that consumes
    it. XLA's GPU backend does that for the forward's stack; it may store the backward's (see
    benchmarks/affinity_loss.py for the temp memory).
    """
    return jnp.stack(self.each(fn, sign), axis=3)


class _Pixels(NamedTuple):
  """Per-pixel tensors shared by all offsets, each with its padded copy where views need it."""
  pos: jax.Array  # a = clip(p)  [N,H,W,C]
  neg: jax.Array  # b = clip(1 - p)
  log_pos: jax.Array
  log_neg: jax.Array
  cls: jax.Array  # [N,H,W] label, num_classes where ignored
  valid: jax.Array  # [N,H,W] bool
  padded: dict  # the same names, padded by the shifter's border


def _pixels(probs, labels, num_classes, shifter, fused):
  """a, b, their logs, the labels and their validity, plus padded copies for shifted views.

  In the fused form the padded a, b and logs are taken from padded probs, so XLA computes them
  inside the one reduce that reads them instead of storing four padded copies. The padding's
  values only meet pairs that are not kept, whose terms are masked out or get zero cotangent.
  """
  pos = jnp.clip(probs, _EPS, 1.0)
  neg = jnp.clip(1.0 - probs, _EPS, 1.0)  # from the unclipped p
  cls = _class_index(labels, num_classes)
  valid = cls < num_classes
  tensors = dict(pos=pos, neg=neg, log_pos=jnp.log(pos), log_neg=jnp.log(neg))
  if fused:
    padded_probs = shifter.pad(probs, 0.5)
    padded_pos = jnp.clip(padded_probs, _EPS, 1.0)
    padded_neg = jnp.clip(1.0 - padded_probs, _EPS, 1.0)
    padded = dict(pos=padded_pos, neg=padded_neg, log_pos=jnp.log(padded_pos),
                  log_neg=jnp.log(padded_neg))
  else:
    padded = {name: shifter.pad(x, 0.0) for name, x in tensors.items()}
  padded.update(cls=shifter.pad(cls, num_classes), valid=shifter.pad(valid, False))
  return _Pixels(cls=cls, valid=valid, padded=padded, **tensors)


class _PairLabels(NamedTuple):
  """Label tests of the pairs (i, i + o) for every offset o, each [N,H,W,O]."""
  neighbour_cls: jax.Array
  differ: jax.Array  # kept and y_i != y_j: an edge for y_i and y_j, a non-edge otherwise
  same: jax.Array  # kept and y_i == y_j: a non-edge for every class
  kept: jax.Array


def _pair_labels(px, shifter):
  """Spec items 2-3 for all offsets: which pairs are kept, edges or non-edges."""
  valid = px.padded['valid']
  kept = (px.valid[..., None] & shifter.stack(lambda o, dy, dx: shifter.at(valid, dy, dx))
          & shifter.stack(lambda o, dy, dx: shifter.at(valid, dy, dx), sign=-1))
  neighbour_cls = shifter.stack(lambda o, dy, dx: shifter.at(px.padded['cls'], dy, dx))
  same_cls = px.cls[..., None] == neighbour_cls
  return _PairLabels(neighbour_cls, kept & ~same_cls, kept & same_cls, kept)


def _at_class(cls, num_classes):
  """[...] labels -> [..., C] bool, true at each pixel's class (nowhere if ignored)."""
  return cls[..., None] == jnp.arange(num_classes, dtype=cls.dtype)


def _sum_last(operands, axis):
  """Sums of several same-shape arrays over one axis in one variadic reduce (one pass)."""
  return jax.lax.reduce(tuple(operands), (jnp.float32(0),) * len(operands),
                        lambda x, y: tuple(a + b for a, b in zip(x, y)), (axis,))


def _forward(probs, labels, num_classes, sizes, margin, fused):
  """The _PairSums, plus the relu gates of every edge term (the backward's residuals).

  fused: one reduce over a fused [N,H,W,O,C] stack (few GPU kernels), or one per offset (CPU).
  """
  _, height, width, _ = probs.shape
  shifter = _Shifter(height, width, max(sizes), _all_offsets(sizes))
  px = _pixels(probs, labels, num_classes, shifter, fused)
  pair = _pair_labels(px, shifter)
  pad = px.padded
  centre_onehot = _at_class(px.cls, num_classes)  # [N,H,W,C]

  def kl(o, dy, dx):  # [N,H,W,C]
    return (shifter.at(pad['pos'], dy, dx) * (shifter.at(pad['log_pos'], dy, dx) - px.log_pos)
            + shifter.at(pad['neg'], dy, dx) * (shifter.at(pad['log_neg'], dy, dx) - px.log_neg))

  # [N,H,W,O] sums of kl over all classes, at y_i and at y_j: one pass over C.
  if fused:
    stacked = shifter.stack(kl)
    kl_all, kl_centre, kl_neighbour = _sum_last(
        (stacked, jnp.where(centre_onehot[..., None, :], stacked, 0.0),
         jnp.where(_at_class(pair.neighbour_cls, num_classes), stacked, 0.0)), axis=4)
  else:
    per_offset = [_sum_last((x, jnp.where(centre_onehot, x, 0.0),
                             jnp.where(_at_class(pair.neighbour_cls[..., o], num_classes), x,
                                       0.0)), axis=3)
                  for o, x in enumerate(shifter.each(kl))]
    kl_all, kl_centre, kl_neighbour = (jnp.stack(s, axis=3) for s in zip(*per_offset))
  gate_centre = pair.differ & (kl_centre < margin)  # relu(m - kl) is active
  gate_neighbour = pair.differ & (kl_neighbour < margin)
  sums = _PairSums(
      edge=(jnp.where(gate_centre, margin - kl_centre, 0.0)
            + jnp.where(gate_neighbour, margin - kl_neighbour, 0.0)),
      nonedge=jnp.where(pair.differ, kl_all - kl_centre - kl_neighbour,
                        jnp.where(pair.same, kl_all, 0.0)),
      edge_count=jnp.where(pair.differ, 2.0, 0.0),
      nonedge_count=jnp.where(pair.differ, num_classes - 2.0,
                              jnp.where(pair.same, float(num_classes), 0.0)))
  return sums, (gate_centre, gate_neighbour)


def _by_platform(fn, fused):
  """fn(fused) for a given form, else per platform: per-offset loops on CPU, fused elsewhere.

  XLA's CPU backend stores every operand of a concatenate, so the fused [N,H,W,O,C] stacks
  would cost O times the memory and time there; on a GPU they save a kernel launch per offset.
  """
  if fused is not None:
    return fn(fused)
  return jax.lax.platform_dependent(cpu=lambda: fn(False), default=lambda: fn(True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _pair_sums_f32(probs, labels, num_classes, sizes, margin, fused):
  """_pair_sums on float32 probs; the gradient is _backward's, not autodiff's.

  fused: None picks the form per platform (_by_platform); True / False force one (tests).
  """
  return _pair_sums_fwd(probs, labels, num_classes, sizes, margin, fused)[0]


def _pair_sums_fwd(probs, labels, num_classes, sizes, margin, fused):
  sums, gates = _by_platform(
      lambda f: _forward(probs, labels, num_classes, sizes, margin, f), fused)
  return sums, (probs, labels, gates)


def _pair_sums_bwd(num_classes, sizes, margin, fused, residuals, sums_bar):
  del margin  # it acts through the saved gates
  probs, labels, gates = residuals
  return _by_platform(
      lambda f: _backward(probs, labels, gates, sums_bar, num_classes, sizes, f), fused), None


def _backward(probs, labels, gates, sums_bar, num_classes, sizes, fused):
  """dL/dprobs as one sum over the offsets of all sizes (derivation in the module docstring)."""
  gate_centre, gate_neighbour = gates
  _, height, width, _ = probs.shape
  shifter = _Shifter(height, width, max(sizes), _all_offsets(sizes))
  px = _pixels(probs, labels, num_classes, shifter, fused)
  pair = _pair_labels(px, shifter)
  pad = px.padded
  # The [N,H,W,O] scalars of G(i, o), and their padded copies for the pairs (k - o, k).
  differ_bar = jnp.where(pair.differ, sums_bar.nonedge, 0.0)
  alpha = jnp.where(pair.kept, sums_bar.nonedge, 0.0)
  beta_centre = -(differ_bar + jnp.where(gate_centre, sums_bar.edge, 0.0))
  beta_neighbour = -(differ_bar + jnp.where(gate_neighbour, sums_bar.edge, 0.0))
  alpha_p, beta_centre_p, beta_neighbour_p = (
      shifter.pad(x, 0.0) for x in (alpha, beta_centre, beta_neighbour))
  centre_onehot = _at_class(px.cls, num_classes)  # [N,H,W,C]

  def g_centre(o):  # G(k, o)  [N,H,W,C]
    return (alpha[..., o, None] + jnp.where(centre_onehot, beta_centre[..., o, None], 0.0)
            + jnp.where(_at_class(pair.neighbour_cls[..., o], num_classes),
                        beta_neighbour[..., o, None], 0.0))

  def g_neighbour(o, dy, dx):  # G(k - o, o), called with (dy, dx) = -o  [N,H,W,C]
    def at(padded):
      return shifter.at(padded[..., o], dy, dx)[..., None]
    return (at(alpha_p)
            + jnp.where(_at_class(shifter.at(pad['cls'], dy, dx), num_classes),
                        at(beta_centre_p), 0.0)
            + jnp.where(centre_onehot, at(beta_neighbour_p), 0.0))

  # Pixel k as a neighbour: G(k - o, o) (log a_k + 1 - log a_{k-o}); as a centre:
  # G(k, o) a_{k+o}; the same for b. Each [N,H,W,C], summed over o.
  terms = (
      (lambda o, dy, dx: g_neighbour(o, dy, dx) * (
          px.log_pos + 1.0 - shifter.at(pad['log_pos'], dy, dx)), -1),
      (lambda o, dy, dx: g_neighbour(o, dy, dx) * (
          px.log_neg + 1.0 - shifter.at(pad['log_neg'], dy, dx)), -1),
      (lambda o, dy, dx: g_centre(o) * shifter.at(pad['pos'], dy, dx), 1),
      (lambda o, dy, dx: g_centre(o) * shifter.at(pad['neg'], dy, dx), 1),
  )

  if fused:  # one reduce over the fused [N,H,W,O,C] stacks
    sums = _sum_last([shifter.stack(fn, sign) for fn, sign in terms], axis=3)
  else:
    sums = tuple(sum(shifter.each(fn, sign)) for fn, sign in terms)
  as_neighbour_pos, as_neighbour_neg, as_centre_pos, as_centre_neg = sums
  d_pos = as_neighbour_pos - as_centre_pos / px.pos
  d_neg = as_neighbour_neg - as_centre_neg / px.neg
  return d_pos * _clip_slope(probs) - d_neg * _clip_slope(1.0 - probs)


_pair_sums_f32.defvjp(_pair_sums_fwd, _pair_sums_bwd)


def _clip_slope(x):
  """d clip(x, EPS, 1) / dx as jnp.clip's autodiff gives it: 1 inside, 1/2 on a bound, 0 out."""
  inside = (x > _EPS) & (x < 1.0)
  on_bound = (x == _EPS) | (x == 1.0)
  return jnp.where(inside, 1.0, jnp.where(on_bound, 0.5, 0.0))


def _class_index(labels, num_classes):
  """Labels with every ignored value mapped to num_classes (a class no pixel can match)."""
  labels = jnp.asarray(labels)
  valid = (labels >= 0) & (labels < num_classes)
  return jnp.where(valid, labels, num_classes).astype(jnp.int32)


def _per_class_totals(values, centre_class, num_classes):
  """[N,H,W,O] values summed by the centre pixel's class: [O,C] (ignored centres dropped).

  One matmul with the one-hot labels rather than scatter-adds: as accurate as a tree sum in
  float32 over millions of pixels, and its transpose is a matmul again.
  """
  centre_onehot = _at_class(centre_class, num_classes).astype(jnp.float32)  # [N,H,W,C]
  return jnp.einsum('nhwo,nhwc->oc', values, centre_onehot,
                    precision=jax.lax.Precision.HIGHEST)


def _safe_mean(total, count):
  """total / count, and 0 (not NaN) when nothing was counted."""
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def _check_inputs(probs, labels, num_classes, sizes, sizes_name):
  """Trace-time checks: shapes, dtypes and static options, with messages that say what's wrong."""
  probs_shape, labels_shape = tuple(jnp.shape(probs)), tuple(jnp.shape(labels))
  if len(probs_shape) != 4:
    raise ValueError(f'probs must be [N,H,W,C] (rank 4), got shape {list(probs_shape)}.')
  if len(labels_shape) != 3:
    raise ValueError(f'labels must be [N,H,W] (rank 3), got shape {list(labels_shape)}.')
  if probs_shape[:3] != labels_shape:
    raise ValueError(f'probs and labels must agree on [N,H,W]: probs {list(probs_shape)}, '
                     f'labels {list(labels_shape)}.')
  if not jnp.issubdtype(jnp.result_type(probs), jnp.floating):
    raise ValueError(f'probs must be a floating dtype (float32 or bfloat16), got '
                     f'{jnp.result_type(probs)}.')
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(f'labels must be an integer dtype, got {jnp.result_type(labels)}.')
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int, got {num_classes!r}.')
  if probs_shape[3] != num_classes:
    raise ValueError(f'probs has {probs_shape[3]} channels but num_classes={num_classes}.')
  if not sizes:
    raise ValueError(f'{sizes_name} must name at least one neighbourhood half-size, got '
                     f'{sizes!r}.')
  for s in sizes:
    if not isinstance(s, int) or isinstance(s, bool) or s < 1:
      raise ValueError(f'{sizes_name} must hold ints >= 1 (half-sizes of the field), got '
                       f'{s!r}.')
