"""Tiny VOC+SBD, Cityscapes and GTA5 trees in their official layouts, for the dataset tests.

Every image is one flat colour (JPEG keeps it nearly exact), so a read-back example can be
matched to its source file by its mean colour.
"""

import pathlib

import numpy as np
import scipy.io
from PIL import Image

H, W = 8, 10

# A palette whose colours are not the indices: reading RGB instead of indices would show.
PALETTE = [(37 * i + 11) % 256 for i in range(256 * 3)]


def colour(seed: int) -> tuple[int, int, int]:
  """A distinct flat colour per example, far from neighbouring seeds."""
  return ((seed * 53 + 30) % 220 + 20, (seed * 97 + 60) % 220 + 20, (seed * 31 + 90) % 220 + 20)


def write_rgb(path: pathlib.Path, seed: int, size=(H, W)) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((*size, 3), colour(seed), np.uint8)).save(path)


def write_palette_png(path: pathlib.Path, indices: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  indices = np.asarray(indices, np.uint8)
  img = Image.frombytes('P', (indices.shape[1], indices.shape[0]), indices.tobytes())
  img.putpalette(PALETTE)
  img.save(path)


def write_grey_png(path: pathlib.Path, values: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(values, np.uint8)).save(path)


def write_sbd_mat(path: pathlib.Path, struct_name: str, segmentation: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(path, {struct_name: {'Segmentation': np.asarray(segmentation, np.uint8)}})


def voc_masks(seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
  """(class mask, instance mask) [H,W] for an example; VOC masks carry a 255 boundary."""
  rng = np.random.default_rng(seed * 2 + (source == 'sbd'))
  label = rng.integers(0, 21, size=(H, W)).astype(np.uint8)
  instance = rng.integers(0, 4, size=(H, W)).astype(np.uint8)
  if source == 'voc':
    label[0, :] = 255
    instance[0, :] = 255
  return label, instance


def make_voc_tree(
  root: pathlib.Path,
  *,
  voc_train: list[str],
  voc_val: list[str],
  sbd_train: list[str],
  sbd_val: list[str],
) -> dict[tuple[str, str], int]:
  """Writes VOCdevkit/VOC2012 and benchmark_RELEASE/dataset; returns {(source, id): seed}.

  VOC files are written for every VOC id, SBD files for every SBD id, with different
  colours and masks per source so the test can tell which one a builder used.
  """
  voc, sbd = root / 'VOCdevkit/VOC2012', root / 'benchmark_RELEASE/dataset'
  seeds = {}
  for name in dict.fromkeys(voc_train + voc_val):
    seed = seeds[('voc', name)] = len(seeds)
    write_rgb(voc / 'JPEGImages' / f'{name}.jpg', seed)
    label, instance = voc_masks(seed, 'voc')
    write_palette_png(voc / 'SegmentationClass' / f'{name}.png', label)
    write_palette_png(voc / 'SegmentationObject' / f'{name}.png', instance)
  for name in dict.fromkeys(sbd_train + sbd_val):
    seed = seeds[('sbd', name)] = len(seeds)
    write_rgb(sbd / 'img' / f'{name}.jpg', seed)
    label, instance = voc_masks(seed, 'sbd')
    write_sbd_mat(sbd / 'cls' / f'{name}.mat', 'GTcls', label)
    write_sbd_mat(sbd / 'inst' / f'{name}.mat', 'GTinst', instance)
  lists = voc / 'ImageSets/Segmentation'
  lists.mkdir(parents=True, exist_ok=True)
  for folder, split, ids in [
        (lists, 'train', voc_train), (lists, 'val', voc_val),
        (sbd, 'train', sbd_train), (sbd, 'val', sbd_val),
    ]:  # fmt: skip
    (folder / f'{split}.txt').write_text(''.join(f'{i}\n' for i in ids))
  return seeds


def make_cityscapes_tree(
  root: pathlib.Path,
  cities: dict[str, dict[str, int]],
  label_ids: dict[str, np.ndarray],
  instances: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
  """Writes leftImg8bit/ and gtFine/ for {split: {city: frames}}; returns {stem: seed}.

  label_ids[stem] gives the labelIds image of that example (default: all road, id 7),
  instances[stem] its instanceIds (default: the labelIds, no objects).
  """
  instances = instances or {}
  seeds = {}
  for split, per_city in cities.items():
    for city, frames in per_city.items():
      for frame in range(frames):
        prefix = f'{city}_000000_{frame:06d}'
        stem = f'{prefix}_leftImg8bit'
        seed = seeds[stem] = len(seeds)
        write_rgb(root / 'leftImg8bit' / split / city / f'{stem}.png', seed)
        ids = label_ids.get(stem, np.full((H, W), 7, np.uint8))
        label_path = root / 'gtFine' / split / city / f'{prefix}_gtFine_labelIds.png'
        write_grey_png(label_path, ids)
        instance_ids = instances.get(stem, ids.astype(np.uint16))
        instance_path = root / 'gtFine' / split / city / f'{prefix}_gtFine_instanceIds.png'
        Image.fromarray(instance_ids.astype(np.uint16)).save(instance_path)
  return seeds


def make_gta5_tree(
  root: pathlib.Path, count: int, split: dict[str, list[int]] | None = None
) -> dict[str, np.ndarray]:
  """Writes images/ and labels/ (palette labelIds) for images 1..count; returns {stem: ids}."""
  rng = np.random.default_rng(0)
  ids_by_stem = {}
  for number in range(1, count + 1):
    stem = f'{number:05d}'
    write_rgb(root / 'images' / f'{stem}.png', number)
    ids = ids_by_stem[stem] = rng.integers(0, 34, size=(H, W)).astype(np.uint8)
    write_palette_png(root / 'labels' / f'{stem}.png', ids)
  if split is not None:
    scipy.io.savemat(
      root / 'split.mat',
      {key: np.asarray(numbers, np.float64)[:, None] for key, numbers in split.items()},
    )
  return ids_by_stem
