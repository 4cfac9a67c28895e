"""launch.py as a 2-process x 2-CPU-device job on loopback, against 1 process x 4 devices.

One test, because its runs feed each other (the suite runs on 2 cores; every run is costly):
- one: 1 process x 4 devices trains the tiny config;
- two: 2 processes x 2 devices train it from a fresh data_dir: the data is built once, by
  process 0, without a race; the first steps' losses match `one`'s; only process 0 writes the
  results and the event file;
- `two`'s last checkpoint evaluated by 1 process x 4 devices scores exactly what `two`'s own
  evaluation over 2 processes scored (and a checkpoint of 2 processes restores on 1);
- killed: process 1 SIGKILLed after the first checkpoint; process 0 stops promptly, naming it;
  both restarted, the run ends exactly as `two` did;
- initialised: 2 processes start from `one`'s checkpoint (config.init_checkpoint) and get its
  network weights, with fresh AAF tables.

And one device per process (the layout of a GPU cluster, issue 17), 2 and 3 processes against
1 process x 1 device: the first steps' losses, `--mode=eval` of one checkpoint, and
`--mode=predict` over 2 processes.
"""

import json
import os

import jax
import numpy as np
import pytest
from launching import TINY_FLAGS, launch_command, sweep_summary, synthetic_config
from loopback import HEARTBEAT_TIMEOUT_S, Job

STEPS = 8
TIMEOUT_S = 900  # per job; a healthy one takes about a minute on an idle 2-core machine
TINY = ['--config.log_every_steps=2', '--config.checkpoint_every_steps=2', *TINY_FLAGS]
NOT_SCORES = ('step', 'fingerprint', 'inference', 'field_size_weights')

pytestmark = pytest.mark.slow  # every test starts multi-process jobs


def _job(tmp_path, name, data_dir, *flags, processes=2, log_name=None):
  command = launch_command(
    synthetic_config(data_dir, STEPS),
    f'--workdir={tmp_path / name}',
    *TINY,
    *flags,
  )
  return Job(
    command,
    str(tmp_path / 'logs'),
    num_processes=processes,
    devices_per_process=4 // processes,
    name=log_name or name,
  )


def _checkpoint(workdir, step=None):
  """(step, state as NumPy arrays) of the latest (or given) checkpoint, whoever saved it."""
  import orbax.checkpoint as ocp

  directory = os.path.join(workdir, 'checkpoints')
  steps = [int(s) for s in os.listdir(directory) if s.isdigit()]
  step = max(steps) if step is None else step
  path = os.path.join(directory, str(step), 'state')
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  return step, checkpointer.restore(
    path, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  )


def _train_losses(workdir) -> dict[int, float]:
  """step -> train/loss from the run's one event file."""
  import tensorflow as tf

  (events,) = [f for f in os.listdir(workdir) if f.startswith('events.out.tfevents')]
  losses = {}
  for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, events)):
    for value in event.summary.value:
      if value.tag == 'train/loss':
        losses[event.step] = float(tf.make_ndarray(value.tensor))
  return losses


def _scores(path) -> dict:
  with open(path) as f:
    results = json.load(f)
  scores = {k: v for k, v in results.items() if k not in NOT_SCORES}
  assert {'miou', 'pixel_acc', 'per_class_iou'} <= set(scores), path
  return scores


def _assert_trees_equal(a, b, what):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b), what
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y, err_msg=what)


