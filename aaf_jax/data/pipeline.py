"""Input pipeline: position-keyed training batches and exact, padded evaluation batches.

Training reads an infinite stream of sample positions p = 0, 1, 2, ...; batch t holds positions
[t*G, (t+1)*G) for the global batch size G, and process i reads its own contiguous slice of
B_local = G / process_count of them. Position p is example perm_e[p mod N] of the split, where
perm_e is a fresh permutation per epoch e = p // N drawn from (seed, e), and its augmentation is
drawn by stateless random ops keyed by (seed, p). Batch t is therefore a pure function of
(dataset, seed, t): the iterator's state is just t, and a resumed run sees the same batches.

Records are read by index from TFDS ArrayRecord files (random access); decoding and
augmentation run as TensorFlow ops in parallel tf.data maps, and finished batches are
prefetched, so the accelerator is fed while the host prepares the next batches.
"""

import dataclasses
import math
import os
import re
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import json_format

from aaf_jax import data as data_lib
from aaf_jax import errors
from aaf_jax.data import base, integrity
from aaf_jax.tf_cpu import tf

IGNORE_LABEL = base.IGNORE_LABEL  # label padding; every registered dataset uses it
_IMAGE, _LABEL = 'image', 'label'
# Instance masks that evaluation scores with (aaf_jax/instance_iou.py), and the value that pads
# them: VOC's SegmentationObject index (255: the boundary band, no instance) and Cityscapes'
# instanceIds (0: no instance).
_INSTANCE_FEATURES = {'instance': 255, 'instance_id': 0}
_FOREVER = 2**62
# The tf.data map functions use no Python control flow on tensors: skip AutoGraph.
_no_autograph = tf.autograph.experimental.do_not_convert


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer and evaluator need to know about a dataset."""

  num_classes: int
  class_names: tuple[str, ...]
  ignore_label: int
  num_train: int
  num_eval: int


def dataset_info(data_cfg, prepare: bool = True) -> DatasetInfo:
  """Class names and split sizes of `data_cfg.name` (prepares the data if needed and asked).

  Also checks the prepared files: both splits' shards must be there with the record counts
  of the metadata, and the evaluation split is read through once, so a damaged file stops
  the run now rather than after training.
  """
  builder = _prepared_builder(data_cfg, prepare)
  class_names = tuple(builder.CLASS_NAMES)
  info = DatasetInfo(
    num_classes=len(class_names),
    class_names=class_names,
    ignore_label=int(builder.IGNORE_LABEL),
    num_train=_split_size(builder, data_cfg.train_split, 'config.data.train_split'),
    num_eval=_split_size(builder, data_cfg.eval_split, 'config.data.eval_split'),
  )
  data_dir = _data_dir(data_cfg)
  integrity.check_split(builder, data_cfg.train_split, data_cfg.name, data_dir, read_all=False)
  integrity.check_split(builder, data_cfg.eval_split, data_cfg.name, data_dir, read_all=True)
  return info


def _data_dir(data_cfg) -> str:
  return os.path.expanduser(os.fspath(data_cfg.get('data_dir') or ''))


def _prepared_builder(data_cfg, prepare: bool = True):
  """The dataset's builder, its data prepared; damaged metadata is named, not just parsed."""
  try:
    builder = data_lib.get_builder(data_cfg, prepare=prepare)
  except (json_format.ParseError, AssertionError) as e:  # TFDS asserts the version matches
    root = os.path.join(_data_dir(data_cfg), data_lib.builder_class(data_cfg.name).name)
    path = integrity.unreadable_metadata(root)
    if path is None:
      raise
    folder = os.path.dirname(path)
    raise integrity.DamagedDataError(
      f'{path}: not readable metadata ({errors.one_line(e) or type(e).__name__}); '
      f'{integrity.rebuild_hint(data_cfg.name, _data_dir(data_cfg), folder)}'
    ) from e
  integrity.check_prepared(builder, data_cfg.name, _data_dir(data_cfg))
  return builder


