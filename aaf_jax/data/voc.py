"""PASCAL VOC 2012 segmentation with the SBD extra annotations (the "train_aug" set).

Splits: `train_aug` = VOC train + SBD train + SBD val - VOC val (10,582 images on the real
data), `train` (VOC train, 1,464), `val` (VOC val, 1,449). When an image has a VOC label PNG
it is used (with its VOC JPEG and SegmentationObject mask) rather than SBD's annotation.

Features: 'image' (RGB), 'label' (class index, 255 = VOC's boundary band / void),
'instance' (per-image instance index, 0 = background), 'name' (image id). Instance masks come
from SegmentationObject (255 = boundary band) for VOC-labelled images and from SBD's
GTinst.Segmentation for SBD-only images (SBD has no boundary band).
"""

import dataclasses

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath

from aaf_jax.data import base

_VOC = 'VOCdevkit/VOC2012'
_SBD = 'benchmark_RELEASE/dataset'
_VOC_LISTS = f'{_VOC}/ImageSets/Segmentation'

_LAYOUT = """\
  VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  VOCdevkit/VOC2012/SegmentationClass/<id>.png    palette PNG: index = class, 255 = boundary
  VOCdevkit/VOC2012/SegmentationObject/<id>.png   palette PNG: index = instance, 255 = boundary
  VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt and val.txt
  benchmark_RELEASE/dataset/img/<id>.jpg
  benchmark_RELEASE/dataset/cls/<id>.mat          struct GTcls with field Segmentation
  benchmark_RELEASE/dataset/inst/<id>.mat         struct GTinst with field Segmentation
  benchmark_RELEASE/dataset/train.txt and val.txt
(the VOCtrainval_11-May-2012.tar and SBD benchmark.tgz archives, extracted side by side)"""


@dataclasses.dataclass(frozen=True)
class _Source:
  """Where one example's files are; SBD examples hold .mat annotations."""

  name: str
  image: epath.Path
  label: epath.Path
  instance: epath.Path
  from_sbd: bool

  @property
  def paths(self) -> tuple[epath.Path, ...]:
    return (self.image, self.label, self.instance)


