"""Tests of pretrained-weight import: name mapping, errors, files, and equivalence with the
reference implementations (TF-slim here; torchvision and timm where torch is installed)."""

import os

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from aaf_jax import errors, models, weights
from aaf_jax.models import resnet

_RNG = np.random.default_rng(0)


def rel_err(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(got - ref).max() / np.abs(ref).max())


def shapes_of(net, size=64):
  return jax.eval_shape(
    lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False)
  )


def random_like(tree):
  """Numpy values for a tree of ShapeDtypeStructs; positive for BN variances."""
  flat = flax.traverse_util.flatten_dict(dict(tree))
  return flax.traverse_util.unflatten_dict(
    {
      k: (
        _RNG.uniform(0.5, 2.0, s.shape) if k[-1] == 'var' else _RNG.normal(0.0, 0.5, s.shape)
      ).astype(np.float32)
      for k, s in flat.items()
    }
  )


def to_torch_names(variables):
  """The inverse of the torch import: our backbone variables as a torchvision state dict."""
  out = {}
  for key, value in flax.traverse_util.flatten_dict(dict(variables)).items():
    path = key[1:]
    value = np.asarray(value)
    if path[-1] == 'kernel':
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    out[weights.source_name(path, 'torch')] = np.ascontiguousarray(value)
  return out


SMALL = dict(block='bottleneck', stage_sizes=(2, 1, 2, 1), base_width=4, stem_width=8)


# --- names -----------------------------------------------------------------------------------


def test_names_follow_the_published_checkpoints():
  """Spot checks against names in torchvision's and TF-slim's resnet checkpoints."""
  cases = {
    ('conv1', 'kernel'): ('conv1.weight', 'resnet_v1_50/conv1/weights'),
    ('bn1', 'mean'): ('bn1.running_mean', 'resnet_v1_50/conv1/BatchNorm/moving_mean'),
    ('stage1_unit1', 'downsample_conv', 'kernel'): (
      'layer1.0.downsample.0.weight',
      'resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut/weights',
    ),
    ('stage1_unit1', 'downsample_bn', 'scale'): (
      'layer1.0.downsample.1.weight',
      'resnet_v1_50/block1/unit_1/bottleneck_v1/shortcut/BatchNorm/gamma',
    ),
    ('stage3_unit6', 'bn3', 'var'): (
      'layer3.5.bn3.running_var',
      'resnet_v1_50/block3/unit_6/bottleneck_v1/conv3/BatchNorm/moving_variance',
    ),
    ('stage4_unit3', 'conv2', 'kernel'): (
      'layer4.2.conv2.weight',
      'resnet_v1_50/block4/unit_3/bottleneck_v1/conv2/weights',
    ),
    ('fc', 'bias'): ('fc.bias', 'resnet_v1_50/logits/biases'),
    ('stem_conv2', 'kernel'): ('conv1.3.weight', 'resnet_v1_50/conv1_2/weights'),
    ('stem_bn3', 'bias'): ('bn1.bias', 'resnet_v1_50/conv1_3/BatchNorm/beta'),
  }
  for path, (torch_name, slim_name) in cases.items():
    assert weights.source_name(path, 'torch') == torch_name
    assert weights.source_name(path, 'slim', 'resnet_v1_50') == slim_name


def test_resnet50_maps_onto_267_torchvision_tensors():
  """torchvision's resnet50 state dict has 320 entries, 53 of them num_batches_tracked."""
  net = resnet.ResNet(block='bottleneck', stage_sizes=(3, 4, 6, 3), num_classes=1000)
  names = {
    weights.source_name(k[1:], 'torch')
    for k in flax.traverse_util.flatten_dict(dict(shapes_of(net)))
  }
  assert len(names) == 267
  assert {'layer2.0.downsample.0.weight', 'layer4.2.bn3.running_mean', 'fc.weight'} <= names
  assert 'layer2.1.downsample.0.weight' not in names


# --- safetensors round trip and errors (no torch needed) ---------------------------------------


@pytest.fixture
def torch_file(tmp_path):
  """A torchvision-named .safetensors of a small ResNet, and the variables it holds."""
  net = resnet.ResNet(**SMALL, num_classes=7)
  variables = random_like(shapes_of(net))
  state = to_torch_names(variables)
  state['bn1.num_batches_tracked'] = np.array(3, np.int64)
  path = str(tmp_path / 'small.safetensors')
  safetensors.numpy.save_file(state, path)
  return path, variables, state


