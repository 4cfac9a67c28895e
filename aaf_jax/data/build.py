"""The build command: prepare the real datasets as TFDS data from their extracted official layouts.

  python -m aaf_jax.data.build --dataset=voc --manual_dir=/data/voc --data_dir=/data/tfds

Writes ArrayRecord, the format aaf_jax.data reads, with a progress bar per split. It goes through
the same registry as training (`aaf_jax.data.get_builder`), so the data is written exactly as
training reads it.
"""

import argparse
import sys
from collections.abc import Sequence

import ml_collections
import tensorflow_datasets as tfds
from absl import logging

import aaf_jax.data

# The registry names of the datasets prepared from a manual folder (the synthetic set needs none).
REAL_DATASETS = ('voc', 'cityscapes', 'gta5')


def build(
  dataset: str, *, manual_dir: str, data_dir: str, skip_bad_examples: bool = False
) -> tfds.core.DatasetBuilder:
  """Prepares `dataset` from manual_dir into data_dir (kept if already prepared).

  Goes through aaf_jax.data.get_builder, so the data is written exactly as training reads it.
  """
  if dataset not in REAL_DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; expected one of {REAL_DATASETS}')
  data_cfg = ml_collections.ConfigDict(
    {
      'name': dataset,
      'manual_dir': manual_dir,
      'data_dir': data_dir,
      'skip_bad_examples': skip_bad_examples,
    }
  )
  return aaf_jax.data.get_builder(data_cfg)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog='python -m aaf_jax.data.build', description=__doc__.splitlines()[0]
  )
  parser.add_argument('--dataset', required=True, choices=REAL_DATASETS)
  parser.add_argument(
    '--manual_dir', required=True, help='folder holding the extracted official dataset'
  )
  parser.add_argument('--data_dir', required=True, help='TFDS data_dir to write into')
  parser.add_argument(
    '--skip_bad_examples',
    action='store_true',
    help='log and skip unusable examples instead of stopping at the first one',
  )
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  builder = build(
    args.dataset,
    manual_dir=args.manual_dir,
    data_dir=args.data_dir,
    skip_bad_examples=args.skip_bad_examples,
  )
  print(f'{builder.name} prepared in {builder.data_dir} ({builder.info.file_format.value}):')
  for split, info in sorted(builder.info.splits.items()):
    print(f'  {split}: {info.num_examples} examples')


if __name__ == '__main__':
  main(sys.argv[1:])
