"""VOC instance-wise mIoU on hand-made images; Cityscapes IoU and iIoU against the official
cityscapesscripts evaluator on a few label maps."""

import numpy as np
import pytest
from cityscapesscripts.helpers import labels as cityscapes_labels
from PIL import Image

from aaf_jax import evaluate, instance_iou
from aaf_jax.data import cityscapes


def _voc_sums(labels, preds, instances, valid, num_classes):
  counted = (labels < num_classes) & np.asarray(valid)[:, None, None]
  return np.asarray(instance_iou.voc_instance_sums(labels, preds, instances, counted, num_classes))


def test_voc_instance_wise_miou_hand_computed():
  # Image A: background, two cats (instances 1 and 2) split by the 255 band.
  labels_a = np.array([[0, 1, 1, 255, 1, 1], [0, 1, 1, 255, 1, 1], [0, 0, 0, 0, 0, 0]])
  instances_a = np.array([[0, 1, 1, 255, 2, 2], [0, 1, 1, 255, 2, 2], [0, 0, 0, 0, 0, 0]])
  preds_a = np.array([[0, 1, 0, 1, 1, 1], [0, 1, 1, 0, 1, 1], [0, 0, 0, 0, 0, 2]])
  # Image B: one dog over a background row, everything predicted dog.
  labels_b = np.array([[2] * 6, [2] * 6, [0] * 6])
  instances_b = np.array([[1] * 6, [1] * 6, [0] * 6])
  preds_b = np.full((3, 6), 2)
  # Image C: padding (valid=False), must count nowhere.
  labels_c, instances_c, preds_c = np.ones((3, 6), int), np.full((3, 6), 7), np.zeros((3, 6), int)
  labels = np.stack([labels_a, labels_b, labels_c])
  preds = np.stack([preds_a, preds_b, preds_c])
  instances = np.stack([instances_a, instances_b, instances_c])
  sums = _voc_sums(labels, preds, instances, [True, True, False], 3)
  results = instance_iou.voc_instance_scores(sums, ('bg', 'cat', 'dog'))
  # A: background IoU 7/9 (1 instance), cat 7/8 (2 instances); B: background 0 (1 instance),
  # dog 12/18 (1 instance).
  expected = {'bg': (7 / 9 + 0) / 2, 'cat': 7 / 8, 'dog': 12 / 18}
  assert results['per_class_instance_iou'] == pytest.approx(expected, rel=1e-6)
  assert results['instance_miou'] == pytest.approx(np.mean(list(expected.values())), rel=1e-6)
  np.testing.assert_allclose(sums[1], [2, 2, 1])  # instances per class


def test_voc_instance_class_is_the_majority_label_and_the_band_is_no_instance():
  labels = np.array([[[1, 1, 2, 255], [0, 0, 0, 0]]])
  instances = np.array([[[3, 3, 3, 255], [0, 0, 0, 255]]])  # instance 3: two cat px, one dog
  preds = np.array([[[1, 1, 1, 1], [0, 0, 0, 0]]])
  sums = _voc_sums(labels, preds, instances, [True], 3)
  np.testing.assert_allclose(sums[1], [1, 1, 0])  # the band adds no background instance
  np.testing.assert_allclose(sums[0], [1.0, 2 / 3, 0.0], rtol=1e-6)


def test_class_without_instances_has_no_score():
  results = instance_iou.voc_instance_scores(np.array([[0.5, 0.0], [1.0, 0.0]]), ('a', 'b'))
  assert results == {'instance_miou': 0.5, 'per_class_instance_iou': {'a': 0.5, 'b': None}}


# --- Cityscapes against the official evaluator ---

_TRAIN_TO_LABEL_ID = {
  label.trainId: label.id for label in cityscapes_labels.labels if 0 <= label.trainId < 19
}


