"""Command-line plumbing shared by every entry point that takes `--config FILE --config.a.b=v`.

absl's config_flags raises a KeyError traceback from deep inside ml_collections
for an unknown key; `run` turns every flag problem into one line naming the
flag, and `ConfigError`s into one message, each with exit status 2.
"""

import importlib.util
import os
import sys

from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(str(e))
  except (KeyError, AttributeError) as e:  # Unknown key in a --config.a.b=v override.
    bad = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    _fail(f'unknown config key in {", ".join(bad) or "a --config override"}: {e}')
  except (TypeError, ValueError) as e:
    _fail(f'bad --config override: {e}')


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _bare_json(argv: list[str]) -> list[str]:
  """`--json` alone -> `--json=-`; `--json PATH` -> `--json=PATH`."""
  out, i = [], 0
  while i < len(argv):
    if argv[i] == '--json':
      nxt = argv[i + 1] if i + 1 < len(argv) else None
      if nxt is not None and not nxt.startswith('-'):
        out.append(f'--json={nxt}')
        i += 2
        continue
      out.append('--json=-')
    else:
      out.append(argv[i])
    i += 1
  return out


def run(main) -> None:
  """app.run(main) with clean flag errors and ConfigError -> 'error: ...', exit 2.

  A bare `--json` becomes `--json=-` (see `emit`).
  """
  from train.config_check import ConfigError
  sys.argv = _bare_json(sys.argv)

  def wrapped(argv):
    try:
      main(argv)
    except ConfigError as e:
      _fail(str(e))

  app.run(wrapped, flags_parser=_parse)


def emit(result: dict, table: str, json_flag: str | None) -> None:
  """Print `table`, or with `--json` (bare) the JSON instead; `--json=PATH` also writes PATH."""
  import json
  if json_flag == '-':
    print(json.dumps(result, indent=1, default=float))
    return
  print(table)
  if json_flag:
    with open(json_flag, 'w') as f:
      json.dump(result, f, indent=1, default=float)
    print(f'wrote {json_flag}')


def load_config_file(path: str, what: str = '--config'):
  """`get_config()` of a Python config file, outside absl flags (for sweeps and the planner).

  A relative path is taken from the working directory, else from the repo root.
  Raises ConfigError naming `what` and the path when the file is missing, fails
  to import, or has no get_config().
  """
  from train.config_check import ConfigError
  full = path if os.path.isabs(path) or os.path.exists(path) else os.path.join(REPO_ROOT, path)
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
