"""The dilated (atrous) k x k convolution, in one place, in either of two forms.

Both forms compute the same function with the same parameters ('kernel' [k,k,C,F], 'bias' [F]
when asked for, both float32 by default) under the same module name, so checkpoints and
imported weights do not care which one ran:

- 'native': `nn.Conv(kernel_dilation=rate)`, one `lax.conv_general_dilated` with a dilated
  kernel. Its backward runs as a slow indexed implicit-GEMM kernel in cuDNN (issue 22).
- 'space_to_batch': the rewrite TensorFlow's `atrous_conv2d` uses. Output pixel (i, j) of a
  rate-r conv reads input pixels whose rows are all congruent to i modulo r (columns likewise),
  so splitting the padded input into its r x r phase sub-grids, stacked on the batch axis,
  turns the dilated conv into one dense (undilated) conv; interleaving the phases back gives
  the output. Only reshapes, transposes, pads and slices surround the dense conv, so its
  gradients are the dense conv's.

Padding is symmetric, rate * (k - 1) / 2 on each side (odd k), as everywhere in the models.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from aaf_jax.presets import DILATED_CONV_FORMS

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
_zeros = nn.initializers.zeros_init()


def check_form(form, where='model') -> None:
  if form not in DILATED_CONV_FORMS:
    raise ValueError(
      f'{where} dilated_conv={form!r} is unknown; expected one of {DILATED_CONV_FORMS}.'
    )


def space_to_batch_conv(x, kernel, rate: int):
  """x: [N,H,W,C], kernel: [k,k,C,F] (k odd) -> [N,H,W,F], the stride-1 conv with dilation
  `rate` and symmetric padding rate * (k - 1) / 2, computed as one dense conv on the r x r
  phase sub-grids of the padded input."""
  k = kernel.shape[0]
  if kernel.shape[0] != kernel.shape[1] or k % 2 == 0:
    raise ValueError(f'space_to_batch_conv needs a square odd kernel, got {kernel.shape[:2]}.')
  n, h, w, c = x.shape
  pad = rate * (k - 1) // 2
  # Phase s of an axis holds padded positions s, s + r, s + 2r, ...; output row q * r + s reads
  # rows q .. q + k - 1 of phase s. Output rows reach ceil(h / r) * r, so pad the end so that
  # every phase is ceil(h / r) + k - 1 long. When r > h, phases h.. feed no output: skip them.
  cells_h, cells_w = -(-h // rate), -(-w // rate)
  phases_h, phases_w = min(rate, h), min(rate, w)
  x = jnp.pad(x, ((0, 0), (pad, pad + cells_h * rate - h), (pad, pad + cells_w * rate - w), (0, 0)))
  rows, cols = cells_h + k - 1, cells_w + k - 1
  x = x.reshape(n, rows, rate, cols, rate, c)[:, :, :phases_h, :, :phases_w]
  x = x.transpose(2, 4, 0, 1, 3, 5).reshape(phases_h * phases_w * n, rows, cols, c)
  y = lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=_DIMENSIONS)
  f = y.shape[-1]
  y = y.reshape(phases_h, phases_w, n, cells_h, cells_w, f).transpose(2, 3, 0, 4, 1, 5)
  return y.reshape(n, cells_h * phases_h, cells_w * phases_w, f)[:, :h, :w]


class SpaceToBatchConv(nn.Module):
  """`nn.Conv(features, (k, k), kernel_dilation=rate, padding=rate * (k - 1) / 2)` computed by
  `space_to_batch_conv`: the same parameters, initialisers and dtype promotion."""

  features: int
  kernel_size: int
  rate: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init
  bias_init: Any = _zeros

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param(
      'kernel', self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype
    )
    bias = (
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = space_to_batch_conv(x, kernel, self.rate)
    if bias is not None:
      y = y + bias.reshape((1, 1, 1, -1))
    return y


def conv(
  features,
  kernel,
  *,
  stride=1,
  rate=1,
  use_bias=False,
  dtype,
  name,
  kernel_init=nn.linear.default_kernel_init,
  bias_init=_zeros,
  form='space_to_batch',
):
  """k x k conv with symmetric padding rate * (k - 1) / 2 and float32 params. A dilated conv
  (rate > 1, k > 1) runs in `form`; every other conv is a plain `nn.Conv` either way."""
  check_form(form)
  shared = dict(
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=kernel_init,
    bias_init=bias_init,
    name=name,
  )
  if form == 'space_to_batch' and rate > 1 and kernel > 1:
    if stride != 1:
      raise ValueError(
        f'conv {name!r}: dilated_conv=space_to_batch supports stride 1 only with rate > 1, '
        f'got stride={stride}, rate={rate}; use dilated_conv=native.'
      )
    if kernel % 2 == 0:
      raise ValueError(
        f'conv {name!r}: dilated_conv=space_to_batch needs an odd kernel, got {kernel}.'
      )
    return SpaceToBatchConv(features, kernel, rate, **shared)
  pad = rate * (kernel - 1) // 2
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=stride,
    kernel_dilation=rate,
    padding=((pad, pad), (pad, pad)),
    **shared,
  )
