"""The resume order (aaf_jax/resume.py); here the init checkpoint (config.init_checkpoint):
the network and nothing else, checked first."""

import jax
import numpy as np
import pytest
from tiny import tiny_config

from aaf_jax import checkpoint, errors, resume, same_run, train

pytestmark = pytest.mark.slow  # every test builds on a 2-step training run


@pytest.fixture(scope='module')
def source(tmp_path_factory, tiny_data_dir):
  """A finished 2-step AAF run: (its config, workdir)."""
  root = tmp_path_factory.mktemp('source')
  config = tiny_config(tiny_data_dir, 'aaf', num_train_steps=2)
  train.train_and_evaluate(config, str(root / 'run'))
  return config, str(root / 'run')


def _start(config, workdir):
  run = train.setup(config)
  with checkpoint.Checkpointer(workdir, 1) as checkpointer:
    state, data = resume.restore_or_init(
      checkpointer,
      config,
      run.init,
      run.state_sharding,
      jax.random.key(config.seed),
      run.info.num_classes,
    )
  return run, state, data


def test_init_checkpoint_gives_the_network_and_nothing_else(source, tmp_path):
  source_config, source_dir = source
  _, finished, data = _start(source_config, source_dir)  # resumes the source at its last step
  assert int(finished.step) == 2 and data is not None
  # A CE run with another margin and learning rate may start from the AAF run's network.
  config = tiny_config(
    source_config.data.data_dir,
    'ce',
    init_checkpoint=source_dir,
    **{'loss.margin': 2.0, 'optimizer.learning_rate': 0.01},
  )
  run, state, data = _start(config, str(tmp_path / 'new'))
  assert data is None and int(state.step) == 0 and 'aaf' not in state.params
  for new, old in zip(
    jax.tree.leaves((state.params['model'], state.batch_stats)),
    jax.tree.leaves((finished.params['model'], finished.batch_stats)),
  ):
    np.testing.assert_array_equal(new, old)
  fresh = jax.jit(run.init)(jax.random.key(config.seed))
  assert not all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(fresh.params['model']), jax.tree.leaves(state.params['model']))
  )
  for moment in jax.tree.leaves(state.opt_state):
    assert not np.any(np.asarray(moment))  # optimizer state starts afresh


def test_init_checkpoint_of_another_network_is_refused(source, tmp_path):
  source_config, source_dir = source
  config = tiny_config(
    source_config.data.data_dir, init_checkpoint=source_dir, **{'model.head_width': 16}
  )
  with pytest.raises(
    same_run.ConfigMismatchError, match=r'config.model.head_width: checkpoint 8, config 16'
  ):
    _start(config, str(tmp_path / 'new'))


def test_missing_init_checkpoint_is_named(source, tmp_path):
  config = tiny_config(source[0].data.data_dir, init_checkpoint=str(tmp_path / 'nowhere'))
  with pytest.raises(errors.MissingFileError, match=r'config.init_checkpoint=.*nowhere'):
    _start(config, str(tmp_path / 'new'))