def _cityscapes_maps(rng, height=24, width=40):
  """gt labelIds, gt instanceIds and predicted train ids for one image, in blocks."""
  label_ids = np.zeros((height, width), np.uint8)
  instance_ids = np.zeros((height, width), np.int32)
  blocks = [  # (labelId, instance count): stuff, objects, a crowd (no instance), ignored
    (7, 0),
    (8, 0),
    (11, 0),
    (24, 3),
    (26, 2),
    (24, -1),
    (33, 2),
    (29, 1),
    (0, 0),
    (21, 0),
  ]
  x = 0
  for label_id, count in blocks:
    w = int(rng.integers(2, 6))
    label_ids[:, x : x + w] = label_id
    instance_ids[:, x : x + w] = label_id
    if count > 0:
      cuts = np.sort(rng.choice(np.arange(1, height), count - 1, replace=False))
      for k, rows in enumerate(np.split(np.arange(height), cuts)):
        instance_ids[rows, x : x + w] = label_id * 1000 + k
    x += w
  label_ids[:, x:] = 23  # sky
  instance_ids[:, x:] = 23
  truth = cityscapes.label_ids_to_train_ids(label_ids, 'test')
  noise = rng.integers(0, 19, truth.shape)
  preds = np.where((truth < 19) & (rng.random(truth.shape) < 0.6), truth, noise)
  return label_ids, instance_ids, preds.astype(np.int32), truth


def _official_scores(tmp_path, maps, monkeypatch):
  from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

  if not hasattr(np, 'in1d'):  # the evaluator calls np.in1d, which NumPy 2.4 removed
    monkeypatch.setattr(
      np, 'in1d', lambda a, b, invert=False: np.isin(a, b, invert=invert).ravel(), raising=False
    )

  gt_files, pred_files = [], []
  for i, (label_ids, instance_ids, preds, _) in enumerate(maps):
    gt = tmp_path / f'city_{i:06d}_000019_gtFine_labelIds.png'
    Image.fromarray(label_ids).save(gt)
    Image.fromarray(instance_ids.astype(np.uint16)).save(str(gt).replace('labelIds', 'instanceIds'))
    pred = tmp_path / f'city_{i:06d}_000019_pred.png'
    to_label_id = np.vectorize(_TRAIN_TO_LABEL_ID.get)
    Image.fromarray(to_label_id(preds).astype(np.uint8)).save(pred)
    gt_files.append(str(gt))
    pred_files.append(str(pred))
  args = official.args
  args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, True
  return official.evaluateImgLists(pred_files, gt_files, args)


def test_cityscapes_iou_and_iiou_equal_the_official_evaluator(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  maps = [_cityscapes_maps(rng) for _ in range(3)]
  official = _official_scores(tmp_path, maps, monkeypatch)

  num_classes = len(cityscapes.CLASS_NAMES)
  canvas = (30, 44)  # padded as the eval iterator pads: labels 255, instance ids 0
  labels = np.full((4,) + canvas, 255, np.int32)
  instance_ids = np.zeros((4,) + canvas, np.int32)
  preds = np.random.default_rng(1).integers(0, 19, (4,) + canvas).astype(np.int32)
  for i, (_, ids, pred, truth) in enumerate(maps):
    h, w = truth.shape
    labels[i, :h, :w], instance_ids[i, :h, :w], preds[i, :h, :w] = truth, ids, pred
  instance_ids[3] = 26001  # a padding example full of "car": must count nowhere
  valid = np.array([True, True, True, False])
  counted = (labels < num_classes) & valid[:, None, None]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels[counted], preds[counted]), 1)
  sums = {
    'confusion': confusion,
    'cityscapes_instance': np.asarray(
      instance_iou.cityscapes_instance_sums(preds, instance_ids, valid, num_classes),
      np.float64,
    ),
  }
  ours = evaluate.summarize(sums, cityscapes.CLASS_NAMES)

  for name, iou in official['classScores'].items():
    if name in ours['per_class_iou']:
      expected = None if np.isnan(iou) else pytest.approx(iou, rel=1e-9)
      assert ours['per_class_iou'][name] == expected, name
  assert ours['miou'] == pytest.approx(official['averageScoreClasses'], rel=1e-9)
  official_iiou = {k: v for k, v in official['classInstScores'].items() if not np.isnan(v)}
  # The instance classes present score above 0; the others have false positives only.
  assert {k for k, v in official_iiou.items() if v > 0} == {'person', 'car', 'bicycle'}
  assert {k: v for k, v in ours['per_class_iiou'].items() if v is not None} == pytest.approx(
    official_iiou, rel=1e-6
  )
  assert ours['iiou'] == pytest.approx(official['averageScoreInstClasses'], rel=1e-6)
