"""The build command: prepare the real datasets as TFDS data from their extracted official layouts.

  python -m aaf_jax.data.build --dataset=voc --manual_dir=/data/voc --data_dir=/data/tfds
  python -m aaf_jax.data.build --config=configs/synthetic.py [--config.data.FIELD=VALUE ...]

With `--config` (and the same overrides as launch.py) it prepares exactly the data that config
trains on, the synthetic set included, in its `config.data.data_dir` (or --data_dir): a
multi-process job can have its data ready before launch.

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


def _config_data(config_args: list[str], data_dir: str | None, manual_dir: str | None):
  """`config.data` of --config=FILE[:ARGS] with its --config.FIELD overrides (launch.py's syntax)."""
  from absl import flags
  from ml_collections import config_flags

  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config file', flag_values, lock_config=False)
  flag_values(['build', *config_args])
  data_cfg = flag_values.config.data
  if data_dir:
    data_cfg.data_dir = data_dir
  if manual_dir:
    data_cfg.manual_dir = manual_dir
  return data_cfg


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog='python -m aaf_jax.data.build',
    description=__doc__.splitlines()[0],
    epilog='--config=FILE[:ARGS] (and --config.FIELD=VALUE overrides) instead of --dataset '
    'prepares the data that config trains on, the synthetic set included.',
  )
  parser.add_argument('--dataset', choices=REAL_DATASETS)
  parser.add_argument('--manual_dir', help='folder holding the extracted official dataset')
  parser.add_argument('--data_dir', help='TFDS data_dir to write into')
  parser.add_argument(
    '--skip_bad_examples',
    action='store_true',
    help='log and skip unusable examples instead of stopping at the first one',
  )
  args, config_args = parser.parse_known_args(argv)
  unknown = [a for a in config_args if not a.startswith('--config')]
  if unknown:
    parser.error(f'unrecognized arguments: {" ".join(unknown)}')
  if bool(config_args) == bool(args.dataset):
    parser.error('give either --dataset (with --manual_dir and --data_dir) or --config')
  logging.set_verbosity(logging.INFO)
  if config_args:
    data_cfg = _config_data(config_args, args.data_dir, args.manual_dir)
    if args.skip_bad_examples:
      data_cfg.skip_bad_examples = True
    builder = aaf_jax.data.get_builder(data_cfg)
  else:
    if not (args.manual_dir and args.data_dir):
      parser.error('--dataset needs --manual_dir and --data_dir')
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
