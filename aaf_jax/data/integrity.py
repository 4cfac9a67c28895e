"""Checks that prepared data is whole before training reads it, and names the file when not.

A prepared split is its metadata (`dataset_info.json`, which lists each shard's number of
examples) plus ArrayRecord shard files. `check_split` opens every shard (a truncated file fails
there: its footer is gone) and compares its record count with the metadata; with `read_all`
it also reads every record, which verifies each chunk's hash (bit rot). Every failure is a
`DamagedDataError` naming the file and how to rebuild it: nothing is repaired in place.
"""

import glob
import json
import os

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from aaf_jax.errors import UserError


class DamagedDataError(UserError):
  """Prepared data that cannot be read as its metadata describes."""


def rebuild_hint(dataset: str, data_dir: str, folder: str) -> str:
  """What to run to get a whole copy of the prepared data in `folder` back."""
  if dataset == 'synthetic':
    return f'delete {folder} and run again: the synthetic set is regenerated on first use.'
  return (
    f'delete {folder} and rebuild it: python -m aaf_jax.data.build --dataset={dataset} '
    f'--manual_dir=EXTRACTED_FILES --data_dir={data_dir}'
  )


def unreadable_metadata(root: str) -> str | None:
  """The first `dataset_info.json` under folder `root` that is not TFDS metadata, if any."""
  for path in sorted(glob.glob(os.path.join(root, '**', 'dataset_info.json'), recursive=True)):
    try:
      with open(path) as f:
        metadata = json.load(f)
    except (OSError, ValueError):
      return path
    if not isinstance(metadata, dict) or not {'name', 'version', 'splits'} <= set(metadata):
      return path
  return None


def check_prepared(builder, dataset: str, data_dir: str) -> None:
  """The builder's folder holds metadata listing splits; else preparation was cut short."""
  folder = os.fspath(builder.data_path)
  metadata = os.path.join(folder, 'dataset_info.json')
  if not builder.is_prepared():
    raise DamagedDataError(
      f'{metadata}: missing, so the prepared data there cannot be used; '
      f'{rebuild_hint(dataset, data_dir, folder)}'
    )
  if not builder.info.splits:
    raise DamagedDataError(
      f'{metadata}: lists no splits; {rebuild_hint(dataset, data_dir, folder)}'
    )


def split_files(builder, split: str) -> list[tuple[str, int]]:
  """(file path, number of examples the metadata gives it) per shard of `split`."""
  info = builder.info.splits[split]
  return [(os.fspath(p), int(n)) for p, n in zip(info.filepaths, info.shard_lengths)]


def check_split(builder, split: str, dataset: str, data_dir: str, *, read_all: bool) -> None:
  """Every shard of `split` exists, opens, and holds the records its metadata lists."""
  folder = os.fspath(builder.data_path)
  hint = rebuild_hint(dataset, data_dir, folder)
  for path, expected in split_files(builder, split):
    if not os.path.isfile(path):
      raise DamagedDataError(
        f'{path}: missing, though dataset_info.json lists it for split {split!r}; {hint}'
      )
    try:
      reader = ArrayRecordReader(path)
      try:
        found = reader.num_records()
        if read_all and found == expected:
          reader.read_all()
      finally:
        reader.close()
    except RuntimeError as e:
      raise DamagedDataError(f'{path}: damaged or truncated ({_first_clause(e)}); {hint}') from e
    if found != expected:
      raise DamagedDataError(
        f'{path}: holds {found} records but dataset_info.json says {expected}: the file '
        f'and the metadata come from different builds; {hint}'
      )


def locate_damage(builder, split: str, dataset: str, data_dir: str, indices, read_one) -> str:
  """The message for a read of `indices` that failed: the first bad record's file, or ''.

  `read_one(index)` reads one example; the shard holding each index follows from the
  metadata's shard lengths.
  """
  files = split_files(builder, split)
  ends = np.cumsum([n for _, n in files])
  for index in indices:
    try:
      read_one(int(index))
    except RuntimeError as e:
      shard = int(np.searchsorted(ends, index, side='right'))
      path = files[min(shard, len(files) - 1)][0]
      hint = rebuild_hint(dataset, data_dir, os.fspath(builder.data_path))
      return f'{path}: damaged record (example {int(index)}: {_first_clause(e)}); {hint}'
  return ''


def _first_clause(error: Exception) -> str:
  """The library's message up to its first ';' (Riegeli appends positions and context)."""
  return ' '.join(str(error).split(';')[0].split())
