"""The project's one JSON writer: results, evaluations, run records and sweep summaries.

Imports nothing of ours and no jax, so every layer (and a login node's sweep status) can use it.
"""

import json
import os
import tempfile


def write_json_atomically(path: str, payload) -> None:
  """Write to a temporary file beside `path`, then rename: a reader never sees half a file.

  NaN and infinities are refused (ValueError) before anything replaces an existing file.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.json')
  try:
    with os.fdopen(fd, 'w') as f:
      json.dump(payload, f, indent=2, allow_nan=False)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the results from other users
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