def test_safetensors_import_restores_every_leaf(torch_file):
  path, variables, _ = torch_file
  shapes = shapes_of(resnet.ResNet(**SMALL, num_classes=7))
  got = weights.convert(weights.read_checkpoint(path, 'safetensors'), shapes, source='torch')
  jax.tree.map(np.testing.assert_array_equal, got, variables)


def test_unmatched_missing_and_misshapen_tensors_are_listed(torch_file):
  path, _, state = torch_file
  shapes = shapes_of(resnet.ResNet(**SMALL))  # no classifier: fc.* is left over
  with pytest.raises(ValueError, match=r"2 source tensors match no backbone leaf.*'fc.bias'"):
    weights.convert(state, shapes, source='torch')
  assert weights.convert(state, shapes, source='torch', skip=('fc',))
  broken = dict(state)
  del broken['layer3.0.bn2.running_var']
  broken['layer1.0.conv2.weight'] = broken['layer1.0.conv2.weight'][:, :, :1]
  with pytest.raises(ValueError) as err:
    weights.convert(broken, shapes, source='torch', skip=('fc',))
  assert 'stage3_unit1/bn2/var (as layer3.0.bn2.running_var)' in str(err.value)
  assert 'layer1.0.conv2.weight: (4, 4, 1, 3) -> (1, 3, 4, 4), expected (3, 3, 4, 4)' in str(
    err.value
  )


def _segmenter(layout='torchvision'):
  cfg = models.default_config('pspnet')
  cfg.update(
    dict(
      backbone='resnet50', base_width=4, stem_width=8, head_width=8, layout=layout, output_stride=16
    )
  )
  model = models.build_model(cfg, num_classes=3)
  return model, random_like(shapes_of(model, 32))


def test_command_line_then_load_backbone(tmp_path):
  """safetensors -> msgpack by the command line -> merged into a PSPNet's variables."""
  net = resnet.ResNet(
    block='bottleneck', stage_sizes=(3, 4, 6, 3), base_width=4, stem_width=8, num_classes=1000
  )
  source = random_like(shapes_of(net))
  src_path, out_path = str(tmp_path / 'r50.safetensors'), str(tmp_path / 'r50.msgpack')
  safetensors.numpy.save_file(to_torch_names(source), src_path)
  weights.main(
    [
      f'--source={src_path}',
      '--model=resnet50',
      '--base_width=4',
      '--stem_width=8',
      '--fold_std=none',
      f'--output={out_path}',
    ]
  )
  _, fresh = _segmenter()
  merged = weights.load_backbone(out_path, fresh, layout='torchvision')
  del source['params']['fc']
  for collection in ('params', 'batch_stats'):
    jax.tree.map(np.testing.assert_array_equal, merged[collection]['backbone'], source[collection])
  jax.tree.map(np.testing.assert_array_equal, merged['params']['head'], fresh['params']['head'])
  assert set(merged['params']) == set(fresh['params']) == {'backbone', 'head'}
  with pytest.raises(ValueError, match="'torchvision'-layout.*layout='slim'"):
    weights.load_backbone(out_path, fresh, layout='slim')
  # A raw checkpoint is converted on the fly, with the same result.
  direct = weights.load_backbone(src_path, fresh, layout='torchvision', fold_std=None)
  jax.tree.map(np.testing.assert_array_equal, direct['params'], merged['params'])


def test_fold_std_scales_the_first_conv_input_channels(torch_file):
  path, variables, _ = torch_file
  shapes = shapes_of(resnet.ResNet(**SMALL, num_classes=7))
  got = weights.convert(
    weights.read_checkpoint(path, 'safetensors'),
    shapes,
    source='torch',
    fold_std=weights.IMAGENET_STD,
  )
  scale = 255.0 * np.asarray(weights.IMAGENET_STD, np.float32)
  np.testing.assert_allclose(
    got['params']['conv1']['kernel'] * scale[:, None],
    variables['params']['conv1']['kernel'],
    rtol=1e-6,
  )
  np.testing.assert_array_equal(
    got['params']['stage1_unit1']['conv1']['kernel'],
    variables['params']['stage1_unit1']['conv1']['kernel'],
  )


