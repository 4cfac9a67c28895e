"""DeepLab v2 and v3 heads (atrous spatial pyramid pooling) on a dilated ResNet."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from aaf_jax.models import common, dilated


class ASPPv2Head(nn.Module):
  """DeepLab v2: parallel 3x3 atrous convs straight to class logits, summed."""

  num_classes: int
  rates: Sequence[int]
  dtype: Any = jnp.float32
  dilated_conv: str = 'space_to_batch'

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train  # no BN or dropout in this head
    outs = [
      dilated.conv(
        self.num_classes,
        3,
        rate=r,
        use_bias=True,
        dtype=self.dtype,
        kernel_init=nn.initializers.normal(0.01),
        name=f'rate{r}_conv',
        form=self.dilated_conv,
      )(x)
      for r in self.rates
    ]
    return sum(outs[1:], outs[0])


class ASPPv3Head(nn.Module):
  """DeepLab v3: 1x1 conv, 3x3 atrous convs and image pooling, each to `width` with BN+ReLU;
  concat, 1x1 projection with BN+ReLU, dropout, 1x1 classifier."""

  num_classes: int
  width: int
  rates: Sequence[int]
  dropout: float
  norm: Any
  dtype: Any = jnp.float32
  dilated_conv: str = 'space_to_batch'

  @nn.compact
  def __call__(self, x, *, train: bool):
    n, h, w, _ = x.shape
    branches = [
      nn.relu(
        self.norm(name='conv1x1_bn')(
          common.conv(self.width, 1, dtype=self.dtype, name='conv1x1')(x)
        )
      )
    ]
    for r in self.rates:
      rate_conv = common.conv(
        self.width, 3, rate=r, dtype=self.dtype, name=f'rate{r}_conv', form=self.dilated_conv
      )
      y = rate_conv(x)
      branches.append(nn.relu(self.norm(name=f'rate{r}_bn')(y)))
    pooled = jnp.mean(x, axis=(1, 2), keepdims=True)  # [N,1,1,C]
    pooled = common.conv(self.width, 1, dtype=self.dtype, name='image_pool_conv')(pooled)
    pooled = nn.relu(self.norm(name='image_pool_bn')(pooled))
    branches.append(jnp.broadcast_to(pooled, (n, h, w, self.width)))
    y = jnp.concatenate(branches, axis=-1)
    y = common.conv(self.width, 1, dtype=self.dtype, name='project_conv')(y)
    y = nn.relu(self.norm(name='project_bn')(y))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return common.classifier(self.num_classes, dtype=self.dtype)(y)


def _check_rates(name, rates):
  if any(int(r) < 1 for r in rates) or len(set(rates)) != len(rates):
    raise ValueError(f'{name} aspp_rates={tuple(rates)} must be distinct positive integers.')


class DeepLabV2(common.Segmenter):
  """Dilated ResNet + DeepLab v2 ASPP (rates 6, 12, 18, 24 in the paper, at output stride 8)."""

  aspp_rates: Sequence[int] = (6, 12, 18, 24)

  def __post_init__(self):
    if not self.aspp_rates:
      raise ValueError('deeplabv2 aspp_rates must name at least one rate.')
    _check_rates('deeplabv2', self.aspp_rates)
    super().__post_init__()

  def make_head(self, norm):
    del norm
    return ASPPv2Head(
      self.num_classes, tuple(self.aspp_rates), self.dtype, self.dilated_conv, name='head'
    )


class DeepLabV3(common.Segmenter):
  """Dilated ResNet + DeepLab v3 ASPP.

  `aspp_rates=()` (default) means the paper's (6, 12, 18) at output stride 16, scaled by
  16 / output_stride (doubled at 8).
  """

  head_width: int = 256
  aspp_rates: Sequence[int] = ()

  def __post_init__(self):
    _check_rates('deeplabv3', self.aspp_rates)
    super().__post_init__()

  def rates(self) -> tuple[int, ...]:
    if self.aspp_rates:
      return tuple(self.aspp_rates)
    return tuple(max(1, r * 16 // self.output_stride) for r in (6, 12, 18))

  def make_head(self, norm):
    return ASPPv3Head(
      self.num_classes,
      self.head_width,
      self.rates(),
      self.dropout,
      norm,
      self.dtype,
      self.dilated_conv,
      name='head',
    )
