"""Evaluation: the recipe's inference (whole image or sliding window, scales, flip), one
confusion matrix over the split, mIoU and friends, boundary IoU (boundary.py) and the
instance-aware scores (instance_iou.py).

The eval iterator pads every image to a fixed canvas with ignore labels, gives each example's
own size, and pads the last batch with `valid=False` examples, so each image counts exactly
once. Inference runs each image at its own size, as the authors do: sliding windows, scales
and flips are placed by the image's size inside the canvas, in one compiled step; whole-image
inference crops the batch to each distinct image size (one compile per size).
"""

import datetime
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from aaf_jax import boundary, instance_iou, sharding, validation


def check_eval_options(
  window: int, stride: int, scales, flip: bool, boundary_width=boundary.DEFAULT_WIDTH
) -> None:
  """ValueError naming the `config.eval` field that cannot work."""
  if not isinstance(window, int) or window < 0:
    raise ValueError(
      f'config.eval.window={window!r}: expected an integer >= 0 (0 = the whole image at once).'
    )
  validation.check_window_stride(window, stride)
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
  pixels = isinstance(boundary_width, int) and not isinstance(boundary_width, bool)
  fraction = isinstance(boundary_width, float) and 0 < boundary_width < 1
  if not (pixels and boundary_width >= 1) and not fraction:
    raise ValueError(
      f'config.eval.boundary_width={boundary_width!r}: expected an integer >= 1 (pixels from a '
      "contour that count for boundary IoU) or a float in (0, 1) (a fraction of each image's "
      'diagonal, e.g. 0.02 as Cheng et al.).'
    )


def window_starts(length: int, window: int, stride: int) -> list[int]:
  """Window offsets along one axis, placed as the authors' inference script does.

  Evenly spaced, at most `stride` apart, the first at 0 and the last flush with the end, so
  every pixel is covered; a `length` under `window` is padded up to one window.
  """
  length = max(length, window)
  count = math.ceil((length - window) / stride) + 1
  return [int(end) - window for end in np.linspace(window, length, count)]


def scaled_length(length, scale: float):
  """The authors' scaled size, int32(float32(length) * scale), at least 1 (an int or an array)."""
  if isinstance(length, (int, np.integer)):
    return max(1, int(np.float32(length) * np.float32(scale)))
  return jnp.maximum(1, (length.astype(jnp.float32) * jnp.float32(scale)).astype(jnp.int32))


def _resize(x, height: int, width: int):
  """Bilinear resize of [N,h,w,K] to [N,height,width,K], without antialiasing (as TF's)."""
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(
    x, (x.shape[0], height, width, x.shape[3]), method='linear', antialias=False
  )


def _resize_axis(x, in_lengths, out_lengths, out_canvas: int, axis: int):
  """Bilinear resize along `axis` (1 or 2) of each example's first in_lengths[i] entries to
  out_lengths[i] entries, in a canvas of `out_canvas` entries that is zero past the image.

  Half-pixel centres, edge clamping, no antialiasing: `_resize` (and OpenCV's INTER_LINEAR)
  for lengths that may be traced values, so one compiled step serves every image size.
  """
  in_lengths = in_lengths[:, None]  # [N,1]
  out_lengths = out_lengths[:, None]
  positions = jnp.arange(out_canvas, dtype=jnp.float32)[None]  # [1,L]
  ratio = in_lengths.astype(jnp.float32) / out_lengths.astype(jnp.float32)
  centres = jnp.maximum((positions + 0.5) * ratio - 0.5, 0.0)  # [N,L]
  floors = jnp.floor(centres)
  lower = jnp.minimum(floors.astype(jnp.int32), in_lengths - 1)
  upper = jnp.minimum(lower + 1, in_lengths - 1)
  shape = [x.shape[0], 1, 1, 1]
  shape[axis] = out_canvas
  low = jnp.take_along_axis(x, lower.reshape(shape), axis=axis)
  high = jnp.take_along_axis(x, upper.reshape(shape), axis=axis)
  resized = low + (high - low) * (centres - floors).reshape(shape)
  return jnp.where((positions < out_lengths).reshape(shape), resized, 0.0)


