"""The authors' Cityscapes recipe (docs/recipe.md): PSPNet, ResNet-101 (slim), stride 8, crop 720.

    python launch.py --config=configs/cityscapes.py:aaf,pretrained=/w/r101.msgpack \
        --config.data.manual_dir=/data/cityscapes --workdir=/runs/cs
    # generalisation: the Cityscapes model evaluated on all of GTA5 (labels mapped to the 19
    # train ids), the config's inference, scores in /runs/cs/eval-gta5-full.json
    python launch.py --config=configs/cityscapes.py:aaf,gta5 --workdir=/runs/cs --mode=eval \
        --config.data.manual_dir=/data/gta5

The recipe's batch of 8 ran on 4 GPUs with synchronised BatchNorm; here BatchNorm statistics
are over the global batch on however many devices the run has.
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    loss='aaf',
    pretrained='pretrained/resnet_v1_101.msgpack',
    data_dir='~/tensorflow_datasets',
    batch=8,
    steps=90_000,
    dtype='float32',
    gta5=False,
  )
  config = common.paper_config(args)
  config.optimizer.learning_rate = 1e-3
  config.eval_every_steps = 30_000
  config.eval_batch_size = 2

  # The authors' inference: 720 px windows at stride 480, six scales and flip.
  config.eval.window, config.eval.stride = 720, 480
  config.eval.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
  config.eval.flip = True

  config.model.pretrained = args.pretrained

  config.data.name = 'cityscapes'
  config.data.train_split, config.data.eval_split = 'train', 'val'
  config.data.crop_size = 720
  config.data.eval_size = (1024, 2048)
  if args.gta5:  # evaluation on every GTA5 image (--mode=eval), the largest 1052x1914
    config.data.name, config.data.eval_split = 'gta5', 'full'
    config.data.eval_size = (1052, 1914)
  config.lock()
  return config
