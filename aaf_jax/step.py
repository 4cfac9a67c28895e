"""The pure pieces of training: the state, its metrics and the update, with no I/O.

The update differentiates the objective (objective.py); one optax update descends on the
network and ascends on the AAF tables (see optim.py). Kept apart from train.py so benchmarks
and notebooks can build the step without the input pipeline.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from clu import metrics

from aaf_jax import loss_kinds, objective, optim


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


def make_train_step(model, tx, config, num_classes: int):
  """The pure update: (state, batch) -> (new state, metrics, finite flag).

  With `grad_accum_steps` k > 1 the batch is split into k micro-batches (example j goes to
  micro-batch j mod k, so each device keeps its own examples); gradients are averaged and
  BatchNorm statistics updated sequentially.
  """
  grad_fn = jax.value_and_grad(objective.make_loss_fn(model, config, num_classes), has_aux=True)
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
