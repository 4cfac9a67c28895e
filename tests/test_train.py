"""The trainer end to end on tiny configs: results, resume, sharding, guardrails."""

import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from launching import ROOT, launch_command, synthetic_config, xla_flags
from tiny import tiny_config, tiny_flags

from aaf_jax import builder, evaluate, objective, run_record, same_run, step, train


@pytest.mark.slow
@pytest.mark.parametrize('loss', ['ce', 'affinity', 'aaf'])
def test_train_and_evaluate_writes_results(tiny_data_dir, tmp_path, loss):
  results = train.train_and_evaluate(tiny_config(tiny_data_dir, loss), str(tmp_path))
  saved = json.loads((tmp_path / 'results.json').read_text())
  assert saved['step'] == 4
  assert 0 <= saved['miou'] <= 1 and 0 <= saved['pixel_acc'] <= 1
  assert 0 <= saved['boundary_iou'] <= 1 and saved['boundary_width'] == 2
  assert set(saved['per_class_boundary_iou']) == set(saved['per_class_iou'])
  # The saved confusion matrix is the one the scores were computed from.
  rescored = evaluate.scores(np.array(saved['confusion']), list(saved['per_class_iou']))
  assert rescored['per_class_iou'] == saved['per_class_iou']
  assert set(saved['per_class_iou']) == {
    'background',
    'disc',
    'box',
    'triangle',
    'ring',
    'bar',
    'star',
  }
  assert saved == json.loads(json.dumps(results))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2', '4']
  if loss == 'aaf':
    weights = saved['field_size_weights']
    assert weights['sizes'] == [1, 2, 3]
    for row in weights['edge'].values():
      np.testing.assert_allclose(sum(row), 1.0, rtol=1e-5)
    assert (tmp_path / 'field_sizes.png').stat().st_size > 0
    # --mode=eval on the same workdir reproduces the final evaluation, into a file.
    again = train.evaluate_checkpoint(tiny_config(tiny_data_dir, loss), str(tmp_path))
    written = json.loads((tmp_path / 'eval-synthetic-validation.json').read_text())
    assert written == json.loads(json.dumps(again))
    keys = ('miou', 'pixel_acc', 'per_class_iou', 'confusion', 'boundary_iou')
    keys += ('per_class_boundary_iou', 'boundary_width', 'step', 'fingerprint')
    assert {k: written[k] for k in keys} == {k: saved[k] for k in keys}
    assert written['inference'] == {
      'dataset': 'synthetic',
      'split': 'validation',
      'eval_size': [32, 32],
      'window': 0,
      'stride': 0,
      'scales': [1.0],
      'flip': False,
      'boundary_width': 2,
    }
  else:
    assert 'field_size_weights' not in saved


def test_one_update_descends_on_the_network_and_ascends_on_the_tables():
  config = tiny_config('/unused', 'aaf')
  trainable = builder.build(config, 7)
  model, tx, state = trainable.model, trainable.tx, trainable.init_state()
  rng = np.random.default_rng(0)
  batch = {
    'image': jnp.asarray(rng.normal(size=(4, 32, 32, 3)) * 50, jnp.float32),
    'label': jnp.asarray(rng.integers(0, 7, size=(4, 32, 32)), jnp.int32),
  }
  train_step = jax.jit(step.make_train_step(model, tx, config, 7))
  loss_fn = objective.make_loss_fn(model, config, 7)

  @jax.jit
  def total(params):
    return loss_fn(params, state.batch_stats, batch['image'], batch['label'], 0, jax.random.key(0))[
      0
    ]

  new_state, _, finite = train_step(state, batch)
  assert bool(finite)
  before = total(state.params)
  # Only the tables moved: the objective rises. Only the network moved: it falls.
  tables_moved = {**state.params, 'aaf': new_state.params['aaf']}
  network_moved = {**new_state.params, 'aaf': state.params['aaf']}
  assert float(total(tables_moved)) > float(before)
  assert float(total(network_moved)) < float(before)


