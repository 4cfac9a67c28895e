"""Entry point: parse flags, then train and evaluate, or evaluate the latest checkpoint.

python launch.py --config=configs/synthetic.py --workdir=/tmp/aaf
python launch.py --config=configs/synthetic.py --workdir=/tmp/aaf --mode=eval
"""

import logging as pylogging
import os

from absl import app, flags, logging
from ml_collections import config_flags

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow serves only the input pipeline

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file, e.g. configs/synthetic.py:aaf', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, results.')
_MODE = flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'eval'],
  'train: train then evaluate; eval: evaluate the latest checkpoint.',
)
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(pylogging.Filter):
  """Drops the INFO chatter of Orbax and TFDS; their warnings and errors still show."""

  def filter(self, record):
    return record.levelno > pylogging.INFO or not any(
      f'{os.sep}{lib}{os.sep}' in record.pathname for lib in ('orbax', 'tensorflow_datasets')
    )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  from aaf_jax import train  # after flag parsing: --help stays fast

  logging.info('Config:\n%s', _CONFIG.value)
  if _MODE.value == 'train':
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  else:
    train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
