"""ResNet v1 backbones (basic and bottleneck units) with dilation for dense prediction.

Two layouts share one parameter tree and differ only in where a stage's stride sits:

- 'torchvision' (ResNet v1.5): the first unit of a stage strides, on its 3x3 conv, and the
  max-pool pads one pixel on each side (PyTorch `padding=1`).
- 'slim' (TF-slim `resnet_v1`): the *last* unit of the previous stage strides, on its 3x3 conv;
  its shortcut is the identity subsampled by slicing. The max-pool uses TF 'SAME' padding,
  which for an even input pads only at the end.

Every conv pads explicitly and symmetrically by rate * (k - 1) / 2, which is both PyTorch's rule
and slim's `conv2d_same` rule for the odd kernels used here. Stages past the requested output
stride keep stride 1 and dilate their 3x3 convs instead, with slim's `stack_blocks_dense` rule:
the unit that would have strided keeps the previous rate, the units after it get the new one
(which is also what torchvision's `replace_stride_with_dilation` does).
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from aaf_jax.models import dilated
from aaf_jax.presets import LAYOUTS, STEMS

# Preset depths: (unit type, units per stage).
BACKBONES = {
  'resnet10': ('basic', (1, 1, 1, 1)),
  'resnet18': ('basic', (2, 2, 2, 2)),
  'resnet34': ('basic', (3, 4, 6, 3)),
  'resnet50': ('bottleneck', (3, 4, 6, 3)),
  'resnet101': ('bottleneck', (3, 4, 23, 3)),
  'resnet152': ('bottleneck', (3, 8, 36, 3)),
}
BLOCKS = ('basic', 'bottleneck')

_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')  # He init, as torchvision


@dataclasses.dataclass(frozen=True)
class UnitPlan:
  """Where one residual unit sits and how it convolves."""

  stage: int  # 1-based
  index: int  # 1-based within the stage
  stride: int  # stride of its 3x3 conv (and of its shortcut)
  rate: int  # dilation of its 3x3 conv(s)
  in_features: int
  out_features: int
  projection: bool  # 1x1 conv + BN shortcut rather than the (subsampled) identity
  out_stride: int  # input pixels per output pixel after this unit


def stem_stride(stem_pool: bool) -> int:
  return 4 if stem_pool else 2


def plan_units(
  *,
  block: str,
  stage_sizes: Sequence[int],
  base_width: int,
  stem_width: int,
  layout: str,
  output_stride: int,
  stem_pool: bool = True,
) -> list[UnitPlan]:
  """Strides, rates and shortcut types of every unit; ValueError on an impossible request."""
  if block not in BLOCKS:
    raise ValueError(f'ResNet block={block!r} is unknown; expected one of {BLOCKS}.')
  if layout not in LAYOUTS:
    raise ValueError(f'ResNet layout={layout!r} is unknown; expected one of {LAYOUTS}.')
  if not stage_sizes or any(int(n) < 1 for n in stage_sizes):
    raise ValueError(
      f'ResNet stage_sizes={tuple(stage_sizes)} must be a non-empty sequence of '
      'positive unit counts.'
    )
  if base_width < 1 or stem_width < 1:
    raise ValueError(
      f'ResNet widths must be positive, got base_width={base_width}, stem_width={stem_width}.'
    )
  expansion = 4 if block == 'bottleneck' else 1
  stage_strides = [1] + [2] * (len(stage_sizes) - 1)
  # Nominal stride of every unit, before dilation replaces strides.
  nominal = []
  for s, n in enumerate(stage_sizes):
    for i in range(n):
      if layout == 'torchvision':
        stride = stage_strides[s] if i == 0 else 1
      else:
        last = i == n - 1 and s + 1 < len(stage_sizes)
        stride = stage_strides[s + 1] if last else 1
      nominal.append((s, i, stride))
  reachable = [stem_stride(stem_pool) * 2**k for k in range(len(stage_sizes))]
  if output_stride not in reachable:
    raise ValueError(
      f'ResNet output_stride={output_stride} cannot be reached with '
      f'stem_pool={stem_pool} and {len(stage_sizes)} stages; expected one of '
      f'{reachable}.'
    )
  current, rate = stem_stride(stem_pool), 1
  in_features = stem_width
  plans = []
  for s, i, stride in nominal:
    out_features = base_width * 2**s * expansion
    projection = in_features != out_features or (layout == 'torchvision' and stride != 1)
    if current == output_stride:
      plans.append(UnitPlan(s + 1, i + 1, 1, rate, in_features, out_features, projection, current))
      rate *= stride
    else:
      current *= stride
      plans.append(
        UnitPlan(s + 1, i + 1, stride, 1, in_features, out_features, projection, current)
      )
    in_features = out_features
  return plans


def batch_norm(*, train: bool, frozen: bool, momentum: float, epsilon: float, dtype):
  """A BatchNorm factory; running statistics at eval time or when frozen."""
  return functools.partial(
    nn.BatchNorm,
    use_running_average=not train or frozen,
    momentum=momentum,
    epsilon=epsilon,
    dtype=dtype,
    param_dtype=jnp.float32,
  )


def conv2d(
  features, kernel, *, stride=1, rate=1, dtype, name, kernel_init=_conv_init, form='space_to_batch'
):
  """k x k conv, no bias, symmetric padding rate * (k - 1) / 2, He init (unless `kernel_init`
  says otherwise), float32 params; a dilated one computed in `form` (models/dilated.py)."""
  return dilated.conv(
    features,
    kernel,
    stride=stride,
    rate=rate,
    dtype=dtype,
    name=name,
    kernel_init=kernel_init,
    form=form,
  )


class BottleneckUnit(nn.Module):
  """1x1 -> 3x3 (strided, dilated) -> 1x1, BN after each conv, ReLU after the sum."""

  plan: UnitPlan
  norm: Any
  dtype: Any = jnp.float32
  dilated_conv: str = 'space_to_batch'

  @nn.compact
  def __call__(self, x):
    p = self.plan
    width = p.out_features // 4
    y = nn.relu(self.norm(name='bn1')(conv2d(width, 1, dtype=self.dtype, name='conv1')(x)))
    y = conv2d(
      width, 3, stride=p.stride, rate=p.rate, dtype=self.dtype, name='conv2', form=self.dilated_conv
    )(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.norm(name='bn3')(conv2d(p.out_features, 1, dtype=self.dtype, name='conv3')(y))
    return nn.relu(y + _shortcut(x, p, self.norm, self.dtype))


class BasicUnit(nn.Module):
  """3x3 (strided, dilated) -> 3x3 (dilated), BN after each conv, ReLU after the sum."""

  plan: UnitPlan
  norm: Any
  dtype: Any = jnp.float32
  dilated_conv: str = 'space_to_batch'

  @nn.compact
  def __call__(self, x):
    p = self.plan
    conv1 = conv2d(
      p.out_features,
      3,
      stride=p.stride,
      rate=p.rate,
      dtype=self.dtype,
      name='conv1',
      form=self.dilated_conv,
    )
    y = conv1(x)
    y = nn.relu(self.norm(name='bn1')(y))
    conv2 = conv2d(
      p.out_features, 3, rate=p.rate, dtype=self.dtype, name='conv2', form=self.dilated_conv
    )
    y = conv2(y)
    y = self.norm(name='bn2')(y)
    return nn.relu(y + _shortcut(x, p, self.norm, self.dtype))


def _shortcut(x, plan: UnitPlan, norm, dtype):
  if plan.projection:
    y = conv2d(plan.out_features, 1, stride=plan.stride, dtype=dtype, name='downsample_conv')(x)
    return norm(name='downsample_bn')(y)
  return x[:, :: plan.stride, :: plan.stride, :]


class ResNet(nn.Module):
  """ResNet v1 trunk; returns {'stage1'..'stageK'} features (+ 'logits' with a classifier).

  `num_classes` adds global average pooling and a dense classifier named `fc` (ImageNet-style),
  used for parameter counts and for importing complete classification checkpoints.
  """

  block: str = 'bottleneck'
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  stem_width: int = 64
  stem: str = 'standard'  # 'standard' (7x7) or 'deep' (three 3x3, ResNet-C / resnet_v1c)
  stem_pool: bool = True
  layout: str = 'torchvision'
  output_stride: int = 32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  freeze_bn: bool = False
  num_classes: int | None = None
  dtype: Any = jnp.float32
  dilated_conv: str = 'space_to_batch'  # how dilated 3x3 convs compute (models/dilated.py)

  def __post_init__(self):
    dilated.check_form(self.dilated_conv, 'ResNet')
    # Bad options fail at construction rather than deep inside init.
    if self.stem not in STEMS:
      raise ValueError(f'ResNet stem={self.stem!r} is unknown; expected one of {STEMS}.')
    if self.stem_width % 2 and self.stem == 'deep':
      raise ValueError(f'ResNet stem_width={self.stem_width} must be even for the deep stem.')
    if not 0.0 <= self.bn_momentum < 1.0 or self.bn_epsilon <= 0:
      raise ValueError(
        f'ResNet needs 0 <= bn_momentum < 1 and bn_epsilon > 0, got '
        f'{self.bn_momentum}, {self.bn_epsilon}.'
      )
    self.plans()
    super().__post_init__()

  def plans(self) -> list[UnitPlan]:
    return plan_units(
      block=self.block,
      stage_sizes=self.stage_sizes,
      base_width=self.base_width,
      stem_width=self.stem_width,
      layout=self.layout,
      output_stride=self.output_stride,
      stem_pool=self.stem_pool,
    )

  @nn.compact
  def __call__(self, x, *, train: bool):
    """x: [N,H,W,3] -> dict of [N,h,w,C] features in self.dtype."""
    norm = batch_norm(
      train=train,
      frozen=self.freeze_bn,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
    )
    x = x.astype(self.dtype)
    if self.stem == 'standard':
      x = conv2d(self.stem_width, 7, stride=2, dtype=self.dtype, name='conv1')(x)
      x = nn.relu(norm(name='bn1')(x))
    else:
      widths = (self.stem_width // 2, self.stem_width // 2, self.stem_width)
      for k, width in enumerate(widths, start=1):
        stride = 2 if k == 1 else 1
        x = conv2d(width, 3, stride=stride, dtype=self.dtype, name=f'stem_conv{k}')(x)
        x = nn.relu(norm(name=f'stem_bn{k}')(x))
    if self.stem_pool:
      padding = 'SAME' if self.layout == 'slim' else ((1, 1), (1, 1))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=padding)
    unit_cls = BottleneckUnit if self.block == 'bottleneck' else BasicUnit
    features = {}
    for plan in self.plans():
      unit = unit_cls(
        plan, norm, self.dtype, self.dilated_conv, name=f'stage{plan.stage}_unit{plan.index}'
      )
      x = unit(x)
      features[f'stage{plan.stage}'] = x
    if self.num_classes is not None:
      pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))  # [N,C]
      features['logits'] = nn.Dense(self.num_classes, dtype=jnp.float32, name='fc')(pooled)
    return features
