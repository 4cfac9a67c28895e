"""GTA5 (Playing for Data), labels mapped to the 19 Cityscapes train ids.

Used to test how a Cityscapes-trained model generalises. Splits: `train`, `val`, `test` from
the official `split.mat` (1-based image numbers) when it is present, else one split `full`
with every image (TFDS reserves the name `all`). Features: 'image' (RGB), 'label'
(Cityscapes train id 0..18, 255 = ignore), 'name' (the file stem, e.g. '00001').

Some real GTA5 images differ in size from their label: that is an error naming both files
unless the builder is made with skip_bad_examples=True (then a logged skip).
"""

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath

from aaf_jax.data import base, cityscapes

_SPLIT_KEYS = {'train': 'trainIds', 'val': 'valIds', 'test': 'testIds'}

_LAYOUT = """\
  images/<number>.png      RGB, numbered 00001.png ...
  labels/<number>.png      palette PNG: index = Cityscapes labelId
  split.mat                optional: trainIds, valIds, testIds (1-based image numbers);
                           without it every image goes to one split 'full'
(the images and labels archives, extracted side by side, plus the official split.mat)"""


class Gta5(cityscapes.LabelIdBuilder):
  """GTA5 semantic segmentation with the 19 Cityscapes train-id classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Labels mapped to the 19 Cityscapes train ids.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f'Extract GTA5 into the manual folder:\n{_LAYOUT}'
  LAYOUT = _LAYOUT
  REQUIRED = ('images', 'labels')

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=base.example_features(),
      homepage='https://download.visinf.tu-darmstadt.de/data/from_games/',
      citation=_CITATION,
    )

  def _split_generators(self, dl_manager):
    root = self._manual_root(dl_manager)
    self._require(root, self.REQUIRED)
    images, labels = root / 'images', root / 'labels'
    split_file = root / 'split.mat'
    if not split_file.exists():
      names = [p.stem for p in sorted(images.glob('*.png'))]
      if not names:
        raise FileNotFoundError(f'{self.name}: no *.png under {images}; expected:\n{_LAYOUT}')
      label_names = [p.stem for p in sorted(labels.glob('*.png'))]
      self._keep_present(label_names, labels, lambda n: [images / f'{n}.png'])
      splits = {'full': (names, images)}
    else:
      splits = {
        split: ([f'{n:05d}' for n in numbers], split_file)
        for split, numbers in _read_split_file(split_file).items()
      }
    generators = {}
    for split, (names, listed_in) in splits.items():
      pairs = [(images / f'{n}.png', labels / f'{n}.png') for n in names]
      pairs = self._keep_present(pairs, listed_in, lambda pair: pair)
      generators[split] = self._generate_examples(split, pairs)
    return generators


def _read_split_file(path: epath.Path) -> dict[str, list[int]]:
  """split name -> 1-based image numbers, from the official split.mat."""
  try:
    with epath.Path(path).open('rb') as f:
      mat = scipy.io.loadmat(f, squeeze_me=True)
  except (scipy.io.matlab.MatReadError, ValueError, OSError, EOFError, TypeError) as e:
    raise ValueError(f'{path}: cannot read the split file ({e})') from e
  missing = [key for key in _SPLIT_KEYS.values() if key not in mat]
  if missing:
    found = sorted(k for k in mat if not k.startswith('__'))
    raise ValueError(
      f'{path}: missing keys {missing} (expected {list(_SPLIT_KEYS.values())}, found {found})'
    )
  splits = {}
  for split, key in _SPLIT_KEYS.items():
    numbers = np.atleast_1d(mat[key]).ravel()
    if not numbers.size:
      raise ValueError(f'{path}: {key} is empty; every split needs images')
    numeric = np.issubdtype(numbers.dtype, np.number)
    if not numeric or np.any((numbers < 1) | (numbers % 1 != 0)):
      raise ValueError(f'{path}: {key} must hold 1-based image numbers, got {numbers[:5]}')
    splits[split] = [int(n) for n in numbers]
    base.check_unique(f'{path} ({key})', splits[split])
  return splits


_CITATION = """\
@inproceedings{richter2016playing,
  title={Playing for Data: Ground Truth from Computer Games},
  author={Richter, Stephan R. and Vineet, Vibhav and Roth, Stefan and Koltun, Vladlen},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2016}
}"""