def test_gradient_accumulation_matches_one_big_batch():
  config = tiny_config('/unused', 'aaf')
  accum = tiny_config('/unused', 'aaf', grad_accum_steps=2)
  trainable = builder.build(config, 7)
  model, tx, state = trainable.model, trainable.tx, trainable.init_state()
  rng = np.random.default_rng(1)
  images = rng.normal(size=(2, 32, 32, 3)) * 50
  labels = rng.integers(0, 7, size=(2, 32, 32))
  # Examples in identical pairs: both micro-batches (j mod 2) equal the distinct examples, so
  # BatchNorm statistics and mean losses agree with the whole batch.
  batch = {
    'image': jnp.asarray(np.repeat(images, 2, 0), jnp.float32),
    'label': jnp.asarray(np.repeat(labels, 2, 0), jnp.int32),
  }
  one, _, _ = jax.jit(step.make_train_step(model, tx, config, 7))(state, batch)
  two, _, _ = jax.jit(step.make_train_step(model, tx, accum, 7))(state, batch)
  for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  'override,match',
  [
    ({'loss.kind': 'crf'}, r"config.loss.kind='crf': expected one of"),
    ({'batch_size': 0}, r'config.batch_size=0'),
    ({'data.crop_size': 1}, r'config.data.crop_size=1: too small'),
    ({'compute_dtype': 'float16'}, r"config.compute_dtype='float16'"),
  ],
)
def test_bad_config_fails_before_the_first_step(tiny_data_dir, tmp_path, override, match):
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(tiny_data_dir, **override), str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists() or not os.listdir(tmp_path / 'checkpoints')


@pytest.mark.slow
def test_workdir_of_a_different_config_is_refused_listing_every_field(tiny_data_dir, tmp_path):
  train.train_and_evaluate(tiny_config(tiny_data_dir, num_train_steps=2), str(tmp_path))
  results = (tmp_path / 'results.json').read_text()
  changed = tiny_config(
    tiny_data_dir,
    num_train_steps=2,
    **{'model.head_width': 16, 'loss.margin': 2.0, 'optimizer.learning_rate': 0.05},
  )
  with pytest.raises(same_run.ConfigMismatchError, match=r'Differences \(3\)') as err:
    train.train_and_evaluate(changed, str(tmp_path))
  for difference in (
    'config.loss.margin: checkpoint 3.0, config 2.0',
    'config.model.head_width: checkpoint 8, config 16',
    'config.optimizer.learning_rate: checkpoint 0.1, config 0.05',
  ):
    assert difference in str(err.value)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
  assert (tmp_path / 'results.json').read_text() == results
  # --mode=eval compares only the network's fields: a different margin is fine there.
  with pytest.raises(same_run.ConfigMismatchError, match=r'Differences \(1\): config.model.hea'):
    train.evaluate_checkpoint(changed, str(tmp_path))


@pytest.mark.slow
def test_run_record_and_resumable_fields(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, num_train_steps=2)
  first = train.train_and_evaluate(config, str(tmp_path))
  record = json.loads((tmp_path / 'config.json').read_text())
  assert record['config'] == json.loads(json.dumps(config.to_dict()))
  assert record['fingerprint'] == first['fingerprint'] == run_record.fingerprint(config)
  # Logging and checkpoint cadence may change on resume; the fingerprint does not.
  cadence = tiny_config(
    tiny_data_dir, num_train_steps=2, log_every_steps=1, checkpoint_every_steps=1
  )
  again = train.train_and_evaluate(cadence, str(tmp_path))
  assert again == first
  assert json.loads((tmp_path / 'config.json').read_text())['config']['log_every_steps'] == 1
  starts = json.loads((tmp_path / 'environment.json').read_text())['starts']
  assert [s['start_step'] for s in starts] == [0, 2]
  assert starts[0]['device_count'] == jax.device_count() and starts[0]['process_count'] == 1
  assert starts[0]['packages']['jax'] == jax.__version__
  assert 'git_commit' in starts[0]
  # A field that changes the weights changes it: the run's config with that field alone changed.
  margin = tiny_config(tiny_data_dir, num_train_steps=2, **{'loss.margin': 2.0})
  assert run_record.fingerprint(margin) != first['fingerprint']


