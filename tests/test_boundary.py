"""Boundary IoU on hand-made masks whose answers are counted by hand."""

import jax
import numpy as np
import pytest

from aaf_jax import boundary


def square(size, top, left, side, value=1, fill=0):
  out = np.full((size, size), fill, np.int32)
  out[top : top + side, left : left + side] = value
  return out


def counts(labels, preds, num_classes, width, valid=None):
  labels, preds = np.asarray(labels)[None], np.asarray(preds)[None]
  counted = labels < num_classes
  if valid is not None:
    counted &= np.asarray(valid)[:, None, None]
  return np.asarray(
    jax.jit(boundary.boundary_counts, static_argnums=(3, 4))(
      labels, preds, counted, num_classes, width
    )
  )


def test_inner_band_of_a_square_and_of_the_whole_image():
  five = square(9, 2, 2, 5).astype(bool)[None]
  # width 1: the 5x5 square's outer ring, 25 - 9 pixels; width 2: all but the centre.
  ring = np.asarray(boundary.inner_band(five, 1))[0]
  assert ring.sum() == 16 and not ring[4, 4] and ring[2, 2] and ring[6, 4]
  assert np.asarray(boundary.inner_band(five, 2)).sum() == 24
  # The image border is a contour: a full 7x7 mask has a band of 7*7 - 5*5 pixels.
  full = np.ones((1, 7, 7), bool)
  assert np.asarray(boundary.inner_band(full, 1)).sum() == 24
  # The centre is 4 px from the outside (3 steps to the border pixel, which is 1 away).
  assert np.asarray(boundary.inner_band(full, 3)).sum() == 48
  assert np.asarray(boundary.inner_band(full, 4)).sum() == 49


def test_shifted_square_counts():
  """Truth: a 6x6 square at rows/cols 1-6 of an 8x8 image; prediction: shifted right by one.

  Class 1, width 1: each band is the square's 20-pixel ring; they share the top and bottom
  rows at columns 2-6 (10 pixels), so IoU = 10 / (20 + 20 - 10). Background: both bands are
  the whole background (every background pixel touches the border or the square), 28 pixels
  each, sharing rows 0 and 7 and column 0 (8 + 8 + 6 = 22): IoU = 22 / 34.
  """
  truth, pred = square(8, 1, 1, 6), square(8, 1, 2, 6)
  np.testing.assert_array_equal(counts(truth, pred, 2, 1), [[22, 10], [34, 30]])
  result = boundary.scores(counts(truth, pred, 2, 1), ('background', 'square'))
  assert result['per_class_boundary_iou'] == pytest.approx({'background': 22 / 34, 'square': 1 / 3})
  assert result['boundary_iou'] == pytest.approx((22 / 34 + 1 / 3) / 2)
  # Against the perfect prediction every class scores 1.
  np.testing.assert_array_equal(counts(truth, truth, 2, 1), [[28, 20], [28, 20]])


def test_wider_band_reaches_further_inside():
  """Width 2 on the same pair: each square's band is 36 - 4 = 32 pixels (all but its 2x2
  centre)."""
  truth, pred = square(8, 1, 1, 6), square(8, 1, 2, 6)
  truth_band = np.asarray(boundary.inner_band(truth[None] == 1, 2))[0]
  pred_band = np.asarray(boundary.inner_band(pred[None] == 1, 2))[0]
  assert truth_band.sum() == pred_band.sum() == 32
  # The overlap (rows 1-6, cols 2-6: 30 pixels) minus the truth centre (rows 3-4, cols 3-4)
  # and the prediction centre (rows 3-4, cols 4-5), which share column 4: 30 - 4 - 4 + 2.
  both = truth_band & pred_band
  assert both.sum() == 24
  np.testing.assert_array_equal(counts(truth, pred, 2, 2)[:, 1], [24, 32 + 32 - 24])


def test_void_pixels_are_outside_both_masks():
  """A 4x4 square inside a 1-pixel void ring: predicting the void as the square or as
  background is equally right, since only counted pixels are scored."""
  labels = square(8, 1, 1, 6, value=255)
  labels[2:6, 2:6] = 1
  over_void = square(8, 1, 1, 6)
  inside_only = square(8, 2, 2, 4)
  for pred in (over_void, inside_only):
    result = boundary.scores(counts(labels, pred, 2, 1), ('background', 'square'))
    assert result['per_class_boundary_iou'] == {'background': 1.0, 'square': 1.0}
  # A wrong prediction inside the counted square does cost.
  wrong = inside_only.copy()
  wrong[2, 2:6] = 0
  assert counts(labels, wrong, 2, 1)[0, 1] < counts(labels, inside_only, 2, 1)[0, 1]


