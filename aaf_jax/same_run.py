"""Is this the same run? What a checkpoint records of its run, and which config may continue it.

A checkpoint's `meta` holds the flat config and the class count it was made with. Resuming
compares every field but the resumable ones (run_record.RESUMABLE_FIELDS); evaluation and an
init checkpoint compare the network's fields alone. A mismatch raises ConfigMismatchError
listing every differing field. Imports no jax.
"""

from aaf_jax import errors, presets, run_record


class ConfigMismatchError(errors.UserError):
  """A checkpoint made with a config the current run may not continue from."""


def checkpoint_meta(config, num_classes: int) -> dict:
  """What a checkpoint records of its run: {'config': the flat config, 'num_classes'}.

  Checkpoints written before 2026-12-07 also carry a 'fingerprint', which nothing reads.
  """
  return {'config': run_record.flatten(config), 'num_classes': num_classes}


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


def checker(config, num_classes: int, network_only=False):
  """check_meta for `config` as a function of (meta, where): what checkpoint.py calls."""
  return lambda meta, where: check_meta(meta, config, num_classes, where, network_only)