def test_load_backbone_rejects_a_file_of_another_shape(tmp_path):
  model, fresh = _segmenter()
  wrong = {c: dict(fresh[c]['backbone']) for c in ('params', 'batch_stats')}
  wrong['params']['conv1'] = {'kernel': np.zeros((7, 7, 3, 9), np.float32)}
  wrong['params']['extra'] = {'kernel': np.zeros((1,), np.float32)}
  path = str(tmp_path / 'wrong.msgpack')
  weights.save(path, wrong, layout='torchvision', source='test')
  with pytest.raises(
    ValueError,
    match=r"not in the model \['extra/kernel'\].*conv1/kernel: "
    r'file \(7, 7, 3, 9\), model \(7, 7, 3, 8\)',
  ):
    weights.load_backbone(path, fresh)
  del model


def test_missing_files_and_formats():
  with pytest.raises(FileNotFoundError, match='nowhere.msgpack'):
    weights.load_backbone('/nowhere.msgpack', _segmenter()[1])
  with pytest.raises(FileNotFoundError, match='nowhere.safetensors'):
    weights.read_checkpoint('/nowhere.safetensors', 'safetensors')
  with pytest.raises(ValueError, match='cannot tell the format'):
    weights.infer_format('/some/weights.npz')
  with pytest.raises(ValueError, match="'onnx'"):
    weights.read_checkpoint('/x', 'onnx')


def test_pth_without_torch_is_a_clear_error(tmp_path):
  try:
    import torch  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top

    pytest.skip('torch is installed')
  except ImportError:
    pass
  path = tmp_path / 'model.pth'
  path.write_bytes(b'not really')
  with pytest.raises(ImportError, match='needs torch.*safetensors') as info:
    weights.read_checkpoint(str(path), 'pth')
  assert isinstance(info.value, errors.UserError)  # launch.py reports it in one line


