"""scaling.quant: per-method quantize->dequantize error bounds, NF4's code book, bytes, the CLI."""

import json
import os
import re
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from scipy.stats import norm

from conftest import run_cli, run_cli_error
from scaling import quant


# NF4, QLoRA (Dettmers et al. 2023, arXiv:2305.14314, Appendix E): the 16 code values.
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def _weight(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_t(4, size=shape), jnp.float32)


def _matrix_and_scale(w, name, method, scale_dtype=jnp.float32):
  """(w as (rows, contraction), its dequantized twin, the scale broadcast to it)."""
  deq, q = quant.fake_quant(w, f'blocks/mlp/{name}', method, scale_dtype)
  suffix, letters = name.rsplit('_', 1)[-1], quant.CONTRACTION[name]
  w_RK = quant._as_matrix(w, suffix, letters)[0]
  d_RK = quant._as_matrix(deq, suffix, letters)[0]
  scale_RK = np.repeat(np.asarray(q.scale, np.float32), w_RK.shape[1] // q.scale.shape[1], axis=1)
  return np.asarray(w_RK), np.asarray(d_RK), scale_RK


def test_int8_per_channel_error_is_at_most_half_a_step():
  w = _weight((2, 64, 96))  # (L, D, F): a stacked gate_DF, contracted over D.
  w_RK, d_RK, scale_RK = _matrix_and_scale(w, 'gate_DF', quant.parse_method('int8'))
  assert w_RK.shape == (2 * 96, 64)
  # One scale per output channel: absmax over the contraction / 127.5 (qwix's int8 bound).
  np.testing.assert_allclose(scale_RK[:, 0], np.abs(w_RK).max(axis=1) / 127.5, rtol=1e-6)
  err = np.abs(d_RK - w_RK)
  assert np.all(err <= scale_RK / 2 * (1 + 1e-4))  # 1e-4: float32 rounding at the range edge.
  assert err.max() > 0.3 * scale_RK.max() / 2  # Rounding happened (the bound is not vacuous).


@pytest.mark.parametrize('group', [32, 64, 128])
def test_int4_group_error_is_at_most_half_a_step_of_its_group(group):
  w = _weight((3, 128, 64), seed=group)  # (L, F, D): down_FD, contracted over F.
  w_RK, d_RK, scale_RK = _matrix_and_scale(w, 'down_FD', quant.parse_method(f'int4-g{group}'))
  absmax_RG = np.abs(w_RK).reshape(w_RK.shape[0], -1, group).max(axis=2)
  np.testing.assert_allclose(scale_RK[:, ::group], absmax_RG / 7.5, rtol=1e-6)
  err = np.abs(d_RK - w_RK)
  assert np.all(err <= scale_RK / 2 * (1 + 1e-4))  # 1e-4: float32 rounding at the range edge.
  assert len(np.unique(d_RK[0, :group] / scale_RK[0, :group])) <= 16  # 4-bit codes.


def test_nf4_error_is_at_most_half_the_widest_code_gap():
  w = _weight((2, 64, 4, 16), seed=3)  # (L, H, K, D): wo_HKD, contracted over H x K.
  w_RK, d_RK, scale_RK = _matrix_and_scale(w, 'wo_HKD', quant.parse_method('nf4-b64'))
  np.testing.assert_allclose(scale_RK[:, ::64],
                             np.abs(w_RK).reshape(w_RK.shape[0], -1, 64).max(axis=2), rtol=1e-6)
  half_gap = np.max(np.diff(NF4_PUBLISHED)) / 2
  assert np.all(np.abs(d_RK - w_RK) <= scale_RK * half_gap * (1 + 1e-5))
  codes = np.unique(d_RK / scale_RK)  # Every dequantized weight is a code value times its scale.
  assert np.abs(codes[:, None] - np.array(NF4_PUBLISHED)[None]).min(axis=1).max() < 1e-5


def test_nf4_code_book_is_qloras():
  codes = qwix.QArray(qvalue=jnp.arange(16, dtype=jnp.uint4), scale=jnp.ones((1,), jnp.float32),
                      qtype='nf4')
  np.testing.assert_array_equal(np.asarray(qwix.dequantize(codes)), np.float32(NF4_PUBLISHED))
  # And the published values are QLoRA's construction: normal quantiles, offset 0.9677083.
  pos = norm.ppf(np.linspace(0.9677083, 0.5, 9)[:-1])
  neg = -norm.ppf(np.linspace(0.9677083, 0.5, 8)[:-1])
  built = np.sort(np.concatenate([pos, [0.0], neg]))
  np.testing.assert_allclose(built / built.max(), NF4_PUBLISHED, atol=2e-7)


@pytest.mark.parametrize('name, scale_dtype, per_param', [
    ('int8', jnp.float32, 1 + 4 / 64),  # One float32 scale per output channel, D = 64.
    ('int4-g64', jnp.float32, 0.5 + 4 / 64),
    ('int4-g64', jnp.bfloat16, 0.5 + 2 / 64),
    ('int4-g32', jnp.bfloat16, 0.5 + 2 / 32),
    ('nf4-b64', jnp.float32, 0.5 + 4 / 64),
])
def test_measured_bytes_are_codes_plus_scales(name, scale_dtype, per_param):
  params = {'blocks/mlp/up_DF': _weight((2, 64, 96)), 'final_norm/scale': jnp.ones((64,))}
  _, stats = quant.quantize_params(params, quant.parse_method(name), scale_dtype)
  n_q = 2 * 64 * 96
  assert stats['quantized_params'] == n_q
  assert stats['quantized_bytes_per_param'] == pytest.approx(per_param)
  assert stats['weight_bytes'] == pytest.approx(n_q * per_param + 64 * 4)  # Norm: float32.
  assert stats['bytes_per_param'] == pytest.approx(stats['weight_bytes'] / (n_q + 64))
  assert stats['guide_bytes_per_param'] == (1.0 if name == 'int8' else 0.5)


def test_bad_methods_name_what_is_wrong():
  for name, match in [('int3-g64', 'bit width 3 is not supported'), ('fp8', 'unknown'),
                      ('int4', 'int4 needs a group size'), ('int4-g0', 'must be >= 1')]:
    with pytest.raises(quant.ConfigError, match=match):
      quant.parse_method(name)
  with pytest.raises(quant.ConfigError, match='group size 48 does not divide the contraction '
                     r'dimension of blocks/attn/wo_HKD \(HxK = 64\)'):
    quant.fake_quant(_weight((2, 4, 16, 64)), 'blocks/attn/wo_HKD', quant.parse_method('int4-g48'),
                     jnp.float32)


# ------------------------------------------------------------ python -m scaling.quant


def _cli(argv, capsys):
  """(exit status, stdout, stderr) of `python -m scaling.quant ARGV`, in this process."""
  return run_cli(quant.main, argv, capsys)


def test_a_trained_run_quantizes_and_int8_costs_little(byte_run, capsys):
  status, out, err = _cli(['--workdir', byte_run, '--method', 'int8', '--method', 'int4-g32',
                           '--method', 'nf4-b64'], capsys)
  assert status == 0, err
  with open(os.path.join(byte_run, 'quant.json')) as f:
    result = json.load(f)
  with open(os.path.join(byte_run, 'summary.json')) as f:
    summary = json.load(f)
  assert result['step'] == 30 and result['D'] == 30 * 8 * 32
  assert result['N'] == summary['params_with_head']
  full = result['full']
  # The same eval as training's last one (one device here, eight there: summation order only).
  assert full['eval_loss'] == pytest.approx(summary['eval_loss'], rel=1e-4)
  assert full['bytes_per_param'] == 4.0
  assert full['eval_bpb'] == pytest.approx(summary['eval_bpb'], rel=1e-4)
  m = result['methods']
  assert abs(m['int8']['gap_nats']) < 0.005 * full['eval_loss']
  assert m['int8']['gap_pct'] == pytest.approx(100 * m['int8']['gap_nats'] / full['eval_loss'])
  for name, per_param in (('int8', 1 + 4 / 64), ('int4-g32', 0.5 + 4 / 32),
                          ('nf4-b64', 0.5 + 4 / 64)):
    assert m[name]['quantized_bytes_per_param'] == pytest.approx(per_param, rel=0.01)
    assert m[name]['eval_loss'] != full['eval_loss']  # The weights did change.
  assert m['int8']['weight_bytes'] > m['int4-g32']['weight_bytes'] > m['nf4-b64']['weight_bytes']
  assert re.search(r'run\s+int4-g32\s+0\.\d{4}\s+0\.50', out), out


def _error_line(argv, capsys) -> str:
  """The one line that `python -m scaling.quant ARGV` prints before exiting with status 2."""
  return run_cli_error(quant.main, argv, capsys)


def test_bad_input_gets_one_line_and_status_2(byte_run, tmp_path, capsys):
  err = _error_line(['--workdir', byte_run, '--method', 'int4-g128'], capsys)
  assert re.search(r'--method int4-g128: group size 128 does not divide the contraction dimension '
                   r'of blocks/\w+/\w+ \(\w = 64\)', err), err
  other = tmp_path / 'other'
  shutil.copytree(byte_run, other)
  with open(other / 'config.json') as f:
    config = json.load(f)
  config['model']['d_ff'] = 192
  with open(other / 'config.json', 'w') as f:
    json.dump(config, f)
  err = _error_line(['--workdir', str(other), '--method', 'int8'], capsys)
  assert re.search('cannot restore step 30 .* saved with another config', err), err
  assert 'bit width 2' in _error_line(['--workdir', byte_run, '--method', 'int2-g32'], capsys)


def test_a_sweep_folder_gets_the_table_the_plot_and_skips(byte_run, tmp_path, capsys):
  sweep = tmp_path / 'sweep'
  shutil.copytree(byte_run, sweep / 'a')
  shutil.copytree(byte_run, sweep / 'no_ckpt', ignore=shutil.ignore_patterns('checkpoints'))
  status, out, err = _cli(['--runs', str(sweep), '--method', 'int8', '--method', 'int4-g128'],
                          capsys)
  assert status == 0, err
  assert "run 'no_ckpt' skipped: no checkpoints/" in err
  with open(sweep / 'quant' / 'quant.json') as f:
    result = json.load(f)
  [run] = result['runs']
  assert 'does not divide' in run['methods']['int4-g128']['skipped']
  assert abs(run['methods']['int8']['gap_nats']) < 0.01
  assert os.path.getsize(sweep / 'quant' / 'quant_gap.png') > 1000
  assert 'int4-g128  skipped' in (sweep / 'quant' / 'quant.txt').read_text()
  assert os.path.isfile(sweep / 'a' / 'quant.json')
