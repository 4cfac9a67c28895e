"""Pieces every config shares: argument parsing and the base config.

A config file's `get_config(arg)` takes the text after the colon in
`--config=configs/NAME.py:ARG`: comma-separated `key=value` pairs and bare flags, e.g.
`aaf` or `aaf,steps=200`. Unknown keys are an error, and the returned config is locked, so a
typo in a `--config.some.field=...` override is an error too.
"""

import ast

import ml_collections

from aaf_jax.models import get_preset
from aaf_jax.step import LOSS_KINDS


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


def base_config(loss_kind: str = 'aaf') -> ml_collections.ConfigDict:
  """Every field the trainer reads, with the recipe's defaults (AAF_SPEC.md)."""
  if loss_kind not in LOSS_KINDS:
    raise ValueError(f'config.loss.kind={loss_kind!r} is unknown; expected one of {LOSS_KINDS}.')
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_train_steps = 30_000
  c.batch_size = 8  # global, over all devices and hosts
  c.eval_batch_size = 8  # global, for evaluation at full resolution
  c.grad_accum_steps = 1  # the batch is split into this many sequential micro-batches
  c.compute_dtype = 'float32'  # or 'bfloat16': convs in bf16, params and loss in float32
  c.init_checkpoint = ''  # a workdir or checkpoint dir to start from when workdir has none

  c.optimizer = ml_collections.ConfigDict(
    dict(learning_rate=1e-3, poly_power=0.9, momentum=0.9, weight_decay=5e-4, head_lr_mult=10.0)
  )

  # The fixed-size affinity field uses s = 1 (spec item 7); AAF chooses among 1, 2, 3.
  c.loss = ml_collections.ConfigDict(
    dict(
      kind=loss_kind,
      sizes=(1,) if loss_kind == 'affinity' else (1, 2, 3),
      margin=3.0,
      lambda_edge=1.0,
      lambda_nonedge=1.0,
      decay=True,
    )
  )  # decay: scale the affinity term by 10 ** (-step / num_train_steps)

  # Inference (evaluate.py): window 0 = the whole image at once, else sliding windows of
  # `window` px at most `stride` apart; class probabilities summed over `scales` and, with
  # `flip`, the mirrored image.
  c.eval = ml_collections.ConfigDict(dict(window=0, stride=0, scales=(1.0,), flip=False))

  c.log_every_steps = 50
  c.eval_every_steps = 0  # 0: evaluate only at the end
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.num_summary_images = 4
  return c


def paper_config(args) -> ml_collections.ConfigDict:
  """The authors' PSPNet-ResNet-101 recipe shared by the VOC and Cityscapes configs.

  `args` carries loss, steps, batch and dtype (see configs/voc.py, configs/cityscapes.py).
  """
  config = base_config(args.loss)
  config.num_train_steps = args.steps
  config.batch_size = args.batch
  config.compute_dtype = args.dtype
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.model = get_preset('pspnet_resnet101')
  config.model.aux_weight = 0.0  # the authors' PSPNet has no auxiliary head
  return config
