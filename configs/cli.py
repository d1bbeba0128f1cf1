"""Command-line plumbing shared by every entry point: `--config FILE [--config.a.b=v ...]` and `--json`.

Two parsers serve the CLIs: absl flags for the entry points that take a run
config with overrides (train, scaling.flops, scaling.aot, the step benchmark),
argparse for the others (scaling.fit, scaling.plan, launch.sweep). Both get
their `--config`, `--json` and error handling from here:

  * `define_config_flag()` / `define_json_flag()` declare the absl flags;
    `add_json_argument(parser)` the argparse one. Bare `--json` prints JSON
    instead of the table; `--json=PATH` (or `--json PATH`) prints the table
    and writes the JSON to PATH (`emit`).
  * `run_absl(main)` runs an absl main with one-line errors: a bad flag or an
    unknown `--config` key names it, and a `ConfigError` raised by main is
    printed as `error: ...`; both exit with status 2, never a traceback.
  * `run_argparse(main)` does the same for a `main() -> int`.
"""

import json
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from configs.load import ConfigError

# Exit statuses of every command (README "Exit statuses"). 1 is a bug: it comes with a traceback.
USAGE_ERROR = 2  # A bad flag, config key, config file, workdir or input file.
NONFINITE = 3  # Training stopped on a non-finite loss or gradient norm; the last good checkpoint is kept.
STORAGE_ERROR = 4  # A write failed (disk full, permission denied); the previous checkpoint is kept.
PREEMPTED = 75  # SIGTERM/SIGINT: a checkpoint was saved; rerunning the same command resumes (EX_TEMPFAIL).


class Stop(Exception):
  """A run that stops for a known reason: one message, the exit status `status`, no traceback."""

  def __init__(self, message: str, status: int):
    super().__init__(message)
    self.status = status


def fail(message: str, status: int = USAGE_ERROR):
  """Print `error: message` to stderr and exit with `status`."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(status)


def define_config_flag(help_text: str = 'Config file (a get_config() module).') -> None:
  config_flags.DEFINE_config_file('config', None, help_text, lock_config=True)


def define_json_flag() -> None:
  flags.DEFINE_string('json', None, 'Bare --json: print the result as JSON instead of the table; '
                      '--json=PATH: print the table and write the JSON to PATH.')


def add_json_argument(parser) -> None:
  """argparse twin of `define_json_flag` (same meaning, same `emit`)."""
  parser.add_argument('--json', nargs='?', const='-', metavar='PATH',
                      help='print JSON instead of the table (or, with PATH, write it there too)')


def _override_keys(argv) -> list[str]:
  return [a[2:].split('=')[0] for a in argv[1:] if a.startswith('--config.')]


def unknown_override(argv, error: Exception) -> str:
  """The message for an unknown `--config.a.b` key: the one override at fault, when it can be told.

  ml_collections names the missing key first in its message (then, maybe, a
  suggestion): the override whose last part appears there first is the culprit.
  """
  keys = _override_keys(argv)
  text = str(error)
  where = {k: m.start() for k in keys
           if (m := re.search(rf'(?<![A-Za-z0-9_]){re.escape(k.split(".")[-1])}(?![A-Za-z0-9_])', text))}
  shown = [min(where, key=where.get)] if where else keys
  hint = re.search(r'Did you mean "([^"]+)"', text)
  return (f'unknown config key in {", ".join("--" + k for k in shown) or "a --config override"}'
          + (f' (did you mean {hint.group(1)!r}?)' if hint else f': {text}'))


def _parse(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e))
  except (KeyError, AttributeError) as e:  # Unknown key in a --config.a.b=v override.
    fail(unknown_override(argv, e))
  except OSError as e:
    fail(_config_file_error(e))
  except (TypeError, ValueError) as e:
    fail(f'bad --config override: {e}')


def _config_file_error(e: OSError) -> str:
  """One line for a --config file that config_flags could not load (missing, or failed to import)."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  return f'--config: cannot load the config file: {lines[-1] if lines else e}'


def _load_config_flag() -> None:
  """config_flags defers a bad --config file to the first access: fail cleanly there."""
  if 'config' in flags.FLAGS:
    try:
      flags.FLAGS.config.keys()  # A placeholder that failed to load raises here.
    except OSError as e:
      fail(_config_file_error(e))


def _bare_json(argv: list[str]) -> list[str]:
  """`--json` alone -> `--json=-`; `--json PATH` -> `--json=PATH` (absl needs a value)."""
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


def run_absl(main) -> None:
  """app.run(main) with clean flag errors, ConfigError -> exit 2 and `Stop` -> its status.

  `--debug` (where the entry point defines it) shows the traceback instead.
  """
  sys.argv = _bare_json(sys.argv)

  def wrapped(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments: {" ".join(argv[1:])}')
    debug = 'debug' in flags.FLAGS and flags.FLAGS.debug
    _load_config_flag()
    try:
      main(argv)
    except ConfigError as e:
      if debug:
        raise
      fail(str(e))
    except Stop as e:
      if debug:
        raise
      fail(str(e), e.status)

  app.run(wrapped, flags_parser=_parse)


def run_argparse(main) -> None:
  """sys.exit(main()), with a ConfigError turned into 'error: ...', exit 2, and `Stop` into its status."""
  try:
    status = main()
  except ConfigError as e:
    fail(str(e))
  except Stop as e:
    fail(str(e), e.status)
  sys.exit(status)


def emit(result: dict, table: str, json_flag: str | None) -> None:
  """Print `table`, or with `--json` (bare) the JSON instead; `--json=PATH` also writes PATH."""
  if json_flag == '-':
    print(json.dumps(result, indent=1, default=float))
    return
  print(table)
  if json_flag:
    with open(json_flag, 'w') as f:
      json.dump(result, f, indent=1, default=float)
    print(f'wrote {json_flag}')