def test_two_processes_train_evaluate_resume_and_initialise_like_one(tmp_path):
  one = _job(tmp_path, 'one', tmp_path / 'data_one', processes=1)
  one.wait_ok(TIMEOUT_S)

  # A fresh data_dir: process 0 builds it, process 1 waits and then reads it.
  two = _job(tmp_path, 'two', tmp_path / 'data_two')
  two.wait_ok(TIMEOUT_S)
  assert "Preparing dataset 'synthetic'" in two.output(0)
  assert "Waiting for process 0: Preparing dataset 'synthetic'" in two.output(1)

  losses_one, losses_two = _train_losses(tmp_path / 'one'), _train_losses(tmp_path / 'two')
  assert sorted(losses_one) == sorted(losses_two) == list(range(2, STEPS + 1, 2))
  np.testing.assert_allclose(
    [losses_two[2], losses_two[4]], [losses_one[2], losses_one[4]], rtol=1e-5
  )

  # Only process 0 writes: one event file, named after its pid; no stray temporary files.
  written = sorted(os.listdir(tmp_path / 'two'))
  events = [f for f in written if f.startswith('events.out.tfevents')]
  assert len(events) == 1 and f'.{two.processes[0].pid}.' in events[0], written
  assert 'results.json' in written and not [f for f in written if f.startswith('.')], written

  # The same checkpoint evaluated by 1 process x 4 devices: identical scores.
  evaluation = _job(
    tmp_path, 'two', tmp_path / 'data_two', '--mode=eval', processes=1, log_name='eval'
  )
  evaluation.wait_ok(TIMEOUT_S)
  assert _scores(tmp_path / 'two' / 'eval-synthetic-validation.json') == _scores(
    tmp_path / 'two' / 'results.json'
  )

  # Kill process 1 after the first checkpoint: process 0 stops promptly, naming it.
  killed = _job(tmp_path, 'killed', tmp_path / 'data_two')
  first_checkpoint = tmp_path / 'killed' / 'checkpoints' / '2'
  killed.wait_for(first_checkpoint.exists, TIMEOUT_S, 'the first checkpoint')
  killed.kill_process(1)
  status = killed.wait(HEARTBEAT_TIMEOUT_S + 60)[0]
  assert status != 0, killed.all_output()
  assert 'Stopping process 0: process 1 of 2 sent no heartbeat' in killed.output(0)
  assert _checkpoint(tmp_path / 'killed')[0] < STEPS, 'killed too late to test a resume'

  restarted = _job(tmp_path, 'killed', tmp_path / 'data_two', log_name='restarted')
  restarted.wait_ok(TIMEOUT_S)
  assert 'Resumed from' in restarted.output(0)
  _assert_trees_equal(
    _checkpoint(tmp_path / 'two')[1], _checkpoint(tmp_path / 'killed')[1], 'resumed state'
  )
  assert _scores(tmp_path / 'killed' / 'results.json') == _scores(tmp_path / 'two' / 'results.json')

  # A 1-process checkpoint initialises a 2-process run. One step at a learning rate of 1e-30
  # moves no weight by more than ~1e-29: the checkpoint then holds the weights it started from.
  initialised = _job(
    tmp_path,
    'initialised',
    tmp_path / 'data_two',
    f'--config.init_checkpoint={tmp_path / "one"}',
    '--config.num_train_steps=1',
    '--config.optimizer.learning_rate=1e-30',
  )
  initialised.wait_ok(TIMEOUT_S)
  assert 'Initialised the network from' in initialised.output(0)
  source = _checkpoint(tmp_path / 'one')[1]['params']
  started = _checkpoint(tmp_path / 'initialised')[1]['params']
  for a, b in zip(jax.tree.leaves(source['model']), jax.tree.leaves(started['model'])):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-20, err_msg='initialised network weights')
  assert all(np.all(np.abs(t) < 1e-20) for t in jax.tree.leaves(started['aaf'])), 'AAF tables'
  assert any(np.any(np.abs(t) > 1e-6) for t in jax.tree.leaves(source['aaf']))


# One device per process: a global batch of 6 splits over 1, 2 and 3 processes. 7 evaluation
# images in batches of 6: the last batch holds one real image, so process 1 (of 2) and
# processes 1 and 2 (of 3) have none in it.
ONE_DEVICE_FLAGS = [
  '--config.log_every_steps=1',
  '--config.eval_batch_size=6',
  *TINY_FLAGS,
  '--config.data.synthetic.num_validation=7',
]
ONE_DEVICE_STEPS = 2


def _one_device_job(tmp_path, name, processes, *flags, workdir=None):
  command = launch_command(
    synthetic_config(tmp_path / 'data', ONE_DEVICE_STEPS, batch=6),
    f'--workdir={workdir or tmp_path / name}',
    *ONE_DEVICE_FLAGS,
    *flags,
  )
  return Job(
    command, str(tmp_path / 'logs'), num_processes=processes, devices_per_process=1, name=name
  )


