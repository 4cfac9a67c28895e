"""PSPNet (Zhao et al., CVPR 2017): pyramid pooling head on a dilated ResNet."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aaf_jax.models import common


def adaptive_avg_pool(x, bins: int):
  """PyTorch-style adaptive average pooling of [N,H,W,C] to [N,bins,bins,C].

  Bin i covers rows floor(i*H/bins) .. ceil((i+1)*H/bins) - 1 (bins may overlap when H is not a
  multiple, or when H < bins). Shapes are static, so the bins are plain slices; pooling rows
  then columns equals pooling each rectangle.
  """

  def edges(size):
    return [((i * size) // bins, -(-((i + 1) * size) // bins)) for i in range(bins)]

  rows = jnp.stack([x[:, a:b].mean(axis=1) for a, b in edges(x.shape[1])], axis=1)
  return jnp.stack([rows[:, :, a:b].mean(axis=2) for a, b in edges(x.shape[2])], axis=2)


class PSPHead(nn.Module):
  """Pyramid pooling (1x1 conv + BN + ReLU per bin, bilinear upsampling), concat with the
  features, 3x3 conv + BN + ReLU, dropout, 1x1 classifier."""

  num_classes: int
  width: int
  bins: Sequence[int]
  dropout: float
  norm: Any
  dtype: Any = jnp.float32
  init: str = 'he'

  @nn.compact
  def __call__(self, x, *, train: bool):
    n, h, w, c = x.shape
    branches = [x]
    for b in self.bins:
      y = adaptive_avg_pool(x, b)  # [N,b,b,C]
      y = common.conv(self.width, 1, dtype=self.dtype, name=f'pool{b}_conv', init=self.init)(y)
      y = nn.relu(self.norm(name=f'pool{b}_bn')(y))
      branches.append(jax.image.resize(y, (n, h, w, self.width), 'bilinear', antialias=False))
    y = jnp.concatenate(branches, axis=-1)
    fuse = common.conv(self.width, 3, dtype=self.dtype, name='fuse_conv', init=self.init)
    y = nn.relu(self.norm(name='fuse_bn')(fuse(y)))
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return common.classifier(self.num_classes, dtype=self.dtype, init=self.init)(y)


class PSPNet(common.Segmenter):
  """Dilated ResNet + pyramid pooling head. `head_width` is 512 in the paper; `head_init` is
  one of `common.HEAD_INITS`."""

  head_width: int = 512
  bins: Sequence[int] = (1, 2, 3, 6)
  head_init: str = 'he'

  def __post_init__(self):
    if self.head_init not in common.HEAD_INITS:
      raise ValueError(f'pspnet head_init={self.head_init!r}: expected one of {common.HEAD_INITS}.')
    if not self.bins or any(int(b) < 1 for b in self.bins) or len(set(self.bins)) != len(self.bins):
      raise ValueError(f'pspnet bins={tuple(self.bins)} must be distinct positive integers.')
    super().__post_init__()

  def make_head(self, norm):
    return PSPHead(
      self.num_classes,
      self.head_width,
      tuple(self.bins),
      self.dropout,
      norm,
      self.dtype,
      self.head_init,
      name='head',
    )
