"""Readable training logs: metrics to 5 significant digits, with steps/s and the ETA.

`create_writer` is clu's default writer (log lines plus TensorBoard) with a log line that
prints `[STEP] train/loss=1.9117, ..., steps/s=1.2924, eta=3m05s` instead of 16-digit floats;
TensorBoard still gets full precision. `Pace` measures steps/s between two log lines.
"""

import math
import os
import time
from collections.abc import Mapping

import numpy as np
from absl import logging
from clu import metric_writers

SIGNIFICANT_DIGITS = 5
STEPS_PER_SEC = 'steps_per_sec'


def format_number(value) -> str:
  """`value` with SIGNIFICANT_DIGITS significant digits (integers as they are)."""
  value = np.asarray(value).item() if not isinstance(value, (int, float)) else value
  if isinstance(value, (bool, int)):
    return str(value)
  return f'{value:.{SIGNIFICANT_DIGITS}g}'


def format_duration(seconds: float) -> str:
  """'2h05m', '3m07s', '12s': what an ETA needs, no more."""
  if not math.isfinite(seconds):
    return '?'
  seconds = max(0, round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


def format_scalars(step: int, scalars: Mapping, num_steps: int | None = None) -> str:
  """One log line: `[step] name=value, ...`, then steps/s and the ETA when steps/s is given."""
  rate = scalars.get(STEPS_PER_SEC)
  parts = [f'{k}={format_number(v)}' for k, v in sorted(scalars.items()) if k != STEPS_PER_SEC]
  if rate is not None:
    rate = float(np.asarray(rate))
    parts.append(f'steps/s={format_number(rate)}')
    if num_steps:
      remaining = (num_steps - step) / rate if rate > 0 else math.inf
      parts.append(f'eta={format_duration(remaining)}')
  return f'[{step}] ' + ', '.join(parts)


class ReadableLoggingWriter(metric_writers.LoggingWriter):
  """clu's LoggingWriter, but scalars are written by `format_scalars`."""

  def __init__(self, num_steps: int | None = None):
    super().__init__()
    self._num_steps = num_steps

  def write_scalars(self, step: int, scalars: Mapping) -> None:
    logging.info('%s', format_scalars(step, scalars, self._num_steps))


def create_writer(workdir: str, *, just_logging: bool, num_steps: int | None):
  """Log lines (readable) and, unless `just_logging`, TensorBoard events in `workdir`."""
  writers = [ReadableLoggingWriter(num_steps)]
  if not just_logging:
    writers.append(metric_writers.SummaryWriter(os.fspath(workdir)))
  return metric_writers.AsyncMultiWriter(writers)


class Pace:
  """Steps per second between successive `rate(step)` calls (the first call starts the clock).

  Call it where the step's results have been fetched (the log step), so the time measured is
  that of finished steps, not of dispatched ones; the first interval, which holds the
  compilation, is left out.
  """

  def __init__(self, clock=time.monotonic):
    self._clock = clock
    self._last = None

  def rate(self, step: int) -> float | None:
    now = self._clock()
    last, self._last = self._last, (step, now)
    if last is None or step <= last[0] or now <= last[1]:
      return None
    return (step - last[0]) / (now - last[1])
