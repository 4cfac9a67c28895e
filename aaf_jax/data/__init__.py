"""Dataset registry: `config.data.name` -> a prepared TFDS builder.

Builder classes are imported lazily by dotted path, so importing this package does not pull in
every dataset's dependencies. Data is always written as ArrayRecord, the random-access format the
input pipeline reads by example index.
"""

import contextlib
import fcntl
import importlib
import os

import tensorflow_datasets as tfds
from absl import logging

import aaf_jax.tf_cpu  # noqa: F401  (TensorFlow off the GPUs before tfds starts it)
from aaf_jax import errors

_BUILDERS = {
  'synthetic': 'aaf_jax.data.synthetic:SyntheticShapes',
  'voc': 'aaf_jax.data.voc:VocAug',
  'cityscapes': 'aaf_jax.data.cityscapes:CityscapesFine',
  'gta5': 'aaf_jax.data.gta5:Gta5',
}

FILE_FORMAT = 'array_record'


def register_builder(name: str, builder: 'str | type[tfds.core.DatasetBuilder]') -> None:
  """Adds (or replaces) a dataset under `name`: a builder class or a 'module:Class' path."""
  if not isinstance(name, str) or not name:
    raise ValueError(f'register_builder: name must be a non-empty string, got {name!r}')
  _BUILDERS[name] = builder


def builder_names() -> tuple[str, ...]:
  """The dataset names `config.data.name` accepts."""
  return tuple(sorted(_BUILDERS))


def builder_class(name: str) -> type:
  """The builder class registered under `name` (imported on first use)."""
  if name not in _BUILDERS:
    raise ValueError(
      f'Unknown dataset config.data.name={name!r}; accepted: {", ".join(builder_names())}'
    )
  target = _BUILDERS[name]
  if not isinstance(target, str):
    return target
  module_name, _, class_name = target.partition(':')
  module = importlib.import_module(module_name)
  return getattr(module, class_name)


def get_builder(data_cfg, prepare: bool = True) -> tfds.core.DatasetBuilder:
  """Constructs the builder named by `data_cfg.name` and prepares its data if not yet there.

  `prepare=False`: data that is not there is an error (in a multi-process job only process 0
  prepares, and the others must find its data).

  Prepared data in `data_cfg.data_dir` is reused. Independent jobs on one machine (sweep shards,
  say) that find the same data missing prepare it one at a time under a file lock in data_dir:
  the first builds it, the others then find it prepared. A leading `~` in data_dir or
  manual_dir means the user's home (unexpanded, TFDS would create a literal `./~` folder). A
  builder class may define a classmethod `builder_kwargs(data_cfg) -> dict` for extra
  constructor arguments (the synthetic set passes its generation options this way, so each
  option set gets its own folder).
  """
  cls = builder_class(data_cfg.name)
  data_dir = data_cfg.get('data_dir')
  if not data_dir:
    raise ValueError(
      f'config.data.data_dir must be set for dataset {data_cfg.name!r} '
      '(the TFDS folder where prepared data is written and read)'
    )
  data_dir = os.path.expanduser(os.fspath(data_dir))
  kwargs = cls.builder_kwargs(data_cfg) if hasattr(cls, 'builder_kwargs') else {}
  builder = cls(data_dir=data_dir, file_format=FILE_FORMAT, **kwargs)
  if not builder.is_prepared() and not prepare:
    raise errors.MissingFileError(
      f'Dataset {data_cfg.name!r} is not prepared in {data_dir} as this process sees it, and '
      'only process 0 of a multi-process job prepares data: put config.data.data_dir on a '
      'filesystem every process sees, or prepare the data on every machine before launch '
      '(python -m aaf_jax.data.build).'
    )
  if builder.is_prepared():
    return builder
  with _preparation_lock(data_dir, data_cfg.name):
    builder = cls(data_dir=data_dir, file_format=FILE_FORMAT, **kwargs)  # prepared meanwhile?
    if not builder.is_prepared():
      _prepare(builder, cls, data_cfg, data_dir)
  return builder


@contextlib.contextmanager
def _preparation_lock(data_dir: str, name: str):
  """An exclusive lock (flock) on DATA_DIR/.NAME.prepare.lock, held while preparing `name`."""
  os.makedirs(data_dir, exist_ok=True)
  path = os.path.join(data_dir, f'.{name}.prepare.lock')
  with open(path, 'a') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info('Waiting for another job preparing dataset %r in %s (%s).', name, data_dir, path)
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _prepare(builder, cls, data_cfg, data_dir: str) -> None:
  manual_dir = data_cfg.get('manual_dir')
  if cls.MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
    raise ValueError(
      f'Dataset {data_cfg.name!r} is not prepared in {data_dir} and '
      'config.data.manual_dir is not set: point it at the extracted official files.'
    )
  download_config = tfds.download.DownloadConfig(
    manual_dir=os.path.expanduser(os.fspath(manual_dir)) if manual_dir else None
  )
  builder.download_and_prepare(download_config=download_config)
