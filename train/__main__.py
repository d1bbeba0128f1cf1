"""python -m train --config configs/tiny_cpu.py --workdir DIR [--config.model.d_model=256 ...]"""

from absl import app, flags, logging
from ml_collections import config_flags

from train import cli

config_flags.DEFINE_config_file('config', None, 'Config file (a get_config() module).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: TensorBoard events, checkpoints, summary.json.')
flags.DEFINE_string('coordinator', None, 'Multi-process: coordinator host:port (with '
                    '--num_processes and --process_id); on TPU VMs use --multihost instead.')
flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-process: this process index.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() with cluster auto-detection '
                  '(TPU pods, SLURM).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO.
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import jax
  F = flags.FLAGS
  if F.coordinator:
    # CPU collectives across processes need gloo; the setting does nothing on TPU/GPU.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(F.coordinator, num_processes=F.num_processes,
                               process_id=F.process_id)
  elif F.multihost:
    jax.distributed.initialize()
  from train import loop
  loop.run(F.config, F.workdir)


if __name__ == '__main__':
  cli.run(main)
