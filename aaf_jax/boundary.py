"""Boundary IoU (Cheng, Girshick, Dollar, Berg, Kirillov, CVPR 2021), per class, over a split.

Mask IoU is dominated by object interiors; where affinity fields act is the boundary. Boundary
IoU compares only the pixels of each mask that lie within `width` px of that mask's contour:

    G_d = pixels of the ground-truth mask of class c within d px of its contour
    P_d = the same for the predicted mask of class c
    boundary IoU(c) = |G_d & P_d| / |G_d | P_d|

(the paper writes (G_d & G) and (P_d & P): its G_d is the band on both sides of the contour;
intersected with the mask that is the inner band computed here). Distance is the chessboard
distance of the reference implementation (`boundary_iou_api`, d erosions by a 3x3 square), and
the image border counts as contour. For semantic segmentation the counts are summed over every
image of the split before dividing, like the confusion matrix of mIoU, and the mean runs over
classes present in G_d or P_d.

The width is either pixels (an int) or, as the paper defines it, a fraction of each image's
diagonal (a float in (0, 1); Cheng et al. use 0.02): width = max(1, round(fraction *
sqrt(h^2 + w^2))) with (h, w) that image's own size, so images of different sizes get
different widths (`image_widths`).

Ignored pixels (void label, eval padding) are outside both masks and are never counted, so the
score depends only on the predictions at counted pixels: a prediction right on every counted
pixel scores 1 for each class present.
"""

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_WIDTH = 3  # px; Cheng et al. use 2% of the image diagonal (config.eval.boundary_width)


def image_widths(fraction: float, sizes):
  """int32 [N]: each image's band width in px, max(1, round(fraction * its diagonal)).

  sizes [N,2]: each image's own (height, width). Rounds half to even, as Python's round in the
  paper's reference code does.
  """
  sizes = jnp.asarray(sizes, jnp.float32)
  diagonal = jnp.sqrt(sizes[:, 0] ** 2 + sizes[:, 1] ** 2)
  return jnp.maximum(1, jnp.round(jnp.float32(fraction) * diagonal)).astype(jnp.int32)


def inner_band(masks, width):
  """Pixels of `masks` [N,H,W] (bool) within `width` px (chessboard) of the mask's outside.

  Outside the image counts as outside: the band is the mask minus its erosion by a
  (2*width+1)^2 square, with the image zero-padded. `width`: an int for every image, or
  int [N] (traced is fine), one per image, each >= 1.
  """
  if isinstance(width, (int, np.integer)):
    if width < 1:
      raise ValueError(f'boundary width={width!r}: expected an integer >= 1 (pixels).')
    return masks & (_erode(masks.astype(jnp.int8), int(width)) == 0)
  widths = jnp.asarray(width, jnp.int32)  # [N]

  def one_step_more(step, eroded):  # w erosions by a 3x3 square = one by a (2w+1)^2 square
    return jnp.where((step < widths)[:, None, None], _erode(eroded, 1), eroded)

  eroded = jax.lax.fori_loop(0, jnp.max(widths), one_step_more, masks.astype(jnp.int8))
  return masks & (eroded == 0)


def _erode(inside, width: int):
  """int8 [N,H,W] eroded by a (2*width+1)^2 square, outside the image counting as 0."""
  padded = jnp.pad(inside, ((0, 0), (width, width), (width, width)))
  window = 2 * width + 1
  eroded = jax.lax.reduce_window(
    padded, jnp.int8(1), jax.lax.min, (1, window, 1), (1, 1, 1), 'VALID'
  )
  return jax.lax.reduce_window(eroded, jnp.int8(1), jax.lax.min, (1, 1, window), (1, 1, 1), 'VALID')


def boundary_counts(labels, preds, counted, num_classes: int, width):
  """int32 [2, C]: per class, |G_d & P_d| and |G_d | P_d| of one batch.

  labels, preds [N,H,W] int; counted [N,H,W] bool: the pixels that count (a class label, a real
  example); width: px, an int or int [N] per image (`image_widths`). Runs one class at a time,
  so memory stays at a few [N,H,W] arrays.
  """

  def per_class(c):
    truth = inner_band((labels == c) & counted, width)
    predicted = inner_band((preds == c) & counted, width)
    return jnp.stack(
      [jnp.sum(truth & predicted, dtype=jnp.int32), jnp.sum(truth | predicted, dtype=jnp.int32)]
    )

  return jax.lax.map(per_class, jnp.arange(num_classes)).T


def scores(counts, class_names) -> dict:
  """{'boundary_iou': mean, 'per_class_boundary_iou': {class: IoU or None}} from summed counts.

  A class with an empty union (no boundary pixel in truth or prediction) has no score (None)
  and is left out of the mean.
  """
  mean, per_class = class_ratios(*counts, class_names)
  return {'boundary_iou': mean, 'per_class_boundary_iou': per_class}


def class_ratios(numerator, denominator, class_names) -> tuple[float, dict]:
  """(mean, {class: ratio or None}) of per-class `numerator / denominator` (NumPy, [C] each).

  A class whose denominator is 0 has no ratio (None) and is left out of the mean; the mean of
  no class is 0.
  """
  numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    ratio = np.where(denominator > 0, numerator / denominator, np.nan)
  mean = float(np.nanmean(ratio)) if np.any(denominator > 0) else 0.0
  return mean, {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, ratio)}