@pytest.mark.slow
def test_non_finite_loss_stops_without_checkpointing_it(tiny_data_dir, tmp_path):
  config = tiny_config(
    tiny_data_dir,
    'ce',
    num_train_steps=6,
    checkpoint_every_steps=1,
    **{'optimizer.learning_rate': 1e30},
  )
  with pytest.raises(FloatingPointError, match=r'at step (\d)') as err:
    train.train_and_evaluate(config, str(tmp_path))
  bad_step = int(err.value.args[0].split('at step ')[1].split(';')[0])
  saved = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  # Every step before the broken one was checkpointed (checkpoint_every_steps=1), none after,
  # and what was written is finite.
  assert bad_step > 1 and saved == list(range(max(1, bad_step - 2), bad_step))
  _, params = _final_params(str(tmp_path))
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))


def _launch(workdir, data_dir, *flags, env=None):
  return subprocess.Popen(
    launch_command(
      synthetic_config(data_dir, 12),
      f'--workdir={workdir}',
      *tiny_flags(cadence=True),
      *flags,
    ),
    cwd=ROOT,
    env={**os.environ, **(env or {})},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _final_params(workdir):
  """The latest checkpoint's parameters as NumPy arrays, whatever devices saved them."""
  import orbax.checkpoint as ocp

  steps = [int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit()]
  path = os.path.join(workdir, 'checkpoints', str(max(steps)), 'state')
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  state = checkpointer.restore(
    path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  )
  return max(steps), state['params']


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_data_dir, tmp_path):
  """SIGKILL a run after its first checkpoint; the resumed run ends exactly as an unbroken one."""
  whole, broken = tmp_path / 'whole', tmp_path / 'broken'
  reference = _launch(whole, tiny_data_dir)
  assert reference.wait(timeout=600) == 0, reference.stdout.read()
  victim = _launch(broken, tiny_data_dir)
  deadline = time.time() + 600
  while not (broken / 'checkpoints' / '4').exists():
    assert victim.poll() is None and time.time() < deadline, victim.stdout.read()
    time.sleep(0.2)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  resumed = _launch(broken, tiny_data_dir)
  out = resumed.communicate(timeout=600)[0]
  assert resumed.returncode == 0, out
  assert 'Resumed from' in out
  step_a, params_a = _final_params(whole)
  step_b, params_b = _final_params(broken)
  assert step_a == step_b == 12
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_array_equal(a, b)
  results_a = json.loads((whole / 'results.json').read_text())
  results_b = json.loads((broken / 'results.json').read_text())
  assert results_a == results_b


@pytest.mark.slow
def test_eight_devices_match_one(tiny_data_dir, tmp_path):
  """The same run on 1 CPU device and on 8 simulated ones: same losses and parameters."""
  runs = {}
  for devices in (1, 8):
    workdir = tmp_path / f'd{devices}'
    proc = _launch(
      workdir,
      tiny_data_dir,
      '--config.num_train_steps=3',
      env={'XLA_FLAGS': xla_flags(devices)},
    )
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out
    runs[devices] = _final_params(workdir)[1]
  for a, b in zip(jax.tree.leaves(runs[1]), jax.tree.leaves(runs[8])):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.slow
def test_train_step_compiles_once(tiny_data_dir, tmp_path, caplog):
  """A recompile per step (a shape or dtype drifting) would make training crawl."""
  caplog.set_level('WARNING')
  with jax.log_compiles(True):
    train.train_and_evaluate(tiny_config(tiny_data_dir, 'aaf', num_train_steps=5), str(tmp_path))
  compiles = [
    r.getMessage()
    for r in caplog.records
    if 'Compiling' in r.getMessage() and 'train_step' in r.getMessage()
  ]
  assert len(compiles) == 1, compiles
