"""Every grid point checked as far as it can be without training, before a sweep's first run.

A typo found after hours in a queue, or one failed run per grid point, is what this prevents:
each grid point's config (and each of its evaluation sets) is validated, every file it names
(`model.pretrained`, `init_checkpoint`, `data.manual_dir`) must be there and readable, its
dataset prepared or preparable (a dataset read from extracted archives needs the layout its
builder requires under `data.manual_dir`), and the sweep's workdir writable. The first problem
raises one `SweepCheckError` naming the grid point and the field; nothing has been written.
What only training can show (a NaN, a crash) stays a failed run of the sweep.
"""

import json
import os

from aaf_jax import errors, run_record, validation
from aaf_jax.sweep import grid

_PRETRAINED_HINT = (
  'Import the ImageNet backbone with `python -m aaf_jax.weights` first, or set it to '
  "'' to train from scratch."
)


class SweepCheckError(grid.SweepError):
  """A grid point that cannot run; the message names the grid point and the field."""


def _writable(path: str) -> bool:
  """Whether `path` can be created or written: it, or its nearest existing parent, is a
  folder this process may write into."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    parent = os.path.dirname(path)
    if parent == path:
      return False
    path = parent
  return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def check_files(config) -> None:
  """MissingFileError (or UserError) naming the first field whose file is not usable."""
  pretrained = config.model.pretrained
  if pretrained:
    path = os.path.expanduser(pretrained)
    if not os.path.isfile(path):
      raise errors.MissingFileError(
        f'config.model.pretrained={pretrained!r}: no such file. {_PRETRAINED_HINT}'
      )
    if not os.access(path, os.R_OK):
      raise errors.UserError(f'config.model.pretrained={pretrained!r}: not readable.')
  init = config.init_checkpoint
  if init:
    folder = os.path.join(run_record.init_checkpoint_workdir(init), 'checkpoints')
    if not os.access(folder, os.R_OK | os.X_OK):
      raise errors.UserError(f'config.init_checkpoint={init!r}: {folder} is not readable.')
  manual = config.data.manual_dir
  if manual:
    path = os.path.expanduser(manual)
    if not os.path.isdir(path):
      raise errors.MissingFileError(f'config.data.manual_dir={manual!r}: no such folder.')
    if not os.access(path, os.R_OK | os.X_OK):
      raise errors.UserError(f'config.data.manual_dir={manual!r}: not readable.')


def check_data(config) -> None:
  """UserError unless `config.data`'s dataset is prepared (with its splits) or can be prepared
  (a generated set; or the manual folder's layout present and data_dir writable)."""
  from aaf_jax import data as data_lib  # TFDS: only a sweep about to train needs it

  data = config.data
  if data.name not in data_lib.builder_names():
    raise errors.UserError(
      f'config.data.name={data.name!r}: no such dataset; expected one of '
      f'{", ".join(data_lib.builder_names())}.'
    )
  data_dir = os.path.expanduser(data.data_dir)
  if not os.path.isdir(data_dir) and not _writable(data_dir):
    raise errors.UserError(f'config.data.data_dir={data.data_dir!r}: cannot be created.')
  try:
    builder = data_lib.get_builder(data, prepare=False)
  except errors.MissingFileError:  # not prepared in data_dir
    builder = None
  except errors.UserError:
    raise
  except Exception:  # damaged metadata, say: the run's own data check names the file
    return
  if builder is not None:
    for field in ('train_split', 'eval_split'):
      if data[field] not in builder.info.splits:
        raise errors.UserError(
          f'config.data.{field}={data[field]!r} is not a split of {data.name!r} as prepared in '
          f'{data.data_dir} (its splits: {", ".join(sorted(builder.info.splits))}).'
        )
    return
  where = f'dataset {data.name!r} is not prepared in {data.data_dir}'
  if not _writable(data_dir):
    raise errors.UserError(
      f'config.data.data_dir={data.data_dir!r}: {where}, and it cannot be written to prepare it.'
    )
  cls = data_lib.builder_class(data.name)
  if not getattr(cls, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None):
    return  # generated on first use (the synthetic set)
  if not data.manual_dir:
    raise errors.UserError(
      f"config.data.manual_dir='': {where}; point config.data.manual_dir at the extracted "
      'official files (or prepare it first: python -m aaf_jax.data.build).'
    )
  missing = cls.missing_manual_paths(os.path.expanduser(data.manual_dir))
  if missing:
    raise errors.MissingFileError(
      f'config.data.manual_dir={data.manual_dir!r}: {where}, and preparing it needs '
      f'{", ".join(missing)} there. Expected layout: {errors.one_line(cls.LAYOUT)}'
    )


def check_config(config, data_checked: dict) -> None:
  """Validation, files and data of one config; `data_checked` caches the data checks."""
  validation.validate(config)
  check_files(config)
  key = json.dumps(run_record.flatten(config.data), sort_keys=True)
  if key not in data_checked:
    check_data(config)
    data_checked[key] = True


def check_runs(runs: list[grid.Run], workdir: str) -> None:
  """SweepCheckError at the first grid point (or evaluation set) that cannot run, and when
  `workdir` cannot be written; reads files, writes nothing."""
  if not _writable(workdir):
    raise SweepCheckError(f'--workdir={workdir}: cannot be created or written.')
  data_checked, seen = {}, set()
  for run in runs:
    point = json.dumps(run.overrides, sort_keys=True)
    if point in seen:  # a seed changes no file or dataset
      continue
    seen.add(point)
    where = f'grid point {grid.point_name(run.overrides)}'
    for name, config in [(None, run.config), *run.evaluations.items()]:
      try:
        check_config(config, data_checked)
      except errors.UserError as e:
        also = f', evaluation set {name}' if name else ''
        raise SweepCheckError(
          f'{where}{also}: {errors.one_line(str(e))} No run was started.'
        ) from e
