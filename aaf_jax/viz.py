"""Palettes, side-by-side summaries and the learned field-size plot."""

import numpy as np

IGNORE_COLOUR = (255, 255, 255)


def palette(num_colours: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map ([num_colours, 3] uint8): bits of the index spread over RGB."""
  colours = np.zeros((num_colours, 3), np.uint8)
  for index in range(num_colours):
    value, r, g, b = index, 0, 0, 0
    for shift in range(7, -1, -1):
      r |= ((value >> 0) & 1) << shift
      g |= ((value >> 1) & 1) << shift
      b |= ((value >> 2) & 1) << shift
      value >>= 3
    colours[index] = (r, g, b)
  return colours


_PALETTE = palette()


def colourise(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """[H,W] int labels -> [H,W,3] uint8; labels outside the classes are white."""
  labels = np.asarray(labels)
  out = _PALETTE[np.clip(labels, 0, 255)]
  out[(labels < 0) | (labels >= num_classes)] = IGNORE_COLOUR
  return out


def side_by_side(
  image: np.ndarray, label: np.ndarray, pred: np.ndarray, mean, num_classes: int
) -> np.ndarray:
  """input | ground truth | prediction as one [H, 3W, 3] uint8 image."""
  rgb = np.clip(np.asarray(image) + np.asarray(mean, np.float32), 0, 255).astype(np.uint8)
  return np.concatenate([rgb, colourise(label, num_classes), colourise(pred, num_classes)], 1)


def plot_field_sizes(path: str, weights: dict, note: str = '') -> None:
  """The paper's "learned kernel sizes per class" figure: stacked bars of softmax weights.

  `weights`: a run's `field_size_weights` ({'sizes': [...], 'edge': {class: [w per size]},
  'nonedge': {...}}, as results.json and a sweep group hold them); `note` is added to the
  titles (e.g. how many seeds a mean is over).
  """
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  class_names, sizes = list(weights['edge']), weights['sizes']
  edge_weights = [weights['edge'][c] for c in class_names]
  nonedge_weights = [weights['nonedge'][c] for c in class_names]
  fig, axes = plt.subplots(1, 2, figsize=(max(6, 0.6 * len(class_names) + 3) * 2, 4), sharey=True)
  x = np.arange(len(class_names))
  for ax, table, title in (
    (axes[0], edge_weights, 'edge'),
    (axes[1], nonedge_weights, 'non-edge'),
  ):
    table = np.asarray(table)  # [C,K]
    bottom = np.zeros(len(class_names))
    for k, size in enumerate(sizes):
      ax.bar(x, table[:, k], bottom=bottom, label=f'{2 * size + 1}x{2 * size + 1}')
      bottom += table[:, k]
    ax.set_xticks(x, class_names, rotation=60, ha='right')
    ax.set_title(f'learned field-size weights ({title}{", " + note if note else ""})')
    ax.set_ylim(0, 1)
  axes[0].set_ylabel('softmax weight')
  axes[1].legend(loc='upper right')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
