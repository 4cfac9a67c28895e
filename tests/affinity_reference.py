"""A float64 NumPy reference of the affinity losses, written line by line from docs/method.md.

Plain loops and masks on purpose: it is slow and obviously right, the yardstick the JAX code is
tested against. Only for tiny inputs.
"""

import numpy as np

EPS = 1e-4


def offsets(s):
  """Spec item 1: the 8 offsets (dy, dx) in {-s, 0, s}^2 other than (0, 0)."""
  return [(dy, dx) for dy in (-s, 0, s) for dx in (-s, 0, s) if (dy, dx) != (0, 0)]


def binary_kl(q, p):
  """Spec item 4: q = p_j(c) (neighbour), p = p_i(c) (centre), each term clipped."""
  q_c, nq_c = np.clip(q, EPS, 1.0), np.clip(1.0 - q, EPS, 1.0)
  p_c, np_c = np.clip(p, EPS, 1.0), np.clip(1.0 - p, EPS, 1.0)
  return q_c * np.log(q_c / p_c) + nq_c * np.log(nq_c / np_c)


def elements(probs, labels, num_classes, s, margin):
  """Every kept (pixel, offset, class) element of size s.

  Returns a list of (kind, value, centre_label) with kind 'edge' or 'nonedge'.
  """
  probs = np.asarray(probs, np.float64)
  n_img, height, width, _ = probs.shape

  def usable(n, y, x):
    return 0 <= y < height and 0 <= x < width and 0 <= labels[n, y, x] < num_classes

  out = []
  for n in range(n_img):
    for y in range(height):
      for x in range(width):
        for dy, dx in offsets(s):
          # Spec item 2: i, i + o and i - o inside the image and not ignored.
          if not (usable(n, y, x) and usable(n, y + dy, x + dx) and usable(n, y - dy, x - dx)):
            continue
          yi, yj = labels[n, y, x], labels[n, y + dy, x + dx]
          for c in range(num_classes):
            kl = binary_kl(probs[n, y + dy, x + dx, c], probs[n, y, x, c])
            if (yi == c) != (yj == c):  # spec item 3
              out.append(('edge', max(0.0, margin - kl), yi))  # spec item 5
            else:
              out.append(('nonedge', kl, yi))
  return out


def mean_or_zero(values):
  return float(np.mean(values)) if values else 0.0  # spec item 6: empty -> 0


def affinity_loss(probs, labels, num_classes, size=1, margin=3.0):
  els = elements(probs, labels, num_classes, size, margin)
  return (
    mean_or_zero([v for k, v, _ in els if k == 'edge']),
    mean_or_zero([v for k, v, _ in els if k == 'nonedge']),
  )


def softmax(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def adaptive_affinity_loss(probs, labels, num_classes, sizes, margin, edge_logits, nonedge_logits):
  """Spec item 8: each element scaled by softmax_k of its centre label's row."""
  w_edge, w_nonedge = softmax(edge_logits), softmax(nonedge_logits)
  edges, nonedges = [], []
  for k, s in enumerate(sizes):
    els = elements(probs, labels, num_classes, s, margin)
    edges.append(mean_or_zero([w_edge[yi, k] * v for kind, v, yi in els if kind == 'edge']))
    nonedges.append(
      mean_or_zero([w_nonedge[yi, k] * v for kind, v, yi in els if kind == 'nonedge'])
    )
  return np.array(edges), np.array(nonedges)
