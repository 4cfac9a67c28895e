"""The training objective (docs/method.md items 7-10), pure and without I/O.

Cross-entropy over non-ignored pixels at the logits' resolution (labels shrunk by nearest
neighbour), plus the affinity term of `config.loss.kind` (loss_kinds.py names it, affinity.py
computes it) scaled by `loss_decay`, plus an auxiliary cross-entropy when the network has an
aux head. step.py differentiates it inside the update.
"""

import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax import affinity, loss_kinds


def shrink_labels(labels, height: int, width: int):
  """Nearest-neighbour resize of [N,H,W] labels to [N,height,width] (pixel-centre sampling)."""
  _, in_h, in_w = labels.shape
  rows = np.minimum(((np.arange(height) + 0.5) * in_h / height).astype(np.int32), in_h - 1)
  cols = np.minimum(((np.arange(width) + 0.5) * in_w / width).astype(np.int32), in_w - 1)
  return labels[:, rows][:, :, cols]


def cross_entropy(logits, labels, num_classes: int):
  """Mean softmax cross-entropy and pixel accuracy over pixels whose label is a class."""
  labels = shrink_labels(labels, *logits.shape[1:3])
  valid = (labels >= 0) & (labels < num_classes)
  safe = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
  count = jnp.maximum(jnp.sum(valid), 1)
  ce = jnp.sum(jnp.where(valid, nll, 0.0)) / count
  correct = valid & (jnp.argmax(logits, axis=-1) == labels)
  return ce, jnp.sum(correct) / count, labels


def _no_terms(probs, labels, *, num_classes, loss_cfg, tables):
  """Cross-entropy alone: no affinity term."""
  return None


def _fixed_terms(probs, labels, *, num_classes, loss_cfg, tables):
  """The fixed-size affinity field (spec items 1-7) at the one size in `loss_cfg.sizes`."""
  return affinity.affinity_loss(
    probs,
    labels,
    num_classes=num_classes,
    size=loss_cfg.sizes[0],
    margin=loss_cfg.margin,
    implementation=loss_cfg.implementation,
  )


def _adaptive_terms(probs, labels, *, num_classes, loss_cfg, tables):
  """Adaptive affinity fields (spec item 8): per-size terms weighted by the learned tables."""
  edges, nonedges = affinity.adaptive_affinity_loss(
    probs,
    labels,
    num_classes=num_classes,
    sizes=tuple(loss_cfg.sizes),
    margin=loss_cfg.margin,
    edge_logits=tables['edge_logits'],
    nonedge_logits=tables['nonedge_logits'],
    implementation=loss_cfg.implementation,
  )
  return jnp.sum(edges), jnp.sum(nonedges)


# loss_kinds.TERMS -> (probs [N,h,w,C], labels [N,h,w], *, num_classes, loss_cfg, tables) ->
# (edge, nonedge) scalars, or None for no affinity term; `tables` is params['aaf'] or None.
TERMS = {'none': _no_terms, 'fixed': _fixed_terms, 'adaptive': _adaptive_terms}


def terms_of(kind_name: str):
  """The affinity-term function of the loss kind `kind_name` (see TERMS)."""
  return TERMS[loss_kinds.get(kind_name).terms]


def make_loss_fn(model, config, num_classes: int):
  """(params, batch_stats, images, labels, step, rng) -> (total, (terms, new batch_stats)).

  total = CE + aux_weight * aux CE + decay(step) * (lambda_edge * edge + lambda_nonedge *
  nonedge), the affinity terms being those of the loss kind (aaf_jax.loss_kinds).
  """
  loss_cfg = config.loss
  terms_fn = terms_of(loss_cfg.kind)
  aux_weight = float(config.model.aux_weight)

  def loss_fn(params, batch_stats, images, labels, step, rng):
    # The named scopes label the compiled program's ops (their HLO op_name), so a profile can
    # split kernel time into network, cross-entropy, affinity loss and optimizer
    # (benchmarks/step_suite.py); they change nothing else.
    with jax.named_scope('network'):
      outputs, updates = model.apply(
        {'params': params['model'], 'batch_stats': batch_stats},
        images,
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': rng},
      )
    logits = outputs['logits'].astype(jnp.float32)  # [N,h,w,C]
    with jax.named_scope('cross_entropy'):
      ce, pixel_acc, small_labels = cross_entropy(logits, labels, num_classes)
      total = ce
      if 'aux_logits' in outputs and aux_weight > 0:
        aux_logits = outputs['aux_logits'].astype(jnp.float32)
        total += aux_weight * cross_entropy(aux_logits, labels, num_classes)[0]
    edge = nonedge = jnp.zeros(())
    with jax.named_scope('affinity_loss'):
      affinity_terms = terms_fn(
        jax.nn.softmax(logits, axis=-1),
        small_labels,
        num_classes=num_classes,
        loss_cfg=loss_cfg,
        tables=params.get('aaf'),
      )
    if affinity_terms is not None:
      edge, nonedge = affinity_terms
      scale = (
        affinity.loss_decay(step, config.num_train_steps) if loss_cfg.decay else jnp.float32(1.0)
      )
      total += scale * (loss_cfg.lambda_edge * edge + loss_cfg.lambda_nonedge * nonedge)
    terms = dict(ce=ce, edge=edge, nonedge=nonedge, pixel_acc=pixel_acc)
    return total, (terms, updates['batch_stats'])

  return loss_fn
