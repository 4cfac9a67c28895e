"""Affinity-field losses (AAF_SPEC.md items 1-11) as pure, jit-able JAX functions.

Nothing here imports flax, a config or the file system: the functions take arrays and static
options and return arrays, so they drop into any training loop.

How the loss is computed without an [N,H,W,C,8] tensor. For a kept pair (i, j = i + o) the
binary KL of class c is, with a = clip(p), b = clip(1 - p) and their logs precomputed once per
pixel,

    kl_c(i, j) = a_j(c) (log a_j(c) - log a_i(c)) + b_j(c) (log b_j(c) - log b_i(c)).

Only the classes of the pair's two labels can be edges, so per pair three reductions over C of
that one fused expression suffice: the sum over all classes S, and the values at y_i and y_j.
The edge sum is relu(m - kl_{y_i}) + relu(m - kl_{y_j}) when y_i != y_j, the non-edge sum is
S minus those two KLs (or all of S when y_i == y_j). Each offset therefore leaves only
[N,H,W] values behind, and the gradient of each is a scalar per pair times per-pixel tensors,
so reverse mode stores nothing of size [N,H,W,C] per offset either.

For the adaptive loss the per-pixel sums are gathered into per-class totals first; the
softmax weights of the centre's class then multiply those [C] totals, which is the same as
weighting every element by its centre's class and keeps the logit-table gradients cheap.
"""

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
  sums = _pair_sums(probs, labels, num_classes, size, margin)
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
  edge_weights = jax.nn.softmax(jnp.asarray(edge_logits, jnp.float32), axis=-1)  # [C,K]
  nonedge_weights = jax.nn.softmax(jnp.asarray(nonedge_logits, jnp.float32), axis=-1)
  centre_class = _class_index(labels, num_classes)  # [N,H,W], C for ignored pixels
  edges, nonedges = [], []
  for k, size in enumerate(sizes):
    sums = _pair_sums(probs, labels, num_classes, size, margin)
    edge_per_class = _per_class_total(sums.edge, centre_class, num_classes)  # [C]
    nonedge_per_class = _per_class_total(sums.nonedge, centre_class, num_classes)
    edges.append(_safe_mean(jnp.sum(edge_weights[:, k] * edge_per_class),
                            jnp.sum(sums.edge_count)))
    nonedges.append(_safe_mean(jnp.sum(nonedge_weights[:, k] * nonedge_per_class),
                               jnp.sum(sums.nonedge_count)))
  return jnp.stack(edges), jnp.stack(nonedges)


class _PairSums(NamedTuple):
  """Per-centre-pixel sums over the 8 offsets of one size, each [N,H,W] float32."""
  edge: jax.Array
  nonedge: jax.Array
  edge_count: jax.Array
  nonedge_count: jax.Array


def _pair_sums(probs, labels, num_classes, size, margin):
  """Sums of edge/non-edge elements and their counts per centre pixel for half-size `size`."""
  probs = jnp.asarray(probs).astype(jnp.float32)
  labels = jnp.asarray(labels)
  _, height, width, _ = probs.shape
  pos = jnp.clip(probs, _EPS, 1.0)  # a = clip(p)
  neg = jnp.clip(1.0 - probs, _EPS, 1.0)  # b = clip(1 - p), from the unclipped p
  log_pos, log_neg = jnp.log(pos), jnp.log(neg)
  valid = (labels >= 0) & (labels < num_classes)  # [N,H,W]
  cls = _class_index(labels, num_classes)

  # Padding by `size` with invalid pixels turns "i + o and i - o inside the image" into a
  # validity test on shifted views.
  def pad(x, value):
    widths = [(0, 0), (size, size), (size, size)] + [(0, 0)] * (x.ndim - 3)
    return jnp.pad(x, widths, constant_values=value)

  padded = [pad(x, 0) for x in (pos, neg, log_pos, log_neg)]
  valid_p, cls_p = pad(valid, False), pad(cls, num_classes)

  def view(x, dy, dx):  # x at i + (dy, dx), for every centre i of the image
    return jax.lax.slice_in_dim(
        jax.lax.slice_in_dim(x, size + dy, size + dy + height, axis=1),
        size + dx, size + dx + width, axis=2)

  class_ids = jnp.arange(num_classes, dtype=cls.dtype).reshape(1, 1, 1, num_classes)
  edge = jnp.zeros(labels.shape, jnp.float32)
  nonedge = jnp.zeros(labels.shape, jnp.float32)
  edge_count = jnp.zeros(labels.shape, jnp.float32)
  nonedge_count = jnp.zeros(labels.shape, jnp.float32)
  for dy in (-size, 0, size):
    for dx in (-size, 0, size):
      if dy == 0 and dx == 0:
        continue
      pos_j, neg_j, log_pos_j, log_neg_j = (view(x, dy, dx) for x in padded)
      cls_j = view(cls_p, dy, dx)
      kept = valid & view(valid_p, dy, dx) & view(valid_p, -dy, -dx)
      kl = pos_j * (log_pos_j - log_pos) + neg_j * (log_neg_j - log_neg)  # [N,H,W,C]
      kl_all = jnp.sum(kl, axis=-1)
      kl_centre = jnp.sum(jnp.where(class_ids == cls[..., None], kl, 0.0), axis=-1)
      kl_neighbour = jnp.sum(jnp.where(class_ids == cls_j[..., None], kl, 0.0), axis=-1)
      differ = kept & (cls != cls_j)
      same = kept & (cls == cls_j)
      edge += jnp.where(differ, jax.nn.relu(margin - kl_centre)
                        + jax.nn.relu(margin - kl_neighbour), 0.0)
      nonedge += jnp.where(differ, kl_all - kl_centre - kl_neighbour,
                           jnp.where(same, kl_all, 0.0))
      edge_count += jnp.where(differ, 2.0, 0.0)
      nonedge_count += jnp.where(differ, num_classes - 2.0, jnp.where(same, num_classes, 0.0))
  return _PairSums(edge, nonedge, edge_count, nonedge_count)


def _class_index(labels, num_classes):
  """Labels with every ignored value mapped to num_classes (a class no pixel can match)."""
  labels = jnp.asarray(labels)
  valid = (labels >= 0) & (labels < num_classes)
  return jnp.where(valid, labels, num_classes).astype(jnp.int32)


def _per_class_total(values, centre_class, num_classes):
  """Sum of [N,H,W] values by the centre pixel's class: [C] (ignored centres dropped)."""
  totals = jax.ops.segment_sum(values.reshape(-1), centre_class.reshape(-1),
                               num_segments=num_classes + 1)
  return totals[:num_classes]


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
