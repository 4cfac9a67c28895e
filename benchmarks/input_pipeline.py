"""Training input pipeline throughput (images/s) with 1 and 2 tf.data threads.

Settings: the synthetic set, and stand-ins for the recipe's VOC (crop 336 from 500x375 JPEG)
and Cityscapes (crop 720 from 2048x1024 PNG) inputs: synthetic drawings of those sizes stored
in the formats the real builders keep (VOC JPEG, Cityscapes PNG), written to a temporary TFDS
folder, since the real datasets are not on this machine.

  python benchmarks/input_pipeline.py [--batches_scale 1.0] [--threads 1,2]
"""

import argparse
import dataclasses
import os
import tempfile
import time

import ml_collections
import tensorflow_datasets as tfds

from aaf_jax import data
from aaf_jax.data import pipeline, synthetic

MEAN = (122.675, 116.669, 104.008)


@dataclasses.dataclass(eq=False)
class StandInConfig(tfds.core.BuilderConfig):
  height: int = 375
  width: int = 500
  count: int = 32
  image_format: str = 'jpeg'


class StandInImages(tfds.core.GeneratorBasedBuilder):
  """Synthetic drawings at a real dataset's image size and storage format."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [StandInConfig(name='default')]
  CLASS_NAMES = synthetic.CLASS_NAMES
  IGNORE_LABEL = 255

  @classmethod
  def builder_kwargs(cls, data_cfg) -> dict:
    opts = dict(data_cfg.stand_in)
    name = '{height}x{width}_{count}_{image_format}'.format(**opts)
    return {'config': StandInConfig(name=name, **opts)}

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(
            shape=(None, None, 3), encoding_format=self.builder_config.image_format
          ),
          'label': tfds.features.Image(shape=(None, None, 1), encoding_format='png'),
          'name': tfds.features.Text(),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    config = self.builder_config
    for index in range(config.count):
      image, label = synthetic.draw_example(
        synthetic.OPTION_DEFAULTS, 'train', index, config.height, config.width
      )
      yield index, {'image': image, 'label': label[..., None], 'name': str(index)}


def data_config(data_dir, name, crop, num_threads, **extra):
  return ml_collections.ConfigDict(
    dict(
      name=name,
      data_dir=data_dir,
      manual_dir=None,
      train_split='train',
      eval_split='train',
      crop_size=crop,
      min_scale=0.5,
      max_scale=2.0,
      mirror=True,
      mean=MEAN,
      eval_size=(crop, crop),
      prefetch=2,
      num_threads=num_threads,
      **extra,
    )
  )


def images_per_second(cfg, batch_size: int, batches: int) -> float:
  iterator = pipeline.make_train_iterator(
    cfg, global_batch_size=batch_size, seed=0, process_index=0, process_count=1
  )
  for _ in range(3):  # warm-up: graph tracing, autotuning, file opening
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--batches_scale',
    type=float,
    default=1.0,
    help='multiplies the number of timed batches per setting',
  )
  parser.add_argument('--threads', default='1,2', help='tf.data thread counts to time')
  args = parser.parse_args()
  data.register_builder('stand_in', StandInImages)
  settings = [  # (label, source, crop, timed batches, config extras)
    ('synthetic', '112x112 PNG', 96, 400, dict(synthetic=dict(num_train=256, num_validation=8))),
    (
      'VOC setting',
      '500x375 JPEG',
      336,
      80,
      dict(stand_in=dict(height=375, width=500, count=48, image_format='jpeg')),
    ),
    (
      'Cityscapes setting',
      '2048x1024 PNG',
      720,
      12,
      dict(stand_in=dict(height=1024, width=2048, count=12, image_format='png')),
    ),
  ]
  threads = [int(t) for t in args.threads.split(',')]
  rows = []
  with tempfile.TemporaryDirectory() as data_dir:
    for label, source, crop, batches, extras in settings:
      name = 'synthetic' if 'synthetic' in extras else 'stand_in'
      data.get_builder(data_config(data_dir, name, crop, None, **extras))
      for num_threads in threads:
        cfg = data_config(data_dir, name, crop, num_threads, **extras)
        rate = images_per_second(cfg, 8, max(1, round(batches * args.batches_scale)))
        rows.append((label, source, crop, num_threads, rate))
  print(
    f'\nTraining pipeline throughput, batch 8, scale 0.5-2 + mirror + crop '
    f'({os.cpu_count()} CPUs visible)\n'
  )
  print('| setting | stored images | crop | tf.data threads | images/s | images/s per thread |')
  print('|---|---|---|---|---|---|')
  for label, source, crop, num_threads, rate in rows:
    print(
      f'| {label} | {source} | {crop} | {num_threads} | {rate:.1f} | {rate / num_threads:.1f} |'
    )


if __name__ == '__main__':
  main()