def _truncate(path):
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[: len(data) // 2])


def _garbage(path):
  open(path, 'wb').write(bytes(range(256)) * 8)


def _backbone_msgpack(path):
  _, fresh = _segmenter()
  weights.save(path, {c: fresh[c]['backbone'] for c in fresh}, layout='torchvision', source='test')


@pytest.mark.parametrize(
  'name, make, damage, expected',
  [
    ('b.msgpack', _backbone_msgpack, _truncate, 'cannot be read as a backbone .msgpack'),
    ('b.msgpack', _backbone_msgpack, _garbage, 'cannot be read as a backbone .msgpack'),
    (
      'b.msgpack',
      lambda p: open(p, 'wb').write(flax.serialization.msgpack_serialize({'step': 3})),
      lambda p: None,
      "not a backbone file written by aaf_jax.weights.save (top level: ['step'])",
    ),
    ('s.safetensors', lambda p: None, _garbage, 'cannot be read as a .safetensors file'),
    (
      's.safetensors',
      lambda p: safetensors.numpy.save_file({'w': np.zeros((64, 64), np.float32)}, p),
      _truncate,
      'cannot be read as a .safetensors file',
    ),
    (
      's.safetensors',
      lambda p: safetensors.numpy.save_file({'w': np.zeros((4,), np.float32)}, p),
      lambda p: None,
      "source tensors match no backbone leaf (pass skip= prefixes to leave them out): ['w']",
    ),
    ('m.ckpt.index', lambda p: None, _garbage, 'cannot be read as a TF checkpoint'),
  ],
)
def test_unreadable_truncated_or_foreign_weights_name_the_file(
  tmp_path, name, make, damage, expected
):
  """Each bad file is a WeightFileError (a user error) naming the file and what is wrong."""
  path = str(tmp_path / name)
  make(path)
  damage(path)
  source = path[: -len('.index')] if path.endswith('.index') else path
  with pytest.raises(weights.WeightFileError) as info:
    weights.load_backbone(source, _segmenter()[1], layout='torchvision')
  message = ' '.join(str(info.value).split())
  assert expected in message and os.path.basename(source) in message, message


# --- TF-slim equivalence ---------------------------------------------------------------------


def _slim_batch_norm():
  """slim's own batch_norm where TF's legacy layers load (they need a matching tf_keras), else
  an inference-mode stand-in with the same variable names and formula."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    from tensorflow.python.layers import normalization  # pylint: disable=g-import-not-at-top

    normalization.BatchNormalization  # noqa: B018 (does the legacy layer exist?)
    import tf_slim  # pylint: disable=g-import-not-at-top

    return tf_slim.batch_norm, 'tf_slim.batch_norm'
  except ImportError:
    pass

  def batch_norm(x, epsilon=1e-5, **_):
    with tf.compat.v1.variable_scope('BatchNorm'):
      c = x.shape[-1]
      get = tf.compat.v1.get_variable
      gamma = get('gamma', [c], initializer=tf.compat.v1.ones_initializer())
      beta = get('beta', [c], initializer=tf.compat.v1.zeros_initializer())
      mean = get('moving_mean', [c], initializer=tf.compat.v1.zeros_initializer(), trainable=False)
      var = get(
        'moving_variance', [c], initializer=tf.compat.v1.ones_initializer(), trainable=False
      )
      return tf.nn.batch_normalization(x, mean, var, beta, gamma, epsilon)

  return batch_norm, 'stand-in batch norm'


def run_slim(tmp_path, units, base_depths, output_strides, image, num_classes):
  """Random-weight slim resnet_v1 (random BN statistics too), saved as a checkpoint.

  Returns the checkpoint prefix and {output_stride: slim end_points as numpy}.
  """
  tf = pytest.importorskip('tensorflow')
  slim = pytest.importorskip('tf_slim')
  from tf_slim.nets import resnet_utils, resnet_v1  # pylint: disable=g-import-not-at-top

  batch_norm, _ = _slim_batch_norm()
  rng = np.random.default_rng(1)
  graph = tf.Graph()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float32, image.shape)
    blocks = [
      resnet_v1.resnet_v1_block(
        f'block{i + 1}', base_depth=d, num_units=n, stride=2 if i < len(units) - 1 else 1
      )
      for i, (n, d) in enumerate(zip(units, base_depths))
    ]
    arg_scope = resnet_utils.resnet_arg_scope()
    end_points = {}
    with slim.arg_scope(arg_scope), slim.arg_scope([slim.conv2d], normalizer_fn=batch_norm):
      for i, os_ in enumerate(output_strides):
        _, end_points[os_] = resnet_v1.resnet_v1(
          x,
          blocks,
          num_classes=num_classes,
          is_training=False,
          global_pool=True,
          output_stride=os_,
          reuse=i > 0,
          scope='resnet_v1_small',
        )
    assigns = []
    for v in tf.compat.v1.global_variables():
      shape = v.shape.as_list()
      if v.name.endswith(('moving_variance:0', 'gamma:0')):
        value = rng.uniform(0.5, 2.0, shape)
      elif v.name.endswith(('moving_mean:0', 'beta:0', 'biases:0')):
        value = rng.normal(0.0, 0.3, shape)
      else:
        continue  # conv weights keep slim's He initialisation
      assigns.append(tf.compat.v1.assign(v, value.astype(np.float32)))
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      sess.run(assigns)
      prefix = saver.save(sess, str(tmp_path / 'model.ckpt'))
      outputs = {os_: sess.run(end_points[os_], {x: image}) for os_ in output_strides}
  return prefix, outputs


def compare_with_slim(tmp_path, units, base_depths, output_strides, size=(64, 57)):
  """Max relative error of our slim-layout ResNet against slim, per block and output stride."""
  image = np.random.default_rng(2).normal(0, 50, (1, *size, 3)).astype(np.float32)
  prefix, slim_out = run_slim(tmp_path, units, base_depths, output_strides, image, 10)
  errors = {}
  for os_ in output_strides:
    net = resnet.ResNet(
      block='bottleneck',
      stage_sizes=units,
      base_width=base_depths[0],
      stem_width=64,
      layout='slim',
      output_stride=os_ or 32,
      num_classes=10,
    )
    variables = weights.convert(
      weights.read_checkpoint(prefix, 'slim'), shapes_of(net), source='slim', skip=('global_step',)
    )
    ours = jax.jit(net.apply, static_argnames='train')(variables, image, train=False)
    for k in range(1, len(units) + 1):
      ref = slim_out[os_][f'resnet_v1_small/block{k}']
      assert ours[f'stage{k}'].shape == ref.shape, (os_, k)
      errors[os_, f'block{k}'] = rel_err(ours[f'stage{k}'], ref)
    slim_logits = slim_out[os_]['resnet_v1_small/logits'][:, 0, 0]  # [N,1,1,K] -> [N,K]
    errors[os_, 'logits'] = rel_err(ours['logits'], slim_logits)
  return errors


def test_matches_tf_slim_resnet_v1(tmp_path):
  """Two units per block (so both the plain and the strided last unit are exercised), an even
  and an odd side (slim's 'SAME' max-pool pads them differently), output strides 8, 16, 32."""
  errors = compare_with_slim(tmp_path, (2, 2, 2, 2), (8, 16, 32, 64), (8, 16, None))
  print('slim batch norm:', _slim_batch_norm()[1], {k: f'{v:.1e}' for k, v in errors.items()})
  assert max(errors.values()) <= 1e-4, errors


@pytest.mark.skipif(
  not os.environ.get('AAF_SLOW_TESTS'),
  reason='full-size ResNet-50/101 against slim: set AAF_SLOW_TESTS=1',
)
@pytest.mark.parametrize('units', [(3, 4, 6, 3), (3, 4, 23, 3)], ids=['resnet50', 'resnet101'])
def test_matches_tf_slim_full_size(tmp_path, units):
  errors = compare_with_slim(tmp_path, units, (64, 128, 256, 512), (8, 16), size=(97, 96))
  print({k: f'{v:.2e}' for k, v in errors.items()})
  assert max(errors.values()) <= 1e-4, errors


# --- torchvision / timm equivalence (where torch is installed) -------------------------------


def _torch_reference(tmp_path, torch_model, image, stage_modules, suffix):
  """Randomise BN statistics, save the state dict, run the model with hooks on the stages."""
  torch = pytest.importorskip('torch')
  import safetensors.torch  # pylint: disable=g-import-not-at-top

  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in torch_model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 2.0, generator=gen)
        m.bias.normal_(0.0, 0.3, generator=gen)
        m.running_mean.normal_(0.0, 0.3, generator=gen)
        m.running_var.uniform_(0.5, 2.0, generator=gen)
  torch_model.eval()
  captured = {}
  for name, module in stage_modules.items():
    module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, out))
  with torch.no_grad():
    logits = torch_model(torch.from_numpy(image.transpose(0, 3, 1, 2).copy()))
  feats = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in captured.items()}
  state = {k: v.contiguous() for k, v in torch_model.state_dict().items()}
  path = str(tmp_path / f'model{suffix}')
  if suffix == '.safetensors':
    safetensors.torch.save_file(state, path)
  else:
    torch.save(state, path)
  return path, feats, logits.numpy()


