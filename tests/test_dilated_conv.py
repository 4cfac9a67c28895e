"""The space-to-batch dilated conv against the native one: same params, outputs and gradients."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from aaf_jax import models, presets, run_record, same_run, validation
from aaf_jax.models import dilated, resnet
from configs import common as configs_common

_PROPS = hypothesis.settings(max_examples=8, deadline=None, derandomize=True)


def _both_forms(features, rate, *, use_bias, dtype=jnp.float32, kernel_init=None):
  extra = {'kernel_init': kernel_init} if kernel_init else {}
  make = lambda form: dilated.conv(  # noqa: E731
    features, 3, rate=rate, use_bias=use_bias, dtype=dtype, name='c', form=form, **extra
  )
  return make('native'), make('space_to_batch')


def _value_and_grads(module, params, x):
  def loss(p, x):
    y = module.apply({'params': p}, x)
    # A weighted sum, so that every output pixel's gradient differs.
    return jnp.sum(y.astype(jnp.float32) * jnp.cos(jnp.arange(y.size).reshape(y.shape)))

  y = module.apply({'params': params}, x)
  grads = jax.grad(loss, argnums=(0, 1))(params, x)
  return y, grads


@_PROPS
@hypothesis.given(
  h=st.integers(1, 13),
  w=st.integers(1, 13),
  rate=st.sampled_from([2, 3, 4, 6, 24]),
  use_bias=st.booleans(),
  seed=st.integers(0, 2**31 - 1),
)
def test_space_to_batch_equals_native_forward_and_gradients(h, w, rate, use_bias, seed):
  # Any size, divisible by the rate or not, and rates beyond the map (most taps in the padding).
  native, s2b = _both_forms(5, rate, use_bias=use_bias)
  kx, kp, kb = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (2, h, w, 3))
  params = native.init(kp, x)['params']
  if use_bias:
    params = {**params, 'bias': jax.random.normal(kb, params['bias'].shape)}
  y_native, g_native = _value_and_grads(native, params, x)
  y_s2b, g_s2b = _value_and_grads(s2b, params, x)
  assert y_s2b.shape == y_native.shape == (2, h, w, 5)
  np.testing.assert_allclose(y_s2b, y_native, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_s2b), jax.tree.leaves(g_native), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_space_to_batch_pure_function_matches_lax_dilated_conv_for_kernel_5():
  x = jax.random.normal(jax.random.key(0), (1, 11, 7, 2))
  kernel = jax.random.normal(jax.random.key(1), (5, 5, 2, 3))
  want = jax.lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    ((6, 6), (6, 6)),
    rhs_dilation=(3, 3),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  np.testing.assert_allclose(dilated.space_to_batch_conv(x, kernel, 3), want, rtol=1e-5, atol=1e-5)


def test_same_parameter_tree_and_initial_values_in_either_form():
  x = jnp.zeros((1, 6, 6, 4))
  native, s2b = _both_forms(8, 2, use_bias=True, kernel_init=jax.nn.initializers.normal(0.01))
  p_native = native.init(jax.random.key(3), x)
  p_s2b = s2b.init(jax.random.key(3), x)
  assert jax.tree.structure(p_native) == jax.tree.structure(p_s2b)
  for a, b in zip(jax.tree.leaves(p_native), jax.tree.leaves(p_s2b), strict=True):
    assert a.dtype == b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)


def test_bfloat16_compute_with_float32_params_as_nn_conv():
  native, s2b = _both_forms(8, 2, use_bias=True, dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 9, 7, 4))
  params = native.init(jax.random.key(1), x)['params']
  y_native = native.apply({'params': params}, x)
  y_s2b = s2b.apply({'params': params}, x)
  assert y_s2b.dtype == y_native.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    y_s2b.astype(jnp.float32), y_native.astype(jnp.float32), rtol=2e-2, atol=2e-2
  )


def test_strided_dilated_conv_is_refused_in_space_to_batch_form():
  with pytest.raises(ValueError, match=r'stride=2, rate=2.*dilated_conv=native'):
    dilated.conv(4, 3, stride=2, rate=2, dtype=jnp.float32, name='c', form='space_to_batch')
  # The native form and undilated strided convs are unaffected.
  dilated.conv(4, 3, stride=2, rate=2, dtype=jnp.float32, name='c', form='native')
  dilated.conv(4, 3, stride=2, rate=1, dtype=jnp.float32, name='c', form='space_to_batch')


@pytest.mark.parametrize('layout', resnet.LAYOUTS)
@pytest.mark.parametrize('output_stride', [4, 8, 16])
@pytest.mark.parametrize('block', resnet.BLOCKS)
def test_every_dilated_unit_has_stride_one(layout, output_stride, block):
  # Why the space-to-batch form needs no strided case: the backbones never stride a dilated conv.
  plans = resnet.plan_units(
    block=block,
    stage_sizes=(2, 2, 3, 2),
    base_width=8,
    stem_width=8,
    layout=layout,
    output_stride=output_stride,
  )
  assert any(p.rate > 1 for p in plans) == (output_stride < 32)
  assert all(p.stride == 1 for p in plans if p.rate > 1)


def _tiny(name, form, **overrides):
  cfg = models.default_config(name)
  cfg.update(dict(backbone='resnet10', base_width=8, stem_width=8, layout='slim', output_stride=8))
  if name in ('pspnet', 'deeplabv3'):
    cfg.head_width = 16
  cfg.update(dilated_conv=form, **overrides)
  return models.build_model(cfg, num_classes=3)


@pytest.mark.slow  # whole networks and their gradients, op by op, twice
@pytest.mark.parametrize(
  'name, overrides',
  [
    ('pspnet', dict(aux_head=True)),
    ('deeplabv2', dict(aspp_rates=(6, 24))),  # rate 24 on a 5x5 map
    ('deeplabv3', dict(aspp_rates=(2, 3))),
  ],
)
def test_networks_give_the_same_outputs_and_gradients_in_either_form(name, overrides):
  # 36 px: the stride-8 map is 5x5, divisible by none of the rates (2, 4 in the backbone).
  x = jax.random.normal(jax.random.key(0), (1, 36, 36, 3))
  native, s2b = _tiny(name, 'native', **overrides), _tiny(name, 'space_to_batch', **overrides)
  v_native = native.init(jax.random.key(1), x, train=False)
  v_s2b = s2b.init(jax.random.key(1), x, train=False)
  assert jax.tree.structure(v_native) == jax.tree.structure(v_s2b)
  for a, b in zip(jax.tree.leaves(v_native), jax.tree.leaves(v_s2b), strict=True):
    np.testing.assert_array_equal(a, b)

  def loss(params, model):
    out = model.apply({**v_native, 'params': params}, x, train=False)
    return sum(jnp.sum(jnp.sin(o)) for o in out.values()), out

  (l_native, o_native), g_native = jax.value_and_grad(loss, has_aux=True)(
    v_native['params'], native
  )
  (l_s2b, o_s2b), g_s2b = jax.value_and_grad(loss, has_aux=True)(v_native['params'], s2b)
  for k in o_native:
    np.testing.assert_allclose(o_s2b[k], o_native[k], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(l_s2b, l_native, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(g_s2b), jax.tree.leaves(g_native), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_default_form_is_the_documented_one_everywhere():
  assert presets.DILATED_CONV_FORMS[0] == 'space_to_batch'
  for name in presets.NETWORK_OPTIONS:
    assert models.option_defaults(name)['dilated_conv'] == 'space_to_batch'
  for preset in ('pspnet_resnet101', 'deeplabv2_resnet101', 'deeplabv3_resnet101'):
    assert configs_common.base_config('aaf', preset).model.dilated_conv == 'space_to_batch'
  # The CPU-sized preset of the main job keeps the form that is faster on the CPU.
  assert configs_common.base_config('aaf', 'pspnet_tiny').model.dilated_conv == 'native'


def test_unknown_form_is_refused_naming_the_key():
  cfg = ml_collections.ConfigDict(dict(models.default_config('pspnet'), dilated_conv='winograd'))
  with pytest.raises(ValueError, match=r"dilated_conv='winograd'.*'space_to_batch', 'native'"):
    models.build_model(cfg, num_classes=3)
  config = configs_common.base_config('aaf', 'pspnet_tiny')
  config.model.dilated_conv = 'winograd'
  with pytest.raises(validation.ConfigError, match=r'config\.model\.dilated_conv'):
    validation.validate(config)


def test_checkpoints_of_either_form_or_older_than_the_field_are_accepted():
  # The field says how, not what: a resumed run, an evaluation or an init checkpoint may differ
  # in it, or come from before it existed.
  saved = {'model.backbone': 'resnet10', 'loss.margin': 3.0}
  current = {**saved, 'model.dilated_conv': 'native'}
  assert run_record.differences(saved, current) == []
  fields = same_run.network_fields(current)
  assert 'model.backbone' in fields and 'model.dilated_conv' not in fields
  assert run_record.differences(saved, current, fields) == []
  model = {'backbone': 'resnet10'}
  with_field = ml_collections.ConfigDict({'model': {**model, 'dilated_conv': 'native'}})
  assert run_record.fingerprint(with_field) == run_record.fingerprint({'model': model})
