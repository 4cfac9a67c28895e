"""Instance-aware scores: PASCAL VOC's instance-wise mIoU and Cityscapes' iIoU.

Both are sums accumulated per batch inside the eval step (small [2, C] arrays next to the
confusion matrix) and turned into scores once the split is done.

VOC instance-wise mIoU (AAF_SPEC.md): each image's per-class IoU, weighted by the number of
ground-truth instances of that class in the image, averaged over images, then over classes.
An instance is a value 0..254 of the image's SegmentationObject mask (0 is the background
region, one background instance); its class is the most frequent class label under it (ties:
the lower class). The 255 boundary band is no instance. The authors' script also counts the
band, as a second background instance of every image, and so gives background twice our
weight in each image; since every VOC image has both, the background average is the same.

Cityscapes iIoU (cityscapesscripts' evalPixelLevelSemanticLabeling): for the classes with
instances, each instance's true positives and false negatives are weighted by the class's
average instance size over its own size, so large and small objects count alike;
iIoU = tp_w / (tp_w + fn_w + fp), fp being the plain pixel false positives of mIoU.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax import boundary

VOC_INSTANCE_VALUES = 256  # SegmentationObject is a uint8 palette PNG; 255 is the band
_VOC_BAND = 255


def voc_instance_sums(labels, preds, instances, counted, num_classes: int):
  """float32 [2, C]: per class, the sum over images of IoU * instance count, and the count.

  labels, preds, instances [N,H,W] int; counted [N,H,W] bool (a class label in a real example).
  """
  n = labels.shape[0]
  c = num_classes
  image = jnp.arange(n)[:, None, None]
  label = jnp.where(counted, labels, 0)
  pred = jnp.where(counted, preds, 0)

  def per_image_class(index, where):  # [N,C] pixel counts of `index` (image, class) at `where`
    flat = jnp.where(where, image * c + index, n * c).reshape(-1)
    return jnp.bincount(flat, length=n * c + 1)[:-1].reshape(n, c)

  true_pos = per_image_class(label, counted & (pred == label))
  union = per_image_class(label, counted) + per_image_class(pred, counted) - true_pos
  iou = jnp.where(union > 0, true_pos / jnp.maximum(union, 1), 0.0)  # [N,C]

  in_instance = counted & (instances >= 0) & (instances < _VOC_BAND)
  pair = (image * VOC_INSTANCE_VALUES + instances) * c + label  # (image, instance, class)
  flat = jnp.where(in_instance, pair, n * VOC_INSTANCE_VALUES * c).reshape(-1)
  histogram = jnp.bincount(flat, length=n * VOC_INSTANCE_VALUES * c + 1)[:-1]
  histogram = histogram.reshape(n, VOC_INSTANCE_VALUES, c)
  present = histogram.sum(-1) > 0  # [N,256]
  majority = jax.nn.one_hot(jnp.argmax(histogram, -1), c) * present[..., None]
  count = majority.sum(1)  # [N,C] instances per class and image
  return jnp.stack([(iou * count).sum(0), count.sum(0)]).astype(jnp.float32)


def voc_instance_scores(sums, class_names) -> dict:
  """{'instance_miou', 'per_class_instance_iou'} from summed `voc_instance_sums`.

  A class without instances has no score (None) and is left out of the mean.
  """
  mean, per_class = boundary.class_ratios(*np.asarray(sums), class_names)
  return {'instance_miou': mean, 'per_class_instance_iou': per_class}


CITYSCAPES_ID_SPAN = 1000  # instanceIds: labelId * 1000 + k for objects, the labelId otherwise
_CITYSCAPES_IDS = 34 * CITYSCAPES_ID_SPAN


@functools.cache
def _cityscapes_instance_tables(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """[34000] train id of each instance id (-1: no instance of an evaluated class) and [C] the
  evaluator's average instance size per train id (0 for classes without instances)."""
  from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
  from cityscapesscripts.helpers import labels as cityscapes_labels

  train_id = np.full(_CITYSCAPES_IDS, -1, np.int32)
  average_size = np.zeros(num_classes, np.float64)
  for label in cityscapes_labels.labels:
    if label.hasInstances and not label.ignoreInEval and 0 <= label.trainId < num_classes:
      # The evaluator takes ids strictly above 1000 as instances.
      first = max(label.id * CITYSCAPES_ID_SPAN, CITYSCAPES_ID_SPAN + 1)
      train_id[first : (label.id + 1) * CITYSCAPES_ID_SPAN] = label.trainId
      average_size[label.trainId] = official.args.avgClassSize[label.name]
  return train_id, average_size


def cityscapes_instance_sums(preds, instance_ids, valid, num_classes: int):
  """float32 [2, C]: per train id, the instance-weighted true positives and false negatives.

  preds [N,H,W] train ids; instance_ids [N,H,W] the gtFine instanceIds values; valid [N].
  """
  n = preds.shape[0]
  train_id, average_size = _cityscapes_instance_tables(num_classes)
  ids = jnp.clip(instance_ids, 0, _CITYSCAPES_IDS - 1)
  is_instance = (jnp.asarray(train_id)[ids] >= 0) & valid[:, None, None]
  image = jnp.arange(n)[:, None, None]
  flat = jnp.where(is_instance, image * _CITYSCAPES_IDS + ids, n * _CITYSCAPES_IDS).reshape(-1)
  hit = (preds == jnp.asarray(train_id)[ids]).reshape(-1)

  def per_instance(weights):  # [N,34000]
    return jnp.bincount(flat, weights, length=n * _CITYSCAPES_IDS + 1)[:-1].reshape(n, -1)

  size = per_instance(jnp.ones_like(hit, jnp.float32))
  true_pos = per_instance(hit.astype(jnp.float32))
  owner = jax.nn.one_hot(jnp.asarray(train_id), num_classes)  # [34000,C], no row for -1
  weight = jnp.where(size > 0, 1.0 / jnp.maximum(size, 1.0), 0.0) * (
    owner @ jnp.asarray(average_size, jnp.float32)
  )
  tp_weighted = ((true_pos * weight).sum(0)) @ owner
  fn_weighted = (((size - true_pos) * weight).sum(0)) @ owner
  return jnp.stack([tp_weighted, fn_weighted]).astype(jnp.float32)


def cityscapes_scores(confusion, sums, class_names) -> dict:
  """{'iiou', 'per_class_iiou'} from the confusion matrix and summed `cityscapes_instance_sums`.

  Classes without instances (or with an empty denominator) have no score and are left out of
  the mean, as in the evaluator.
  """
  confusion = np.asarray(confusion, np.float64)
  _, average_size = _cityscapes_instance_tables(len(class_names))
  tp_weighted, fn_weighted = np.asarray(sums, np.float64)
  false_pos = confusion.sum(0) - np.diag(confusion)
  denominator = tp_weighted + fn_weighted + false_pos
  with np.errstate(invalid='ignore', divide='ignore'):
    iiou = np.where((average_size > 0) & (denominator > 0), tp_weighted / denominator, np.nan)
  return {
    'iiou': float(np.nanmean(iiou)) if np.any(~np.isnan(iiou)) else 0.0,
    'per_class_iiou': {
      name: (None if np.isnan(v) else float(v))
      for name, v, size in zip(class_names, iiou, average_size)
      if size > 0
    },
  }