def resize_in_canvas(x, in_sizes, out_sizes, canvas: tuple[int, int]):
  """[N,H,W,K] whose example i fills its top-left in_sizes[i] = (h, w) -> [N,*canvas,K] with
  that region resized to out_sizes[i] at the top left and zeros elsewhere."""
  x = _resize_axis(x, in_sizes[:, 0], out_sizes[:, 0], canvas[0], axis=1)
  return _resize_axis(x, in_sizes[:, 1], out_sizes[:, 1], canvas[1], axis=2)


def _mirror(x, widths):
  """Mirror the first widths[i] columns of each example of [N,H,W,K]; the rest become 0."""
  columns = jnp.arange(x.shape[2])[None]  # [1,W]
  inside = columns < widths[:, None]  # [N,W]
  index = jnp.where(inside, widths[:, None] - 1 - columns, columns)
  mirrored = jnp.take_along_axis(x, index[:, None, :, None], axis=2)
  return jnp.where(inside[:, None, :, None], mirrored, 0.0)


def _window_probs(apply_fn, images):
  """Softmax of the logits upsampled to the input size: [N,h,w,3] -> [N,h,w,C]."""
  logits = apply_fn(images).astype(jnp.float32)
  return jax.nn.softmax(_resize(logits, *images.shape[1:3]), axis=-1)


