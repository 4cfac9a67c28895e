"""The authors' PASCAL VOC 2012 recipe (docs/recipe.md): PSPNet, ResNet-101 (slim), stride 8.

    # stage 1: train_aug (VOC train + SBD), 30k steps at lr 1e-3
    python launch.py --config=configs/voc.py:stage1,aaf,pretrained=/w/r101.msgpack \
        --config.data.manual_dir=/data/voc --workdir=/runs/voc1
    # stage 2: VOC train, 30k steps at lr 1e-4, from stage 1; the AAF tables and the loss
    # decay start afresh
    python launch.py --config=configs/voc.py:stage2,aaf,init=/runs/voc1 \
        --config.data.manual_dir=/data/voc --workdir=/runs/voc2

The loss is `ce`, `affinity` or `aaf` (default). `pretrained` is the backbone file written by
`python -m aaf_jax.weights` (stage 1; a missing file is an error at start-up).
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    loss='aaf',
    stage1=False,
    stage2=False,
    pretrained='pretrained/resnet_v1_101.msgpack',
    init='',
    data_dir='~/tensorflow_datasets',
    batch=8,
    steps=30_000,
    dtype='float32',
  )
  if args.stage1 == args.stage2:
    raise ValueError(f'configs/voc.py needs exactly one of stage1, stage2; got {arg!r}.')
  config = common.paper_config(args)
  config.optimizer.learning_rate = 1e-3 if args.stage1 else 1e-4
  config.eval_every_steps = 10_000

  # The authors' inference: 480 px windows at stride 320; stage 2 adds scales and flip.
  config.eval.window, config.eval.stride = 480, 320
  if args.stage2:
    config.eval.scales = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    config.eval.flip = True

  if args.stage1:
    config.model.pretrained = args.pretrained
  else:
    if not args.init:
      raise ValueError('configs/voc.py:stage2 needs init=STAGE1_WORKDIR (the stage-1 run).')
    config.init_checkpoint = args.init

  config.data.name = 'voc'
  config.data.train_split = 'train_aug' if args.stage1 else 'train'
  config.data.eval_split = 'val'
  config.data.crop_size = 336
  config.data.eval_size = (512, 512)
  config.lock()
  return config


def get_sweep(arg=None):
  """The paper's ablations (`--mode=sweep` without --sweep): field sizes and margin.

  For `aaf` the sets of sizes AAF chooses among, for `affinity` the one fixed size; `ce` has no
  affinity field, so its sweep is over seeds alone.
  """
  kind = get_config(arg).loss.kind
  if kind == 'ce':
    return {}
  sizes = [(1,), (2,), (3,)] if kind == 'affinity' else [(1,), (1, 2), (1, 2, 3)]
  return {'loss.sizes': sizes, 'loss.margin': [1.0, 2.0, 3.0]}
