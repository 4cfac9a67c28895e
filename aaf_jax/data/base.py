"""What the dataset builders share: the example features, the base builder for datasets read from
an extracted official layout (manual folder, `skip_bad_examples`), and the readers that turn every
unusable source file into an error naming it, so bad input never becomes silent mis-training.
"""

import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

IGNORE_LABEL = 255


def example_features(**extra) -> tfds.features.FeaturesDict:
  """The features of every dataset's examples: 'image' (RGB), 'label' (class index per pixel,
  255 = ignore, stored as a one-channel PNG) and 'name'; `extra` adds dataset-specific ones."""
  return tfds.features.FeaturesDict(
    {
      'image': tfds.features.Image(shape=(None, None, 3)),
      'label': mask_feature(),
      'name': tfds.features.Text(),
      **extra,
    }
  )


def mask_feature() -> tfds.features.Image:
  """A [H,W,1] uint8 map stored losslessly as PNG (labels, instance ids)."""
  return tfds.features.Image(shape=(None, None, 1), encoding_format='png')


# Errors name at most this many files; the rest are counted.
_MAX_LISTED = 10

# PIL raises these on corrupt or truncated files (SyntaxError: broken PNG chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BadExampleError(ValueError):
  """One example's source files are unusable; the message names the file(s) at fault."""


