"""Evaluation: whole-image inference, one confusion matrix over the split, mIoU and friends.

The eval iterator pads every image to a fixed shape with ignore labels and pads the last batch
with `valid=False` examples, so each image counts exactly once and the step compiles once.
"""

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax import sharding


def make_eval_step(model, num_classes: int):
  """(variables, batch) -> (confusion [C,C] int32, predictions [N,H,W] int32).

  Logits are upsampled bilinearly from the output stride to the input size; a pixel counts
  when its label is a class (not 255) and its example is not padding.
  """
  def eval_step(variables, batch):
    images, labels = batch['image'], batch['label']
    logits = model.apply(variables, images, train=False)['logits'].astype(jnp.float32)
    n, h, w = labels.shape
    logits = jax.image.resize(logits, (n, h, w, num_classes), method='bilinear')
    preds = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    counted = (labels >= 0) & (labels < num_classes) & batch['valid'][:, None, None]
    index = jnp.where(counted, labels * num_classes + preds, num_classes * num_classes)
    confusion = jnp.bincount(index.reshape(-1), length=num_classes * num_classes + 1)
    return confusion[:-1].reshape(num_classes, num_classes).astype(jnp.int32), preds
  return eval_step


def jit_eval_step(model, num_classes: int, mesh, variables_sharding):
  return jax.jit(make_eval_step(model, num_classes),
                 in_shardings=(variables_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)))


def scores(confusion: np.ndarray, class_names) -> dict:
  """mIoU, pixel accuracy and per-class IoU (fractions) from a [C,C] (truth, prediction) matrix.

  A class with no pixel in either the truth or the predictions has no IoU (None) and is left
  out of the mean.
  """
  confusion = np.asarray(confusion, np.float64)
  true_pos = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - true_pos
  with np.errstate(invalid='ignore', divide='ignore'):
    iou = np.where(union > 0, true_pos / union, np.nan)
  total = confusion.sum()
  return {
      'miou': float(np.nanmean(iou)) if np.any(union > 0) else 0.0,
      'pixel_acc': float(true_pos.sum() / total) if total > 0 else 0.0,
      'per_class_iou': {name: (None if np.isnan(v) else float(v))
                        for name, v in zip(class_names, iou)},
  }


def run_evaluation(eval_step, variables, batches, mesh, num_classes: int,
                   num_keep: int = 0):
  """Accumulate the confusion matrix over every batch; keep the first `num_keep` examples."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  kept = []
  for local in batches:
    batch = sharding.global_batch(local, mesh)
    batch_confusion, preds = eval_step(variables, batch)
    confusion += np.asarray(jax.device_get(batch_confusion), np.int64)
    if len(kept) < num_keep:
      local_preds = np.concatenate([np.asarray(s.data) for s in preds.addressable_shards])
      for i in np.flatnonzero(local['valid'])[:num_keep - len(kept)]:
        kept.append((local['image'][i], local['label'][i], local_preds[i]))
  return confusion, kept


def format_table(results: dict) -> str:
  """The per-class IoU table and the summary line, for the log."""
  rows = [f'{"class":<20} {"IoU":>7}']
  for name, iou in results['per_class_iou'].items():
    rows.append(f'{name:<20} {"-" if iou is None else f"{100 * iou:7.2f}":>7}')
  rows.append(f'{"mIoU":<20} {100 * results["miou"]:7.2f}')
  rows.append(f'{"pixel accuracy":<20} {100 * results["pixel_acc"]:7.2f}')
  return '\n'.join(rows)


def write_json_atomically(path: str, payload: dict) -> None:
  """Write to a temporary file beside `path`, then rename: a reader never sees half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.json')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(payload, f, indent=2, allow_nan=False)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
