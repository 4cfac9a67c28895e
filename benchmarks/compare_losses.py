"""ce vs affinity vs aaf on the synthetic dataset: the sweep over `loss.kind`; prints its table.

    python benchmarks/compare_losses.py --workdir=workdir/compare [--seeds=3] [--steps=N]

The same as `python launch.py --mode=sweep --config=configs/synthetic.py --workdir=DIR
--seeds=N --baseline=loss.kind=ce` (the synthetic config's default sweep is the three loss
kinds): each run trains in its own folder of DIR, finished runs are reused, and DIR/summary.md
holds the tables printed (with two or more seeds, each loss's paired difference from ce).
"""

import argparse
import os
import sys

# Run as `python benchmarks/compare_losses.py`, Python puts benchmarks/ on the path, not the
# repository root that holds configs/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aaf_jax import sweep  # noqa: E402
from configs import synthetic  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--seeds', type=int, default=1)
  parser.add_argument('--steps', type=int, default=None)
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  arg = 'aaf' + (f',steps={args.steps}' if args.steps else '')
  arg += f',data_dir={args.data_dir}' if args.data_dir else ''
  config = synthetic.get_config(arg)
  grid = [f'{field}={values!r}' for field, values in synthetic.get_sweep(arg).items()]
  runs = sweep.plan(config, args.workdir, grid, args.seeds)
  sweep.run_sweep(runs, args.workdir, baseline=sweep.baseline_group(runs, 'loss.kind=ce'))
  with open(os.path.join(args.workdir, 'summary.md')) as f:
    print(f.read())


if __name__ == '__main__':
  main()
