"""SyntheticShapes: a procedurally drawn segmentation set, generated from a seed with no download.

The class of a pixel is decided by the SHAPE of the object it belongs to; colours and textures
are drawn from the same distributions for every class (background included) and noise is added,
so a network must use shape and context. Thin classes (ring, bar, star) are a few pixels wide:
that is where per-pixel cross-entropy tends to blur boundaries and a pairwise loss should help.
Objects overlap and touch; some solid objects get a VOC-like void band (label 255) along their
visible boundary.

Two layouts (`layout`): 'shapes', the main job's, where every class is drawn at one range of
sizes; and 'multiscale', built so that the best fixed affinity field size should differ by class:
each class has its own scale, large solid discs and boxes (about 30-45 px across at 64 px) next to
medium triangles and 3-5 px strokes (a 6x span and more); the large objects' interiors painted
with hard-edged blotches 3-10 px across (a short field sees texture, not the object), every other
surface as in 'shapes'; large objects drawn first so that smaller ones lie on and against them.

Every example is a pure function of (options, split, index), so generation is order-free and
repeatable: the same options give byte-identical data.

Split 'shifted' (SHIFTED_LOOK) is the appearance-shifted evaluation set: example i is the scene of
validation example i (the same label map, objects and paint) seen through another camera: colours
half as saturated, contrast halved about mid-grey, a Gaussian blur of sigma 1 px, then the
validation example's own sensor noise. Labels equal the validation split's index for index, so
scores on the two pair image by image; only the look differs. Fixed before any model was
evaluated on it (issue 29) and pinned by a digest in tests/test_synthetic.py.
"""

import dataclasses
import hashlib
import json

import numpy as np
import tensorflow_datasets as tfds

from aaf_jax import validation
from aaf_jax.data import base

CLASS_NAMES = ('background', 'disc', 'box', 'triangle', 'ring', 'bar', 'star')
IGNORE_LABEL = 255
_SOLID = (1, 2, 3)  # disc, box, triangle: the classes that may get a void band
_SPLIT_CODES = {'train': 0, 'validation': 1}
# Splits that show the scenes of another split with another look: split -> the split it re-shows.
SHIFTED_SPLITS = {'shifted': 'validation'}
SPLITS = (*_SPLIT_CODES, *SHIFTED_SPLITS)
# The look of split 'shifted', applied to the clean rendering before the sensor noise: each
# pixel moved toward its luma (ITU-R BT.601) by 1 - saturation, then toward mid-grey by
# 1 - contrast, then blurred by a Gaussian of `blur_sigma` px (edges mirrored).
SHIFTED_LOOK = {'saturation': 0.5, 'contrast': 0.5, 'blur_sigma': 1.0}
_LUMA = np.array([0.299, 0.587, 0.114])
LAYOUTS = validation.SYNTHETIC_LAYOUTS
# layout 'multiscale': each class's radius as a fraction of the image side (strokes keep
# thin_width), and the order of drawing (larger first).
_LARGE = (1, 2)  # disc, box: the large, textured classes of layout 'multiscale'
_MULTISCALE_RADIUS = {
  1: (0.24, 0.36),
  2: (0.24, 0.36),
  3: (0.1, 0.16),
  4: (0.1, 0.2),
  5: (0.08, 0.14),
  6: (0.1, 0.18),
}


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  """Generation options; the config name encodes them, so each option set has its own folder."""

  image_size: int = 112
  num_train: int = 2000
  num_validation: int = 200
  seed: int = 0
  max_objects: int = 6
  noise_std: float = 12.0
  void_prob: float = 0.5
  thin_width: float = 3.0  # px: the widest a ring, bar or star spoke gets (each draws 60-100%)
  layout: str = 'shapes'  # or 'multiscale' (see the module docstring)


OPTION_DEFAULTS = {
  f.name: f.default
  for f in dataclasses.fields(SyntheticShapesConfig)
  if f.name not in {g.name for g in dataclasses.fields(tfds.core.BuilderConfig)}
}


def _config_name(options: dict) -> str:
  hashed = dict(options)
  if hashed['layout'] == 'shapes':  # the names (and folders) from before layouts existed
    del hashed['layout']
  digest = hashlib.sha1(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:8]
  prefix = '' if options['layout'] == 'shapes' else f'{options["layout"]}_'
  return (
    f'{prefix}size{options["image_size"]}_train{options["num_train"]}'
    f'_val{options["num_validation"]}_seed{options["seed"]}_{digest}'
  )


