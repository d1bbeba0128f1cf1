"""scaling/aot.py: compile for TPU topologies on the CPU; bytes and FLOPs per chip.

Tests marked `tpu_aot` need the optional libtpu (`pip install -e '.[tpu-aot]'`) and
are skipped cleanly without it; CI installs the extra. The rest run everywhere.
"""

import os
import subprocess
import sys

import pytest

from configs import base, hardware, mixtral_8x7b, tiny_cpu
from model import counts
from model.moe import DISPATCHES
from scaling import aot
from train.config_check import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(not aot.have_libtpu(),
                                  reason="libtpu not installed: pip install -e '.[tpu-aot]'")


def _aligned_config(**data):
  """A small config whose per-chip shards on 4-way FSDP are whole TPU tiles (no padding).

  Every sharded weight's minor dimension is a multiple of 128 and its second-minor a
  power of two <= 8 or a multiple of 8, so XLA's argument bytes equal the plain count.
  """
  c = base.get_config()
  c.model.update(dict(vocab_size=256, d_model=512, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=256))
  c.data.update(dict(seq_len=128, global_batch_size=16))
  c.data.update(data)
  c.mesh.update(dict(data=1, fsdp=-1))
  return c


# ---------------------------------------------------------------- no libtpu needed


def test_parse_topology_forms():
  t = aot.parse_topology('v5p:2x2x2')
  assert (t.name, t.n_chips, t.slice_name, t.chip.name) == ('v5p:2x2x2', 8, 'v5p-16', 'v5p')
  assert aot.parse_topology('v5p-16') == t  # Cloud TPU names count cores for v4/v5p.
  assert aot.parse_topology('V5E-16').name == 'v5e:4x4'  # ... and chips for v5e/v6e.
  assert aot.parse_topology('v4-8').name == 'v4:2x2x1'
  assert aot.parse_topology('v6e:4x4').chip.hbm_bytes == 32 * 1024**3


@pytest.mark.parametrize('name, words', [
    ('v9:2x2', 'expected GENERATION:GRID'), ('v5e:2x2x2', '2-D chip grid'),
    ('v5p:4x4', '3-D chip grid'), ('v5p-6', 'unknown slice size'), ('tpu', 'expected')])
def test_parse_topology_rejects_clearly(name, words):
  with pytest.raises(aot.AotError, match=words):
    aot.parse_topology(name)


def test_without_libtpu_says_how_to_install(monkeypatch):
  monkeypatch.setattr(aot, 'have_libtpu', lambda: False)
  with pytest.raises(aot.AotError, match=r"pip install -e '\.\[tpu-aot\]'"):
    aot.topology_devices('v5e:2x2')


def test_mesh_must_match_the_chip_count():
  c = _aligned_config()
  c.mesh.update(dict(data=3, fsdp=1))
  with pytest.raises(ConfigError, match='mesh'):
    aot.check(c, 'v5e:2x2')  # Validated before libtpu is touched.


def test_indivisible_dimension_names_the_key():
  c = _aligned_config()
  c.model.update(dict(d_model=520, n_heads=4, n_kv_heads=4))  # 520 over fsdp=16.
  with pytest.raises(ConfigError, match='check model'):
    aot.check(c, 'v5e:4x4')


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'scaling.aot', '--config', 'configs/tiny_cpu.py', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_cli_bad_input_is_one_line_exit_2():
  p = _cli('--topology', 'v5e:3')
  assert p.returncode == 2, p.stderr
  assert p.stderr.strip().startswith('error: --topology=') and 'Traceback' not in p.stderr
  p = _cli('--topology', 'v5e:2x2', '--config.mesh.data=3')
  assert p.returncode == 2 and 'mesh' in p.stderr and 'Traceback' not in p.stderr


# ---------------------------------------------------------------- libtpu: real TPU compiles


