"""The segmentation network shell: ResNet backbone + a head (+ an optional auxiliary head).

Subclasses (PSPNet, DeepLab v2/v3) add their head options as fields and build the head in
`make_head`. Top-level parameter subtrees are `backbone`, `head` and `aux_head`, the names the
trainer uses for its learning-rate groups.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from aaf_jax import presets
from aaf_jax.models import dilated, resnet

HEAD_INITS = presets.HEAD_INITS  # what `head_init` can be, and why: see aaf_jax/presets.py


def _tf1_glorot_bias(key, shape, dtype=jnp.float32):
  """TF1's Glorot uniform for a 1-D variable, whose fan in and fan out are both its length."""
  limit = (3.0 / shape[0]) ** 0.5
  return jax.random.uniform(key, shape, dtype, -limit, limit)


def conv(features, kernel, *, rate=1, dtype, name, init='he', form='space_to_batch'):
  """Stride-1 conv without bias (a BN follows), 'same' size, float32 parameters; He init, or
  Glorot uniform for init='tf1_glorot'; dilated, it computes in `form` (models/dilated.py)."""
  kernel_init = {} if init == 'he' else {'kernel_init': nn.initializers.glorot_uniform()}
  return resnet.conv2d(
    features, kernel, rate=rate, dtype=dtype, name=name, form=form, **kernel_init
  )


def classifier(num_classes, *, dtype, name='classifier', init='he'):
  """The final 1x1 conv to class logits, with bias: N(0, 0.01) kernel and zero bias as in
  PSPNet/DeepLab, or Glorot uniform kernel and bias for init='tf1_glorot'."""
  inits = dict(kernel_init=nn.initializers.normal(0.01), bias_init=nn.initializers.zeros)
  if init == 'tf1_glorot':
    inits = dict(kernel_init=nn.initializers.glorot_uniform(), bias_init=_tf1_glorot_bias)
  return nn.Conv(num_classes, (1, 1), dtype=dtype, param_dtype=jnp.float32, name=name, **inits)


class AuxHead(nn.Module):
  """PSPNet's deep-supervision head: 3x3 conv + BN + ReLU (+ dropout) + 1x1 classifier."""

  num_classes: int
  width: int
  dropout: float
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = nn.relu(self.norm(name='bn')(conv(self.width, 3, dtype=self.dtype, name='conv')(x)))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return classifier(self.num_classes, dtype=self.dtype)(x)


class Segmenter(nn.Module):
  """Backbone options shared by every registered network.

  `freeze_bn` makes every BatchNorm (backbone and heads) use its running statistics in
  training too; its scale and offset stay trainable. `bn_momentum`/`bn_epsilon` set the
  backbone's BatchNorms, `head_bn_momentum`/`head_bn_epsilon` the heads' (the authors' PSPNet
  uses 0.9997 and 0.99, both with epsilon 1e-3). `dropout` > 0 needs
  `rngs={'dropout': key}` in `apply` when training.
  """

  num_classes: int
  backbone: str = 'resnet101'
  layout: str = 'slim'
  output_stride: int = 8
  base_width: int = 64
  stem_width: int = 64
  stem: str = 'standard'
  stem_pool: bool = True
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  head_bn_momentum: float = 0.9
  head_bn_epsilon: float = 1e-5
  freeze_bn: bool = False
  dropout: float = 0.0
  aux_head: bool = False
  aux_width: int = 256
  dilated_conv: str = 'space_to_batch'  # how dilated convs compute: presets.DILATED_CONV_FORMS
  dtype: Any = jnp.float32

  def __post_init__(self):
    dilated.check_form(self.dilated_conv)
    if self.backbone not in resnet.BACKBONES:
      raise ValueError(
        f'model backbone={self.backbone!r} is unknown; expected one of {sorted(resnet.BACKBONES)}.'
      )
    if self.num_classes < 1:
      raise ValueError(f'num_classes must be positive, got {self.num_classes}.')
    if not 0.0 <= self.head_bn_momentum < 1.0 or self.head_bn_epsilon <= 0:
      raise ValueError(
        f'model head_bn_momentum={self.head_bn_momentum}, head_bn_epsilon='
        f'{self.head_bn_epsilon}: expected 0 <= momentum < 1 and epsilon > 0.'
      )
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'model dropout={self.dropout} must be in [0, 1).')
    trunk = self.make_backbone(parent=None)  # validates the backbone options now
    if self.aux_head:
      plans = trunk.plans()
      if plans[-1].stage < 2:
        raise ValueError('model aux_head=True needs a backbone with at least two stages.')
      aux_stride = [p.out_stride for p in plans if p.stage == plans[-1].stage - 1][-1]
      if aux_stride != plans[-1].out_stride:
        raise ValueError(
          f'model aux_head=True: stage {plans[-1].stage - 1} runs at stride '
          f'{aux_stride} but the output at {plans[-1].out_stride}; use an '
          'output_stride at which both match (8 or 16 with the standard stem).'
        )
    super().__post_init__()

  def make_backbone(self, **module_kwargs) -> resnet.ResNet:
    block, stage_sizes = resnet.BACKBONES[self.backbone]
    return resnet.ResNet(
      block=block,
      stage_sizes=stage_sizes,
      base_width=self.base_width,
      stem_width=self.stem_width,
      stem=self.stem,
      stem_pool=self.stem_pool,
      layout=self.layout,
      output_stride=self.output_stride,
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      freeze_bn=self.freeze_bn,
      dtype=self.dtype,
      dilated_conv=self.dilated_conv,
      **module_kwargs,
    )

  def make_head(self, norm) -> nn.Module:
    """The head module, named 'head': features [N,h,w,C] -> logits [N,h,w,classes]."""
    raise NotImplementedError(f'{type(self).__name__} must define make_head.')

  @nn.compact
  def __call__(self, images, *, train: bool):
    """images: [N,H,W,3] float32 -> {'logits': [N,h,w,K] float32, ('aux_logits')}."""
    norm = resnet.batch_norm(
      train=train,
      frozen=self.freeze_bn,
      momentum=self.head_bn_momentum,
      epsilon=self.head_bn_epsilon,
      dtype=self.dtype,
    )  # the heads'; the backbone builds its own from bn_momentum, bn_epsilon
    features = self.make_backbone(name='backbone')(images, train=train)
    last = max(k for k in features if k.startswith('stage'))
    outputs = {'logits': self.make_head(norm)(features[last], train=train).astype(jnp.float32)}
    if self.aux_head:
      penultimate = f'stage{int(last[len("stage") :]) - 1}'
      aux = AuxHead(
        self.num_classes, self.aux_width, self.dropout, norm, self.dtype, name='aux_head'
      )
      outputs['aux_logits'] = aux(features[penultimate], train=train).astype(jnp.float32)
    return outputs