def _split_size(builder, split: str, field: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise ValueError(
      f'{field}={split!r} is not a split of {builder.name} '
      f'(available: {sorted(builder.info.splits)})'
    ) from e


def _positive_int(value, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
    raise ValueError(f'{field}={value!r}: expected a positive integer')
  return int(value)


def _local_batch(global_batch_size, process_index, process_count) -> tuple[int, int]:
  """(B_local, process_index), checked; None means this JAX process's index/count."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  global_batch_size = _positive_int(global_batch_size, 'global_batch_size')
  process_count = _positive_int(process_count, 'process_count')
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index={process_index!r}: expected 0 <= index < process_count={process_count}'
    )
  if global_batch_size % process_count:
    raise ValueError(
      f'global_batch_size={global_batch_size} is not divisible by process_count={process_count}'
    )
  return global_batch_size // process_count, process_index


def _mean(data_cfg) -> tuple[float, float, float]:
  mean = tuple(data_cfg.mean)
  if len(mean) != 3:
    raise ValueError(f'config.data.mean={mean!r}: expected 3 numbers (RGB)')
  return tuple(float(m) for m in mean)


def _dataset_options(data_cfg) -> tf.data.Options:
  """Deterministic order; `config.data.num_threads` (optional) caps tf.data's CPU use."""
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  num_threads = data_cfg.get('num_threads')
  if num_threads:
    num_threads = _positive_int(num_threads, 'config.data.num_threads')
    options.threading.private_threadpool_size = num_threads
    options.autotune.cpu_budget = num_threads
  return options


def _prefetch(data_cfg) -> int:
  prefetch = data_cfg.prefetch
  if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
    raise ValueError(
      f'config.data.prefetch={prefetch!r}: expected an integer >= 0 (batches to prepare ahead)'
    )
  return int(prefetch)


class _Split:
  """One split of a prepared dataset: raw records by index, and their TF decoder."""

  def __init__(self, data_cfg, split: str, field: str, extra_features=()):
    builder = _prepared_builder(data_cfg)
    self.num_examples = _split_size(builder, split, field)
    if self.num_examples == 0:
      raise ValueError(f'{field}={split!r} of {builder.name} has no examples')
    if builder.IGNORE_LABEL != IGNORE_LABEL:
      raise ValueError(
        f'{builder.name}.IGNORE_LABEL={builder.IGNORE_LABEL}: the pipeline '
        f'pads labels with {IGNORE_LABEL}, so datasets must ignore it'
      )
    integrity.check_split(builder, split, data_cfg.name, _data_dir(data_cfg), read_all=False)
    self.name = f'{builder.name}/{builder.builder_config_name or ""}:{split}'
    self._builder, self._split, self._dataset_name = builder, split, data_cfg.name
    self._data_dir = _data_dir(data_cfg)
    self.damage = ''  # set when a read fails on a damaged record: the message naming its file
    self._source = builder.as_data_source(
      split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
    )
    self._features = builder.info.features
    self.extra_features = tuple(k for k in extra_features if k in self._features.keys())
    self._decoders = {
      key: tfds.decode.SkipDecoding()
      for key in self._features.keys()
      if key not in (_IMAGE, _LABEL) + self.extra_features
    }

  def _read(self, indices: np.ndarray) -> np.ndarray:
    try:
      # One record at a time: the data source's batched read starts a thread pool per call,
      # which deadlocks inside tf.data's threads on Python 3.12.
      return np.array([self._source[i] for i in indices.tolist()], dtype=object)
    except RuntimeError:  # ArrayRecord's error for a record it cannot read
      self.damage = self.damage or integrity.locate_damage(
        self._builder,
        self._split,
        self._dataset_name,
        self._data_dir,
        indices,
        lambda i: self._source[i],
      )
      # Empty records fail to decode, which stops the pipeline; raising here instead would
      # make TensorFlow log the whole Python traceback before our one-line message.
      return np.full(len(indices), b'', dtype=object)

  def raise_if_damaged(self) -> None:
    """After a failed read: the one-line error naming the damaged file, if that was the cause."""
    if self.damage:
      raise integrity.DamagedDataError(self.damage)

  def read(self, indices: tf.Tensor) -> tf.Tensor:
    """Serialized examples [B] for example indices [B] (a Python call, one per batch)."""
    records = tf.numpy_function(self._read, [indices], tf.string, stateful=False)
    records.set_shape(indices.shape)
    return records

  def decode(self, record: tf.Tensor) -> dict[str, tf.Tensor]:
    """{'image': uint8 [H,W,3], 'label': uint8 [H,W,1], 'name': string} and the
    `extra_features` the dataset has (e.g. 'instance' [H,W,1])."""
    example = self._features.deserialize_example(record, decoders=self._decoders)
    name = example.get('name', tf.constant(''))
    extra = {key: example[key] for key in self.extra_features}
    return {_IMAGE: example[_IMAGE], _LABEL: example[_LABEL], 'name': name, **extra}


def _resize_coordinates(start, length, in_size, out_size):
  """Source pixels for outputs start..start+length-1 of a resize in_size -> out_size.

  Follows tf.image.resize (half-pixel centres) exactly: returns bilinear (lower, upper, lerp)
  and nearest indices, each [length].
  """
  scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
  out = tf.cast(tf.range(start, start + length), tf.float32) + 0.5
  centre = out * scale - 0.5
  floor = tf.floor(centre)
  lower = tf.maximum(tf.cast(floor, tf.int32), 0)
  upper = tf.minimum(tf.cast(tf.math.ceil(centre), tf.int32), in_size - 1)
  nearest = tf.clip_by_value(tf.cast(tf.floor(out * scale), tf.int32), 0, in_size - 1)
  return lower, upper, centre - floor, nearest


def _augment(image, label, seed, *, crop, min_scale, max_scale, mirror, mean):
  """The recipe's training augmentation of one example, random draws from `seed` [2].

  image: uint8 [H,W,3], label: uint8 [H,W,1] -> float32 [crop,crop,3] mean-subtracted
  (padding 0), int32 [crop,crop] (padding 255). The result is that of: resize the whole
  example by a random scale (bilinear image, nearest label), mirror, pad bottom/right to the
  crop, take a random crop; but only the cropped pixels are ever resampled, so the cost
  does not grow with the scale.
  """
  scale_seed, mirror_seed, y_seed, x_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, num=4)
  )
  scale = tf.random.stateless_uniform([], scale_seed, min_scale, max_scale)
  in_size = tf.shape(image)[:2]
  size = tf.maximum(tf.cast(tf.cast(in_size, tf.float32) * scale, tf.int32), 1)  # [H',W']
  top = tf.random.stateless_uniform([], y_seed, 0, tf.maximum(size[0], crop) - crop + 1, tf.int32)
  left = tf.random.stateless_uniform([], x_seed, 0, tf.maximum(size[1], crop) - crop + 1, tf.int32)
  visible = tf.minimum(size, crop)  # rows, columns of the crop covered by the image
  flip = tf.constant(False)
  if mirror:
    flip = tf.random.stateless_uniform([], mirror_seed) < 0.5
  # Columns of the unmirrored scaled image that land in the crop.
  left = tf.where(flip, tf.maximum(size[1] - left - crop, 0), left)

  y_low, y_high, y_lerp, y_near = _resize_coordinates(top, visible[0], in_size[0], size[0])
  x_low, x_high, x_lerp, x_near = _resize_coordinates(left, visible[1], in_size[1], size[1])
  y0, x0 = tf.minimum(y_low[0], y_near[0]), tf.minimum(x_low[0], x_near[0])
  y1 = tf.maximum(y_high[-1], y_near[-1]) + 1
  x1 = tf.maximum(x_high[-1], x_near[-1]) + 1
  window = tf.cast(image[y0:y1, x0:x1], tf.float32)  # the source pixels the crop reads
  top_rows = tf.gather(window, y_low - y0)
  bottom_rows = tf.gather(window, y_high - y0)
  x_lerp = x_lerp[None, :, None]

  def lerp_columns(rows):
    left_px = tf.gather(rows, x_low - x0, axis=1)
    return left_px + (tf.gather(rows, x_high - x0, axis=1) - left_px) * x_lerp

  upper, lower = lerp_columns(top_rows), lerp_columns(bottom_rows)
  image = upper + (lower - upper) * y_lerp[:, None, None]  # [vis_h,vis_w,3]
  label = tf.gather(tf.gather(label[y0:y1, x0:x1, 0], y_near - y0), x_near - x0, axis=1)
  image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)

  padding = [[0, crop - visible[0]], [0, crop - visible[1]]]
  image = tf.pad(image - tf.constant(mean, tf.float32), padding + [[0, 0]])
  label = tf.pad(tf.cast(label, tf.int32), padding, constant_values=IGNORE_LABEL)
  image.set_shape([crop, crop, 3])
  label.set_shape([crop, crop])
  return image, label


