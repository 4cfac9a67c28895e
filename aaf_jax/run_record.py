"""The run record: what a workdir's run was made from, so results can be trusted and compared.

At every start a run writes `config.json` (the resolved config, every field) and appends to
`environment.json` (package versions, devices, processes, the project's git commit); its
checkpoints and `results.json` carry the config's fingerprint. A checkpoint made with a
different config is refused, listing every differing field, except the fields below, which
cannot change the trained weights or the scores. Imports no jax at module level.
"""

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

from aaf_jax import errors, jsonio, loss_kinds

# Fields that may differ between a checkpoint's run and the run resuming it (docs/training.md lists them).
RESUMABLE_FIELDS = (
  'log_every_steps',
  'eval_every_steps',
  'checkpoint_every_steps',
  'keep_checkpoints',
  'num_summary_images',
  'data.data_dir',
  'data.manual_dir',
  'data.prefetch',
  'data.num_threads',
  # The same loss by another computation (float32 rounding apart): a run started on a CPU
  # ('xla') may resume on a GPU with 'pallas', and checkpoints from before the field resume.
  'loss.implementation',
  'model.dilated_conv',  # how a dilated conv computes, not what: same function, same params
)

# Fields added after runs were recorded, with the value a record without them means (the
# behaviour before the field existed). At that value a field is left out of the fingerprint, so
# results, checkpoints and sweeps written before it still match; a record that lacks it compares
# as that value.
ADDED_FIELDS = {
  'loss.tables': loss_kinds.DEFAULT_TABLES,  # the AAF tables were always trained by gradient ascent
}

_PACKAGES = (
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'orbax-checkpoint',
  'clu',
  'ml-collections',
  'numpy',
  'tensorflow',
  'tensorflow-datasets',
)


def flatten(config) -> dict:
  """{'loss.margin': 3.0, ...}: every leaf of a config (or nested dict) by its dotted path,
  with tuples as lists (the values JSON keeps)."""
  tree = config.to_dict() if hasattr(config, 'to_dict') else config
  flat = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(value, f'{prefix}{key}.')
      else:
        flat[f'{prefix}{key}'] = json.loads(json.dumps(value))

  walk(tree, '')
  return flat


def init_checkpoint_workdir(path: str) -> str:
  """`config.init_checkpoint` (a run's workdir or its checkpoints/ folder) -> the workdir that
  holds the checkpoints/ folder; MissingFileError when there is none."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return path
  if os.path.basename(path) == 'checkpoints' and os.path.isdir(path):
    return os.path.dirname(path)
  raise errors.MissingFileError(
    f'config.init_checkpoint={path!r}: no checkpoints/ folder there (expected the workdir of a '
    'finished run).'
  )


def eval_results_name(config) -> str:
  """The file `--mode=eval` writes into a run's workdir for `config`: eval-DATASET-SPLIT.json
  (read back by a sweep's evaluation sets and its status command)."""
  return f'eval-{config.data.name}-{config.data.eval_split}.json'


def fingerprint(config) -> str:
  """A digest of every field that can change the trained weights or the scores."""
  relevant = {
    k: v
    for k, v in flatten(config).items()
    if k not in RESUMABLE_FIELDS and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])
  }
  return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def differences(saved: dict, current: dict, fields=None) -> list[str]:
  """'config.FIELD: checkpoint A, config B' for every differing field of two flat configs.

  `fields`: the dotted paths (or prefixes ending in '.') to compare; default every field but
  the resumable ones. A field of ADDED_FIELDS absent from either compares as its old value.
  """
  saved = {**ADDED_FIELDS, **saved}
  current = {**ADDED_FIELDS, **current}

  def compared(key):
    if fields is None:
      return key not in RESUMABLE_FIELDS
    return any(key == f or (f.endswith('.') and key.startswith(f)) for f in fields)

  keys = sorted(k for k in set(saved) | set(current) if compared(k))
  missing = '(absent)'
  return [
    f'config.{k}: checkpoint {saved.get(k, missing)!r}, config {current.get(k, missing)!r}'
    for k in keys
    if saved.get(k, missing) != current.get(k, missing)
  ]


def git_commit() -> str | None:
  """The project's git commit (with '-dirty' when files differ from it), or None."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True, timeout=10
    )
    if commit.returncode != 0:
      return None
    status = subprocess.run(
      ['git', 'status', '--porcelain', '--untracked-files=no'],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=10,
    )
  except (OSError, subprocess.SubprocessError):
    return None
  return commit.stdout.strip() + ('-dirty' if status.stdout.strip() else '')


def environment(devices: list, process_count: int) -> dict:
  """Package versions, the run's devices and processes, and the git commit of this process.

  The devices come from the caller (the trainer's jax.devices()), so the record imports no jax.
  """
  versions = {}
  for package in _PACKAGES:
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = None
  return {
    'time': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
    'python': sys.version.split()[0],
    'platform': platform.platform(),
    'packages': versions,
    'device_kind': devices[0].device_kind,
    'device_count': len(devices),
    'process_count': process_count,
    'git_commit': git_commit(),
  }


def write(workdir: str, config, start_step: int, devices: list, process_count: int) -> None:
  """config.json (this start's config) and one more entry in environment.json (`devices` and
  `process_count` as jax.devices() and jax.process_count() give them)."""
  os.makedirs(workdir, exist_ok=True)
  record = {'fingerprint': fingerprint(config), 'config': config.to_dict()}
  jsonio.write_json_atomically(os.path.join(workdir, 'config.json'), json.loads(json.dumps(record)))
  path = os.path.join(workdir, 'environment.json')
  starts = []
  if os.path.exists(path):
    with open(path) as f:
      starts = json.load(f).get('starts', [])
  starts.append({'start_step': start_step, **environment(devices, process_count)})
  jsonio.write_json_atomically(path, {'starts': starts})