def _validate(options: dict) -> None:
  minimum = {'image_size': 32, 'num_train': 1, 'num_validation': 1, 'max_objects': 2}
  for key, low in minimum.items():
    if not isinstance(options[key], (int, np.integer)) or options[key] < low:
      raise ValueError(
        f'config.data.synthetic.{key}={options[key]!r}: expected an integer >= {low}'
      )
  if not 0 <= options['noise_std'] <= 100:
    raise ValueError(
      f'config.data.synthetic.noise_std={options["noise_std"]!r}: expected a number in [0, 100]'
    )
  if not 1 <= options['thin_width'] <= 8:
    raise ValueError(
      f'config.data.synthetic.thin_width={options["thin_width"]!r}: expected a width in px in '
      '[1, 8]'
    )
  if options['layout'] not in LAYOUTS:
    raise ValueError(
      f'config.data.synthetic.layout={options["layout"]!r}: expected one of {", ".join(LAYOUTS)}'
    )
  if not 0 <= options['void_prob'] <= 1:
    raise ValueError(
      f'config.data.synthetic.void_prob={options["void_prob"]!r}: expected a probability in [0, 1]'
    )


def make_config(synthetic_cfg=None) -> SyntheticShapesConfig:
  """Builds the BuilderConfig from `config.data.synthetic` (a mapping; None = defaults)."""
  given = dict(synthetic_cfg or {})
  unknown = sorted(set(given) - set(OPTION_DEFAULTS))
  if unknown:
    raise ValueError(
      f'Unknown config.data.synthetic field(s) {unknown}; accepted: {sorted(OPTION_DEFAULTS)}'
    )
  options = {**OPTION_DEFAULTS, **given}
  _validate(options)
  options['noise_std'] = float(options['noise_std'])
  options['void_prob'] = float(options['void_prob'])
  options['thin_width'] = float(options['thin_width'])
  if options == OPTION_DEFAULTS:
    return DEFAULT_CONFIG
  return SyntheticShapesConfig(name=_config_name(options), **options)


DEFAULT_CONFIG = SyntheticShapesConfig(name=_config_name(OPTION_DEFAULTS), **OPTION_DEFAULTS)


def _binary_shift_op(mask: np.ndarray, steps: int, op) -> np.ndarray:
  """Dilation (op=np.logical_or) or erosion (np.logical_and) by a 3x3 square, `steps` times."""
  fill = op is np.logical_and  # outside the image counts as inside for erosion
  for _ in range(steps):
    padded = np.pad(mask, 1, constant_values=fill)
    out = padded[1:-1, 1:-1].copy()
    for dy in (0, 1, 2):
      for dx in (0, 1, 2):
        out = op(out, padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]])
    mask = out
  return mask


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """A [H,W] field in [0,1]: flat, gradient or smooth blotches.

  No hard-edged patterns: stripes and checkers would draw bars and boxes into the background,
  and a class must be decided by the object's shape, not by guessing which edges are paint.
  """
  kind = rng.integers(3)
  if kind == 0:
    return np.zeros_like(yy)
  if kind == 1:
    angle = rng.uniform(0, np.pi)
    u = xx * np.cos(angle) + yy * np.sin(angle)
    return (u - u.min()) / max(np.ptp(u), 1e-6)
  field = np.zeros_like(yy)
  scale = max(yy.shape)
  for _ in range(3):
    fy, fx = rng.uniform(0.5, 3.0, size=2) * 2 * np.pi / scale
    field += np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * np.pi))
  return (field - field.min()) / max(np.ptp(field), 1e-6)


def _blotches(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """A [H,W] field in {0,1}: smooth noise thresholded into blotches 3-10 px across."""
  field = np.zeros_like(yy)
  for _ in range(4):
    fy, fx = rng.uniform(-1, 1, size=2) * 2 * np.pi / rng.uniform(6, 20)
    field += np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * np.pi))
  return (field > np.median(field)).astype(yy.dtype)


def _paint(rng: np.random.Generator, yy, xx, avoid_colour=None, contrast=False) -> np.ndarray:
  """A [H,W,3] float painting: two random colours blended by a random texture.

  contrast: the second colour 40-90 away in each channel, blended by hard-edged blotches (the
  'multiscale' layout's textured surfaces).
  """
  colour_a = rng.uniform(0, 255, size=3)
  if avoid_colour is not None:  # keep objects visible against the background's main colour
    for _ in range(8):
      if np.linalg.norm(colour_a - avoid_colour) > 80:
        break
      colour_a = rng.uniform(0, 255, size=3)
  if contrast:
    colour_b = np.clip(colour_a + rng.choice([-1, 1], size=3) * rng.uniform(40, 90, size=3), 0, 255)
    t = _blotches(rng, yy, xx)[..., None]
  else:
    colour_b = np.clip(colour_a + rng.normal(0, 50, size=3), 0, 255)
    t = _texture(rng, yy, xx)[..., None]
  return colour_a * (1 - t) + colour_b * t


