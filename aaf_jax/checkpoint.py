"""Checkpoint storage: the donation-safe save, restore, and recovery from a damaged checkpoint.

Each `checkpoints/STEP/` holds `state` (the TrainState), `data` (the input iterator's state)
and `meta` (a JSON dict the caller writes and checks; see same_run.py). Knows no config: which
checkpoint a run may continue from is same_run.py's, the resume order resume.py's.
"""

import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from aaf_jax import errors


class DamagedCheckpointError(errors.UserError):
  """No checkpoint of the workdir can be read, though some are there."""


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or abstract values) placed by `shardings`."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
  )


def network_part(state):
  """What a network needs from a TrainState: model parameters and BatchNorm statistics."""
  return {'params': {'model': state.params['model']}, 'batch_stats': state.batch_stats}


def with_network(state, network):
  """`state` with the network part (as `network_part` gives it) replaced by `network`."""
  return state.replace(
    params={**state.params, 'model': network['params']['model']},
    batch_stats=network['batch_stats'],
  )


class Checkpointer:
  """The checkpoints of one workdir (`WORKDIR/checkpoints`), keeping the last `keep`."""

  def __init__(self, workdir: str, keep: int = 1, create: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.LatestN(keep), create=create
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._snapshot = None  # the state being written, kept alive until its async save ends

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def data_position(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))['data']

  def move_aside(self, step: int) -> str:
    """Moves checkpoint `step` to WORKDIR/damaged_checkpoints/STEP (kept, never deleted)."""
    aside = os.path.join(os.path.dirname(self.directory), 'damaged_checkpoints')
    os.makedirs(aside, exist_ok=True)
    target, copy = os.path.join(aside, str(step)), 1
    while os.path.exists(target):  # the same step damaged again in a later run
      copy += 1
      target = os.path.join(aside, f'{step}.{copy}')
    os.rename(self.step_dir(step), target)
    self._manager.reload()
    return target

  def meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def restore_step(self, step: int, target, *, network_only: bool = False) -> dict:
    """{'state', 'data'} of checkpoint `step`, shaped and placed like `target`.

    `target`: a TrainState of ShapeDtypeStructs with shardings. `network_only`: restore just
    the network (model parameters, BatchNorm statistics) onto `network_part(target)`, for
    evaluation or an init checkpoint; 'data' is then None.
    """
    item = network_part(target) if network_only else target
    restore = ocp.args.PyTreeRestore(
      item=item,
      restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=network_only,
    )
    if network_only:
      restored = self._manager.restore(step, args=ocp.args.Composite(state=restore))
      return {'state': restored['state'], 'data': None}
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=restore, data=ocp.args.JsonRestore())
    )
    return {'state': restored['state'], 'data': restored['data']}

  def save(self, step: int, state, data_state: dict, meta: dict) -> None:
    """Start an asynchronous save of `state` (and the data position and meta) at `step`.

    A copy is saved: the next train step donates `state`, and on CPU an async save may still be
    reading the very buffers the donation hands back to XLA. The copy outlives the save.
    """
    self._manager.wait_until_finished()
    self._snapshot = jax.tree.map(lambda x: x.copy(), state)
    self._manager.save(
      step,
      args=ocp.args.Composite(
        # PyTree, as `restore_step` reads it: a manager that restored with one handler refuses
        # to save the same item with another (every resumed run would fail at its first save).
        state=ocp.args.PyTreeSave(self._snapshot),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta),
      ),
    )

  def close(self) -> None:
    """Finish writing the last save (never leave half a checkpoint), then release."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def describe(error: Exception) -> str:
  """The first line of an error from Orbax or TensorStore, kept short for a one-line report."""
  lines = str(error).strip().splitlines()
  text = errors.one_line(lines[0]) if lines else ''
  text = text if len(text) <= 160 else text[:157] + '...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _restore_intact(checkpointer, step, abstract, check_meta):
  """(the restored checkpoint, None), or (None, (the part that failed, what went wrong)).

  Each part is read on its own so the report names it; `check_meta(meta, where)` may raise (a
  checkpoint of another run is not damage).
  """
  where = checkpointer.step_dir(step)
  try:
    meta = checkpointer.meta(step)
  except Exception as e:  # Orbax and TensorStore raise many types; any means unreadable
    return None, (os.path.join(where, 'meta'), describe(e))
  check_meta(meta, f'workdir {checkpointer.directory}')
  try:
    checkpointer.data_position(step)
  except Exception as e:
    return None, (os.path.join(where, 'data'), describe(e))
  try:
    return checkpointer.restore_step(step, abstract), None
  except Exception as e:
    return None, (os.path.join(where, 'state'), describe(e))


def restore_latest_intact(checkpointer, abstract, check_meta):
  """(restored {'state', 'data'}, step) of the newest readable checkpoint, or None if none is there.

  Newer checkpoints that cannot be read (a crash mid-save, a full disk, bit rot) are reported,
  one line each, and moved to WORKDIR/damaged_checkpoints/; the run goes on from the newest
  intact one exactly as it went on from there before. If none can be read, nothing is moved
  and DamagedCheckpointError says what to do. `check_meta(meta, where)` is called on each
  checkpoint's meta before its state is read, and may raise.
  """
  damaged = []
  for step in reversed(checkpointer.all_steps()):
    restored, failure = _restore_intact(checkpointer, step, abstract, check_meta)
    if failure is None:
      for bad_step, (part, problem) in damaged:
        moved = checkpointer.move_aside(bad_step)
        logging.warning(
          'Checkpoint at step %d cannot be read (%s: %s); moved to %s; resuming from step %d.',
          bad_step,
          part,
          problem,
          moved,
          step,
        )
      return restored, step
    damaged.append((step, failure))
  if damaged:
    found = '; '.join(f'step {s}: {part} ({problem})' for s, (part, problem) in damaged)
    raise DamagedCheckpointError(
      f'no intact checkpoint in {checkpointer.directory} ({found}). To start this run afresh, '
      f'move that folder aside; to keep its progress, restore the damaged files from a copy.'
    )
  return None


def read_network(checkpointer, step, abstract, check_meta, where, unreadable):
  """The network part of checkpoint `step`, after `check_meta(meta, where)` (which may raise).

  A part that cannot be read (Orbax and TensorStore raise many types; any means unreadable)
  raises `unreadable(part, error)`, the caller's error for it.
  """
  try:
    meta = checkpointer.meta(step)
  except Exception as e:
    raise unreadable('meta', e) from e
  check_meta(meta, where)
  try:
    return checkpointer.restore_step(step, abstract, network_only=True)['state']
  except Exception as e:
    raise unreadable('state', e) from e


def network_shardings(state_sharding) -> dict:
  """The shardings of the network's variables ({'params', 'batch_stats'}) in a state."""
  return {'params': state_sharding.params['model'], 'batch_stats': state_sharding.batch_stats}