def test_padding_examples_count_nothing():
  truth, pred = square(8, 1, 1, 6), square(8, 1, 2, 6)
  np.testing.assert_array_equal(counts(truth, pred, 2, 1, valid=[False]), 0)


def test_class_absent_from_truth_and_prediction_has_no_score():
  result = boundary.scores(np.array([[3, 0, 0], [4, 0, 2]]), ('a', 'b', 'c'))
  assert result['per_class_boundary_iou'] == {'a': 0.75, 'b': None, 'c': 0.0}
  assert result['boundary_iou'] == pytest.approx(0.375)


def test_width_below_one_is_refused():
  with pytest.raises(ValueError, match='boundary width=0'):
    boundary.inner_band(np.ones((1, 4, 4), bool), 0)


def test_image_widths_are_a_fraction_of_each_diagonal():
  # 0.02 x 90.51 = 1.81 -> 2 (64 px squares); 0.02 x 1144.87 = 22.90 -> 23 (Cityscapes at half
  # size); 0.02 x 14.14 = 0.28 rounds to 0 and is raised to 1; 0.1 x 50 = 5 (a 30 x 40 image).
  widths = boundary.image_widths(0.02, np.array([[64, 64], [512, 1024], [10, 10]]))
  np.testing.assert_array_equal(widths, [2, 23, 1])
  np.testing.assert_array_equal(boundary.image_widths(0.1, np.array([[30, 40]])), [5])


def _two_sizes_batch():
  """A 40x40 image and a 20x20 one in a 40x40 canvas (label 255 outside the small one).

  The big image is class 1 with a 10x10 class-0 square at rows/cols 15-24; the small one is
  all class 1. Predictions equal the labels.
  """
  labels = np.full((2, 40, 40), 255, np.int32)
  labels[0] = 1
  labels[0, 15:25, 15:25] = 0
  labels[1, :20, :20] = 1
  return labels, np.array([[40, 40], [20, 20]], np.int32)


def test_per_image_widths_on_two_image_sizes():
  """Fraction 0.05: the 40x40 image (diagonal 56.57) gets round(2.83) = 3 px, the 20x20 one
  (diagonal 28.28) round(1.41) = 1 px. Counted by hand, with predictions equal to the truth:
  class 0 is the square's 3 px band, 10^2 - 4^2 = 84; class 1 is the big image's border band,
  40^2 - 34^2 = 444, plus the 3 px ring around the square's hole, 16^2 - 10^2 = 156, plus the
  small image's 1 px border band, 20^2 - 18^2 = 76: 676."""
  labels, sizes = _two_sizes_batch()
  widths = boundary.image_widths(0.05, sizes)
  np.testing.assert_array_equal(widths, [3, 1])
  counted = labels < 2
  result = jax.jit(boundary.boundary_counts, static_argnums=3)(labels, labels, counted, 2, widths)
  np.testing.assert_array_equal(result, [[84, 676], [84, 676]])
  # Each image alone at its own int width gives the same counts.
  alone = counts(labels[0], labels[0], 2, 3) + counts(
    labels[1, :20, :20], labels[1, :20, :20], 2, 1
  )
  np.testing.assert_array_equal(result, alone)


def test_per_image_widths_equal_the_int_path_at_equal_widths():
  """Widths given per image (w erosions by a 3x3 square) band exactly as one int width (one
  erosion by a (2w+1)^2 square), on random masks."""
  masks = np.random.default_rng(0).random((3, 17, 23)) < 0.8
  for width in (1, 2, 4):
    per_image = boundary.inner_band(masks, np.full(3, width, np.int32))
    np.testing.assert_array_equal(per_image, boundary.inner_band(masks, width))
  mixed = np.asarray(boundary.inner_band(masks, np.array([1, 4, 2], np.int32)))
  for i, width in enumerate((1, 4, 2)):
    np.testing.assert_array_equal(
      mixed[i], np.asarray(boundary.inner_band(masks[i : i + 1], width))[0]
    )
