"""Shared pytest setup: 8 forced CPU devices for mesh tests, the markers, and one trained run."""

import os

import pytest

# Must happen before jax is imported anywhere: tests build meshes of up to 8 CPU devices.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from configs import base, cli  # noqa: E402  (after XLA_FLAGS: jax must see the 8 devices)
from train import cost, loop  # noqa: E402

TEXT_FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'text')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'network: fetches from package registries (pip/npm); skipped when that is impossible.')
  config.addinivalue_line('markers', 'slow: multi-process or long training runs.')
  config.addinivalue_line('markers', "tpu_aot: compiles for TPU topologies with libtpu "
                          "(pip install -e '.[tpu-aot]'); skipped without it.")


def _no_flop_count(*args, **kwargs):
  raise ValueError('not measured in this test')


@pytest.fixture(scope='session')
def byte_run(tmp_path_factory):
  """A finished 30-step byte-tokenizer run on tests/fixtures/text, with its checkpoint at step 30.

  2 layers, d_model 64 (H x K = 64), d_ff 128: what train.generate and scaling.quant restore
  (groups of 32 and 64 divide its contraction dimensions, 128 does not divide 64). Trained once
  per session; tests that change a run copy it first.
  """
  root = tmp_path_factory.mktemp('byte_run')
  c = base.get_config()
  c.model.update(dict(vocab_size=257, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128))
  c.data.update(dict(source='files', paths=os.path.join(TEXT_FIXTURES, '*.txt'), tokenizer='byte',
                     cache_dir=str(root / 'cache'), val_fraction=0.2, seq_len=32, global_batch_size=8))
  c.train.update(dict(steps=30, eval_every=30, log_every=10, checkpoint_every=30, eval_batches=2,
                      peak_flops=1e11))
  with pytest.MonkeyPatch.context() as mp:  # XLA's FLOP count of the step: not needed here.
    mp.setattr(cost, 'measure_step_flops', _no_flop_count)
    loop.run(c, str(root / 'run'))
  return str(root / 'run')


def run_cli(main, argv, capsys):
  """(exit status, stdout, stderr) of a command's `main(argv)` under configs.cli, in this process."""
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    cli.run_argparse(lambda: main(argv))
  out = capsys.readouterr()
  return e.value.code, out.out, out.err
