"""Import of ImageNet-pretrained ResNet weights into the backbone of our networks.

Sources: a TF-slim checkpoint (`resnet_v1_50/101` and the like, read with
`tf.train.load_checkpoint`), or a torchvision/timm state dict as `.safetensors` (no torch needed)
or `.pth` (needs torch). Every tensor is matched by name to a leaf of the backbone's variables
and shape-checked; anything left over on either side is a ValueError listing it, except source
names under the `skip` prefixes (the classifier: `logits` for slim, `fc` for torch) and
torch's `num_batches_tracked` counters.

Command line (writes the backbone variables as flax msgpack):

  python -m aaf_jax.weights --source=resnet_v1_101.ckpt --model=resnet101 \
      --output=resnet101_slim.msgpack
  python -m aaf_jax.weights --source=resnet101.safetensors --model=resnet101 \
      --output=resnet101_tv.msgpack

The trainer calls `load_backbone(path, variables, layout=...)` with the msgpack (or a raw
checkpoint) to overwrite the freshly initialised `backbone` subtree.
"""

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence

import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax.errors import MissingFileError, UserError, one_line

FORMATS = ('slim', 'safetensors', 'pth')
CLASSIFIER = {'slim': 'logits', 'safetensors': 'fc', 'pth': 'fc'}  # name prefix per format
# The layout each source was trained in; see aaf_jax/models/resnet.py.
SOURCE_LAYOUT = {'slim': 'slim', 'safetensors': 'torchvision', 'pth': 'torchvision'}
IMAGENET_STD = (0.229, 0.224, 0.225)  # torchvision's input std, for `fold_std`

_BN_SLIM = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}
_BN_TORCH = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
# timm's deep stem ('resnet50c/d'): conv1 is Sequential(conv, bn, relu, conv, bn, relu, conv).
_TIMM_STEM = {
  'stem_conv1': 'conv1.0',
  'stem_bn1': 'conv1.1',
  'stem_conv2': 'conv1.3',
  'stem_bn2': 'conv1.4',
  'stem_conv3': 'conv1.6',
  'stem_bn3': 'bn1',
}
_UNIT = re.compile(r'stage(\d+)_unit(\d+)$')


class WeightFileError(UserError):
  """A weight file that cannot be read, is cut short, or holds weights of another network."""


class MissingTorchError(UserError, ImportError):
  """A .pth file given where torch, needed to read it, is not installed."""


def _unreadable(path: str, what: str, error: Exception) -> WeightFileError:
  cause = one_line(error)[:300] or 'no detail'
  return WeightFileError(
    f'{path!r} cannot be read as {what} ({type(error).__name__}: {cause}); the file is damaged, '
    'cut short or of another format: import it again with `python -m aaf_jax.weights`.'
  )


# --- reading checkpoints -------------------------------------------------------------------


def infer_format(path: str) -> str:
  """'safetensors', 'pth' or 'slim' from the file name (a TF checkpoint prefix or folder)."""
  if path.endswith('.safetensors'):
    return 'safetensors'
  if path.endswith(('.pth', '.pt', '.bin')):
    return 'pth'
  if os.path.isdir(path) or os.path.exists(path + '.index') or path.endswith('.ckpt'):
    return 'slim'
  raise WeightFileError(
    f'cannot tell the format of {path!r}: expected a .safetensors, .pth/.pt '
    'file, or a TF checkpoint prefix (with a .index file) or folder.'
  )