def _compare_torch(net, path, feats, logits):
  variables = weights.convert(
    weights.read_checkpoint(path, weights.infer_format(path)), shapes_of(net), source='torch'
  )
  ours = jax.jit(net.apply, static_argnames='train')(variables, _TORCH_IMAGE, train=False)
  errors = {}
  for k, ref in feats.items():
    assert ours[k].shape == ref.shape, k
    errors[k] = rel_err(ours[k], ref)
  errors['logits'] = rel_err(ours['logits'], logits)
  print({k: f'{v:.1e}' for k, v in errors.items()})
  assert max(errors.values()) <= 1e-4, errors


_TORCH_IMAGE = np.random.default_rng(2).normal(0, 1, (1, 64, 57, 3)).astype(np.float32)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_matches_torchvision_resnet50(tmp_path, suffix, output_stride):
  torchvision = pytest.importorskip('torchvision')
  dilate = {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[
    output_stride
  ]
  model = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=dilate)
  stages = {f'stage{k}': getattr(model, f'layer{k}') for k in range(1, 5)}
  path, feats, logits = _torch_reference(tmp_path, model, _TORCH_IMAGE, stages, suffix)
  net = resnet.ResNet(
    block='bottleneck',
    stage_sizes=(3, 4, 6, 3),
    layout='torchvision',
    output_stride=output_stride,
    num_classes=1000,
  )
  _compare_torch(net, path, feats, logits)


def test_matches_timm_deep_stem_resnet50c(tmp_path):
  timm = pytest.importorskip('timm')
  model = timm.create_model('resnet50c', pretrained=False)
  stages = {f'stage{k}': getattr(model, f'layer{k}') for k in range(1, 5)}
  path, feats, logits = _torch_reference(tmp_path, model, _TORCH_IMAGE, stages, '.safetensors')
  net = resnet.ResNet(
    block='bottleneck',
    stage_sizes=(3, 4, 6, 3),
    stem='deep',
    layout='torchvision',
    num_classes=1000,
  )
  _compare_torch(net, path, feats, logits)
