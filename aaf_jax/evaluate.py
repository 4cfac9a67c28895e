"""Evaluation: the recipe's inference (whole image or sliding window, scales, flip), one
confusion matrix over the split, mIoU and friends, and boundary IoU (boundary.py).

The eval iterator pads every image to a fixed shape with ignore labels and pads the last batch
with `valid=False` examples, so each image counts exactly once and the step compiles once.
Inference treats that padded canvas as the image (where each example's real image ends is not
known inside the jitted step); the padding carries label 255, so it never counts.
"""

import json
import math
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from aaf_jax import boundary, sharding


def check_eval_options(
  window: int, stride: int, scales, flip: bool, boundary_width: int = boundary.DEFAULT_WIDTH
) -> None:
  """ValueError naming the `config.eval` field that cannot work."""
  if not isinstance(window, int) or window < 0:
    raise ValueError(
      f'config.eval.window={window!r}: expected an integer >= 0 (0 = the whole image at once).'
    )
  if window > 0 and not (isinstance(stride, int) and 0 < stride <= window):
    raise ValueError(
      f'config.eval.stride={stride!r}: with config.eval.window={window} '
      f'expected an integer in 1..{window}.'
    )
  scales = tuple(scales) if isinstance(scales, (tuple, list)) else scales
  if (
    not isinstance(scales, tuple)
    or not scales
    or not all(isinstance(s, (int, float)) and s > 0 for s in scales)
  ):
    raise ValueError(
      f'config.eval.scales={scales!r}: expected a non-empty tuple of positive numbers, e.g. (1.0,).'
    )
  if not isinstance(flip, bool):
    raise ValueError(f'config.eval.flip={flip!r}: expected True or False.')
  if isinstance(boundary_width, bool) or not isinstance(boundary_width, int) or boundary_width < 1:
    raise ValueError(
      f'config.eval.boundary_width={boundary_width!r}: expected an integer >= 1 (pixels from a '
      'contour that count for boundary IoU).'
    )


def window_starts(length: int, window: int, stride: int) -> list[int]:
  """Window offsets along one axis, placed as the authors' inference script does.

  Evenly spaced, at most `stride` apart, the first at 0 and the last flush with the end, so
  every pixel is covered; a `length` under `window` is padded up to one window.
  """
  length = max(length, window)
  count = math.ceil((length - window) / stride) + 1
  return [int(end) - window for end in np.linspace(window, length, count)]


def _resize(x, height: int, width: int):
  """Bilinear resize of [N,h,w,K] to [N,height,width,K], without antialiasing (as TF's)."""
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(
    x, (x.shape[0], height, width, x.shape[3]), method='linear', antialias=False
  )


def _window_probs(apply_fn, images):
  """Softmax of the logits upsampled to the input size: [N,h,w,3] -> [N,h,w,C]."""
  logits = apply_fn(images).astype(jnp.float32)
  return jax.nn.softmax(_resize(logits, *images.shape[1:3]), axis=-1)


def _sliding_probs(apply_fn, images, num_classes: int, window: int, stride: int):
  """Window-averaged probabilities [N,h,w,C]: one network call per window, in a scan.

  The image is zero-padded at the bottom/right up to one window where it is smaller.
  """
  n, height, width, channels = images.shape
  canvas_h, canvas_w = max(height, window), max(width, window)
  images = jnp.pad(images, ((0, 0), (0, canvas_h - height), (0, canvas_w - width), (0, 0)))
  offsets = np.array(
    [
      (y, x)
      for y in window_starts(height, window, stride)
      for x in window_starts(width, window, stride)
    ],
    np.int32,
  )
  coverage = np.zeros((canvas_h, canvas_w), np.float32)
  for y, x in offsets:
    coverage[y : y + window, x : x + window] += 1

  def add_window(total, offset):
    corner = (0, offset[0], offset[1], 0)
    crop = jax.lax.dynamic_slice(images, corner, (n, window, window, channels))
    probs = _window_probs(apply_fn, crop)  # [N,window,window,C]
    current = jax.lax.dynamic_slice(total, corner, probs.shape)
    return jax.lax.dynamic_update_slice(total, current + probs, corner), None

  total, _ = jax.lax.scan(
    add_window, jnp.zeros((n, canvas_h, canvas_w, num_classes)), jnp.asarray(offsets)
  )
  return (total / coverage[:, :, None])[:, :height, :width]


def predict_probs(
  apply_fn,
  images,
  num_classes: int,
  *,
  window: int = 0,
  stride: int = 0,
  scales=(1.0,),
  flip: bool = False,
):
  """Class probabilities [N,H,W,C] of images [N,H,W,3], summed over scales and flips.

  Per scale (image resized to round(scale*H) x round(scale*W)): softmax probabilities of the
  whole image, or averaged over sliding windows where they overlap; with `flip` also of the
  mirrored image, mirrored back; each resized to H x W and added up, as the authors'
  inference averages probabilities. `apply_fn(images) -> logits` at any output stride.
  """
  n, height, width, _ = images.shape
  views = 2 if flip else 1
  total = jnp.zeros((n, height, width, num_classes), jnp.float32)
  for scale in scales:
    scaled = _resize(images, max(1, round(scale * height)), max(1, round(scale * width)))
    if flip:  # an example's views sit side by side, so the batch sharding keeps them local
      scaled = jnp.stack([scaled, scaled[:, :, ::-1]], axis=1).reshape(
        (n * views,) + scaled.shape[1:]
      )
    probs = (
      _sliding_probs(apply_fn, scaled, num_classes, window, stride)
      if window
      else _window_probs(apply_fn, scaled)
    )
    probs = _resize(probs, height, width).reshape(n, views, height, width, num_classes)
    total = total + probs[:, 0]
    if flip:
      total = total + probs[:, 1, :, ::-1]
  return total


