"""Loading a Python config file (`get_config()`), and the error every config problem raises.

`load_config_file` is the one loader: `python -m train --config` goes through
absl's config_flags, and everything else (sweeps, the planner) through this.
"""

import importlib.util
import os
import sys

from configs import base

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
  """An invalid config or command line; the message names every offending key or flag."""


def resolve_path(path: str) -> str:
  """A config path as given when it exists (absolute or from the working directory), else from the repo root."""
  return path if os.path.isabs(path) or os.path.exists(path) else os.path.join(REPO_ROOT, path)


def load_config_file(path: str, what: str = '--config'):
  """`get_config()` of a Python config file.

  A relative path is taken from the working directory, else from the repo root.
  Raises ConfigError naming `what` and the path when the file is missing, fails
  to import, or has no get_config().
  """
  full = resolve_path(path)
  if not os.path.isfile(full):
    raise ConfigError(f'{what} {path!r}: no such file')
  if REPO_ROOT not in sys.path:  # Config files import `configs.base`.
    sys.path.insert(0, REPO_ROOT)
  name = '_chinchax_cfg_' + os.path.splitext(os.path.basename(full))[0]
  spec = importlib.util.spec_from_file_location(name, full)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A broken config file: say which, keep the cause, no traceback.
    raise ConfigError(f'{what} {path!r} failed to load: {type(e).__name__}: {e}') from e
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{what} {path!r} has no get_config()')
  return module.get_config()


def with_defaults(saved: dict) -> dict:
  """A run's saved config.json with the fields added to configs/base.py since then at their defaults.

  A run written before a field existed behaved as its default, so it compares
  (on resume) and loads (generation, export) as if the field had been there.
  """
  out = dict(saved)
  for key, default in base.get_config().to_dict().items():
    if isinstance(default, dict):
      out[key] = {**default, **(saved.get(key) or {})}
    else:
      out.setdefault(key, default)
  return out