def _sliding_probs(apply_fn, images, sizes, num_classes: int, window: int, stride: int):
  """Window-averaged probabilities [N,H,W,C] of images [N,H,W,3] (H, W >= window).

  Example i is its top-left sizes[i] region, zero elsewhere, as the authors zero-pad an image
  smaller than a window. Its windows are `window_starts` of its own size; the loop runs as many
  times as the batch's largest window count, and examples with fewer windows add nothing.
  """
  n, height, width, channels = images.shape
  lengths = jnp.maximum(sizes, window)  # [N,2] the image padded up to one window
  counts = (lengths - window + stride - 1) // stride + 1  # [N,2] windows along each axis
  gaps = jnp.maximum(counts - 1, 1)
  num_windows = counts[:, 0] * counts[:, 1]  # [N]

  def window_corners(k):
    grid = jnp.stack([k // counts[:, 1], k % counts[:, 1]], axis=1)  # [N,2] row, column
    # The integer form of window_starts' linspace: the same offsets, with no float rounding.
    return jnp.where((k < num_windows)[:, None], grid * (lengths - window) // gaps, 0)

  def crop(image, corner):
    return jax.lax.dynamic_slice(image, (corner[0], corner[1], 0), (window, window, channels))

  def add(total, probs, corner):
    start = (corner[0], corner[1], 0)
    current = jax.lax.dynamic_slice(total, start, probs.shape)
    return jax.lax.dynamic_update_slice(total, current + probs, start)

  def add_window(k, total):
    corners = window_corners(k)
    probs = _window_probs(apply_fn, jax.vmap(crop)(images, corners))  # [N,window,window,C]
    coverage = jnp.ones(probs.shape[:3] + (1,), probs.dtype)
    counted = (k < num_windows).astype(probs.dtype)[:, None, None, None]
    return jax.vmap(add)(total, counted * jnp.concatenate([probs, coverage], -1), corners)

  total = jax.lax.fori_loop(
    0,
    jnp.max(num_windows),
    add_window,
    jnp.zeros((n, height, width, num_classes + 1), jnp.float32),
  )  # [..., :C] summed probabilities, [..., C] how many windows covered the pixel
  return total[..., :num_classes] / jnp.maximum(total[..., num_classes:], 1.0)


def predict_probs(
  apply_fn,
  images,
  num_classes: int,
  *,
  sizes=None,
  window: int = 0,
  stride: int = 0,
  scales=(1.0,),
  flip: bool = False,
):
  """Class probabilities [N,H,W,C] of images [N,H,W,3], summed over scales and flips.

  As the authors' inference: per scale, the image resized to int(scale*h) x int(scale*w);
  softmax probabilities of the whole image, or averaged over sliding windows where they
  overlap (an image smaller than a window zero-padded at the bottom/right); with `flip` also of
  the mirrored image, mirrored back; each resized to h x w and added up.
  `apply_fn(images) -> logits` at any output stride.

  With sliding windows, `sizes` [N,2] (default: all of H, W) says that example i is the
  top-left sizes[i] = (h, w) region of its canvas: it is processed exactly as if run alone at
  that size, and its probabilities are zero outside it. Whole-image inference has to see the
  image at its own shape (pyramid pooling spans the input), so it takes no `sizes`: crop the
  batch to one image size instead (`run_evaluation` does).
  """
  n, height, width, _ = images.shape
  if sizes is not None and not window:
    raise ValueError(
      'predict_probs: whole-image inference (window=0) takes no `sizes`; '
      'pass images cropped to their own size'
    )
  canvas_sizes = jnp.broadcast_to(jnp.array([height, width], jnp.int32), (n, 2))
  sizes = canvas_sizes if sizes is None else jnp.asarray(sizes, jnp.int32)
  views = 2 if flip else 1
  total = jnp.zeros((n, height, width, num_classes), jnp.float32)
  for scale in scales:
    if window:
      scaled_sizes = scaled_length(sizes, scale)  # [N,2]
      canvas = (
        max(window, scaled_length(height, scale)),
        max(window, scaled_length(width, scale)),
      )
      scaled = resize_in_canvas(images, sizes, scaled_sizes, canvas)
      if flip:  # an example's views sit side by side, so the batch sharding keeps them local
        mirrored = _mirror(scaled, scaled_sizes[:, 1])
        scaled = jnp.stack([scaled, mirrored], axis=1).reshape((n * views,) + scaled.shape[1:])
      view_sizes, view_scaled_sizes = (jnp.repeat(s, views, axis=0) for s in (sizes, scaled_sizes))
      probs = _sliding_probs(apply_fn, scaled, view_scaled_sizes, num_classes, window, stride)
      probs = resize_in_canvas(probs, view_scaled_sizes, view_sizes, (height, width))
    else:
      scaled = _resize(images, scaled_length(height, scale), scaled_length(width, scale))
      if flip:
        scaled = jnp.stack([scaled, scaled[:, :, ::-1]], axis=1).reshape(
          (n * views,) + scaled.shape[1:]
        )
      probs = _resize(_window_probs(apply_fn, scaled), height, width)
    probs = probs.reshape(n, views, height, width, num_classes)
    total = total + probs[:, 0]
    if flip:
      total = total + _mirror(probs[:, 1], sizes[:, 1])
  return total


class EvalStep:
  """The jitted eval step, and whether it needs batches cropped to one image size."""

  def __init__(self, step, whole_image: bool):
    self.step = step
    self.whole_image = whole_image

  def __call__(self, variables, batch):
    return self.step(variables, batch)


def make_eval_step(
  model,
  num_classes: int,
  *,
  window: int = 0,
  stride: int = 0,
  scales=(1.0,),
  flip: bool = False,
  boundary_width=boundary.DEFAULT_WIDTH,
):
  """(variables, batch) -> (sums, predictions [N,H,W] int32).

  `sums` holds what the split's scores add up over batches: 'confusion' [C,C] int32 (truth,
  prediction), 'boundary' [2,C] int32 (`boundary.boundary_counts` at `boundary_width`: px, or a
  float fraction of each image's diagonal, from `batch['size']` or else the batch's H, W), and
  where the batch carries instance masks, 'voc_instance' (batch['instance'])
  or 'cityscapes_instance' (batch['instance_id']), see `instance_iou`.

  Predictions are the argmax of `predict_probs` (the defaults: the whole image at scale 1,
  logits upsampled bilinearly to the input size); a pixel counts when its label is a class
  (not 255) and its example is not padding. With sliding windows, `batch['size']` [N,2] (when
  present) gives each image's own size inside the padded canvas.
  """
  check_eval_options(window, stride, scales, flip, boundary_width)
  scales = tuple(float(s) for s in scales)

  def eval_step(variables, batch):
    images, labels = batch['image'], batch['label']
    apply_fn = lambda x: model.apply(variables, x, train=False)['logits']
    probs = predict_probs(
      apply_fn,
      images,
      num_classes,
      sizes=batch.get('size') if window else None,
      window=window,
      stride=stride,
      scales=scales,
      flip=flip,
    )
    preds = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    counted = (labels >= 0) & (labels < num_classes) & batch['valid'][:, None, None]
    index = jnp.where(counted, labels * num_classes + preds, num_classes * num_classes)
    confusion = jnp.bincount(index.reshape(-1), length=num_classes * num_classes + 1)
    width = boundary_width
    if isinstance(boundary_width, float):
      whole = jnp.broadcast_to(jnp.asarray(labels.shape[1:3], jnp.int32), (len(labels), 2))
      sizes = batch.get('size', whole)  # [N,2] each image's own (h, w)
      width = boundary.image_widths(boundary_width, sizes)
    sums = {
      'confusion': confusion[:-1].reshape(num_classes, num_classes).astype(jnp.int32),
      'boundary': boundary.boundary_counts(labels, preds, counted, num_classes, width),
    }
    if 'instance' in batch:  # VOC's SegmentationObject values
      sums['voc_instance'] = instance_iou.voc_instance_sums(
        labels, preds, batch['instance'], counted, num_classes
      )
    if 'instance_id' in batch:  # Cityscapes' gtFine instanceIds
      sums['cityscapes_instance'] = instance_iou.cityscapes_instance_sums(
        preds, batch['instance_id'], batch['valid'], num_classes
      )
    return sums, preds

  return eval_step


def sum_over_devices(sums: dict, axis_name: str) -> dict:
  """Each device's `sums` (int32 and float32 arrays) added up over `axis_name`, inside
  `jax.shard_map`, with exactly one collective: one all-gather of every value, packed into a
  single int32 vector (float32 values travel bit-cast), then the sum over devices on each device.

  Why one: on the CPU, cross-process collectives go through gloo, which pairs the messages of
  two processes only by their order. A step with several collectives that do not depend on each
  other (the confusion matrix's outside a loop, boundary IoU's inside the loop over classes) may
  run them in a different order on each process, as XLA's threads happen to schedule them; the
  processes then exchange mismatched messages and abort ('Received data size doesn't match
  expected size ... collective mismatch'). A single collective has a single order.
  """
  leaves, treedef = jax.tree.flatten(sums)
  packed = []
  for leaf in leaves:
    if leaf.dtype == jnp.int32:
      packed.append(leaf.reshape(-1))
    elif leaf.dtype == jnp.float32:
      packed.append(jax.lax.bitcast_convert_type(leaf, jnp.int32).reshape(-1))
    else:
      raise TypeError(f'sum_over_devices: {leaf.dtype} sums; expected int32 or float32.')
  gathered = jax.lax.all_gather(jnp.concatenate(packed), axis_name)  # [devices, total size]
  totals, start = [], 0
  for leaf in leaves:
    part = gathered[:, start : start + leaf.size]
    start += leaf.size
    if leaf.dtype == jnp.float32:
      part = jax.lax.bitcast_convert_type(part, jnp.float32)
    totals.append(part.sum(0, dtype=leaf.dtype).reshape(leaf.shape))
  return jax.tree.unflatten(treedef, totals)


def jit_eval_step(model, num_classes: int, mesh, variables_sharding, **options) -> EvalStep:
  """The jitted eval step over the mesh; `options` are make_eval_step's (config.eval).

  Each device runs `make_eval_step` on its share of the batch (`jax.shard_map`, with the
  variables replicated), and the sums are added up over devices by `sum_over_devices`, the
  step's only collective, so every process runs the same collectives in the same order.
  Sliding-window inference compiles once and runs each image at its own size inside the padded
  canvas; whole-image inference compiles once per distinct image size (see `run_evaluation`).
  """
  local_step = make_eval_step(model, num_classes, **options)

  def step(variables, batch):
    sums, preds = local_step(variables, batch)
    return sum_over_devices(sums, sharding.DATA_AXIS), preds

  data = PartitionSpec(sharding.DATA_AXIS)
  # The sums are replicated: every device adds up the same gathered values. JAX cannot infer
  # that through an all-gather, hence check_vma=False.
  step = jax.jit(
    jax.shard_map(
      step,
      mesh=mesh,
      in_specs=(PartitionSpec(), data),
      out_specs=(PartitionSpec(), data),
      check_vma=False,
    ),
    in_shardings=(variables_sharding, sharding.batch_sharding(mesh)),
    out_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)),
  )
  return EvalStep(step, whole_image=not options.get('window'))


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


def _image_sizes_of_the_global_batch(local: dict) -> list[tuple[int, int]]:
  """Distinct (h, w) of the valid examples over every process's piece of the batch, sorted."""
  sizes = np.asarray(local['size'])[np.asarray(local['valid'])]
  if jax.process_count() > 1:  # every process must run the same steps
    counts = multihost_utils.process_allgather(np.int32(len(sizes)))
    padded = np.zeros((len(local['valid']), 2), np.int32)
    padded[: len(sizes)] = sizes
    gathered = multihost_utils.process_allgather(padded)
    sizes = np.concatenate([g[:c] for g, c in zip(gathered, counts)])
  return sorted({(int(h), int(w)) for h, w in sizes})


def _pieces(eval_step, local: dict):
  """The batch as the step takes it: whole, or, for whole-image inference, once per distinct
  image size, cropped to that size and counting only the examples of that size."""
  if not getattr(eval_step, 'whole_image', False) or 'size' not in local:
    yield local
    return
  height, width = local['label'].shape[1:3]
  for h, w in _image_sizes_of_the_global_batch(local):
    if (h, w) == (height, width):
      piece = dict(local)
    else:
      piece = {k: v[:, :h, :w] if v.ndim >= 3 else v for k, v in local.items()}  # maps only
    piece['valid'] = local['valid'] & np.all(local['size'] == (h, w), axis=1)
    yield piece


PROGRESS_EVERY_S = 60.0  # how often evaluation logs its progress


class _Progress:
  """Logs images done, images/s and the ETA every PROGRESS_EVERY_S seconds, and the time."""

  def __init__(self, num_images: int | None):
    self.num_images, self.every_s = num_images, PROGRESS_EVERY_S
    self.done = 0
    self.start = self.last = time.monotonic()

  def update(self, local: dict) -> None:
    self.done += len(local['valid']) * jax.process_count()
    if self.num_images:
      self.done = min(self.done, self.num_images)
    now = time.monotonic()
    if now - self.last < self.every_s:
      return
    self.last = now
    rate = self.done / (now - self.start)
    if self.num_images:
      eta = datetime.timedelta(seconds=round((self.num_images - self.done) / rate))
      logging.info(
        'Evaluation: %d/%d images (%.0f%%), %.2f images/s, ETA %s',
        self.done,
        self.num_images,
        100 * self.done / self.num_images,
        rate,
        eta,
      )
    else:
      logging.info('Evaluation: %d images, %.2f images/s', self.done, rate)

  def finish(self) -> float:
    seconds = time.monotonic() - self.start
    logging.info(
      'Evaluation of %d images took %s (%.2f images/s, the first batch includes compiling)',
      self.done,
      datetime.timedelta(seconds=round(seconds)),
      self.done / max(seconds, 1e-9),
    )
    return seconds


def run_evaluation(eval_step, variables, batches, mesh, num_classes: int, num_keep: int = 0):
  """Add up the step's sums over every batch; keep the first `num_keep` examples.

  Returns ({'confusion': int64 [C,C], ...the step's other sums in float64}, kept examples).
  Each batch's sums are fetched after the next batch is dispatched, so the host never waits on
  the device between batches; they are added on the host in 64 bits (a large split's pixel
  counts overflow int32). Progress (images done, ETA) and the time taken go to the log.
  """
  totals = {'confusion': np.zeros((num_classes, num_classes), np.int64)}
  kept, previous = [], None

  def add(sums):
    for key, value in jax.device_get(sums).items():
      value = np.asarray(value)
      value = value.astype(np.int64 if np.issubdtype(value.dtype, np.integer) else np.float64)
      totals[key] = totals[key] + value if key in totals else value

  progress = _Progress(getattr(batches, 'num_examples', None))
  for local in batches:
    for piece in _pieces(eval_step, local):
      batch = sharding.global_batch(piece, mesh)
      sums, preds = eval_step(variables, batch)
      if previous is not None:
        add(previous)
      previous = sums
      if len(kept) < num_keep:
        canvas = local['label'].shape[1:]
        kept.extend(
          _in_canvas(example, canvas)
          for example in _first_examples(batch, preds, num_keep - len(kept))
        )
    progress.update(local)
  if previous is not None:
    add(previous)
  progress.finish()
  return totals, kept


def summarize(sums: dict, class_names) -> dict:
  """The split's scores from `run_evaluation`'s sums: mIoU, pixel accuracy, per-class IoU, the
  instance-aware scores whose sums are there (VOC instance-wise mIoU, Cityscapes iIoU), and the
  confusion matrix itself ('confusion': pixel counts, a row per true class, a column per
  predicted class, in `class_names` order), which says what a low IoU is mistaken for."""
  results = scores(sums['confusion'], class_names)
  results['confusion'] = np.asarray(sums['confusion']).astype(np.int64).tolist()
  if 'boundary' in sums:
    results.update(boundary.scores(sums['boundary'], class_names))
  if 'voc_instance' in sums:
    results.update(instance_iou.voc_instance_scores(sums['voc_instance'], class_names))
  if 'cityscapes_instance' in sums:
    results.update(
      instance_iou.cityscapes_scores(sums['confusion'], sums['cityscapes_instance'], class_names)
    )
  return results


def _in_canvas(example, canvas) -> tuple:
  """(image, label, prediction) of a batch cropped to one image size, padded back to the
  canvas (image 0, label 255, prediction 0) so every kept example has one shape."""
  image, label, pred = (np.asarray(x) for x in example)
  pad = [(0, canvas[0] - label.shape[0]), (0, canvas[1] - label.shape[1])]
  return (
    np.pad(image, pad + [(0, 0)]),
    np.pad(label, pad, constant_values=255),
    np.pad(pred, pad),
  )


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
  """The per-class table (IoU, boundary IoU, and the instance-aware columns when present) and
  the summary lines, for the log."""
  columns = [
    (title, results[key])
    for title, key in (
      ('boundary IoU', 'per_class_boundary_iou'),
      ('inst. IoU', 'per_class_instance_iou'),
      ('iIoU', 'per_class_iiou'),
    )
    if key in results
  ]

  def cell(value):
    return f'{"-" if value is None else f"{100 * value:.2f}":>12}'

  rows = [f'{"class":<20} {"IoU":>12}' + ''.join(f' {title:>12}' for title, _ in columns)]
  for name, iou in results['per_class_iou'].items():
    rows.append(f'{name:<20} {cell(iou)}' + ''.join(f' {cell(c.get(name))}' for _, c in columns))
  rows.append(f'{"mean":<20} {cell(results["miou"])} {cell(results.get("boundary_iou"))}')
  for title, key in (('instance-wise mIoU', 'instance_miou'), ('iIoU', 'iiou')):
    if key in results:
      rows.append(f'{title:<20} {cell(results[key])}')
  rows.append(f'{"pixel accuracy":<20} {cell(results["pixel_acc"])}')
  return '\n'.join(rows)
