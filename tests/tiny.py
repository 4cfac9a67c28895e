"""The tiny synthetic set-up of the end-to-end tests, spelled once: 32 px images, 8-wide
networks, a few steps. `tiny_config` builds it in-process; `tiny_flags` gives the same fields
as `--config.FIELD=` flags over configs/synthetic.py for runs of launch.py."""

import ml_collections

from configs import synthetic

STEPS = 4
BATCH = 8

# The fields the tiny set-up changes in configs/synthetic.py: the data and the network ...
SETUP = {
  'data.synthetic.image_size': 32,
  'data.synthetic.num_train': 24,
  'data.synthetic.num_validation': 10,
  'data.crop_size': 32,
  'data.eval_size': (32, 32),
  'model.base_width': 8,
  'model.stem_width': 8,
  'model.head_width': 8,
}
# ... and a cadence of logs, checkpoints and summaries that a 4-step run reaches.
CADENCE = {
  'log_every_steps': 2,
  'checkpoint_every_steps': 2,
  'num_summary_images': 2,
}


def config_argument(data_dir=None, loss='aaf', steps=STEPS, batch=BATCH) -> str:
  """configs/synthetic.py's argument string: the loss, steps, batch and (if given) data_dir."""
  argument = f'{loss},steps={steps},batch={batch}'
  return f'{argument},data_dir={data_dir}' if data_dir is not None else argument


def tiny_config(data_dir, loss='aaf', **overrides) -> ml_collections.ConfigDict:
  """The tiny config; `overrides` maps dotted field names (`'model.head_width'`) to values."""
  config = synthetic.get_config(config_argument(data_dir, loss))
  config.unlock()
  for key, value in {**SETUP, **CADENCE, **overrides}.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.lock()
  return config


def tiny_flags(cadence: bool = False, **overrides) -> tuple[str, ...]:
  """`--config.FIELD=VALUE` flags of the set-up's fields (and the cadence's if `cadence`), with
  `overrides` (dotted names) applied."""
  fields = {**SETUP, **(CADENCE if cadence else {}), **overrides}
  return tuple(f'--config.{key}={value}' for key, value in fields.items())


TINY_FLAGS = tiny_flags()