def _read_and_batch(
  batch_indices: tf.data.Dataset,
  read,
  prepare,
  local_batch: int,
  prefetch: int,
  options: tf.data.Options,
) -> tf.data.Dataset:
  """batch index -> `read` (this process's records) -> parallel `prepare` -> batches."""
  return (
    batch_indices.map(read)
    .unbatch()
    .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    .batch(local_batch, drop_remainder=True)
    .prefetch(prefetch)
    .with_options(options)
  )


class TrainIterator:
  """Infinite iterator over this process's part of each global training batch.

  Yields {'image': float32 [B_local,crop,crop,3], 'label': int32 [B_local,crop,crop]}.
  `get_state()` is the number of batches yielded (plus what fixes the stream, checked on
  `set_state`); restoring it rebuilds the tf.data pipeline at that step.
  """

  def __init__(self, data_cfg, *, global_batch_size, seed, process_index, process_count):
    crop = _positive_int(data_cfg.crop_size, 'config.data.crop_size')
    min_scale, max_scale = float(data_cfg.min_scale), float(data_cfg.max_scale)
    if not 0 < min_scale <= max_scale:
      raise ValueError(
        f'config.data.min_scale={min_scale}, max_scale={max_scale}: '
        'expected 0 < min_scale <= max_scale'
      )
    self._augment_options = dict(
      crop=crop,
      min_scale=min_scale,
      max_scale=max_scale,
      mirror=bool(data_cfg.mirror),
      mean=_mean(data_cfg),
    )
    self._local_batch, process_index = _local_batch(global_batch_size, process_index, process_count)
    self._global_batch = int(global_batch_size)
    self._offset = process_index * self._local_batch
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
      raise ValueError(f'seed={seed!r}: expected an integer')
    self._seed = int(seed)
    self._options = _dataset_options(data_cfg)
    self._prefetch = _prefetch(data_cfg)
    self._split = _Split(data_cfg, data_cfg.train_split, 'config.data.train_split')
    self._step = 0
    self._batches = None

  def _dataset(self, first_step: int) -> tf.data.Dataset:
    num_examples = self._split.num_examples
    seed = tf.constant(self._seed, tf.int64)

    @_no_autograph
    def read(step):
      positions = (
        step * self._global_batch + self._offset + tf.range(self._local_batch, dtype=tf.int64)
      )  # [B_local]
      epochs = positions // num_examples
      # The raw op: tf.random.experimental.index_shuffle mis-pads batched [n,2] seeds.
      shuffle_seeds = tf.stack(
        [tf.fill(tf.shape(epochs), seed), epochs, tf.zeros_like(epochs)], axis=1
      )
      indices = tf.raw_ops.RandomIndexShuffle(
        index=positions % num_examples,
        seed=shuffle_seeds,
        max_index=tf.constant(num_examples - 1, tf.int64),
        rounds=4,
      )  # [B_local]
      return positions, self._split.read(indices)

    @_no_autograph
    def prepare(position, record):
      example = self._split.decode(record)
      image, label = _augment(
        example[_IMAGE], example[_LABEL], tf.stack([seed, position]), **self._augment_options
      )
      return {_IMAGE: image, _LABEL: label}

    return _read_and_batch(
      tf.data.Dataset.range(first_step, _FOREVER),
      read,
      prepare,
      self._local_batch,
      self._prefetch,
      self._options,
    )

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._batches is None:
      self._batches = self._dataset(self._step).as_numpy_iterator()
    try:
      batch = next(self._batches)
    except tf.errors.OpError:
      self._split.raise_if_damaged()
      raise
    self._step += 1
    return batch

  def get_state(self) -> dict:
    """JSON-serialisable position in the stream."""
    return {
      'step': self._step,
      'seed': self._seed,
      'global_batch_size': self._global_batch,
      'dataset': self._split.name,
    }

  def set_state(self, state: dict) -> None:
    """Continues at `state['step']`; the stream must be the same one that was saved."""
    expected = self.get_state()
    missing = sorted(set(expected) - set(state))
    if missing:
      raise ValueError(f'Iterator state {state!r} lacks {missing}')
    for key in ('seed', 'global_batch_size', 'dataset'):
      if state[key] != expected[key]:
        raise ValueError(
          f'Iterator state has {key}={state[key]!r} but this iterator '
          f'has {key}={expected[key]!r}: the saved stream differs'
        )
    step = state['step']
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f'Iterator state step={step!r}: expected an integer >= 0')
    self._step = int(step)
    self._batches = None


