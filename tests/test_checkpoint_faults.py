"""A damaged latest checkpoint is reported in one line, moved aside, and the run resumes from the
newest intact one to the same result as an uninterrupted run; with none intact, or a damaged
init checkpoint or pretrained file, the error names the files (and the config field). `--mode=eval`
names a damaged latest checkpoint and changes nothing in the workdir.
"""

import glob
import json
import logging
import os
import shutil

import jax
import numpy as np
import pytest
from tiny import tiny_config

from aaf_jax import checkpoint, same_run, train, weights

pytestmark = pytest.mark.slow  # every test builds on an 8-step training run


def _config(data_dir, **overrides):
  return tiny_config(data_dir, num_train_steps=8, keep_checkpoints=3, **overrides)


def _params(workdir, step):
  import orbax.checkpoint as ocp

  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  state = checkpointer.restore(
    path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  )
  return state['params']


def _truncate_largest_array(step_dir):
  """Cut the largest array file of a checkpoint's state short, as a crash mid-write would."""
  files = glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd', '*'))
  largest = max(files, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 3)


def _write(path, text):
  with open(path, 'w') as f:
    f.write(text)


@pytest.fixture(scope='module')
def finished(tmp_path_factory, tiny_data_dir):
  """(data_dir, workdir) of an uninterrupted 8-step run with checkpoints at 4, 6 and 8."""
  root = tmp_path_factory.mktemp('ckpt')
  data_dir, whole = tiny_data_dir, root / 'whole'
  train.train_and_evaluate(_config(data_dir), str(whole))
  assert sorted(os.listdir(whole / 'checkpoints')) == ['4', '6', '8']
  return data_dir, whole


@pytest.fixture
def broken(finished, tmp_path):
  """A copy of the finished run's workdir, without its results."""
  copy = tmp_path / 'broken'
  shutil.copytree(finished[1], copy)
  os.remove(copy / 'results.json')
  return copy


def test_damaged_latest_checkpoint_falls_back_to_the_same_result(finished, broken, caplog):
  data_dir, whole = finished
  _truncate_largest_array(str(broken / 'checkpoints' / '8'))
  caplog.set_level(logging.WARNING)
  results = train.train_and_evaluate(_config(data_dir), str(broken))
  reports = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert len(reports) == 1 and '\n' not in reports[0], reports
  assert reports[0].startswith(
    f'Checkpoint at step 8 cannot be read ({broken / "checkpoints" / "8" / "state"}: '
  )
  assert reports[0].endswith(
    f'moved to {broken / "damaged_checkpoints" / "8"}; resuming from step 6.'
  )
  assert os.path.isdir(broken / 'damaged_checkpoints' / '8' / 'state')  # kept for inspection
  assert results == json.loads((whole / 'results.json').read_text())
  for a, b in zip(jax.tree.leaves(_params(whole, 8)), jax.tree.leaves(_params(broken, 8))):
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope='module')
def restore_target(finished):
  """What restore_or_init restores into, and its check of each checkpoint's meta."""
  config = _config(finished[0])
  run = train.setup(config)
  abstract = checkpoint.abstract(jax.eval_shape(run.init, jax.random.key(0)), run.state_sharding)
  return abstract, same_run.checker(config, run.info.num_classes)


DAMAGES = {
  'state': ('state', lambda d: os.remove(os.path.join(d, 'state', '_METADATA'))),
  'data': ('data', lambda d: _write(os.path.join(d, 'data', 'metadata'), '{')),
  'meta': ('meta', lambda d: _write(os.path.join(d, 'meta', 'metadata'), 'garbage')),
  'two newest': ('state', lambda d: _truncate_largest_array(d)),
}


