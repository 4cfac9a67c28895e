"""ce vs affinity vs aaf on the synthetic dataset: same config, steps and seed; prints a table.

    python benchmarks/compare_losses.py --workdir=workdir/compare [--steps=N]

Each loss trains in WORKDIR/KIND with `configs/synthetic.py:KIND` (a finished run is reused:
delete its folder to retrain).
"""

import argparse
import json
import os
import sys
import time

# Run as `python benchmarks/compare_losses.py`, Python puts benchmarks/ on the path, not the
# repository root that holds configs/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aaf_jax import train  # noqa: E402
from configs import synthetic  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, default=None)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  rows = {}
  for kind in ('ce', 'affinity', 'aaf'):
    arg = kind + (f',steps={args.steps}' if args.steps else '')
    arg += f',data_dir={args.data_dir}' if args.data_dir else ''
    workdir = os.path.join(args.workdir, kind)
    results_path = os.path.join(workdir, 'results.json')
    start = time.time()
    if not os.path.exists(results_path):
      train.train_and_evaluate(synthetic.get_config(arg), workdir)
    rows[kind] = (json.load(open(results_path)), time.time() - start)
  classes = list(rows['ce'][0]['per_class_iou'])
  print('| loss | mIoU | pixel acc | ' + ' | '.join(classes) + ' | wall s |')
  print('|---|---|---|' + '---|' * len(classes) + '---|')
  for kind, (res, seconds) in rows.items():
    ious = ' | '.join(
      '-' if res['per_class_iou'][c] is None else f'{100 * res["per_class_iou"][c]:.1f}'
      for c in classes
    )
    print(
      f'| {kind} | {100 * res["miou"]:.2f} | {100 * res["pixel_acc"]:.2f} | {ious} | '
      f'{seconds:.0f} |'
    )


if __name__ == '__main__':
  main()
