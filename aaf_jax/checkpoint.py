"""Checkpoints: the resume order, the init checkpoint, the donation-safe save, the config check.

Resume order (`restore_or_init`): the workdir's latest checkpoint (state and data position,
so the run continues exactly as if never stopped), else `config.init_checkpoint` (network
weights and BatchNorm statistics only; the AAF tables, step, optimizer state and loss decay
start afresh, as stage 2 of the VOC recipe does), else the ImageNet backbone named by
`config.model.pretrained`, else from scratch.

Each `checkpoints/STEP/` holds `state` (the TrainState), `data` (the input iterator's state)
and `meta` ({'config': the flat config, 'fingerprint', 'num_classes'}; see run_record.py).
"""

import os

import jax
import orbax.checkpoint as ocp
from absl import logging

from aaf_jax import errors, presets, run_record


class DamagedCheckpointError(errors.UserError):
  """No checkpoint of the workdir can be read, though some are there."""


class ConfigMismatchError(errors.UserError):
  """A checkpoint made with a config the current run may not continue from."""


def _abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or abstract values) placed by `shardings`."""
  return jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
  )


def network_part(state):
  """What a network needs from a TrainState: model parameters and BatchNorm statistics."""
  return {'params': {'model': state.params['model']}, 'batch_stats': state.batch_stats}


def _with_network(state, network):
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


def checkpoint_meta(config, num_classes: int) -> dict:
  return {
    'config': run_record.flatten(config),
    'fingerprint': run_record.fingerprint(config),
    'num_classes': num_classes,
  }


def network_fields(flat_config: dict) -> list[str]:
  """The fields that define the network's parameters: config.model's, less the trainer's."""
  return [
    k
    for k in flat_config
    if k.startswith('model.')
    and k.split('.', 1)[1] not in presets.TRAINER_FIELDS
    and k not in run_record.RESUMABLE_FIELDS
  ]


def check_meta(meta: dict, config, num_classes: int, where: str, network_only=False) -> None:
  """ConfigMismatchError listing every field where a checkpoint's config and `config` differ.

  Resuming compares every field but the resumable ones (run_record.RESUMABLE_FIELDS);
  `network_only` (evaluation, an init checkpoint) compares the network's fields alone.
  """
  if 'config' not in meta:
    raise ConfigMismatchError(
      f'{where} holds a checkpoint written before runs recorded their config, so it cannot be '
      'checked against this one; use another workdir.'
    )
  current = run_record.flatten(config)
  fields = network_fields({**meta['config'], **current}) if network_only else None
  differences = run_record.differences(meta['config'], current, fields)
  if meta.get('num_classes') != num_classes:
    differences.append(f'num_classes: checkpoint {meta.get("num_classes")}, config {num_classes}')
  if differences:
    raise ConfigMismatchError(
      f'{where} holds a checkpoint made with a different config; use another workdir or the '
      f'matching config. Differences ({len(differences)}): ' + '; '.join(differences)
    )


def _describe(error: Exception) -> str:
  """The first line of an error from Orbax or TensorStore, kept short for a one-line report."""
  lines = str(error).strip().splitlines()
  text = errors.one_line(lines[0]) if lines else ''
  text = text if len(text) <= 160 else text[:157] + '...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _restore_intact(checkpointer, step, abstract, config, num_classes):
  """(the restored checkpoint, None), or (None, (the part that failed, what went wrong)).

  Each part is read on its own so the report names it; a config mismatch is not damage and
  raises ConfigMismatchError.
  """
  where = checkpointer.step_dir(step)
  try:
    meta = checkpointer.meta(step)
  except Exception as e:  # Orbax and TensorStore raise many types; any means unreadable
    return None, (os.path.join(where, 'meta'), _describe(e))
  check_meta(meta, config, num_classes, f'workdir {checkpointer.directory}')
  try:
    checkpointer.data_position(step)
  except Exception as e:
    return None, (os.path.join(where, 'data'), _describe(e))
  try:
    return checkpointer.restore_step(step, abstract), None
  except Exception as e:
    return None, (os.path.join(where, 'state'), _describe(e))


def restore_latest_intact(checkpointer, abstract, config, num_classes):
  """(restored {'state', 'data'}, step) of the newest readable checkpoint, or None if none is there.

  Newer checkpoints that cannot be read (a crash mid-save, a full disk, bit rot) are reported,
  one line each, and moved to WORKDIR/damaged_checkpoints/; the run goes on from the newest
  intact one exactly as it went on from there before. If none can be read, nothing is moved
  and DamagedCheckpointError says what to do.
  """
  damaged = []
  for step in reversed(checkpointer.all_steps()):
    restored, failure = _restore_intact(checkpointer, step, abstract, config, num_classes)
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


def restore_or_init(checkpointer, config, init, state_sharding, rng, num_classes):
  """(state, data iterator state or None), following the resume order of the module docstring."""
  abstract = _abstract(jax.eval_shape(init, rng), state_sharding)
  found = restore_latest_intact(checkpointer, abstract, config, num_classes)
  if found is not None:
    restored, step = found
    logging.info('Resumed from %s at step %d.', checkpointer.directory, step)
    return restored['state'], restored['data']
  state = jax.jit(init, out_shardings=state_sharding)(rng)
  if config.init_checkpoint:
    return load_init_checkpoint(config, state, state_sharding, num_classes), None
  if config.model.pretrained:
    return load_pretrained(config, state, state_sharding), None
  return state, None


