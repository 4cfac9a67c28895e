"""Tests of the model registry and networks: shapes, strides, parameter counts, training."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from aaf_jax import models
from aaf_jax.models import pspnet, resnet


def tiny_cfg(name='pspnet', **overrides):
  """A network small enough to run forward and backward in well under a second."""
  cfg = models.default_config(name)
  cfg.update(
    dict(backbone='resnet10', base_width=8, stem_width=8, layout='torchvision', output_stride=8)
  )
  if name in ('pspnet', 'deeplabv3'):
    cfg.head_width = 16
  if name != 'pspnet':
    cfg.aspp_rates = (1, 2)
  cfg.update(overrides)
  return cfg


def init(model, shape):
  # The 'unsafe_rbg' key compiles init several times faster than threefry on CPU.
  key = jax.random.key(0, impl='unsafe_rbg')
  return jax.jit(lambda k: model.init(k, jnp.zeros(shape), train=False))(key)


def eval_shapes(model, shape, train=False):
  variables = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)
  )
  mutable = ['batch_stats'] if train else False
  out = jax.eval_shape(
    lambda v: model.apply(v, jnp.zeros(shape), train=train, mutable=mutable), variables
  )
  return variables, out[0] if train else out


def count(tree):
  return sum(math.prod(a.shape) for a in jax.tree.leaves(tree))


# --- the registry -------------------------------------------------------------------------


def test_unknown_name_lists_the_registered_ones():
  with pytest.raises(ValueError, match=r"'segformer'.*deeplabv2.*deeplabv3.*pspnet"):
    models.build_model(ml_collections.ConfigDict({'name': 'segformer'}), num_classes=3)


def test_unknown_field_is_named_with_the_accepted_ones():
  cfg = tiny_cfg()
  cfg.head_widht = 3
  with pytest.raises(ValueError, match=r"\['head_widht'\].*accepted.*head_width"):
    models.build_model(cfg, num_classes=3)


def test_bad_option_values_fail_at_build_time():
  with pytest.raises(ValueError, match='backbone'):
    models.build_model(tiny_cfg(backbone='resnet11'), num_classes=3)
  with pytest.raises(ValueError, match='layout'):
    models.build_model(tiny_cfg(layout='caffe'), num_classes=3)
  with pytest.raises(ValueError, match=r'output_stride=12.*\[4, 8, 16, 32\]'):
    models.build_model(tiny_cfg(output_stride=12), num_classes=3)
  with pytest.raises(ValueError, match=r'output_stride=32.*\[2, 4, 8, 16\]'):
    models.build_model(tiny_cfg(stem_pool=False, output_stride=32), num_classes=3)
  with pytest.raises(ValueError, match='stem'):
    models.build_model(tiny_cfg(stem='huge'), num_classes=3)


def test_trainer_fields_are_accepted_and_ignored():
  cfg = tiny_cfg(pretrained='/nowhere.msgpack', aux_weight=0.4)
  assert isinstance(models.build_model(cfg, num_classes=3), pspnet.PSPNet)


def test_check_input_size():
  cfg = tiny_cfg(output_stride=16)
  models.check_input_size(cfg, 16, 40)
  with pytest.raises(ValueError, match=r'width=15 \(crop 40x15\).*>= 16'):
    models.check_input_size(cfg, 40, 15)


def test_presets_build():
  for preset in models.PRESETS:
    cfg = models.get_preset(preset)
    assert models.build_model(cfg, num_classes=3).num_classes == 3
  with pytest.raises(ValueError, match='pspnet_tiny'):
    models.get_preset('nope')


# --- shapes and strides --------------------------------------------------------------------


@pytest.mark.parametrize('name', ['pspnet', 'deeplabv2', 'deeplabv3'])
@pytest.mark.parametrize('layout', ['torchvision', 'slim'])
@pytest.mark.parametrize('output_stride', [8, 16])
def test_logit_shapes(name, layout, output_stride):
  model = models.build_model(
    tiny_cfg(name, layout=layout, output_stride=output_stride, aux_head=True), num_classes=5
  )
  for h, w in ((33, 33), (48, 65)):
    variables, out = eval_shapes(model, (2, h, w, 3))
    expected = (2, -(-h // output_stride), -(-w // output_stride), 5)
    assert out['logits'].shape == expected
    assert out['aux_logits'].shape == expected
    assert out['logits'].dtype == jnp.float32
  assert set(variables['params']) == {'backbone', 'head', 'aux_head'}


def test_tiny_preset_runs_at_stride_4():
  model = models.build_model(models.get_preset('pspnet_tiny'), num_classes=4)
  variables, out = eval_shapes(model, (1, 96, 96, 3))
  assert out['logits'].shape == (1, 24, 24, 4)
  assert set(variables['params']) == {'backbone', 'head'}


@pytest.mark.parametrize('layout', ['torchvision', 'slim'])
@pytest.mark.parametrize(
  'output_stride,strides', [(32, (4, 8, 16, 32)), (16, (4, 8, 16, 16)), (8, (4, 8, 8, 8))]
)
def test_stage_strides(layout, output_stride, strides):
  """Stage outputs per layout: slim strides at the end of the previous stage."""
  net = resnet.ResNet(
    block='basic',
    stage_sizes=(2, 2, 2, 2),
    base_width=4,
    stem_width=4,
    layout=layout,
    output_stride=output_stride,
  )
  _, feats = eval_shapes(net, (1, 64, 64, 3))
  if layout == 'slim':
    strides = tuple(min(2 * s, output_stride) for s in strides[:3]) + strides[3:]
  assert tuple(64 // feats[f'stage{i}'].shape[1] for i in range(1, 5)) == strides


def test_deep_stem_and_no_pool():
  net = resnet.ResNet(
    block='basic',
    stage_sizes=(1, 1),
    base_width=4,
    stem_width=8,
    stem='deep',
    stem_pool=False,
    output_stride=4,
  )
  variables, feats = eval_shapes(net, (1, 32, 32, 3))
  assert feats['stage2'].shape == (1, 8, 8, 8)
  widths = [variables['params'][f'stem_conv{k}']['kernel'].shape[-1] for k in (1, 2, 3)]
  assert widths == [4, 4, 8]


def test_resnet101_shapes_at_stride_8():
  model = models.build_model(models.get_preset('pspnet_resnet101'), num_classes=21)
  variables, out = eval_shapes(model, (2, 321, 321, 3), train=True)
  assert out['logits'].shape == (2, 41, 41, 21)
  assert 'stage3_unit23' in variables['params']['backbone']


def test_dilation_rates_follow_slim_rule():
  """The unit that would have strided keeps the previous rate; later ones get the new one."""
  for layout in resnet.LAYOUTS:
    plans = resnet.plan_units(
      block='bottleneck',
      stage_sizes=(3, 4, 6, 3),
      base_width=64,
      stem_width=64,
      layout=layout,
      output_stride=8,
    )
    rates = {(p.stage, p.index): p.rate for p in plans}
    assert all(p.stride == 1 for p in plans if p.out_stride == 8 and p.stage >= 3)
    if layout == 'torchvision':
      assert rates[3, 1] == 1 and rates[3, 2] == 2 and rates[4, 1] == 2 and rates[4, 2] == 4
    else:
      assert rates[2, 4] == 1 and rates[3, 1] == 2 and rates[3, 6] == 2 and rates[4, 1] == 4


# --- parameter counts (published, with a 1000-class classifier) ------------------------------


@pytest.mark.parametrize(
  'backbone,expected',
  [('resnet18', 11_689_512), ('resnet50', 25_557_032), ('resnet101', 44_549_160)],
)
@pytest.mark.parametrize('layout', ['torchvision', 'slim'])
def test_parameter_counts(backbone, expected, layout):
  block, stage_sizes = resnet.BACKBONES[backbone]
  net = resnet.ResNet(block=block, stage_sizes=stage_sizes, layout=layout, num_classes=1000)
  variables, out = eval_shapes(net, (1, 224, 224, 3))
  assert count(variables['params']) == expected
  assert out['stage4'].shape[1:3] == (7, 7)


# --- training and numerics -----------------------------------------------------------------

IMAGES = jax.random.normal(jax.random.PRNGKey(1), (2, 33, 33, 3))
LABELS = jax.random.randint(jax.random.PRNGKey(2), (2, 5, 5), 0, 3)


@pytest.fixture(scope='module')
def psp_variables():
  """Variables of tiny_cfg('pspnet', aux_head=True); BN and dtype options do not change them."""
  return init(models.build_model(tiny_cfg(aux_head=True), num_classes=3), IMAGES.shape)


def _forward(model, variables, train):
  if train:
    return jax.jit(lambda v: model.apply(v, IMAGES, train=True, mutable=['batch_stats']))(variables)
  return jax.jit(lambda v: model.apply(v, IMAGES, train=False))(variables)


def _sgd_steps(model, variables, steps=3):
  tx = optax.sgd(0.05, momentum=0.9)

  @jax.jit
  def step(params, batch_stats, opt_state):
    def loss_fn(p):
      out, updates = model.apply(
        {'params': p, 'batch_stats': batch_stats}, IMAGES, train=True, mutable=['batch_stats']
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(out['logits'], LABELS).mean()
      if 'aux_logits' in out:
        loss += (
          0.4 * optax.softmax_cross_entropy_with_integer_labels(out['aux_logits'], LABELS).mean()
        )
      return loss, updates['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss

  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  losses = []
  for _ in range(steps):
    params, stats, opt_state, loss = step(params, stats, opt_state)
    losses.append(float(loss))
  return {'params': params, 'batch_stats': stats}, losses


def _changed(before, after):
  return [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))]


@pytest.mark.parametrize('name', ['pspnet', 'deeplabv2', 'deeplabv3'])
def test_sgd_steps_reduce_the_loss(name, psp_variables):
  model = models.build_model(tiny_cfg(name, aux_head=True), num_classes=3)
  variables = psp_variables if name == 'pspnet' else init(model, IMAGES.shape)
  new, losses = _sgd_steps(model, variables)
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
  for group in ('backbone', 'head', 'aux_head'):
    assert any(_changed(variables['params'][group], new['params'][group])), group
  assert any(_changed(variables['batch_stats'], new['batch_stats']))


def test_frozen_bn_keeps_batch_stats_and_trains_like_eval(psp_variables):
  model = models.build_model(tiny_cfg(aux_head=True, freeze_bn=True), num_classes=3)
  train_out, updates = _forward(model, psp_variables, train=True)
  assert not any(_changed(psp_variables['batch_stats'], updates['batch_stats']))
  eval_out = _forward(model, psp_variables, train=False)
  np.testing.assert_allclose(train_out['logits'], eval_out['logits'], rtol=1e-6, atol=1e-6)


def test_bn_momentum_and_epsilon_are_used(psp_variables):
  model = models.build_model(
    tiny_cfg(aux_head=True, bn_momentum=0.75, bn_epsilon=0.5), num_classes=3
  )
  _, updates = _forward(model, psp_variables, train=True)
  conv = psp_variables['params']['backbone']['conv1']['kernel']
  pre_bn = jax.lax.conv_general_dilated(
    IMAGES, conv, (2, 2), ((3, 3), (3, 3)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(
    updates['batch_stats']['backbone']['bn1']['mean'],
    0.25 * pre_bn.mean(axis=(0, 1, 2)),
    rtol=1e-4,
    atol=1e-5,
  )
  bn = model.make_backbone(parent=None)
  assert (bn.bn_momentum, bn.bn_epsilon) == (0.75, 0.5)
  # The epsilon where it is used: in evaluation, with the initial statistics (mean 0, variance
  # 1), bn1 divides the convolution by sqrt(1 + epsilon).
  _, captured = model.apply(
    psp_variables, IMAGES, train=False, capture_intermediates=True, mutable=['intermediates']
  )
  bn1 = captured['intermediates']['backbone']['bn1']['__call__'][0]
  np.testing.assert_allclose(bn1, pre_bn / np.sqrt(1.0 + 0.5), rtol=1e-4, atol=1e-5)


def test_head_bn_momentum_and_epsilon_are_the_heads_own(psp_variables):
  """Head BatchNorms follow head_bn_*, the backbone's bn_*: a step from the initial statistics
  (mean 0) moves each running mean by (1 - momentum) x the batch mean."""
  updates = {}
  for head_momentum in (0.5, 0.75):
    model = models.build_model(
      tiny_cfg(aux_head=True, bn_momentum=0.75, head_bn_momentum=head_momentum), num_classes=3
    )
    updates[head_momentum] = _forward(model, psp_variables, train=True)[1]['batch_stats']
  for part, bn, ratio in (
    ('backbone', 'bn1', 1.0),
    ('head', 'pool1_bn', 2.0),
    ('aux_head', 'bn', 2.0),
  ):
    means = [updates[m][part][bn]['mean'] for m in (0.5, 0.75)]
    np.testing.assert_allclose(means[0], ratio * means[1], rtol=1e-4, atol=1e-7, err_msg=part)
  logits = [
    _forward(models.build_model(tiny_cfg(head_bn_epsilon=eps), num_classes=3), psp_variables, False)
    for eps in (1e-5, 10.0)
  ]
  assert not np.allclose(logits[0]['logits'], logits[1]['logits'], atol=1e-3)


def test_tf1_glorot_head_init():
  """head_init='tf1_glorot': Glorot-uniform head kernels and classifier bias, as TF1's
  tf.get_variable default; 'he' keeps the zero bias."""
  classes = 64
  shape = (1, 33, 33, 3)
  glorot = init(models.build_model(tiny_cfg(head_init='tf1_glorot'), num_classes=classes), shape)
  he = init(models.build_model(tiny_cfg(), num_classes=classes), shape)
  bias = np.asarray(glorot['params']['head']['classifier']['bias'])
  limit = np.sqrt(3 / classes)
  assert np.abs(bias).max() <= limit and bias.std() == pytest.approx(limit / np.sqrt(3), rel=0.25)
  assert not np.asarray(he['params']['head']['classifier']['bias']).any()
  kernel = np.asarray(glorot['params']['head']['fuse_conv']['kernel'])  # [3,3,in,out]
  fan_in, fan_out = 9 * kernel.shape[2], 9 * kernel.shape[3]
  limit = np.sqrt(6 / (fan_in + fan_out))
  assert np.abs(kernel).max() <= limit
  assert kernel.std() == pytest.approx(limit / np.sqrt(3), rel=0.1)
  he_kernel = np.asarray(he['params']['head']['fuse_conv']['kernel'])
  assert he_kernel.std() == pytest.approx(np.sqrt(2 / fan_out), rel=0.1)  # He, fan out
  with pytest.raises(ValueError, match='head_init'):
    models.build_model(tiny_cfg(head_init='xavier'), num_classes=3)


def test_paper_preset_has_the_authors_batch_norm_and_head_init():
  cfg = models.get_preset('pspnet_resnet101')
  assert (cfg.bn_momentum, cfg.bn_epsilon) == (0.9997, 1e-3)
  assert (cfg.head_bn_momentum, cfg.head_bn_epsilon, cfg.head_init) == (0.99, 1e-3, 'tf1_glorot')


def test_bfloat16_gives_float32_logits_close_to_float32(psp_variables):
  ref_model = models.build_model(tiny_cfg(aux_head=True), num_classes=3)
  bf16_model = models.build_model(tiny_cfg(aux_head=True), num_classes=3, dtype=jnp.bfloat16)
  bf16_vars = jax.eval_shape(lambda: bf16_model.init(jax.random.PRNGKey(0), IMAGES, train=False))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(bf16_vars))
  ref = _forward(ref_model, psp_variables, train=False)
  out = _forward(bf16_model, psp_variables, train=False)
  for key in ('logits', 'aux_logits'):
    assert out[key].dtype == jnp.float32
    scale = float(jnp.abs(ref[key]).max())
    np.testing.assert_allclose(out[key], ref[key], atol=0.05 * scale)
    assert not np.array_equal(out[key], ref[key])  # it did compute in bfloat16


def test_adaptive_pool_matches_pytorch_rule():
  x = np.arange(2 * 5 * 7 * 3, dtype=np.float32).reshape(2, 5, 7, 3)
  got = np.asarray(pspnet.adaptive_avg_pool(jnp.asarray(x), 3))
  for i in range(3):
    for j in range(3):
      r0, r1 = (i * 5) // 3, -(-((i + 1) * 5) // 3)
      c0, c1 = (j * 7) // 3, -(-((j + 1) * 7) // 3)
      np.testing.assert_allclose(got[:, i, j], x[:, r0:r1, c0:c1].mean(axis=(1, 2)), rtol=1e-6)
  assert pspnet.adaptive_avg_pool(jnp.asarray(x), 6).shape == (2, 6, 6, 3)  # more bins than rows


def test_aux_head_needs_matching_strides():
  with pytest.raises(ValueError, match='aux_head'):
    models.build_model(tiny_cfg(aux_head=True, output_stride=32), num_classes=3)
