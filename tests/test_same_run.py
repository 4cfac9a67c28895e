"""Is this the same run? (aaf_jax/same_run.py): which config may continue a checkpoint."""

import pytest
from tiny import tiny_config

from aaf_jax import run_record, same_run


def test_meta_records_the_config_and_classes_and_no_fingerprint():
  config = tiny_config('/unused')
  meta = same_run.checkpoint_meta(config, 7)
  assert meta == {'config': run_record.flatten(config), 'num_classes': 7}
  same_run.check_meta(meta, config, 7, 'here')  # its own run continues


def test_a_meta_of_older_checkpoints_with_a_fingerprint_still_resumes():
  config = tiny_config('/unused')
  old = {'config': run_record.flatten(config), 'fingerprint': 'f' * 16, 'num_classes': 7}
  same_run.check_meta(old, config, 7, 'here')
  same_run.check_meta(old, config, 7, 'here', network_only=True)


def test_every_differing_field_is_listed():
  meta = same_run.checkpoint_meta(tiny_config('/unused'), 7)
  other = tiny_config('/unused', **{'loss.margin': 2.0, 'model.head_width': 16})
  with pytest.raises(same_run.ConfigMismatchError, match=r'Differences \(3\)') as info:
    same_run.check_meta(meta, other, 6, 'workdir W')
  message = str(info.value)
  assert 'config.loss.margin: checkpoint 3.0, config 2.0' in message
  assert 'config.model.head_width: checkpoint 8, config 16' in message
  assert 'num_classes: checkpoint 7, config 6' in message and 'workdir W' in message


def test_network_only_compares_the_network_fields_alone():
  meta = same_run.checkpoint_meta(tiny_config('/unused', 'aaf'), 7)
  same_run.check_meta(meta, tiny_config('/unused', 'ce', seed=3), 7, 'here', network_only=True)
  with pytest.raises(same_run.ConfigMismatchError, match='config.model.head_width'):
    same_run.check_meta(
      meta, tiny_config('/unused', **{'model.head_width': 16}), 7, 'here', network_only=True
    )
  checker = same_run.checker(tiny_config('/unused', seed=3), 7)
  with pytest.raises(same_run.ConfigMismatchError, match='config.seed'):
    checker(meta, 'here')  # resuming compares every field but the resumable ones
