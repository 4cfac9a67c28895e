"""A sweep's figures: mIoU against each swept field, the paired differences, the field sizes."""

import os

from aaf_jax import viz
from aaf_jax.sweep import grid

# The paired-difference scores, in the order of the paired columns and the plot's first points.
PAIRED_SCORES = (('miou', 'mIoU'), ('boundary_iou', 'boundary IoU'))


def field_sizes_name(overrides: dict) -> str:
  """summary_field_sizes[,FIELD=VALUE...].png: a grid point's mean learned field sizes."""
  point = grid.run_name(overrides, 0).rpartition('seed=')[0].rstrip(',')
  return f'summary_field_sizes{"," + point if point else ""}.png'


def field_sizes(group: dict, workdir: str) -> None:
  """A group's mean learned field-size weights, WORKDIR/summary_field_sizes,....png."""
  weights = group['field_size_weights']
  viz.plot_field_sizes(
    os.path.join(workdir, field_sizes_name(group['overrides'])),
    weights,
    note=f'mean of {weights["seeds"]} seed(s)',
  )


def points(summary: dict, fields: list, path: str) -> None:
  """mIoU (mean ± std over seeds) against each swept field, one line per other-field setting."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  axes_fields = fields or ['(base)']
  fig, axes = plt.subplots(1, len(axes_fields), figsize=(4.5 * len(axes_fields), 3.5))
  axes = axes if len(axes_fields) > 1 else [axes]
  groups = [g for g in summary['groups'] if g['miou_mean'] is not None]
  for ax, field in zip(axes, axes_fields):
    values = list(dict.fromkeys(grid.value_text(g['overrides'].get(field, '')) for g in groups))
    lines = {}
    for g in groups:
      others = ', '.join(
        f'{k}={grid.value_text(v)}' for k, v in g['overrides'].items() if k != field
      )
      lines.setdefault(others, []).append(g)
    for label, members in lines.items():
      xs = [values.index(grid.value_text(g['overrides'].get(field, ''))) for g in members]
      ax.errorbar(
        xs,
        [100 * g['miou_mean'] for g in members],
        yerr=[100 * g['miou_std'] for g in members],
        marker='o',
        capsize=3,
        label=label or None,
      )
    ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(field)
    ax.set_ylabel('mIoU (%)')
    if any(lines):
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def paired(summary: dict, classes: list, path: str) -> None:
  """Each grid point's paired difference from the baseline in mIoU, boundary IoU and each
  class's IoU: the mean with its 95% CI as an error bar; a hollow marker for a single pair
  (no CI)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = [name for _, name in PAIRED_SCORES] + classes
  rows = summary['paired_differences']
  fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(names) + 2), 3.8))
  ax.axhline(0.0, color='gray', linewidth=0.8)
  width = 0.8 / max(len(rows), 1)
  for i, d in enumerate(rows):
    stats = [d[key] for key, _ in PAIRED_SCORES] + [d['per_class_iou'][c] for c in classes]
    label = ', '.join(f'{k}={grid.value_text(v)}' for k, v in d['overrides'].items())
    offset = (i - (len(rows) - 1) / 2) * width
    with_ci = [(x, s) for x, s in enumerate(stats) if s['ci'] is not None]
    single = [(x, s) for x, s in enumerate(stats) if s['pairs'] == 1]
    if with_ci:
      ax.errorbar(
        [x + offset for x, _ in with_ci],
        [100 * s['mean'] for _, s in with_ci],
        yerr=[
          [100 * (s['mean'] - s['ci'][0]) for _, s in with_ci],
          [100 * (s['ci'][1] - s['mean']) for _, s in with_ci],
        ],
        fmt='o',
        capsize=3,
        color=f'C{i}',
        label=label,
      )
    if single:
      ax.plot(
        [x + offset for x, _ in single],
        [100 * s['mean'] for _, s in single],
        'o',
        markerfacecolor='none',
        color=f'C{i}',
        label=None if with_ci else f'{label} (1 pair, no CI)',
      )
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right')
  baseline = ', '.join(f'{k}={grid.value_text(v)}' for k, v in summary['baseline'].items())
  ax.set_ylabel(f'minus {baseline} (points)')
  ax.set_title('Paired difference over seeds, mean and 95% CI', fontsize=9)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
