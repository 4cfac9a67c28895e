"""Cityscapes with fine annotations, labels mapped to the 19 evaluation classes (train ids).

Splits: `train` (2,975 images on the real data) and `val` (500). Features: 'image' (RGB),
'label' (train id 0..18, 255 = ignore), 'instance_id' (gtFine instanceIds, uint16: labelId * 1000
+ k for each object, for the iIoU score), 'name' (the image file stem, e.g.
'aachen_000000_000019_leftImg8bit').

TFDS's own `cityscapes` builder is not reused: it reads the zip archives rather than the
extracted tree, stores the raw labelIds (34 ids, not the 19 train ids) under other feature
names ('image_left', 'segmentation_label'), and so would need a mapping at every read.
"""

import numpy as np
import tensorflow_datasets as tfds
from cityscapesscripts.helpers import labels as cityscapes_labels
from etils import epath
from PIL import Image

from aaf_jax.data import base

NUM_CLASSES = 19
SPLITS = ('train', 'val')
_IMAGE_SUFFIX = '_leftImg8bit.png'
_LABEL_SUFFIX = '_gtFine_labelIds.png'
_INSTANCE_SUFFIX = '_gtFine_instanceIds.png'

_LAYOUT = """\
  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
(leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip, extracted side by side)"""


def _train_id_table() -> np.ndarray:
  """[256] int16: labelId -> train id (255 = ignore), -1 where the value is no labelId.

  From the official table; labelId -1 (license plate) is 255 once stored as uint8.
  """
  table = np.full(256, -1, np.int16)
  for label in cityscapes_labels.labels:
    table[label.id % 256] = label.trainId if 0 <= label.trainId < NUM_CLASSES else 255
  return table


_TRAIN_ID_TABLE = _train_id_table()

CLASS_NAMES = tuple(
  label.name
  for label in sorted(cityscapes_labels.labels, key=lambda label: label.trainId)
  if 0 <= label.trainId < NUM_CLASSES
)


def label_ids_to_train_ids(label_ids: np.ndarray, path) -> np.ndarray:
  """Maps Cityscapes labelIds (-1 or 255 = license plate) to train ids, [H,W] uint8.

  A value that is no Cityscapes labelId is a BadExampleError naming `path`.
  """
  ids = np.asarray(label_ids).astype(np.int64)
  ids = np.where(ids == -1, 255, ids)
  in_table = (ids >= 0) & (ids <= 255)
  train_ids = np.where(in_table, _TRAIN_ID_TABLE[ids.clip(0, 255)], -1)
  bad = np.unique(ids[train_ids < 0])
  if bad.size:
    raise base.BadExampleError(
      f'{path}: values {bad[:10].tolist()} are not Cityscapes labelIds (0..33, -1)'
    )
  return train_ids.astype(np.uint8)


class LabelIdBuilder(base.ManualSourceBuilder, skip_registration=True):
  """Base for datasets of (RGB image, labelId PNG) pairs in Cityscapes' label ids: Cityscapes
  itself and GTA5. Examples store the 19 train ids and are keyed by the image file stem."""

  CLASS_NAMES = CLASS_NAMES

  def _generate_examples(self, split: str, pairs: list[tuple[epath.Path, epath.Path]]):
    return self._checked_examples(split, pairs, lambda pair: pair[0].stem, self._example)

  def _example(self, pair: tuple[epath.Path, epath.Path]) -> dict:
    image_path, label_path = pair
    image, image_hw = base.read_rgb_image(image_path)
    label_ids = base.read_index_png(label_path)
    base.check_same_size(image_path, image_hw, label_path, label_ids.shape)
    return {
      'image': image,
      'label': base.encode_mask(label_ids_to_train_ids(label_ids, label_path)),
      'name': image_path.stem,
    }


def read_instance_ids(path: epath.Path) -> np.ndarray:
  """The gtFine instanceIds PNG (16-bit grey) as [H,W] uint16; BadExampleError naming it."""
  try:
    with Image.open(epath.Path(path)) as img:
      ids = np.array(img)
  except (OSError, SyntaxError, ValueError) as e:
    raise base.BadExampleError(f'{path}: cannot decode instanceIds image ({e})') from e
  if ids.ndim != 2 or ids.min(initial=0) < 0 or ids.max(initial=0) >= 34 * 1000:
    raise base.BadExampleError(
      f'{path}: expected a one-channel instanceIds image with values labelId or '
      'labelId * 1000 + k (below 34000)'
    )
  return ids.astype(np.uint16)


class CityscapesFine(LabelIdBuilder):
  """Cityscapes fine train/val, 19 train-id classes, with the instance ids for iIoU."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Fine train/val, labels mapped to the 19 train ids.',
    '1.1.0': 'Adds the gtFine instanceIds as `instance_id`, for the iIoU score.',
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Extract Cityscapes into the manual folder:\n{_LAYOUT}'
  LAYOUT = _LAYOUT
  REQUIRED = tuple(f'{top}/{s}' for top in ('leftImg8bit', 'gtFine') for s in SPLITS)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=base.example_features(
        instance_id=tfds.features.Tensor(
          shape=(None, None, 1), dtype=np.uint16, encoding=tfds.features.Encoding.ZLIB
        )
      ),
      homepage='https://www.cityscapes-dataset.com/',
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    root = self._manual_root(dl_manager)
    self._require(root, self.REQUIRED)
    return {split: self._generate_examples(split, self._pairs(root, split)) for split in SPLITS}

  def _example(self, pair: tuple[epath.Path, epath.Path]) -> dict:
    example = super()._example(pair)
    label_path = pair[1]
    instance_path = label_path.parent / label_path.name.replace(_LABEL_SUFFIX, _INSTANCE_SUFFIX)
    if not instance_path.exists():
      raise base.BadExampleError(f'{instance_path}: missing (the instanceIds of {label_path})')
    ids = read_instance_ids(instance_path)
    with Image.open(label_path) as label:  # the header only: the size was checked on reading
      base.check_same_size(label_path, (label.height, label.width), instance_path, ids.shape)
    example['instance_id'] = ids[..., None]
    return example

  def _pairs(self, root: epath.Path, split: str) -> list[tuple[epath.Path, epath.Path]]:
    """(image, label) paths of a split; every image needs its label and vice versa."""
    image_dir, label_dir = root / 'leftImg8bit' / split, root / 'gtFine' / split
    images = sorted(image_dir.glob(f'*/*{_IMAGE_SUFFIX}'))
    if not images:
      raise FileNotFoundError(
        f'{self.name}: no <city>/*{_IMAGE_SUFFIX} under {image_dir}; expected:\n{_LAYOUT}'
      )
    labels = sorted(label_dir.glob(f'*/*{_LABEL_SUFFIX}'))
    self._keep_present(
      labels,
      label_dir,
      lambda p: [image_dir / p.parent.name / p.name.replace(_LABEL_SUFFIX, _IMAGE_SUFFIX)],
    )
    pairs = [
      (p, label_dir / p.parent.name / p.name.replace(_IMAGE_SUFFIX, _LABEL_SUFFIX)) for p in images
    ]
    return self._keep_present(pairs, image_dir, lambda pair: pair[1:])


_CITATION = """\
@inproceedings{cordts2016cityscapes,
  title={The Cityscapes Dataset for Semantic Urban Scene Understanding},
  author={Cordts, Marius and Omran, Mohamed and Ramos, Sebastian and Rehfeld, Timo and
          Enzweiler, Markus and Benenson, Rodrigo and Franke, Uwe and Roth, Stefan and
          Schiele, Bernt},
  booktitle={Proc. of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2016}
}"""
