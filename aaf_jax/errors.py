"""Errors a user can fix: a bad config value, flag or file (jax-free, imports nothing of ours).

launch.py prints a `UserError` as one line and exits with status 2, without a traceback
(`--verbose` or AAF_VERBOSE=1 shows it); any other exception is a bug and keeps its traceback.
Raise one with a message that names the field or file at fault and what to do about it.
"""

import os


class UserError(ValueError):
  """A mistake in the config, the flags or the files given; the message says how to fix it.

  A ValueError, so callers that check values with `except ValueError` still catch it.
  """


class MissingFileError(UserError, FileNotFoundError):
  """A file or folder named by the config or a flag does not exist."""


def verbose_requested(argv=None) -> bool:
  """Whether the user asked for tracebacks: AAF_VERBOSE=1 or a --verbose flag in `argv`."""
  if os.environ.get('AAF_VERBOSE', '').strip().lower() not in ('', '0', 'false', 'no'):
    return True
  return any(
    arg in ('--verbose', '--verbose=true', '--verbose=True', '--verbose=1') for arg in argv or ()
  )


def one_line(message: str) -> str:
  """`message` with runs of whitespace (newlines included) collapsed to single spaces."""
  return ' '.join(str(message).split())