def make_train_iterator(
  data_cfg,
  *,
  global_batch_size: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> TrainIterator:
  """The training stream of `data_cfg.train_split` for this process (see the module doc)."""
  return TrainIterator(
    data_cfg,
    global_batch_size=global_batch_size,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
  )


class EvalIterable:
  """Every example of a split exactly once, unaugmented, padded to `config.data.eval_size`.

  Yields {'image': float32 [B_local,EH,EW,3] (mean-subtracted, padding 0), 'label': int32
  [B_local,EH,EW] (padding 255), 'size': int32 [B_local,2] (each image's own height, width,
  at the top left of the canvas), 'valid': bool [B_local]}, plus int32 [B_local,EH,EW]
  'instance' (VOC) or 'instance_id' (Cityscapes) where the dataset has instance masks; the
  last global batch is filled with valid=False examples. Every process yields the same number
  of batches, `len(self)`.
  """

  def __init__(self, data_cfg, *, split, global_batch_size, process_index, process_count):
    eval_size = tuple(data_cfg.eval_size)
    if len(eval_size) != 2:
      raise ValueError(f'config.data.eval_size={eval_size!r}: expected (height, width)')
    self._eval_size = tuple(_positive_int(v, 'config.data.eval_size') for v in eval_size)
    self._mean = _mean(data_cfg)
    self._local_batch, process_index = _local_batch(global_batch_size, process_index, process_count)
    self._global_batch = int(global_batch_size)
    self._offset = process_index * self._local_batch
    self._options = _dataset_options(data_cfg)
    self._prefetch = _prefetch(data_cfg)
    self._split = _Split(data_cfg, split, 'split', extra_features=_INSTANCE_FEATURES)

  def __len__(self) -> int:
    return math.ceil(self._split.num_examples / self._global_batch)

  @property
  def num_examples(self) -> int:
    """Images in the split (every process's batches together)."""
    return self._split.num_examples

  def _dataset(self) -> tf.data.Dataset:
    num_examples = self._split.num_examples
    height, width = self._eval_size

    @_no_autograph
    def read(batch_index):
      positions = (
        batch_index * self._global_batch
        + self._offset
        + tf.range(self._local_batch, dtype=tf.int64)
      )  # [B_local]
      valid = positions < num_examples
      indices = tf.minimum(positions, num_examples - 1)
      return valid, self._split.read(indices)

    @_no_autograph
    def prepare(valid, record):
      example = self._split.decode(record)
      size = tf.shape(example[_IMAGE])[:2]
      fits = tf.debugging.Assert(
        tf.logical_and(size[0] <= height, size[1] <= width),
        [
          'evaluation image',
          example['name'],
          'has height, width',
          size,
          f'larger than config.data.eval_size=({height}, {width})',
        ],
      )
      with tf.control_dependencies([fits]):  # no padding op runs before the check
        size = tf.identity(size)
      image = tf.cast(example[_IMAGE], tf.float32) - tf.constant(self._mean)
      label = tf.cast(example[_LABEL][..., 0], tf.int32)
      image = tf.pad(image, [[0, height - size[0]], [0, width - size[1]], [0, 0]])
      label = tf.pad(
        label, [[0, height - size[0]], [0, width - size[1]]], constant_values=IGNORE_LABEL
      )
      image = tf.where(valid, image, 0.0)
      label = tf.where(valid, label, IGNORE_LABEL)
      image.set_shape([height, width, 3])
      label.set_shape([height, width])
      batch = {_IMAGE: image, _LABEL: label, 'size': size, 'valid': valid}
      for key, padding in _INSTANCE_FEATURES.items():
        if key in example:
          instances = tf.cast(example[key][..., 0], tf.int32)
          instances = tf.pad(
            instances, [[0, height - size[0]], [0, width - size[1]]], constant_values=padding
          )
          instances = tf.where(valid, instances, padding)
          instances.set_shape([height, width])
          batch[key] = instances
      return batch

    return _read_and_batch(
      tf.data.Dataset.range(len(self)),
      read,
      prepare,
      self._local_batch,
      self._prefetch,
      self._options,
    )

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    batches = self._dataset().as_numpy_iterator()
    while True:
      try:
        yield next(batches)
      except StopIteration:
        return
      except tf.errors.OpError as e:
        self._split.raise_if_damaged()
        if not isinstance(e, tf.errors.InvalidArgumentError):
          raise
        found = re.search(r'assertion failed: \[(.*config\.data\.eval_size.*?)\]', e.message)
        if not found:
          raise
        raise errors.UserError(
          found.group(1).replace('] [', ' ') + ': raise eval_size to '
          'at least the largest image of the split'
        ) from None


def make_eval_iterator(
  data_cfg,
  *,
  split: str,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> EvalIterable:
  """The evaluation batches of `split` for this process (see `EvalIterable`)."""
  return EvalIterable(
    data_cfg,
    split=split,
    global_batch_size=global_batch_size,
    process_index=process_index,
    process_count=process_count,
  )
