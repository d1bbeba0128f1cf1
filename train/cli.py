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


def run(main) -> None:
  """app.run(main) with clean flag errors and ConfigError -> 'error: ...', exit 2."""
  from train.config_check import ConfigError

  def wrapped(argv):
    try:
      main(argv)
    except ConfigError as e:
      _fail(str(e))

  app.run(wrapped, flags_parser=_parse)
