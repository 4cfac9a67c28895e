"""Where a run's state comes from: the resume order, and the network for eval and predict.

Resume order (`restore_or_init`): the workdir's latest checkpoint (state and data position,
so the run continues exactly as if never stopped), else `config.init_checkpoint` (network
weights and BatchNorm statistics only; the AAF tables, step, optimizer state and loss decay
start afresh, as stage 2 of the VOC recipe does), else the ImageNet backbone named by
`config.model.pretrained`, else from scratch. Storage is checkpoint.py's; which checkpoint a
config may continue from is same_run.py's.
"""

import os

import jax
from absl import logging

from aaf_jax import checkpoint, errors, run_record, same_run, weights


def restore_or_init(checkpointer, config, init, state_sharding, rng, num_classes):
  """(state, data iterator state or None), following the resume order of the module docstring."""
  abstract = checkpoint.abstract(jax.eval_shape(init, rng), state_sharding)
  found = checkpoint.restore_latest_intact(
    checkpointer, abstract, same_run.checker(config, num_classes)
  )
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


def load_init_checkpoint(config, state, state_sharding, num_classes: int):
  """`state` with the network weights and BN statistics of `config.init_checkpoint`'s run."""
  path = config.init_checkpoint
  with checkpoint.Checkpointer(run_record.init_checkpoint_workdir(path), create=False) as source:
    step = source.latest_step()
    if step is None:
      raise errors.MissingFileError(
        f'config.init_checkpoint={path!r}: no checkpoint in {source.directory}.'
      )
    where = f'config.init_checkpoint={path!r}'
    # A CE run may initialise an AAF run: only the network must match.
    network = checkpoint.read_network(
      source,
      step,
      checkpoint.abstract(state, state_sharding),
      same_run.checker(config, num_classes, network_only=True),
      where,
      lambda part, e: _unreadable_init(where, source.step_dir(step), part, e),
    )
  logging.info('Initialised the network from %s (step %d).', source.directory, step)
  return checkpoint.with_network(state, network)


def _unreadable_init(where: str, step_dir: str, part: str, error: Exception):
  return checkpoint.DamagedCheckpointError(
    f'{where}: {os.path.join(step_dir, part)} cannot be read ({checkpoint.describe(error)}); point the '
    'field at an intact checkpoint, or set it to an empty string to start from scratch.'
  )


def load_pretrained(config, state, state_sharding):
  """`state` with the ImageNet backbone of `config.model.pretrained` (aaf_jax.weights)."""
  try:
    variables = weights.load_backbone(
      os.path.expanduser(config.model.pretrained),
      {'params': state.params['model'], 'batch_stats': state.batch_stats},
      layout=config.model.layout,
    )
  except errors.UserError as e:  # a bad file: say which config field named it
    raise type(e)(f'config.model.pretrained={config.model.pretrained!r}: {e}') from e
  network = {'params': {'model': variables['params']}, 'batch_stats': variables['batch_stats']}
  return jax.device_put(checkpoint.with_network(state, network), state_sharding)


def restore_network(workdir: str, config, init, state_sharding, rng, num_classes: int):
  """(the latest checkpoint's network as `network_part` of a state, its step): `--mode=eval`.

  Only the network's fields must match: another dataset with the same classes is fine (that is
  how GTA5 tests a Cityscapes model), and so are another loss or optimizer.
  """
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise errors.MissingFileError(f'--mode=eval: no checkpoints/ folder in workdir {workdir}.')
  with checkpoint.Checkpointer(workdir, create=False) as checkpointer:
    step = checkpointer.latest_step()
    if step is None:
      raise errors.MissingFileError(f'--mode=eval: no checkpoint in {checkpointer.directory}.')
    network = checkpoint.read_network(
      checkpointer,
      step,
      checkpoint.abstract(jax.eval_shape(init, rng), state_sharding),
      same_run.checker(config, num_classes, network_only=True),
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
  return checkpoint.DamagedCheckpointError(
    f'--mode=eval: the latest checkpoint, step {step}, cannot be read '
    f'({os.path.join(checkpointer.step_dir(step), part)}: {checkpoint.describe(error)}); nothing was '
    f'moved or written. A training run on this workdir moves it aside and resumes from the '
    f'newest intact one; {choice}.'
  )
