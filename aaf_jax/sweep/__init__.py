"""Sweeps: every point of a grid of config fields times several seeds, one workdir per run.

    python launch.py --mode=sweep --config=FILE --workdir=DIR \
        --sweep='loss.margin=[1.0,2.0,3.0]' --sweep='loss.sizes=[(1,),(1,2),(1,2,3)]' --seeds=3
    python -m aaf_jax.sweep.status DIR          # where it stands, without jax
    python -m aaf_jax.sweep.ablation --workdir=DIR --among=... --of=...

One job per module: `grid` plans the runs (arguments, tied fields, configs, names, shards,
baseline, the config file's default sweep and evaluation sets); `checks` checks every grid point
before the first run; `run` trains and evaluates them; `status` reads where each run stands;
`stats` computes the summary's numbers, `report` writes its files, `plots` its figures;
`ablation` reads a finished summary. Only `run` imports jax, through the trainer, when training.
"""

import importlib

# The package's names, each from the module that defines it; imported on first use, so that
# `python -m aaf_jax.sweep.status` (and the package's import) loads only what it needs.
_EXPORTS = {
  **dict.fromkeys(
    (
      'BaselineError',
      'Run',
      'SweepError',
      'baseline_group',
      'default_sweep',
      'eval_set_names',
      'eval_sets',
      'grid_config',
      'matching',
      'parse_shard',
      'parse_sweep_argument',
      'plan',
      'point_name',
      'run_name',
    ),
    'grid',
  ),
  'difference_text': 'report',
  'write_summary': 'report',
  'run_sweep': 'run',
  'paired_differences': 'stats',
  'paired_stats': 'stats',
  'summarize': 'stats',
  'run_status': 'status',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  return getattr(importlib.import_module(f'{__name__}.{_EXPORTS[name]}'), name)