class PreparedLocally:
  """Mixin for builders that download nothing: TFDS would announce 'Downloading and preparing
  dataset Unknown size ...' on stdout, which misleads on a machine with no network."""

  def _log_download_bytes(self) -> None:
    logging.info('Preparing %s in %s (nothing is downloaded).', self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info('Prepared %s in %s; later runs reuse it.', self.name, self.data_dir)


class ManualSourceBuilder(PreparedLocally, tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base for builders that read an extracted official dataset from the manual folder.

  `skip_bad_examples=True` turns a bad example (corrupt image, size mismatch, label value
  outside the classes, file named by a split list but absent) into a logged skip naming
  the file; by default it is an error. Missing folders are always an error.
  """

  CLASS_NAMES: tuple[str, ...] = ()
  IGNORE_LABEL = IGNORE_LABEL
  # The expected folder layout, shown in MANUAL_DOWNLOAD_INSTRUCTIONS and in errors.
  LAYOUT = ''
  # The paths under the manual folder that preparation needs: checked when preparing, and by
  # a sweep before its first run (`missing_manual_paths`).
  REQUIRED: tuple[str, ...] = ()

  def __init__(self, *, skip_bad_examples: bool = False, **kwargs):
    self._skip_bad_examples = skip_bad_examples
    super().__init__(**kwargs)
    self._original_state['skip_bad_examples'] = skip_bad_examples  # kept when pickled

  @classmethod
  def builder_kwargs(cls, data_cfg) -> dict:
    """Constructor options from `config.data` (used by aaf_jax.data.get_builder)."""
    return {'skip_bad_examples': bool(data_cfg.get('skip_bad_examples', False))}

  def _manual_root(self, dl_manager) -> epath.Path:
    """The manual folder, or a FileNotFoundError showing the expected layout."""
    try:
      return epath.Path(dl_manager.manual_dir)
    except AssertionError as e:  # tfds raises AssertionError for a missing/empty folder
      tfds_reason = str(e).partition(' Create it')[0]  # names the folder; the rest is LAYOUT
      raise FileNotFoundError(
        f'{self.name}: {tfds_reason} Pass the '
        'folder holding the extracted dataset as DownloadConfig(manual_dir=...) or '
        f'--manual_dir; it must contain:\n{self.LAYOUT}'
      ) from None

  @classmethod
  def missing_manual_paths(cls, manual_dir) -> list[str]:
    """The REQUIRED paths absent under `manual_dir` (a quick look, no file is read)."""
    root = epath.Path(manual_dir)
    return [p for p in cls.REQUIRED if not (root / p).exists()]

  def _require(self, root: epath.Path, relpaths: Sequence[str]) -> None:
    """Raises FileNotFoundError listing every required path absent under root."""
    missing = [p for p in relpaths if not (root / p).exists()]
    if missing:
      raise FileNotFoundError(
        f'{self.name}: missing under {root}: {", ".join(missing)}\nExpected layout:\n{self.LAYOUT}'
      )

  def _keep_present(self, items: Sequence, listed_in: str, paths_of: Callable) -> list:
    """Items whose files all exist; absent files are an error (or skips) naming them.

    listed_in names where the items came from (a split file, a folder listing).
    """
    kept, missing = [], []
    for item in items:
      absent = [str(p) for p in paths_of(item) if not epath.Path(p).exists()]
      if absent:
        missing.append(', '.join(absent))
      else:
        kept.append(item)
    if missing and not self._skip_bad_examples:
      raise FileNotFoundError(
        f'{self.name}: {len(missing)} example(s) listed in {listed_in} lack files: '
        + _listing(missing)
      )
    for files in missing:
      logging.warning('Skipping an example listed in %s: missing %s', listed_in, files)
    return kept

  def _checked_examples(
    self, split: str, items: Sequence, key_of: Callable, make_example: Callable
  ) -> Iterator[tuple[str, dict]]:
    """Yields (key, make_example(item)); a BadExampleError is raised or logged and skipped."""
    yielded = 0
    for item in items:
      try:
        example = make_example(item)
      except BadExampleError as e:
        if not self._skip_bad_examples:
          raise
        logging.warning('Skipping bad example in split %s: %s', split, e)
        continue
      yielded += 1
      yield key_of(item), example
    if yielded < len(items):
      logging.warning(
        '%s: skipped %d bad example(s) in split %s.', self.name, len(items) - yielded, split
      )
    if not yielded:
      raise ValueError(f'{self.name}: split {split} has no usable examples')


def _listing(entries: Sequence[str]) -> str:
  shown = '; '.join(entries[:_MAX_LISTED])
  more = len(entries) - _MAX_LISTED
  return shown + (f'; ... and {more} more' if more > 0 else '')


def read_id_list(path: epath.Path) -> list[str]:
  """Reads a split file: one image id per line, blank lines ignored, order kept."""
  ids = [line.strip() for line in epath.Path(path).read_text().splitlines()]
  ids = [i for i in ids if i]
  bad = [i for i in ids if len(i.split()) != 1]
  if bad:
    raise ValueError(f'{path}: expected one image id per line, got {bad[:3]}')
  check_unique(path, ids)
  return ids


def check_unique(path, ids: Sequence) -> None:
  """A split list naming an image twice would weight it twice; that is an error."""
  seen, repeated = set(), []
  for i in ids:
    if i in seen:
      repeated.append(i)
    seen.add(i)
  if repeated:
    raise ValueError(f'{path}: lists {repeated[:_MAX_LISTED]} more than once')


def read_rgb_image(path: epath.Path) -> tuple[bytes, tuple[int, int]]:
  """Returns (encoded RGB image, (H, W)) after a full decode that catches truncation.

  RGB JPEG/PNG bytes are kept as they are; other modes (grey, CMYK, RGBA) are converted to
  RGB and stored as PNG so every reader gets 3 channels.
  """
  data = epath.Path(path).read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      if img.mode == 'RGB' and img.format in ('JPEG', 'PNG'):
        return data, (img.height, img.width)
      return _png_bytes(img.convert('RGB')), (img.height, img.width)
  except _DECODE_ERRORS as e:
    raise BadExampleError(f'{path}: cannot decode image ({e})') from e


def read_index_png(path: epath.Path) -> np.ndarray:
  """Returns the stored indices of a palette ('P') or grey ('L') PNG, [H,W] uint8.

  Palette label images must be read as indices: converting them to RGB gives colours.
  """
  try:
    with Image.open(epath.Path(path)) as img:
      mode, indices = img.mode, np.array(img)  # np.array decodes the whole file
  except _DECODE_ERRORS as e:
    raise BadExampleError(f'{path}: cannot decode label image ({e})') from e
  if mode not in ('P', 'L'):
    raise BadExampleError(
      f'{path}: label image has PIL mode {mode!r}; expected a palette (P) or 8-bit grey '
      '(L) PNG whose values are the label indices'
    )
  return indices


def encode_mask(mask: np.ndarray) -> bytes:
  """PNG bytes of a [H,W] uint8 mask (stored losslessly, one channel)."""
  return _png_bytes(Image.fromarray(np.asarray(mask, dtype=np.uint8)))


def _png_bytes(img: Image.Image) -> bytes:
  buffer = io.BytesIO()
  img.save(buffer, format='PNG')
  return buffer.getvalue()


def check_same_size(path_a, hw_a: tuple[int, int], path_b, hw_b: tuple[int, int]) -> None:
  if tuple(hw_a) != tuple(hw_b):
    raise BadExampleError(
      f'size mismatch: {path_a} is {hw_a[0]}x{hw_a[1]} (HxW) but {path_b} is {hw_b[0]}x{hw_b[1]}'
    )


def check_label_values(path, label: np.ndarray, num_classes: int, ignore_label: int = IGNORE_LABEL):
  """Raises unless every value is a class index (0..num_classes-1) or the ignore label."""
  bad = np.unique(label[(label >= num_classes) & (label != ignore_label)])
  if bad.size:
    raise BadExampleError(
      f'{path}: label values {bad[:_MAX_LISTED].tolist()} are neither a class '
      f'(0..{num_classes - 1}) nor the ignore label {ignore_label}'
    )