def test_one_device_per_process_trains_and_evaluates_like_one_process(tmp_path):
  """2 and 3 processes with one CPU device each (the layout that aborted at its first
  evaluation with a gloo 'collective mismatch'): they train and evaluate through an eval split
  whose last batch has no real image on some processes, their first losses match one
  process's, and `--mode=eval` of one process's checkpoint scores exactly what it scored."""
  single = _one_device_job(tmp_path, 'single', 1)
  single.wait_ok(TIMEOUT_S)
  losses = _train_losses(tmp_path / 'single')
  assert sorted(losses) == list(range(1, ONE_DEVICE_STEPS + 1)), losses
  reference = _scores(tmp_path / 'single' / 'results.json')
  for processes in (2, 3):
    name = f'{processes}x1'
    trained = _one_device_job(tmp_path, name, processes)
    trained.wait_ok(TIMEOUT_S)
    got = _train_losses(tmp_path / name)
    assert sorted(got) == sorted(losses), (name, got)
    np.testing.assert_allclose(
      [got[s] for s in sorted(got)], [losses[s] for s in sorted(losses)], rtol=1e-5, err_msg=name
    )
    evaluation = _one_device_job(
      tmp_path, f'eval-{name}', processes, '--mode=eval', workdir=tmp_path / 'single'
    )
    evaluation.wait_ok(TIMEOUT_S)
    path = tmp_path / 'single' / 'eval-synthetic-validation.json'
    assert _scores(path) == reference, name
    os.remove(path)

  # --mode=predict: 2 processes share 5 images (3 and 2) and write what one process writes.
  from PIL import Image

  rng = np.random.default_rng(0)
  os.makedirs(tmp_path / 'photos')
  for i, size in enumerate([(32, 32), (20, 27), (32, 32), (25, 32), (17, 9)]):
    image = rng.integers(0, 256, size + (3,), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / 'photos' / f'photo{i}.png')
  for processes in (1, 2):
    predicted = _one_device_job(
      tmp_path,
      f'predict-{processes}',
      processes,
      '--mode=predict',
      f'--input={tmp_path / "photos"}',
      f'--output={tmp_path / f"predicted-{processes}"}',
      workdir=tmp_path / 'single',
    )
    predicted.wait_ok(TIMEOUT_S)
  assert 'process 1 of 2: 2 of 5 images' in predicted.output(1), predicted.all_output()
  for i in range(5):
    one, two = (
      np.asarray(Image.open(tmp_path / f'predicted-{n}' / f'photo{i}.png')) for n in (1, 2)
    )
    np.testing.assert_array_equal(two, one, err_msg=f'photo{i}')


SWEEP_STEPS = 3


def _sweep_job(tmp_path, name, processes):
  command = launch_command(
    synthetic_config(tmp_path / 'data', SWEEP_STEPS),
    f'--workdir={tmp_path / name}',
    '--mode=sweep',
    '--sweep=loss.margin=[2.0,3.0]',
    *TINY_FLAGS,
  )
  return Job(
    command,
    str(tmp_path / 'logs'),
    num_processes=processes,
    devices_per_process=2 // processes,
    name=name,
  )


@pytest.mark.slow
def test_a_sweep_over_two_processes_equals_one_process_with_two_devices(tmp_path):
  """--mode=sweep as a 2-process x 1-device job: every run over both processes, the summary
  (written by process 0) equal to 1 process x 2 devices'; a rerun trains nothing."""
  one = _sweep_job(tmp_path, 'one', 1)
  one.wait_ok(TIMEOUT_S)
  expected = sweep_summary(tmp_path / 'one')
  assert [r['status'] for r in expected['runs']] == ['finished', 'finished'], expected

  two = _sweep_job(tmp_path, 'two', 2)
  two.wait_ok(TIMEOUT_S)
  assert sweep_summary(tmp_path / 'two') == expected
  for i in range(2):
    assert 'Sweep: 2 runs, 2 in shard 0/1, 0 already finished.' in two.output(i), two.all_output()
  assert 'Sweep summary' in two.output(0) and 'Sweep summary' not in two.output(1)

  again = _sweep_job(tmp_path, 'two', 2)
  again.wait_ok(TIMEOUT_S)
  for i in range(2):
    assert 'Sweep: 2 runs, 2 in shard 0/1, 2 already finished.' in again.output(i)
    assert 'Sweep run' not in again.output(i), again.all_output()