@pytest.mark.tpu_aot
@needs_libtpu
def test_tiny_config_compiles_and_arguments_match_by_hand():
  c = _aligned_config()
  r = aot.check(c, 'v5e:2x2', measure_flops=False)
  assert r['fits'] and r['verdict'].startswith('FITS') and r['mesh']['fsdp'] == 4
  mem = r['memory']
  # By hand: float32 params, Adam m and v (12 B/param); weight matrices split 4 ways,
  # RMSNorm scales (2 per layer + the final one) replicated; 3 int32/uint32 scalar
  # counters (optimizer step, schedule and clip counts); the int32 batch (inputs +
  # targets) split 4 ways. On the TPU a scalar occupies a whole (128,) tile: 512 B.
  m = c.model
  n_total = r['params']['total']
  n_norm = m.n_layers * 2 * m.d_model + m.d_model
  weights = 12 * ((n_total - n_norm) / 4 + n_norm)
  batch = 2 * 4 * c.data.global_batch_size * c.data.seq_len / 4
  assert mem['state_unpadded'] == weights + 3 * 4
  assert mem['state_tiled'] == weights + 3 * 512
  assert mem['argument'] == weights + 3 * 512 + batch
  assert mem['alias'] > 0.99 * weights  # The state is donated: outputs reuse its buffers.
  assert 0 <= mem['temp'] < hardware.GiB and mem['total'] >= mem['argument']
  assert r['flops']['compiled_uncorrected_per_chip'] > 0


@pytest.mark.tpu_aot
@needs_libtpu
def test_compiled_matmul_flops_are_2mkn_over_chips():
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  devices = aot.topology_devices('v5e:2x2')
  mesh = jax.sharding.Mesh(np.asarray(devices), ('x',))
  m, k, n = 512, 1024, 2048
  for a_spec, w_spec in ((P('x', None), P(None, None)), (P(None, None), P(None, 'x'))):
    a = jax.ShapeDtypeStruct((m, k), jnp.bfloat16, sharding=NamedSharding(mesh, a_spec))
    w = jax.ShapeDtypeStruct((k, n), jnp.bfloat16, sharding=NamedSharding(mesh, w_spec))
    compiled = jax.jit(lambda a, w: a @ w).lower(a, w).compile()
    assert compiled.cost_analysis()['flops'] == 2 * m * k * n / 4


@pytest.mark.tpu_aot
@needs_libtpu
def test_over_hbm_is_a_verdict_not_a_crash():
  c = _aligned_config(global_batch_size=65536)  # ~8 GiB of T x T scores per layer per chip.
  r = aot.check(c, 'v5e:2x2', measure_flops=False)
  assert not r['fits'] and r['verdict'].startswith('DOES NOT FIT')
  assert 'largest buffers per chip' in r['verdict'] and 'saved activations' in r['verdict']
  assert r['compiler_message']
  assert 'DOES NOT FIT' in aot.format_report(r)



def test_global_flops_count_remat_recomputation_without_a_tpu():
  # The global (pre-TPU-compiler) count needs no libtpu: remat adds hardware FLOPs, never removes.
  c = tiny_cpu.get_config()
  c.data.source = 'synthetic'
  c.model.remat = 'full'
  g = aot.global_flops(c)
  assert g['flops_xla'] > 1.1 * g['flops_xla_model']
  c.model.remat = 'none'
  assert aot.global_flops(c)['flops_xla'] == pytest.approx(g['flops_xla_model'], rel=1e-6)


@pytest.mark.tpu_aot
@needs_libtpu
def test_a_reduced_mixtral_compiles_with_moe_counts_and_flops_against_6_n_active_d():
  c = mixtral_8x7b.get_config()  # The real config's layout and parallelism, shrunk.
  c.model.update(dict(vocab_size=512, d_model=128, n_layers=1, n_heads=4, n_kv_heads=2,
                      d_ff=256, remat='none'))
  c.data.update(dict(seq_len=64, global_batch_size=8))
  c.mesh.update(dict(fsdp=-1, expert=4))
  r = aot.check(c, 'v5p:2x2x1')
  p, fl, n = r['params'], r['flops'], counts.param_counts(c.model)
  assert r['fits'] and r['mesh']['expert'] == 4 and r['config']['moe_num_experts'] == 8
  assert (p['total'], p['active']) == (n.total, n.active) and p['active'] < p['with_head'] / 2
  tokens = 8 * 64
  assert fl['six_n_active_d_per_chip'] == pytest.approx(6 * n.active * tokens / 4)
  assert fl['compiled_ratio_6nd_active'] > 1 and fl['global_ratio_6nd_active'] > 1
  paths = fl['dispatch_paths']
  assert set(paths) == set(DISPATCHES)
  # Every expert on every token costs more than top-2 of 8 padded to capacity 1.25.
  assert paths['dense']['model_ratio_6nd_active'] > paths['capacity']['model_ratio_6nd_active'] > 1
  text = aot.format_report(r)
  assert f"active {n.active:,}" in text and 'dispatch capacity' in text