class VocAug(base.ManualSourceBuilder):
  """PASCAL VOC 2012 + SBD semantic segmentation, 21 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'VOC 2012 train/val and the SBD-augmented train_aug split.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Extract VOC 2012 and SBD into the manual folder:\n{_LAYOUT}'
  LAYOUT = _LAYOUT
  REQUIRED = (
        f'{_VOC}/JPEGImages', f'{_VOC}/SegmentationClass', f'{_VOC}/SegmentationObject',
        f'{_VOC_LISTS}/train.txt', f'{_VOC_LISTS}/val.txt',
        f'{_SBD}/img', f'{_SBD}/cls', f'{_SBD}/inst', f'{_SBD}/train.txt', f'{_SBD}/val.txt',
    )  # fmt: skip
  CLASS_NAMES = (
        'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
        'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant',
        'sheep', 'sofa', 'train', 'tvmonitor',
    )  # fmt: skip

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=base.example_features(instance=base.mask_feature()),
      homepage='http://host.robots.ox.ac.uk/pascal/VOC/voc2012/',
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    root = self._manual_root(dl_manager)
    voc_lists, sbd_lists = _VOC_LISTS, _SBD
    self._require(root, self.REQUIRED)
    voc_train = base.read_id_list(root / voc_lists / 'train.txt')
    voc_val = base.read_id_list(root / voc_lists / 'val.txt')
    sbd_ids = base.read_id_list(root / sbd_lists / 'train.txt') + base.read_id_list(
      root / sbd_lists / 'val.txt'
    )
    excluded = set(voc_train) | set(voc_val)
    sbd_only = list(dict.fromkeys(i for i in sbd_ids if i not in excluded))

    def keep(ids, listed_in, voc_only):
      sources = [self._source(root, i, voc_only) for i in ids]
      return self._keep_present(sources, listed_in, lambda s: s.paths)

    train = keep(voc_train, root / voc_lists / 'train.txt', voc_only=True)
    val = keep(voc_val, root / voc_lists / 'val.txt', voc_only=True)
    extra = keep(sbd_only, f'{root / sbd_lists}/train.txt or val.txt', voc_only=False)
    return {
      'train_aug': self._generate_examples('train_aug', train + extra),
      'train': self._generate_examples('train', train),
      'val': self._generate_examples('val', val),
    }

  @staticmethod
  def _source(root: epath.Path, name: str, voc_only: bool) -> _Source:
    """The VOC files when voc_only or a VOC label PNG exists for the image, else SBD's."""
    voc_label = root / _VOC / 'SegmentationClass' / f'{name}.png'
    if voc_only or voc_label.exists():
      return _Source(
        name=name,
        image=root / _VOC / 'JPEGImages' / f'{name}.jpg',
        label=voc_label,
        instance=root / _VOC / 'SegmentationObject' / f'{name}.png',
        from_sbd=False,
      )
    return _Source(
      name=name,
      image=root / _SBD / 'img' / f'{name}.jpg',
      label=root / _SBD / 'cls' / f'{name}.mat',
      instance=root / _SBD / 'inst' / f'{name}.mat',
      from_sbd=True,
    )

  def _generate_examples(self, split: str, sources: list[_Source]):
    return self._checked_examples(split, sources, lambda s: s.name, self._example)

  def _example(self, source: _Source) -> dict:
    image, image_hw = base.read_rgb_image(source.image)
    if source.from_sbd:
      label = _read_sbd_mask(source.label, 'GTcls')
      instance = _read_sbd_mask(source.instance, 'GTinst')
    else:
      label = base.read_index_png(source.label)
      instance = base.read_index_png(source.instance)
    base.check_same_size(source.image, image_hw, source.label, label.shape)
    base.check_same_size(source.image, image_hw, source.instance, instance.shape)
    base.check_label_values(source.label, label, len(self.CLASS_NAMES), self.IGNORE_LABEL)
    return {
      'image': image,
      'label': base.encode_mask(label),
      'instance': base.encode_mask(instance),
      'name': source.name,
    }


def _read_sbd_mask(path: epath.Path, struct_name: str) -> np.ndarray:
  """`<struct_name>.Segmentation` of an SBD .mat file as [H,W] uint8."""
  try:
    with epath.Path(path).open('rb') as f:
      mat = scipy.io.loadmat(f, squeeze_me=True, struct_as_record=False)
  except (scipy.io.matlab.MatReadError, ValueError, OSError, EOFError, TypeError) as e:
    raise base.BadExampleError(f'{path}: cannot read .mat file ({e})') from e
  segmentation = getattr(mat.get(struct_name), 'Segmentation', None)
  if segmentation is None:
    keys = sorted(k for k in mat if not k.startswith('__'))
    raise base.BadExampleError(
      f'{path}: expected a struct {struct_name!r} with field Segmentation; found {keys}'
    )
  segmentation = np.asarray(segmentation)
  if (
    segmentation.ndim != 2
    or not np.issubdtype(segmentation.dtype, np.integer)
    or segmentation.min(initial=0) < 0
    or segmentation.max(initial=0) > 255
  ):
    raise base.BadExampleError(
      f'{path}: {struct_name}.Segmentation must be a 2-D integer array in 0..255, got '
      f'{segmentation.dtype} of shape {segmentation.shape}'
    )
  return segmentation.astype(np.uint8)


_CITATION = """\
@article{everingham2015pascal,
  title={The Pascal Visual Object Classes Challenge: A Retrospective},
  author={Everingham, M. and Eslami, S. M. A. and Van Gool, L. and Williams, C. K. I. and
          Winn, J. and Zisserman, A.},
  journal={International Journal of Computer Vision},
  volume={111}, number={1}, pages={98--136}, year={2015}
}
@inproceedings{hariharan2011semantic,
  title={Semantic Contours from Inverse Detectors},
  author={Hariharan, Bharath and Arbel{\\'a}ez, Pablo and Bourdev, Lubomir and Maji, Subhransu
          and Malik, Jitendra},
  booktitle={International Conference on Computer Vision (ICCV)},
  year={2011}
}"""
