"""The networks' options and ready-made model configs as plain data (no jax, flax or optax).

Config files build `config.model` from here, so loading a config stays cheap; the registry in
`aaf_jax.models` builds the networks from the same names (a test keeps the defaults below equal
to the network classes' own).
"""

import copy

BACKBONES = ('resnet10', 'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152')
LAYOUTS = ('torchvision', 'slim')
STEMS = ('standard', 'deep')
# Head initialisers: 'he' is PSPNet's and DeepLab's convention (He-normal convs, a N(0, 0.01)
# classifier with zero bias); 'tf1_glorot' is TF1's `tf.get_variable` default that the authors'
# PSPNet head gets: Glorot uniform for every kernel and for the classifier's bias.
HEAD_INITS = ('he', 'tf1_glorot')
# How a dilated conv is computed (aaf_jax/models/dilated.py); both give the same function and
# the same parameters, so the choice is a matter of speed only.
DILATED_CONV_FORMS = ('space_to_batch', 'native')

# Options every registered network takes (the backbone and the auxiliary head), with defaults.
_SEGMENTER_OPTIONS = dict(
  backbone='resnet101',
  layout='slim',
  output_stride=8,
  base_width=64,
  stem_width=64,
  stem='standard',
  stem_pool=True,
  bn_momentum=0.9,  # the backbone's BatchNorms
  bn_epsilon=1e-5,
  head_bn_momentum=0.9,  # the heads' BatchNorms
  head_bn_epsilon=1e-5,
  freeze_bn=False,
  dropout=0.0,
  aux_head=False,
  aux_width=256,
  # Same function and parameters either way; space_to_batch trains much faster on the GPU
  # (docs/models.md).
  dilated_conv='space_to_batch',
)

# Every option of each network `config.model.name` names, with its default.
NETWORK_OPTIONS = {
  'pspnet': dict(_SEGMENTER_OPTIONS, head_width=512, bins=(1, 2, 3, 6), head_init='he'),
  'deeplabv2': dict(_SEGMENTER_OPTIONS, aspp_rates=(6, 12, 18, 24)),
  'deeplabv3': dict(_SEGMENTER_OPTIONS, head_width=256, aspp_rates=()),
}

# Read by the trainer, not by the network: a backbone checkpoint to import
# (`aaf_jax.weights.load_backbone`) and the loss weight of 'aux_logits'.
TRAINER_FIELDS = ('pretrained', 'aux_weight')

# Ready-made `config.model` contents (the values that differ from the network's defaults).
PRESETS = {
  # The synthetic main job's network (configs/synthetic.py): ResNet-10 with widths 16..128, no
  # stem max-pool, output stride 4; 9000 steps on 48 px crops take about 3.5 minutes on 2 cores.
  'pspnet_tiny': dict(
    name='pspnet',
    backbone='resnet10',
    layout='torchvision',
    output_stride=4,
    base_width=16,
    stem_width=16,
    stem_pool=False,
    head_width=32,
    bins=(1, 2, 3, 6),
    # On the 2-core CPU the native dilated conv is the faster form (BENCHMARKS.md, "Dilated
    # convolutions"); this CPU-sized preset keeps it, the GPU-sized ones get the default.
    dilated_conv='native',
  ),
  # The paper's network: PSPNet on a slim-layout ResNet-101 at output stride 8, with the
  # authors' BatchNorm (decay 0.9997 in the backbone, 0.99 in the head, epsilon 1e-3: their
  # network/common/layers.py and seg_models/models/pspnet.py) and TF1's default initialisers
  # in the head.
  'pspnet_resnet101': dict(
    name='pspnet',
    backbone='resnet101',
    layout='slim',
    output_stride=8,
    head_width=512,
    bn_momentum=0.9997,
    bn_epsilon=1e-3,
    head_bn_momentum=0.99,
    head_bn_epsilon=1e-3,
    head_init='tf1_glorot',
  ),
  'deeplabv2_resnet101': dict(
    name='deeplabv2',
    backbone='resnet101',
    layout='slim',
    output_stride=8,
    bn_momentum=0.997,
    head_bn_momentum=0.997,
  ),
  'deeplabv3_resnet101': dict(
    name='deeplabv3',
    backbone='resnet101',
    layout='slim',
    output_stride=16,
    bn_momentum=0.997,
    head_bn_momentum=0.997,
  ),
}


def network_defaults(name: str) -> dict:
  """Every option of network `name` with its default, plus the trainer fields."""
  if name not in NETWORK_OPTIONS:
    raise ValueError(
      f'config.model.name={name!r} is unknown; expected one of {sorted(NETWORK_OPTIONS)}.'
    )
  return dict(
    name=name,
    **copy.deepcopy(NETWORK_OPTIONS[name]),
    pretrained='',
    aux_weight=0.4 if name == 'pspnet' else 0.0,
  )


def preset(name: str) -> dict:
  """`network_defaults` of the preset's network with the preset's values filled in."""
  if name not in PRESETS:
    raise ValueError(f'model preset {name!r} is unknown; expected one of {sorted(PRESETS)}.')
  return {**network_defaults(PRESETS[name]['name']), **PRESETS[name]}
