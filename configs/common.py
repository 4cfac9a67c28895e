"""The base config (every field the trainer, model, data and evaluation read) and arguments.

`base_config()` is the whole contract: set-up configs (synthetic.py, voc.py, cityscapes.py)
only override its fields, and `aaf_jax.validation.validate` checks each field's type and range
before anything is built. A config file's `get_config(arg)` takes the text after the colon in
`--config=configs/NAME.py:ARG`: comma-separated `key=value` pairs and bare flags, e.g. `aaf` or
`aaf,steps=200`. Unknown keys are an error, and the returned config is locked, so a typo in a
`--config.some.field=...` override is an error too. Loading a config imports no jax.
"""

import ast

import ml_collections

from aaf_jax import loss_kinds, presets
from aaf_jax.loss_kinds import LOSS_KINDS


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parse 'key=value,flag' against `defaults`; values take the type of their default.

  A bare word sets `loss` when it is a loss kind, else the boolean flag of that name.
  """
  result = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    if not sep and key in LOSS_KINDS and 'loss' in defaults:
      key, value = 'loss', key
    elif not sep:
      value = 'True'
    if key not in defaults:
      raise ValueError(
        f'Unknown config argument {key!r} in {arg!r}; accepted: '
        f'{", ".join(sorted(defaults))} (or a loss kind: {", ".join(LOSS_KINDS)}).'
      )
    default = defaults[key]
    if isinstance(default, str):
      result[key] = value
    else:
      try:
        result[key] = type(default)(ast.literal_eval(value))
      except (ValueError, SyntaxError) as e:
        raise ValueError(
          f'Config argument {key}={value!r}: expected a {type(default).__name__}.'
        ) from e
  return ml_collections.ConfigDict(result)


def set_fields(config, overrides: dict) -> None:
  """Sets each dotted field of `overrides` ({'data.eval_split': 'shifted'}) in `config`."""
  for field, value in overrides.items():
    node = config
    *parents, leaf = field.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value


def base_config(
  loss_kind: str = 'aaf', model_preset: str = 'pspnet_resnet101'
) -> ml_collections.ConfigDict:
  """Every field, with the recipe's defaults (docs/recipe.md); returned unlocked for the set-up."""
  kind = loss_kinds.get(loss_kind)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_train_steps = 30_000
  c.batch_size = 8  # global, over all devices and hosts
  c.eval_batch_size = 8  # global, for evaluation at full resolution
  c.grad_accum_steps = 1  # the batch is split into this many sequential micro-batches
  c.compute_dtype = 'float32'  # or 'bfloat16': convs in bf16, params and loss in float32
  # A workdir or checkpoint dir whose network weights start a run that has no checkpoint yet.
  c.init_checkpoint = ''

  c.optimizer = ml_collections.ConfigDict(
    dict(learning_rate=1e-3, poly_power=0.9, momentum=0.9, weight_decay=5e-4, head_lr_mult=10.0)
  )

  # decay: scale the affinity term by 10 ** (-step / num_train_steps) (spec item 10).
  # implementation: how the pair sums are computed, 'xla' (jnp ops) or 'pallas' (the fused
  # kernels of aaf_jax/affinity_pallas.py; docs/accelerators.md says which runs where).
  # tables: how kind 'aaf' learns its per-class field-size tables (aaf_jax/optim.py):
  # 'adversarial' (gradient ascent, the paper's min-max), 'descent' (min-min with the network)
  # or 'uniform' (never trained: equal weights over the sizes). Other kinds keep the default.
  c.loss = ml_collections.ConfigDict(
    dict(
      kind=kind.name,
      sizes=kind.default_sizes,
      margin=3.0,
      lambda_edge=1.0,
      lambda_nonedge=1.0,
      decay=True,
      implementation='xla',
      tables=loss_kinds.DEFAULT_TABLES,
    )
  )

  # The network: aaf_jax.presets names every option; `pretrained` is an imported ImageNet
  # backbone file (python -m aaf_jax.weights), `aux_weight` the aux head's loss weight.
  c.model = ml_collections.ConfigDict(presets.preset(model_preset))

  c.data = ml_collections.ConfigDict(
    dict(
      name='synthetic',
      data_dir='~/tensorflow_datasets',  # TFDS folder: prepared data is written and read here
      manual_dir='',  # the extracted official archives (real datasets)
      train_split='train',
      eval_split='validation',
      crop_size=64,
      min_scale=0.5,  # random scaling of training images, then mirror and crop
      max_scale=2.0,
      mirror=True,
      mean=(122.675, 116.669, 104.008),  # RGB, subtracted from every image
      eval_size=(72, 72),  # evaluation images are padded to this (height, width)
      prefetch=2,  # batches prepared ahead
      num_threads=0,  # tf.data's CPU threads; 0 = tf.data decides
      skip_bad_examples=False,  # building real datasets: log and skip damaged examples
      # Options of the synthetic dataset (aaf_jax/data/synthetic.py), read when name='synthetic'.
      synthetic=ml_collections.ConfigDict(
        dict(
          image_size=112,
          num_train=2000,
          num_validation=200,
          seed=0,
          max_objects=6,
          noise_std=12.0,
          void_prob=0.5,
          thin_width=3.0,  # px: the widest a ring, bar or star stroke gets
          layout='shapes',  # or 'multiscale': each class at its own scale (configs/synthetic.py)
        )
      ),
    )
  )

  # Inference (evaluate.py): window 0 = the whole image at once, else sliding windows of
  # `window` px at most `stride` apart; class probabilities summed over `scales` and, with
  # `flip`, the mirrored image. boundary_width: px from a contour that count for boundary IoU,
  # an int, or a float in (0, 1): that fraction of each image's diagonal (aaf_jax/boundary.py;
  # Cheng et al. use 0.02). Typed `object` so that either can be set over the default.
  c.eval = ml_collections.ConfigDict(
    dict(
      window=0,
      stride=0,
      scales=(1.0,),
      flip=False,
      boundary_width=ml_collections.FieldReference(3, field_type=object),
    )
  )

  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: evaluate only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.num_summary_images = 4
  return c


def paper_config(args) -> ml_collections.ConfigDict:
  """The authors' PSPNet-ResNet-101 recipe shared by the VOC and Cityscapes configs.

  `args` carries loss, steps, batch, dtype and data_dir (see configs/voc.py,
  configs/cityscapes.py).
  """
  config = base_config(args.loss, 'pspnet_resnet101')
  config.num_train_steps = args.steps
  config.batch_size = args.batch
  config.compute_dtype = args.dtype
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.model.aux_weight = 0.0  # the authors' PSPNet has no auxiliary head
  config.data.data_dir = args.data_dir
  config.data.prefetch = 4
  config.data.min_scale, config.data.max_scale = 0.5, 2.0
  return config
