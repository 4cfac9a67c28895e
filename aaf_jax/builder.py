"""What a config trains, built in one place: network, optimizer and the initial state.

Training, evaluation, prediction and every benchmark build through `build`, so they all run the
network in the config's compute dtype with the config's optimizer and loss.
"""

import dataclasses

import jax
import jax.numpy as jnp

from aaf_jax import models, optim, sharding, step, validation

# config.compute_dtype -> the dtype the network computes in (the names are validation's).
COMPUTE_DTYPES = {name: getattr(jnp, name) for name in validation.COMPUTE_DTYPES}


@dataclasses.dataclass(frozen=True)
class Trainable:
  """The network, its optimizer and `init` (rng -> TrainState) of one config."""

  model: object
  tx: object
  init: object
  seed: int

  def state_sharding(self, mesh):
    """The TrainState's shardings on `mesh`: every leaf replicated."""
    shapes = jax.eval_shape(self.init, jax.random.key(self.seed))
    return jax.tree.map(lambda _: sharding.replicated(mesh), shapes)

  def init_state(self, state_sharding=None):
    """The initial TrainState from config.seed, placed by `state_sharding` (if given)."""
    return jax.jit(self.init, out_shardings=state_sharding)(jax.random.key(self.seed))


def build(config, num_classes: int) -> Trainable:
  """The network (`config.model` in `config.compute_dtype`), the optimizer and the state init
  (network variables from a `config.data.crop_size` input, AAF tables, optimizer state)."""
  model = models.build_model(
    config.model, num_classes=num_classes, dtype=COMPUTE_DTYPES[config.compute_dtype]
  )
  tx = optim.make_optimizer(config.optimizer, config.num_train_steps, config.loss.tables)
  init = step.init_state_fn(model, tx, config, num_classes, config.data.crop_size)
  return Trainable(model, tx, init, config.seed)