def _shape_mask(
  cls: int, rng: np.random.Generator, dy, dx, radius: float, thin_width: float
) -> np.ndarray:
  """Boolean [H,W] mask of a shape of class `cls` centred at the origin of (dy, dx)."""
  angle = rng.uniform(0, 2 * np.pi)
  half_width = thin_width / 2 * rng.uniform(0.6, 1.0)  # of the thin classes' strokes
  u = dx * np.cos(angle) + dy * np.sin(angle)
  v = -dx * np.sin(angle) + dy * np.cos(angle)
  dist = np.hypot(dy, dx)
  if cls == 1:  # disc
    return dist <= radius
  if cls == 2:  # box
    half_u, half_v = radius * rng.uniform(0.6, 1.0), radius * rng.uniform(0.45, 1.0)
    return (np.abs(u) <= half_u) & (np.abs(v) <= half_v)
  if cls == 3:  # triangle: inside the three edges at distance radius/2 from the centre
    inside = np.ones(dy.shape, dtype=bool)
    for k in range(3):
      normal = angle + np.pi / 3 + 2 * np.pi * k / 3
      inside &= dx * np.cos(normal) + dy * np.sin(normal) <= radius / 2
    return inside
  if cls == 4:  # thin ring
    return np.abs(dist - radius) <= half_width
  if cls == 5:  # thin bar
    return (np.abs(u) <= radius * rng.uniform(1.2, 2.0)) & (np.abs(v) <= half_width)
  if cls == 6:  # star: thin spokes from the centre
    num_spokes = rng.integers(5, 9)
    phis = angle + 2 * np.pi * np.arange(num_spokes) / num_spokes  # [K]
    along = dx[None] * np.cos(phis)[:, None, None] + dy[None] * np.sin(phis)[:, None, None]
    across = -dx[None] * np.sin(phis)[:, None, None] + dy[None] * np.cos(phis)[:, None, None]
    spokes = (along >= 0) & (along <= radius) & (np.abs(across) <= half_width)  # [K,H,W]
    return spokes.any(axis=0) | (dist <= max(1.5, half_width))
  raise ValueError(f'no shape for class {cls}')


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """[H,W,3] image blurred by a separable Gaussian of `sigma` px (radius 3 sigma, mirrored)."""
  radius = max(1, int(np.ceil(3 * sigma)))
  taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
  taps /= taps.sum()
  for axis in (0, 1):
    pad = [(0, 0)] * image.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(image, pad, mode='reflect')
    length = image.shape[axis]
    image = sum(
      w * np.take(padded, np.arange(k, k + length), axis=axis) for k, w in enumerate(taps)
    )
  return image


def shifted_look(image: np.ndarray) -> np.ndarray:
  """The look of split 'shifted' (SHIFTED_LOOK) applied to a clean [H,W,3] float rendering."""
  luma = (image @ _LUMA)[..., None]
  image = luma + SHIFTED_LOOK['saturation'] * (image - luma)
  image = 127.5 + SHIFTED_LOOK['contrast'] * (image - 127.5)
  return _gaussian_blur(image, SHIFTED_LOOK['blur_sigma'])


