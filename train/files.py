"""Writing files that other processes read: a temporary name next to the target, then a rename.

A reader (or a crashed and restarted writer) never sees half a file. The
temporary file is hidden (globs like DIR/* skip it), gets the usual
0666 & ~umask permissions, and is removed when the write fails.
"""

import contextlib
import json
import os
import uuid


def temp_path(path: str, suffix: str = '.tmp') -> str:
  """Create an empty hidden file next to `path` and return its name."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  name = f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}{suffix}'
  tmp = os.path.join(folder, name)
  os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
  return tmp


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w', **open_kwargs):
  """open() for writing whose file appears at `path` only when the block ends without error."""
  tmp = temp_path(path)
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def write_json_atomic(path: str, obj, **dump_kwargs) -> None:
  """json.dump(obj) to `path` through `atomic_open`."""
  with atomic_open(path) as f:
    json.dump(obj, f, **dump_kwargs)