@pytest.mark.parametrize('damage', sorted(DAMAGES))
def test_each_damaged_part_is_named_and_skipped(broken, restore_target, damage, caplog):
  abstract, check_meta = restore_target
  part, damage_fn = DAMAGES[damage]
  damaged_steps = (8, 6) if damage == 'two newest' else (8,)
  for step in damaged_steps:
    damage_fn(str(broken / 'checkpoints' / str(step)))
  caplog.set_level(logging.WARNING)
  with checkpoint.Checkpointer(str(broken), keep=3) as checkpointer:
    restored, step = checkpoint.restore_latest_intact(checkpointer, abstract, check_meta)
  intact = 4 if damage == 'two newest' else 6
  assert step == intact == int(restored['state'].step) and restored['data']['step'] == intact
  reports = [r.getMessage() for r in caplog.records if 'cannot be read' in r.getMessage()]
  assert [r.split(' cannot')[0] for r in reports] == [
    f'Checkpoint at step {s}' for s in damaged_steps
  ]
  for report, s in zip(reports, damaged_steps):
    assert f'({broken / "checkpoints" / str(s) / part}: ' in report
  assert sorted(os.listdir(broken / 'damaged_checkpoints')) == sorted(map(str, damaged_steps))
  assert sorted(os.listdir(broken / 'checkpoints')) == sorted(
    str(s) for s in (4, 6, 8) if s not in damaged_steps
  )


def test_no_intact_checkpoint_is_one_error_and_nothing_moves(broken, restore_target):
  abstract, check_meta = restore_target
  for step in ('4', '6', '8'):
    os.remove(broken / 'checkpoints' / step / 'state' / '_METADATA')
  with checkpoint.Checkpointer(str(broken), keep=3) as checkpointer:
    with pytest.raises(checkpoint.DamagedCheckpointError) as info:
      checkpoint.restore_latest_intact(checkpointer, abstract, check_meta)
  message = str(info.value)
  assert message.startswith(f'no intact checkpoint in {broken / "checkpoints"} (step 8: ')
  assert 'step 6: ' in message and 'step 4: ' in message and '\n' not in message
  assert 'move that folder aside' in message
  assert sorted(os.listdir(broken / 'checkpoints')) == ['4', '6', '8']


def _truncate_every_array(step_dir):
  for path in glob.glob(os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd', '*')):
    os.truncate(path, os.path.getsize(path) // 3)


EVAL_DAMAGES = {'state': _truncate_every_array, 'meta': DAMAGES['meta'][1]}


@pytest.mark.parametrize(
  'part, older',
  [('state', (4, 6)), ('meta', (4, 6)), ('state', ())],
)
def test_eval_of_a_damaged_latest_checkpoint_names_it_and_changes_nothing(
  finished, broken, part, older
):
  for step in {4, 6} - set(older):
    shutil.rmtree(broken / 'checkpoints' / str(step))
  EVAL_DAMAGES[part](str(broken / 'checkpoints' / '8'))
  before = sorted(str(p.relative_to(broken)) for p in broken.rglob('*'))
  with pytest.raises(checkpoint.DamagedCheckpointError) as info:
    train.evaluate_checkpoint(_config(finished[0]), str(broken))
  message = str(info.value)
  assert message.startswith(
    f'--mode=eval: the latest checkpoint, step 8, cannot be read '
    f'({broken / "checkpoints" / "8" / part}: '
  )
  assert message.endswith(
    f'to evaluate an older one (4, 6), move {broken / "checkpoints" / "8"} aside.'
    if older
    else '; there is no older checkpoint to evaluate.'
  )
  assert '\n' not in message
  assert sorted(str(p.relative_to(broken)) for p in broken.rglob('*')) == before


def test_a_damaged_init_checkpoint_names_the_field(finished, broken, tmp_path):
  _truncate_every_array(str(broken / 'checkpoints' / '8'))
  config = _config(finished[0], init_checkpoint=str(broken))
  with pytest.raises(checkpoint.DamagedCheckpointError) as info:
    train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert str(info.value).startswith(
    f"config.init_checkpoint='{broken}': {broken / 'checkpoints' / '8' / 'state'} cannot be read ("
  )


def test_a_garbage_pretrained_file_names_the_field(finished, tmp_path):
  garbage = tmp_path / 'backbone.msgpack'
  garbage.write_bytes(bytes(range(256)) * 4)
  config = _config(finished[0], **{'model.pretrained': str(garbage)})
  with pytest.raises(weights.WeightFileError) as info:
    train.train_and_evaluate(config, str(tmp_path / 'work'))
  assert str(info.value).startswith(
    f"config.model.pretrained='{garbage}': '{garbage}' cannot be read as a backbone .msgpack ("
  )