def make_eval_step(
  model,
  num_classes: int,
  *,
  window: int = 0,
  stride: int = 0,
  scales=(1.0,),
  flip: bool = False,
  boundary_width: int = boundary.DEFAULT_WIDTH,
):
  """(variables, batch) -> (confusion [C,C] int32, boundary counts [2,C] int32, predictions
  [N,H,W] int32).

  Predictions are the argmax of `predict_probs` (the defaults: the whole image at scale 1,
  logits upsampled bilinearly to the input size); a pixel counts when its label is a class
  (not 255) and its example is not padding. The boundary counts are `boundary.boundary_counts`
  at `boundary_width` px.
  """
  check_eval_options(window, stride, scales, flip, boundary_width)
  scales = tuple(float(s) for s in scales)

  def eval_step(variables, batch):
    images, labels = batch['image'], batch['label']
    apply_fn = lambda x: model.apply(variables, x, train=False)['logits']
    probs = predict_probs(
      apply_fn, images, num_classes, window=window, stride=stride, scales=scales, flip=flip
    )
    preds = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    counted = (labels >= 0) & (labels < num_classes) & batch['valid'][:, None, None]
    index = jnp.where(counted, labels * num_classes + preds, num_classes * num_classes)
    confusion = jnp.bincount(index.reshape(-1), length=num_classes * num_classes + 1)
    confusion = confusion[:-1].reshape(num_classes, num_classes).astype(jnp.int32)
    return (
      confusion,
      boundary.boundary_counts(labels, preds, counted, num_classes, boundary_width),
      preds,
    )

  return eval_step


def jit_eval_step(model, num_classes: int, mesh, variables_sharding, **options):
  """The jitted eval step over the mesh; `options` are make_eval_step's (config.eval)."""
  return jax.jit(
    make_eval_step(model, num_classes, **options),
    in_shardings=(variables_sharding, sharding.batch_sharding(mesh)),
    out_shardings=(
      sharding.replicated(mesh),
      sharding.replicated(mesh),
      sharding.batch_sharding(mesh),
    ),
  )


def scores(confusion: np.ndarray, class_names) -> dict:
  """mIoU, pixel accuracy and per-class IoU (fractions) from a [C,C] (truth, prediction) matrix.

  A class with no pixel in either the truth or the predictions has no IoU (None) and is left
  out of the mean.
  """
  confusion = np.asarray(confusion, np.float64)
  true_pos = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - true_pos
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, true_pos / union, np.nan)
  total = confusion.sum()
  return {
    'miou': float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
    'pixel_acc': float(true_pos.sum() / total) if total > 0 else 0.0,
    'per_class_iou': {
      name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)
    },
  }


def run_evaluation(eval_step, variables, batches, mesh, num_classes: int, num_keep: int = 0):
  """(confusion [C,C], boundary counts [2,C], kept examples) summed over every batch.

  Each batch's counts are fetched after the next batch is dispatched, so the host never waits
  on the device between batches; the sums are kept on the host in int64 (a large split's pixel
  counts overflow int32). The first `num_keep` examples are kept as (image, label, prediction).
  """
  confusion = np.zeros((num_classes, num_classes), np.int64)
  boundary_counts = np.zeros((2, num_classes), np.int64)
  kept, previous = [], None
  for local in batches:
    batch = sharding.global_batch(local, mesh)
    batch_confusion, batch_boundary, preds = eval_step(variables, batch)
    if previous is not None:
      confusion += np.asarray(jax.device_get(previous[0]), np.int64)
      boundary_counts += np.asarray(jax.device_get(previous[1]), np.int64)
    previous = batch_confusion, batch_boundary
    if len(kept) < num_keep:
      kept.extend(_first_examples(batch, preds, num_keep - len(kept)))
  if previous is not None:
    confusion += np.asarray(jax.device_get(previous[0]), np.int64)
    boundary_counts += np.asarray(jax.device_get(previous[1]), np.int64)
  return confusion, boundary_counts, kept


def _first_examples(batch: dict, preds, count: int) -> list:
  """(image, label, prediction) of the first `count` real examples of a global batch.

  Every process gets the same examples, whichever process read them: the batch is gathered
  from all processes (a collective, reached by every process in the same loop iteration).
  """
  gathered = multihost_utils.process_allgather(
    {'image': batch['image'], 'label': batch['label'], 'valid': batch['valid'], 'pred': preds},
    tiled=True,
  )
  return [
    (gathered['image'][i], gathered['label'][i], gathered['pred'][i])
    for i in np.flatnonzero(gathered['valid'])[:count]
  ]


def format_table(results: dict) -> str:
  """The per-class IoU and boundary IoU table and the summary lines, for the log."""

  def cell(value):
    return f'{"-" if value is None else f"{100 * value:.2f}":>12}'

  boundary_ious = results.get('per_class_boundary_iou', {})
  rows = [f'{"class":<20} {"IoU":>12} {"boundary IoU":>12}']
  for name, iou in results['per_class_iou'].items():
    rows.append(f'{name:<20} {cell(iou)} {cell(boundary_ious.get(name))}')
  rows.append(f'{"mean":<20} {cell(results["miou"])} {cell(results.get("boundary_iou"))}')
  rows.append(f'{"pixel accuracy":<20} {cell(results["pixel_acc"])}')
  return '\n'.join(rows)


def write_json_atomically(path: str, payload: dict) -> None:
  """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.json')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(payload, f, indent=2, allow_nan=False)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the results from other users
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