def _checkpoint_dir(path: str) -> str:
  """A run's workdir or its checkpoints/ folder -> the workdir (what Checkpointer takes)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return path
  if os.path.basename(path) == 'checkpoints' and os.path.isdir(path):
    return os.path.dirname(path)
  raise errors.MissingFileError(
    f'config.init_checkpoint={path!r}: no checkpoints/ folder there (expected a workdir).'
  )


def load_init_checkpoint(config, state, state_sharding, num_classes: int):
  """`state` with the network weights and BN statistics of `config.init_checkpoint`'s run."""
  path = config.init_checkpoint
  with Checkpointer(_checkpoint_dir(path), create=False) as source:
    step = source.latest_step()
    if step is None:
      raise errors.MissingFileError(
        f'config.init_checkpoint={path!r}: no checkpoint in {source.directory}.'
      )
    where = f'config.init_checkpoint={path!r}'
    # A CE run may initialise an AAF run: only the network must match.
    network = _read_network(
      source,
      step,
      _abstract(state, state_sharding),
      config,
      num_classes,
      where,
      lambda part, e: _unreadable_init(where, source.step_dir(step), part, e),
    )
  logging.info('Initialised the network from %s (step %d).', source.directory, step)
  return _with_network(state, network)


def _read_network(checkpointer, step, abstract, config, num_classes, where, unreadable):
  """The network part of checkpoint `step`, after checking that its network fields match.

  A part that cannot be read (Orbax and TensorStore raise many types; any means unreadable)
  raises `unreadable(part, error)`, the caller's error for it.
  """
  try:
    meta = checkpointer.meta(step)
  except Exception as e:
    raise unreadable('meta', e) from e
  check_meta(meta, config, num_classes, where, network_only=True)
  try:
    return checkpointer.restore_step(step, abstract, network_only=True)['state']
  except Exception as e:
    raise unreadable('state', e) from e


def _unreadable_init(where: str, step_dir: str, part: str, error: Exception):
  return DamagedCheckpointError(
    f'{where}: {os.path.join(step_dir, part)} cannot be read ({_describe(error)}); point the '
    'field at an intact checkpoint, or set it to an empty string to start from scratch.'
  )


def load_pretrained(config, state, state_sharding):
  """`state` with the ImageNet backbone of `config.model.pretrained` (aaf_jax.weights)."""
  from aaf_jax import weights  # only runs that import weights need its dependencies

  try:
    variables = weights.load_backbone(
      os.path.expanduser(config.model.pretrained),
      {'params': state.params['model'], 'batch_stats': state.batch_stats},
      layout=config.model.layout,
    )
  except errors.UserError as e:  # a bad file: say which config field named it
    raise type(e)(f'config.model.pretrained={config.model.pretrained!r}: {e}') from e
  network = {'params': {'model': variables['params']}, 'batch_stats': variables['batch_stats']}
  return jax.device_put(_with_network(state, network), state_sharding)


def restore_network(workdir: str, config, init, state_sharding, rng, num_classes: int):
  """(the latest checkpoint's network as `network_part` of a state, its step): `--mode=eval`.

  Only the network's fields must match: another dataset with the same classes is fine (that is
  how GTA5 tests a Cityscapes model), and so are another loss or optimizer.
  """
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise errors.MissingFileError(f'--mode=eval: no checkpoints/ folder in workdir {workdir}.')
  with Checkpointer(workdir, create=False) as checkpointer:
    step = checkpointer.latest_step()
    if step is None:
      raise errors.MissingFileError(f'--mode=eval: no checkpoint in {checkpointer.directory}.')
    network = _read_network(
      checkpointer,
      step,
      _abstract(jax.eval_shape(init, rng), state_sharding),
      config,
      num_classes,
      f'workdir {checkpointer.directory}',
      lambda part, e: _unreadable_for_eval(checkpointer, step, part, e),
    )
  return network, step


def _unreadable_for_eval(checkpointer, step: int, part: str, error: Exception):
  """--mode=eval leaves the workdir as it is: it names the damage and what the user can do."""
  older = [s for s in checkpointer.all_steps() if s < step]
  choice = (
    f'to evaluate an older one ({", ".join(map(str, older))}), move '
    f'{checkpointer.step_dir(step)} aside'
    if older
    else 'there is no older checkpoint to evaluate'
  )
  return DamagedCheckpointError(
    f'--mode=eval: the latest checkpoint, step {step}, cannot be read '
    f'({os.path.join(checkpointer.step_dir(step), part)}: {_describe(error)}); nothing was '
    f'moved or written. A training run on this workdir moves it aside and resumes from the '
    f'newest intact one; {choice}.'
  )


def network_shardings(state_sharding) -> dict:
  """The shardings of the network's variables ({'params', 'batch_stats'}) in a state."""
  return {'params': state_sharding.params['model'], 'batch_stats': state_sharding.batch_stats}
