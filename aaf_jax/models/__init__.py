"""Model registry: `config.model.name` -> a flax.linen segmentation network.

Every field of `config.model` other than `name` is a constructor option of the chosen network
(see `default_config(name)` for the full list with defaults), except the fields in
`TRAINER_FIELDS`, which the trainer reads and `build_model` ignores.
"""

import dataclasses
import numbers
from typing import TYPE_CHECKING

import flax.linen as nn
import jax.numpy as jnp

from aaf_jax.models import deeplab, pspnet
from aaf_jax.presets import PRESETS as PRESETS  # re-exported: the registry's presets
from aaf_jax.presets import TRAINER_FIELDS, network_defaults, preset

if TYPE_CHECKING:  # imported where used, so that benchmarks can import the models without it
  import ml_collections

_REGISTRY = {
  'pspnet': pspnet.PSPNet,
  'deeplabv2': deeplab.DeepLabV2,
  'deeplabv3': deeplab.DeepLabV3,
}

_NOT_OPTIONS = ('num_classes', 'dtype', 'parent', 'name')


def _network_class(name):
  if name not in _REGISTRY:
    raise ValueError(f'config.model.name={name!r} is unknown; expected one of {sorted(_REGISTRY)}.')
  return _REGISTRY[name]


def _option_names(cls) -> list[str]:
  return [f.name for f in dataclasses.fields(cls) if f.name not in _NOT_OPTIONS]


def _options(model_cfg) -> tuple[type, dict]:
  cfg = dict(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg)
  if 'name' not in cfg:
    raise ValueError(f'config.model has no `name`; expected one of {sorted(_REGISTRY)}.')
  cls = _network_class(cfg.pop('name'))
  accepted = _option_names(cls)
  unknown = sorted(k for k in cfg if k not in accepted and k not in TRAINER_FIELDS)
  if unknown:
    raise ValueError(
      f'config.model has unknown field(s) {unknown} for {cls.__name__}; '
      f'accepted: {accepted + list(TRAINER_FIELDS)}.'
    )
  options = {
    k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k not in TRAINER_FIELDS
  }
  return cls, options


def build_model(
  model_cfg: 'ml_collections.ConfigDict', *, num_classes: int, dtype=jnp.float32
) -> nn.Module:
  """The network named by `model_cfg.name`, built with the other fields as options.

  `dtype=jnp.bfloat16` computes in bfloat16 with float32 parameters; logits are float32.
  """
  cls, options = _options(model_cfg)
  return cls(num_classes=num_classes, dtype=dtype, **options)


def check_input_size(model_cfg, height: int, width: int) -> None:
  """ValueError when the network cannot take a [height, width] input.

  Any size at least one output-stride cell wide works (strided convs and pooling round up, the
  pyramid pooling is adaptive); smaller inputs leave the deepest stage without a full cell.
  """
  model = build_model(model_cfg, num_classes=1)
  for what, size in (('height', height), ('width', width)):
    if not isinstance(size, numbers.Integral) or size < model.output_stride:
      raise ValueError(
        f'input {what}={size!r} (crop {height}x{width}) is too small for '
        f'{type(model).__name__} at output_stride={model.output_stride}: each '
        f'side must be an integer >= {model.output_stride}.'
      )


def default_config(name: str) -> 'ml_collections.ConfigDict':
  """Every option of network `name` with its default, plus the trainer fields."""
  import ml_collections

  _network_class(name)
  return ml_collections.ConfigDict(network_defaults(name))


def option_defaults(name: str) -> dict:
  """The options network `name`'s class declares, with their defaults (from the class itself)."""
  cls = _network_class(name)
  return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in _NOT_OPTIONS}


def get_preset(name: str) -> 'ml_collections.ConfigDict':
  """A ready-made `config.model`: `aaf_jax.presets.PRESETS[name]` over the network's defaults."""
  import ml_collections

  return ml_collections.ConfigDict(preset(name))
