"""The pure pieces of training: state, objective and the update, with no I/O.

The objective (docs/method.md items 7-10): cross-entropy over non-ignored pixels at the logits'
resolution (labels shrunk by nearest neighbour), plus the affinity term of `config.loss.kind`
scaled by `loss_decay`, plus an auxiliary cross-entropy when the network has an aux head. One
optax update descends on the network and ascends on the AAF tables (see optim.py). Kept apart
from train.py so benchmarks and notebooks can build the step without the input pipeline.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics

from aaf_jax import affinity, loss_kinds, optim

# config.compute_dtype (aaf_jax.validation.COMPUTE_DTYPES) -> the dtype the network computes in.
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # {'model': network params, 'aaf': {'edge_logits', 'nonedge_logits'} [C,K]}
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  ce: metrics.Average.from_output('ce')
  edge: metrics.Average.from_output('edge')
  nonedge: metrics.Average.from_output('nonedge')
  pixel_acc: metrics.Average.from_output('pixel_acc')
  learning_rate: metrics.LastValue.from_output('learning_rate')


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


def make_loss_fn(model, config, num_classes: int):
  """(params, batch_stats, images, labels, step, rng) -> (total, (terms, new batch_stats)).

  total = CE + aux_weight * aux CE + decay(step) * (lambda_edge * edge + lambda_nonedge *
  nonedge), the affinity terms being those of the loss kind (aaf_jax.loss_kinds).
  """
  loss_cfg = config.loss
  kind = loss_kinds.get(loss_cfg.kind)
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
      affinity_terms = kind.terms(
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


def make_train_step(model, tx, config, num_classes: int):
  """The pure update: (state, batch) -> (new state, metrics, finite flag).

  With `grad_accum_steps` k > 1 the batch is split into k micro-batches (example j goes to
  micro-batch j mod k, so each device keeps its own examples); gradients are averaged and
  BatchNorm statistics updated sequentially.
  """
  grad_fn = jax.value_and_grad(make_loss_fn(model, config, num_classes), has_aux=True)
  schedule = optim.poly_schedule(
    config.optimizer.learning_rate, config.num_train_steps, config.optimizer.poly_power
  )
  base_rng = jax.random.key(config.seed)
  accum = config.grad_accum_steps

  def train_step(state, batch):
    rng = jax.random.fold_in(base_rng, state.step)
    if accum == 1:
      (loss, (terms, batch_stats)), grads = grad_fn(
        state.params, state.batch_stats, batch['image'], batch['label'], state.step, rng
      )
    else:
      micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch
      )

      def body(carry, inputs):
        batch_stats, grad_sum = carry
        index, micro_batch = inputs
        (loss, (terms, batch_stats)), grads = grad_fn(
          state.params,
          batch_stats,
          micro_batch['image'],
          micro_batch['label'],
          state.step,
          jax.random.fold_in(rng, index),
        )
        return (batch_stats, jax.tree.map(jnp.add, grad_sum, grads)), (loss, terms)

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (batch_stats, grad_sum), (losses, terms) = jax.lax.scan(
        body, (state.batch_stats, zeros), (jnp.arange(accum), micro)
      )
      grads = jax.tree.map(lambda g: g / accum, grad_sum)
      loss, terms = jnp.mean(losses), jax.tree.map(jnp.mean, terms)
    with jax.named_scope('optimizer'):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      new_params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
      step=state.step + 1, params=new_params, batch_stats=batch_stats, opt_state=opt_state
    )
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    step_metrics = TrainMetrics.single_from_model_output(
      loss=loss, learning_rate=schedule(state.step), **terms
    )
    return new_state, step_metrics, finite

  return train_step


def init_state_fn(model, tx, config, num_classes: int, crop: int):
  """rng -> TrainState: network variables, zero AAF tables (spec item 8), optimizer state."""

  def init(rng):
    variables = model.init(
      {'params': rng, 'dropout': rng}, jnp.zeros((1, crop, crop, 3), jnp.float32), train=False
    )
    params = {'model': variables['params']}
    if loss_kinds.get(config.loss.kind).learns_tables:
      table = jnp.zeros((num_classes, len(config.loss.sizes)), jnp.float32)
      params['aaf'] = {'edge_logits': table, 'nonedge_logits': table}
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=tx.init(params),
    )

  return init
