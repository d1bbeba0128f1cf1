"""Command-line plumbing shared by every entry point that takes `--config FILE --config.a.b=v`.

absl's config_flags raises a KeyError traceback from deep inside ml_collections
for an unknown key; `run` turns every flag problem into one line naming the
flag, and `ConfigError`s into one message, each with exit status 2.
"""

import sys

from absl import app, flags


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