def draw_example(
  options: dict, split: str, index: int, height: int | None = None, width: int | None = None
):
  """Draws example `index` of `split`: (image uint8 [H,W,3], label uint8 [H,W]).

  `height`/`width` default to `options['image_size']` (other sizes serve stand-in data). A split
  of SHIFTED_SPLITS draws the scene of the split it re-shows and changes its look.
  """
  if split not in SPLITS:
    raise ValueError(f'Synthetic split {split!r} does not exist; expected one of {SPLITS}.')
  height = height or options['image_size']
  width = width or options['image_size']
  scene_split = SHIFTED_SPLITS.get(split, split)
  rng = np.random.default_rng([options['seed'], _SPLIT_CODES[scene_split], index])
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  side = min(height, width)
  multiscale = options.get('layout', 'shapes') == 'multiscale'

  background = _paint(rng, yy, xx)
  background_colour = background.mean(axis=(0, 1))
  image = background.copy()
  label = np.zeros((height, width), np.uint8)
  instance = np.zeros((height, width), np.int32)  # 0 = background, k = k-th object
  classes = []
  num_objects = rng.integers(2, options['max_objects'] + 1)
  if multiscale:  # larger classes first, so that smaller ones lie on and against them
    order = [int(c) for c in rng.integers(1, len(CLASS_NAMES), size=num_objects)]
    order.sort(key=lambda c: -_MULTISCALE_RADIUS[c][1])
  centre, radius = None, None
  for k in range(1, num_objects + 1):
    if multiscale:
      cls = order[k - 1]
      new_radius = side * rng.uniform(*_MULTISCALE_RADIUS[cls])
    else:  # 'shapes': the draws in the order of the main job's data (byte-identical to 2.0.0)
      cls = int(rng.integers(1, len(CLASS_NAMES)))
      new_radius = side * rng.uniform(0.1, 0.25)
    if centre is not None and rng.random() < 0.5:  # touch or overlap the previous object
      direction = rng.uniform(0, 2 * np.pi)
      gap = (radius + new_radius) * rng.uniform(0.8, 1.05)
      centre = centre + gap * np.array([np.sin(direction), np.cos(direction)])
      centre = np.clip(centre, 0, (height - 1, width - 1))
    else:
      centre = rng.uniform(0.1, 0.9, size=2) * (height, width)
    radius = new_radius
    # Draw inside the object's bounding window only (a bar reaches 2 radii from its centre).
    reach = 2 * radius + 2
    window = (
      slice(max(0, int(centre[0] - reach)), min(height, int(centre[0] + reach) + 1)),
      slice(max(0, int(centre[1] - reach)), min(width, int(centre[1] + reach) + 1)),
    )
    wy, wx = yy[window], xx[window]
    mask = _shape_mask(cls, rng, wy - centre[0], wx - centre[1], radius, options['thin_width'])
    textured = multiscale and cls in _LARGE  # a short field sees blotches, not the object
    paint = _paint(rng, wy, wx, avoid_colour=background_colour, contrast=textured)
    image[window][mask] = paint[mask]
    label[window][mask] = cls
    instance[window][mask] = k
    classes.append(cls)

  for k, cls in enumerate(classes, start=1):
    if cls in _SOLID and rng.random() < options['void_prob']:
      visible = instance == k
      inner, outer = rng.integers(0, 2), rng.integers(1, 3)  # band width 1-3 px
      band = _binary_shift_op(visible, outer, np.logical_or) & ~_binary_shift_op(
        visible, inner, np.logical_and
      )
      label[band] = IGNORE_LABEL

  if split in SHIFTED_SPLITS:
    image = shifted_look(image)
  image = image + rng.normal(0, options['noise_std'], size=image.shape)
  return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


class SyntheticShapes(base.PreparedLocally, tfds.core.GeneratorBasedBuilder):
  """Procedural shapes segmentation set (see the module docstring)."""

  VERSION = tfds.core.Version('2.2.0')
  RELEASE_NOTES = {
    '1.0.0': 'First release.',
    '2.0.0': 'Thin strokes of thin_width px, larger objects, no stripe or checker textures.',
    '2.1.0': "The layout option: 'multiscale' added; 'shapes' draws the bytes of 2.0.0.",
    '2.2.0': "Split 'shifted' added (validation's scenes, another look); train and validation "
    'are the bytes of 2.1.0.',
  }
  BUILDER_CONFIGS = [DEFAULT_CONFIG]
  CLASS_NAMES = CLASS_NAMES
  IGNORE_LABEL = IGNORE_LABEL

  @classmethod
  def builder_kwargs(cls, data_cfg) -> dict:
    """Constructor arguments from `config.data` (used by `aaf_jax.data.get_builder`)."""
    return {'config': make_config(data_cfg.get('synthetic'))}

  def _options(self) -> dict:
    return {key: getattr(self.builder_config, key) for key in OPTION_DEFAULTS}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=base.example_features(),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    options = self._options()
    return {
      'train': self._generate_examples(options, 'train', options['num_train']),
      'validation': self._generate_examples(options, 'validation', options['num_validation']),
      'shifted': self._generate_examples(options, 'shifted', options['num_validation']),
    }

  def _generate_examples(self, options, split, count):
    for index in range(count):
      image, label = draw_example(options, split, index)
      yield index, {'image': image, 'label': label[..., None], 'name': f'{split}_{index:06d}'}
