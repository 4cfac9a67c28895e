"""The periodic log line: 5 significant digits, steps/s and an ETA."""

import jax.numpy as jnp
import numpy as np

from aaf_jax import logs


def test_metrics_get_five_significant_digits():
  line = logs.format_scalars(
    100, {'train/loss': np.float32(1.9117162227630615), 'train/nonedge': jnp.float32(4.5876e-05)}
  )
  assert line == '[100] train/loss=1.9117, train/nonedge=4.5876e-05'


def test_steps_per_second_and_eta_close_the_line():
  line = logs.format_scalars(
    200, {'train/ce': 0.5, logs.STEPS_PER_SEC: 2.0}, num_steps=200 + 2 * 3725
  )
  assert line == '[200] train/ce=0.5, steps/s=2, eta=1h02m'
  assert logs.format_scalars(5, {logs.STEPS_PER_SEC: 4.0}, num_steps=9).endswith('eta=1s')


def test_durations():
  assert [logs.format_duration(s) for s in (7, 65, 3599, 3600 * 25 + 61)] == [
    '7s',
    '1m05s',
    '59m59s',
    '25h01m',
  ]


def test_pace_leaves_out_the_first_interval():
  times = iter([0.0, 100.0, 104.0, 110.0])  # 100 s of compilation before the first log
  pace = logs.Pace(clock=lambda: next(times))
  assert pace.rate(50) is None
  assert pace.rate(100) == 50 / 100.0
  assert pace.rate(120) == 20 / 4.0
  assert pace.rate(150) == 30 / 6.0


def test_writer_logs_readable_lines(tmp_path, caplog):
  caplog.set_level('INFO')
  writer = logs.create_writer(str(tmp_path), just_logging=False, num_steps=10)
  writer.write_scalars(4, {'train/loss': np.float32(2.8359313011169434), 'steps_per_sec': 3.0})
  writer.flush()
  lines = [r.getMessage() for r in caplog.records]
  assert '[4] train/loss=2.8359, steps/s=3, eta=2s' in lines, lines
  assert any(p.name.startswith('events.out.tfevents') for p in tmp_path.iterdir())
