"""The main job: AAF on the built-in synthetic shapes dataset, small enough for a 2-core CPU.

64 px images, 48 px crops, batch 8, 6000 steps of a ResNet-10 PSPNet (stages 16-128 channels
wide) at output stride 4; thin strokes of 3-5 px.

    python launch.py --config=configs/synthetic.py --workdir=DIR          # loss 'aaf'
    python launch.py --config=configs/synthetic.py:ce --workdir=DIR       # or affinity, aaf
    python launch.py --config=configs/synthetic.py:aaf,steps=200 --workdir=DIR
    python launch.py --config=configs/synthetic.py --config.num_train_steps=100 --workdir=DIR
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, loss='aaf', steps=6000, batch=8, data_dir='~/tensorflow_datasets')
  config = common.base_config(args.loss, 'pspnet_tiny')
  config.seed = 0
  config.num_train_steps = args.steps
  config.batch_size = args.batch
  config.optimizer.learning_rate = 0.1
  config.optimizer.weight_decay = 1e-4
  config.optimizer.head_lr_mult = 1.0
  config.log_every_steps = 100
  config.eval.boundary_width = 2  # 2% of the 64 px image's diagonal, as Cheng et al.
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2

  # The pspnet_tiny preset: output stride 4, stages 16-128 wide. Its step runs about 3x faster
  # on the CPU than the stride-2 net with stages 8-64 (same FLOPs, maps a quarter the size),
  # and what the main job needs most is steps (BENCHMARKS.md). Strokes of 3-5 px (thin_width
  # below) stay about one logit pixel wide at stride 4.
  config.model.aux_weight = 0.0

  config.data.name = 'synthetic'
  config.data.data_dir = args.data_dir
  config.data.train_split, config.data.eval_split = 'train', 'validation'
  # 48 px crops of the 64 px images (scaled by 0.75-1.25) cost about half a 64 px crop's step
  # on the CPU, and per step they train as well: 6000 such steps fit where 4500 did not.
  config.data.crop_size = 48
  config.data.min_scale, config.data.max_scale = 0.75, 1.25
  config.data.eval_size = (64, 64)
  config.data.synthetic.image_size = 64
  config.data.synthetic.num_train = 2000
  config.data.synthetic.num_validation = 200
  config.data.synthetic.seed = 0
  config.data.synthetic.max_objects = 4
  config.data.synthetic.noise_std = 8.0
  config.data.synthetic.thin_width = 5.0
  config.lock()
  return config


def get_sweep(arg=None):
  """`--mode=sweep` without --sweep: the three loss kinds, each at its default sizes."""
  del arg
  return {'loss.kind': ['ce', 'affinity', 'aaf']}
