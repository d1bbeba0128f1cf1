"""Shared pytest setup: 8 forced CPU devices for mesh tests, the markers, and one trained run."""

import os

import pytest

# Must happen before jax is imported anywhere: tests build meshes of up to 8 CPU devices.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax.numpy as jnp  # noqa: E402  (after XLA_FLAGS: jax must see the 8 devices)
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs import base, cli  # noqa: E402
from train import cost, loop  # noqa: E402

TEXT_FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'text')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'network: fetches from package registries (pip/npm); skipped when that is impossible.')
  config.addinivalue_line('markers', 'slow: multi-process or long training runs.')
  config.addinivalue_line('markers', 'long: over ~20 s and with a faster test of the same code path in '
                          '`make test`; opt-in: `make test-long` (pytest -m long).')
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


def run_cli_error(main, argv, capsys) -> str:
  """The one line `main(argv)` prints before exiting with status 2 (no traceback)."""
  status, _, err = run_cli(main, argv, capsys)
  assert status == 2, err
  assert 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
  assert err.startswith('error: ')
  return err


def numpy_init(cls, cfg, seed=0):
  """cls(cfg) with N(0, init_std) weights, unit norm scales and a zero router bias, drawn by numpy.

  The model's own init compiles threefry for every parameter shape, which would dominate the
  CPU time of tests that compare paths sharing weights (where the draw does not matter).
  tests/test_model.py and the mesh tests use the real init.
  """
  graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    if path[-1] in ('scale', 'bias_E'):
      return jnp.full(x.shape, 1.0 if path[-1] == 'scale' else 0.0, x.dtype)
    return jnp.asarray(rng.normal(0.0, cfg.init_std, x.shape), x.dtype)

  return nnx.merge(graphdef, nnx.map_state(draw, state))
