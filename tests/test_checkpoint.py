"""Checkpointer: what a resumed run does with it (restore the state, then save again)."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from aaf_jax import checkpoint, sharding


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  batch_stats: dict


def test_a_restored_state_saves_again(tmp_path):
  """A resumed run's first save goes through the manager that restored it."""
  replicated = sharding.replicated(sharding.make_mesh())
  state = _State(
    jnp.array(3, jnp.int32),
    {'model': {'w': jnp.arange(3.0)}, 'aaf': {'edge': jnp.ones(2)}},
    {'mean': jnp.full(1, 0.5)},
  )
  with checkpoint.Checkpointer(str(tmp_path), keep=2) as first:
    first.save(3, state, {'step': 3}, {'note': 'first'})
  target = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state
  )
  with checkpoint.Checkpointer(str(tmp_path), keep=2) as resumed:
    restored = resumed.restore_step(3, target)
    assert restored['data'] == {'step': 3}
    resumed.save(4, restored['state'].replace(step=jnp.array(4, jnp.int32)), {'step': 4}, {})
  with checkpoint.Checkpointer(str(tmp_path), keep=2) as again:
    assert again.latest_step() == 4
    final = again.restore_step(4, target)['state']
  np.testing.assert_array_equal(final.params['model']['w'], [0.0, 1.0, 2.0])
  assert int(final.step) == 4
