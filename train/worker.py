"""python -m train.worker: one process that trains many runs in turn (a sweep's long-lived worker).

`launch.sweep --worker-pool` starts N of these instead of one `python -m
train` process per run, so JAX and the project are imported once per worker,
not once per run. The protocol is one JSON line per message:

  stdin:  {"argv": ["--config", FILE, "--workdir", DIR, "--config.a.b=v", ...], "log": PATH}
  stdout: {"status": N, "seconds": S}      (N: the exit status `python -m train` would give)

Each run is what `python -m train ARGV` does, with the same isolation a
process gives it where it matters:
- its stdout and stderr (file descriptors 1 and 2, so JAX's and absl's output
  too) are appended to PATH for the run's duration;
- its flags are parsed into a fresh absl FlagValues, so nothing carries over;
- a known stop (a config error, a preemption, a non-finite loss) gives that
  stop's status, anything else prints its traceback to the log and gives 1;
  the worker then takes the next run, after jax.clear_caches().
A run that kills the process (a crash, the OOM killer) ends the worker; the
launcher records that run's failure from the exit status and starts a new
worker. EOF on stdin ends the worker with status 0.
"""

import contextlib
import json
import os
import sys
import time
import traceback

import jax
from absl import flags, logging
from ml_collections import config_flags

from configs import cli
from configs.load import ConfigError
from train import loop


def parse(argv: list[str]):
  """(config, workdir) of a `python -m train` argv (without the program name), in fresh flags."""
  fv, full = flags.FlagValues(), ['train', *argv]
  # config_flags finds the --config.a.b overrides in sys_argv when the flag is defined.
  config_flags.DEFINE_config_file('config', None, 'Config file.', flag_values=fv, lock_config=True,
                                  sys_argv=full)
  flags.DEFINE_string('workdir', None, 'Run directory.', flag_values=fv)
  try:
    fv(full)
    config = fv.config
    config.keys()  # A config file that failed to load raises here (config_flags defers it).
  except flags.Error as e:
    raise ConfigError(str(e)) from None
  except (KeyError, AttributeError) as e:
    raise ConfigError(cli.unknown_override(argv, e)) from None
  except OSError as e:
    raise ConfigError(f'--config: cannot load the config file: {e}') from None
  except (TypeError, ValueError) as e:
    raise ConfigError(f'bad --config override: {e}') from None
  if not fv.workdir:
    raise ConfigError('--workdir is required')
  return config, fv.workdir


@contextlib.contextmanager
def _output_to(path: str):
  """File descriptors 1 and 2 and sys.stdout/stderr appended to `path` inside the block."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  with open(path, 'a', buffering=1) as f:
    try:
      os.dup2(f.fileno(), 1)  # What JAX, XLA and absl write at the C level.
      os.dup2(f.fileno(), 2)
      with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield
    finally:
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      for fd in saved:
        os.close(fd)


def run_one(argv: list[str], log_path: str) -> int:
  """Train one run as `python -m train ARGV` would; its exit status."""
  t0 = time.perf_counter()
  with _output_to(log_path):
    try:
      config, workdir = parse(argv)
      loop.run(config, workdir, t_process_start=t0)
      return 0
    except ConfigError as e:
      print(f'error: {e}', file=sys.stderr)
      return cli.USAGE_ERROR
    except cli.Stop as e:
      print(f'error: {e}', file=sys.stderr)
      return e.status
    except Exception:  # noqa: BLE001  A bug in one run: its traceback in its log, the worker goes on.
      traceback.print_exc()
      return 1
    finally:
      jax.clear_caches()


def main() -> int:
  logging.set_verbosity(logging.WARNING)  # As python -m train: orbax and grain log every save.
  results = os.fdopen(os.dup(1), 'w', buffering=1)  # The launcher's channel, apart from run logs.
  for line in sys.stdin:
    if not line.strip():
      continue
    request = json.loads(line)
    t0 = time.perf_counter()
    status = run_one(request['argv'], request['log'])
    results.write(json.dumps({'status': status, 'seconds': time.perf_counter() - t0}) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
