"""python -m train --config configs/tiny_cpu.py --workdir DIR [--config.model.d_model=256 ...]"""

import time

T_PROCESS_START = time.perf_counter()  # Before the heavy imports: start-up is timed from here.

# pylint: disable=wrong-import-position
import jax  # noqa: E402
from absl import flags, logging  # noqa: E402

from configs import cli  # noqa: E402
from train import loop  # noqa: E402

cli.define_config_flag()
flags.DEFINE_string('workdir', None, 'Run directory: TensorBoard events, checkpoints, summary.json.')
flags.DEFINE_string('coordinator', None, 'Multi-process: coordinator host:port (with '
                    '--num_processes and --process_id); on TPU VMs use --multihost instead.')
flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process index.')
flags.DEFINE_bool('debug', False, 'Show the traceback of a run that stops for a known reason.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() with cluster auto-detection '
                  '(TPU pods, SLURM).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO.
  F = flags.FLAGS
  if F.coordinator:
    # CPU collectives across processes need gloo; the setting does nothing on TPU/GPU.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(F.coordinator, num_processes=F.num_processes,
                               process_id=F.process_id)
  elif F.multihost:
    jax.distributed.initialize()
  loop.run(F.config, F.workdir, t_process_start=T_PROCESS_START)


if __name__ == '__main__':
  cli.run_absl(main)
