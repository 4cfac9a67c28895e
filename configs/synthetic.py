"""The main job: AAF on the built-in synthetic shapes dataset, small enough for a 2-core CPU.

72 px images, 64 px crops, batch 8, 2500 steps of a ResNet-10 PSPNet at output stride 4.

    python launch.py --config=configs/synthetic.py --workdir=DIR          # loss 'aaf'
    python launch.py --config=configs/synthetic.py:ce --workdir=DIR       # or affinity, aaf
    python launch.py --config=configs/synthetic.py:aaf,steps=200 --workdir=DIR
    python launch.py --config=configs/synthetic.py --config.num_train_steps=100 --workdir=DIR
"""

import ml_collections

from aaf_jax.models import get_preset
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, loss='aaf', steps=2500, batch=8, data_dir='~/tensorflow_datasets')
  config = common.base_config(args.loss)
  config.seed = 0
  config.num_train_steps = args.steps
  config.batch_size = args.batch
  config.optimizer.learning_rate = 0.1
  config.optimizer.weight_decay = 1e-4
  config.optimizer.head_lr_mult = 1.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2

  config.model = get_preset('pspnet_tiny')
  config.model.aux_weight = 0.0
  config.model.head_width = 64

  config.data = ml_collections.ConfigDict(
    dict(
      name='synthetic',
      data_dir=args.data_dir,
      manual_dir=None,
      train_split='train',
      eval_split='validation',
      crop_size=64,
      min_scale=0.75,
      max_scale=1.25,
      mirror=True,
      mean=(122.675, 116.669, 104.008),
      eval_size=(72, 72),
      prefetch=2,
      synthetic=ml_collections.ConfigDict(
        dict(image_size=72, num_train=2000, num_validation=200, seed=0)
      ),
    )
  )
  config.lock()
  return config