def read_checkpoint(path: str, fmt: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint as {name: numpy array}."""
  if fmt not in FORMATS:
    raise ValueError(f'weight format {fmt!r} is unknown; expected one of {FORMATS}.')
  if fmt == 'slim':
    return _read_slim(path)
  if not os.path.isfile(path):
    raise MissingFileError(f'weight file {path!r} does not exist.')
  if fmt == 'safetensors':
    import safetensors.numpy  # pylint: disable=g-import-not-at-top

    try:
      return dict(safetensors.numpy.load_file(path))
    except Exception as e:  # the library's own error types; every one means a bad file
      raise _unreadable(path, 'a .safetensors file', e) from e
  return _read_pth(path)


def _read_slim(path):
  from aaf_jax.tf_cpu import tf  # only slim checkpoints need TensorFlow; kept off the GPUs

  prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
  if prefix is None or not (os.path.exists(prefix + '.index') or os.path.exists(prefix)):
    raise MissingFileError(
      f'no TF checkpoint at {path!r} (expected a prefix with a .index '
      'file, or a folder holding a `checkpoint` file).'
    )
  try:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
  except (tf.errors.OpError, ValueError) as e:
    raise _unreadable(prefix, 'a TF checkpoint', e) from e


def _read_pth(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise MissingTorchError(
      f'reading {path!r} needs torch, which is not installed; install torch, '
      'or save the state dict as .safetensors and import that instead.'
    ) from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pickle, zip and torch errors alike: the file is not a state dict
    raise _unreadable(path, 'a torch state dict', e) from e
  for key in ('state_dict', 'model'):
    if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
      state = state[key]
  if not isinstance(state, Mapping):
    raise WeightFileError(f'{path!r} holds a {type(state).__name__}, not a torch state dict.')
  return {k: v.detach().float().numpy() for k, v in state.items() if hasattr(v, 'detach')}


def default_skip(fmt: str, keep_classifier: bool = False) -> tuple[str, ...]:
  """Source prefixes left out by default: the classifier, and slim's step counter."""
  return (() if keep_classifier else (CLASSIFIER[fmt],)) + (
    ('global_step',) if fmt == 'slim' else ()
  )


def slim_scope(names) -> str:
  """The model scope of a slim checkpoint, e.g. 'resnet_v1_101'."""
  scopes = {n.split('/')[0] for n in names if '/block1/' in n}
  if len(scopes) != 1:
    raise WeightFileError(
      f'cannot find the one ResNet scope of the slim checkpoint (variables '
      f'named SCOPE/block1/...): found {sorted(scopes)}; pass scope=.'
    )
  return scopes.pop()


# --- name mapping ----------------------------------------------------------------------------


def _module_name(module: str, source: str, scope: str) -> str:
  """Our module name under `backbone` -> the source's module prefix."""
  unit = _UNIT.match(module.split('/')[0])
  if source == 'slim':
    if unit:
      stage, index = unit.groups()
      rest = module.split('/')[1]
      leaf = 'shortcut' if rest.startswith('downsample') else 'conv' + rest[-1]
      return f'{scope}/block{stage}/unit_{index}/bottleneck_v1/{leaf}'
    if module in ('conv1', 'bn1'):
      return f'{scope}/conv1'
    if module.startswith(('stem_conv', 'stem_bn')):  # DeepLab's resnet_v1_beta naming
      return f'{scope}/conv1_{module[-1]}'
    if module == 'fc':
      return f'{scope}/logits'
  else:
    if unit:
      stage, index = unit.groups()
      rest = module.split('/')[1]
      base = f'layer{stage}.{int(index) - 1}.'
      if rest.startswith('downsample'):
        return base + ('downsample.0' if rest.endswith('conv') else 'downsample.1')
      return base + rest
    if module in ('conv1', 'bn1', 'fc'):
      return module
    if module in _TIMM_STEM:
      return _TIMM_STEM[module]
  raise ValueError(f'no {source} name for backbone module {module!r}.')


def source_name(path: tuple[str, ...], source: str, scope: str = '') -> str:
  """Source tensor name of a backbone leaf, e.g. ('stage1_unit1', 'conv1', 'kernel')."""
  *modules, leaf = path
  module = '/'.join(modules)
  prefix = _module_name(module, source, scope)
  is_bn = modules[-1].startswith(('bn', 'stem_bn')) or modules[-1].endswith('_bn')
  if source == 'slim':
    if is_bn:
      return f'{prefix}/BatchNorm/{_BN_SLIM[leaf]}'
    return f'{prefix}/{"weights" if leaf == "kernel" else "biases"}'
  if is_bn:
    return f'{prefix}.{_BN_TORCH[leaf]}'
  return f'{prefix}.{"weight" if leaf == "kernel" else "bias"}'


def _to_ours(array: np.ndarray, path, source: str, target_shape) -> np.ndarray:
  """Transpose/reshape a source tensor into our layout (conv HWIO, dense [in, out])."""
  if path[-1] != 'kernel':
    return array
  if source == 'slim':
    return array.reshape(target_shape) if array.ndim == 4 and len(target_shape) == 2 else array
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return array.T  # [out, in] -> [in, out]


def convert(
  tensors: Mapping[str, np.ndarray],
  target,
  *,
  source: str,
  skip: Sequence[str] = (),
  scope: str | None = None,
  fold_std: Sequence[float] | None = None,
) -> dict:
  """Backbone variables {'params', 'batch_stats'} with the structure of `target` from tensors.

  Args:
    tensors: the checkpoint's {name: array}.
    target: the backbone's variables (arrays or ShapeDtypeStructs), {'params', 'batch_stats'}.
    source: 'slim' (slim names, HWIO kernels) or 'torch' (torchvision/timm names, OIHW).
    skip: name prefixes of source tensors to leave out (slim: after the scope).
    scope: slim model scope; found from the names when None.
    fold_std: divide the first conv's input channels by 255 * std: torchvision weights expect
      (x / 255 - mean) / std, our inputs are x - mean (the mean shift, about 1 grey level, is
      not folded: zero padding makes it inexact).

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays.
  """
  if source not in ('slim', 'torch'):
    raise ValueError(f'convert: source={source!r}; expected "slim" or "torch".')
  if fold_std is not None and len(fold_std) != 3:
    raise ValueError(f'convert: fold_std={fold_std!r} must give one std per RGB channel.')
  if source == 'slim' and scope is None:
    scope = slim_scope(tensors)
  flat = flax.traverse_util.flatten_dict(dict(target))
  out, used, missing, bad_shape = {}, set(), [], []
  for key, leaf in flat.items():
    path = key[1:]  # key[0] is the collection
    name = source_name(path, source, scope or '')
    if name not in tensors:
      missing.append(f'{"/".join(path)} (as {name})')
      continue
    used.add(name)
    array = _to_ours(np.asarray(tensors[name], np.float32), path, source, leaf.shape)
    if array.shape != tuple(leaf.shape):
      bad_shape.append(
        f'{name}: {tuple(np.shape(tensors[name]))} -> {array.shape}, '
        f'expected {tuple(leaf.shape)} for {"/".join(path)}'
      )
      continue
    if fold_std is not None and path[:-1] in (('conv1',), ('stem_conv1',)):
      array = array / (255.0 * np.asarray(fold_std, np.float32))[None, None, :, None]
    out[key] = array
  prefix = f'{scope}/' if source == 'slim' else ''

  def skipped(name):
    relative = name[len(prefix) :] if name.startswith(prefix) else name
    return name.endswith('num_batches_tracked') or any(
      relative == s
      or relative.startswith((s + '/', s + '.'))
      or name == s
      or name.startswith((s + '/', s + '.'))
      for s in skip
    )

  unmatched = sorted(n for n in tensors if n not in used and not skipped(n))
  problems = []
  if missing:
    problems.append(f'{len(missing)} backbone leaves have no source tensor: {_few(missing)}')
  if bad_shape:
    problems.append(f'{len(bad_shape)} shapes differ: {_few(bad_shape)}')
  if unmatched:
    problems.append(
      f'{len(unmatched)} source tensors match no backbone leaf (pass skip= '
      f'prefixes to leave them out): {_few(unmatched)}'
    )
  if problems:
    raise WeightFileError('weight import failed:\n  ' + '\n  '.join(problems))
  return flax.traverse_util.unflatten_dict(out)


def _few(items, limit=40):
  """A list for an error message, cut after `limit` entries."""
  return str(items) if len(items) <= limit else f'{items[:limit]} and {len(items) - limit} more'


# --- files of converted weights and merging --------------------------------------------------


def save(path: str, variables: Mapping, *, layout: str, source: str) -> None:
  """Write backbone variables plus the layout they were trained in as msgpack."""
  state = {c: jax.tree.map(np.asarray, variables[c]) for c in ('params', 'batch_stats')}
  state['meta'] = {'layout': layout, 'source': source}
  with open(path, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(state))


def load(path: str) -> dict:
  """Read a file written by `save`: {'params', 'batch_stats', 'meta'}."""
  if not os.path.isfile(path):
    raise MissingFileError(f'backbone weight file {path!r} does not exist.')
  with open(path, 'rb') as f:
    content = f.read()
  try:
    state = flax.serialization.msgpack_restore(content)
  except Exception as e:  # msgpack's errors for bytes that are not (whole) msgpack
    raise _unreadable(path, 'a backbone .msgpack', e) from e
  keys = sorted(map(str, state)) if isinstance(state, Mapping) else type(state).__name__
  if (
    not isinstance(state, Mapping)
    or not {'params', 'batch_stats', 'meta'} <= set(state)
    or not isinstance(state['meta'], Mapping)
    or 'layout' not in state['meta']
  ):
    raise WeightFileError(
      f'{path!r} is not a backbone file written by aaf_jax.weights.save (top level: {keys}); '
      'import the backbone with `python -m aaf_jax.weights`.'
    )
  return state


def default_fold_std(fmt: str) -> tuple[float, ...] | None:
  """torch sources expect (x / 255 - mean) / std; slim ones, like our pipeline, x - mean."""
  return None if fmt == 'slim' else IMAGENET_STD


def load_backbone(
  path: str,
  variables: Mapping,
  *,
  layout: str | None = None,
  skip: Sequence[str] | None = None,
  scope: str | None = None,
  fold_std: Sequence[float] | None | str = 'auto',
) -> dict:
  """`variables` with its `backbone` subtrees replaced by the weights in `path`.

  Args:
    path: a `.msgpack` written by this module, or a raw checkpoint (slim prefix or folder,
      .safetensors, .pth), converted on the fly with `skip`, `scope` and `fold_std` (see
      `convert`; 'auto': `default_fold_std` of the format).
    variables: the model's {'params', 'batch_stats'} (arrays or ShapeDtypeStructs); only
      `params['backbone']` and `batch_stats['backbone']` are replaced.
    layout: the model's `layout`; a ValueError when the weights were trained in another one
      (same shapes, different network).

  Returns:
    A new {'params', 'batch_stats', ...} dict; imported leaves are numpy arrays of the target
    leaves' dtypes, so the caller places them (e.g. with its shardings).
  """
  if 'backbone' not in variables.get('params', {}):
    raise ValueError(
      f'load_backbone: variables have no params/backbone subtree (top-level '
      f'params: {sorted(variables.get("params", {}))}).'
    )
  target = {c: variables[c]['backbone'] for c in ('params', 'batch_stats')}
  if path.endswith('.msgpack'):
    state = load(path)
    trained_layout = state['meta']['layout']
    imported = {c: state[c] for c in ('params', 'batch_stats')}
  else:
    fmt = infer_format(path)
    trained_layout = SOURCE_LAYOUT[fmt]
    tensors = read_checkpoint(path, fmt)
    try:
      imported = convert(
        tensors,
        target,
        source='slim' if fmt == 'slim' else 'torch',
        skip=default_skip(fmt) if skip is None else skip,
        scope=scope,
        fold_std=default_fold_std(fmt) if isinstance(fold_std, str) else fold_std,
      )
    except WeightFileError as e:
      raise WeightFileError(f'{path!r} does not hold weights of this backbone: {e}') from e
  if layout is not None and layout != trained_layout:
    raise WeightFileError(
      f'{path!r} holds weights of a {trained_layout!r}-layout ResNet but the '
      f'model uses layout={layout!r}; set config.model.layout='
      f'{trained_layout!r}.'
    )
  new = {c: dict(v) for c, v in variables.items()}
  for collection in ('params', 'batch_stats'):
    new[collection]['backbone'] = _merge(target[collection], imported[collection], collection, path)
  return new


def _merge(target, imported, collection, path):
  want = flax.traverse_util.flatten_dict(dict(target))
  have = flax.traverse_util.flatten_dict(dict(imported))
  missing = sorted('/'.join(k) for k in want if k not in have)
  extra = sorted('/'.join(k) for k in have if k not in want)
  shapes = sorted(
    f'{"/".join(k)}: file {np.shape(have[k])}, model {tuple(want[k].shape)}'
    for k in want
    if k in have and np.shape(have[k]) != tuple(want[k].shape)
  )
  if missing or extra or shapes:
    raise WeightFileError(
      f'{path!r} does not fit the model backbone ({collection}): missing from '
      f'the file {_few(missing)}; not in the model {_few(extra)}; shape '
      f'mismatches {_few(shapes)}.'
    )
  return flax.traverse_util.unflatten_dict(
    {k: np.asarray(have[k], dtype=want[k].dtype) for k in want}
  )


# --- command line ----------------------------------------------------------------------------


def backbone_shapes(
  model: str,
  *,
  stem: str = 'standard',
  base_width: int = 64,
  stem_width: int = 64,
  num_classes: int | None = None,
) -> dict:
  """ShapeDtypeStructs of a ResNet backbone's {'params', 'batch_stats'}."""
  from aaf_jax.models import resnet  # pylint: disable=g-import-not-at-top

  if model not in resnet.BACKBONES:
    raise ValueError(f'--model={model!r} is unknown; expected one of {sorted(resnet.BACKBONES)}.')
  block, stage_sizes = resnet.BACKBONES[model]
  net = resnet.ResNet(
    block=block,
    stage_sizes=stage_sizes,
    base_width=base_width,
    stem_width=stem_width,
    stem=stem,
    num_classes=num_classes,
  )
  return jax.eval_shape(
    lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False)
  )


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
    prog='python -m aaf_jax.weights',
    description='Convert an ImageNet ResNet checkpoint into aaf_jax backbone variables.',
  )
  parser.add_argument(
    '--source', required=True, help='TF-slim checkpoint prefix/folder, .safetensors or .pth file'
  )
  parser.add_argument('--format', choices=FORMATS, help='default: from the file name')
  parser.add_argument('--model', required=True, help='resnet18/34/50/101/152 (resnet10 too)')
  parser.add_argument('--stem', default='standard', choices=('standard', 'deep'))
  parser.add_argument('--base_width', type=int, default=64)
  parser.add_argument('--stem_width', type=int, default=64)
  parser.add_argument(
    '--skip',
    default=None,
    help='comma-separated source name prefixes to leave out (default: '
    'logits,global_step for slim; fc for torch)',
  )
  parser.add_argument(
    '--keep_classifier',
    action='store_true',
    help='import the 1000-class classifier too (as backbone/fc)',
  )
  parser.add_argument('--scope', default=None, help='slim model scope (default: found)')
  parser.add_argument(
    '--fold_std',
    default=None,
    help='comma-separated input std folded into the first conv (default '
    'for torch sources: 0.229,0.224,0.225; "none" to disable)',
  )
  parser.add_argument('--output', required=True, help='output .msgpack file')
  args = parser.parse_args(argv)

  fmt = args.format or infer_format(args.source)
  if args.skip is not None:
    skip = tuple(s for s in args.skip.split(',') if s)
  else:
    skip = default_skip(fmt, args.keep_classifier)
  if args.fold_std is None:
    fold_std = default_fold_std(fmt)
  elif args.fold_std.lower() == 'none':
    fold_std = None
  else:
    fold_std = tuple(float(v) for v in args.fold_std.split(','))
  target = backbone_shapes(
    args.model,
    stem=args.stem,
    base_width=args.base_width,
    stem_width=args.stem_width,
    num_classes=1000 if args.keep_classifier else None,
  )
  variables = convert(
    read_checkpoint(args.source, fmt),
    target,
    source='slim' if fmt == 'slim' else 'torch',
    skip=skip,
    scope=args.scope,
    fold_std=fold_std,
  )
  save(args.output, variables, layout=SOURCE_LAYOUT[fmt], source=os.path.basename(args.source))
  count = sum(a.size for a in jax.tree.leaves(variables['params']))
  print(
    f'wrote {args.output}: {count:,} parameters, layout={SOURCE_LAYOUT[fmt]!r} '
    f'(set config.model.layout to it), skipped prefixes {list(skip)}, '
    f'fold_std={fold_std}'
  )


if __name__ == '__main__':
  main(sys.argv[1:])
