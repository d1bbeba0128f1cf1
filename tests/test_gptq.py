"""scaling.gptq: GPTQ and AWQ against round-to-nearest, their grid, calibration through the model."""

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix
from conftest import numpy_init, run_cli, run_cli_error
from flax import nnx

from configs import base
from model.transformer import Transformer
from scaling import gptq, quant

K, N, G = 64, 24, 32  # A synthetic layer: W (K, N), groups of G along K.


def _weight(seed=0):
  return np.random.default_rng(seed).standard_t(4, size=(K, N)).astype(np.float32)


def _correlated_inputs(seed=0, tokens=2048):
  """X (tokens, K): every channel a mix of 8 shared factors (a fixed mixing), plus a common offset."""
  mix = np.random.default_rng(100).normal(size=(8, K))
  rng = np.random.default_rng(seed)
  return rng.normal(size=(tokens, 8)) @ mix + 0.3 * rng.normal(size=(tokens, K)) + 1.0


def _deq(codes, scale):
  return gptq.dequantize(codes, scale, np.float32)


def _groups_on_grid(codes, scale, bits=4):
  """Every group of G weights: at most 2^bits distinct values, integer codes in range."""
  assert codes.min() >= -2 ** (bits - 1) and codes.max() <= 2 ** (bits - 1) - 1
  w = _deq(codes, scale)
  g = codes.shape[0] // scale.shape[0]
  for j in range(scale.shape[0]):
    for n in range(codes.shape[1]):
      assert len(np.unique(w[j * g:(j + 1) * g, n])) <= 2 ** bits


@pytest.mark.parametrize('scale_dtype', [jnp.float32, jnp.bfloat16])
def test_round_to_nearest_is_quants_int4_bit_for_bit(scale_dtype):
  w = _weight()
  deq, q = quant.fake_quant(jnp.asarray(w), 'blocks/mlp/down_FD', quant.parse_method('int4-g32'),
                            scale_dtype)  # down_FD contracts its first axis, as W (K, N) here.
  codes, scale = gptq.round_to_nearest(w, 4, G)
  np.testing.assert_array_equal(codes.T, np.asarray(q.qvalue, np.int8))
  np.testing.assert_array_equal(gptq.dequantize(codes, scale, scale_dtype), np.asarray(deq))


def test_gptq_is_round_to_nearest_without_correlations_and_beats_it_with_them():
  w = _weight()
  rtn = gptq.round_to_nearest(w, 4, G)
  # H = I: no error to feed back, so GPTQ rounds every weight to nearest.
  for got, want in zip(gptq.gptq(w, np.eye(K), 4, G), rtn):
    np.testing.assert_array_equal(got, want)
  x = _correlated_inputs()
  h = x.T @ x
  codes, scale = gptq.gptq(w, h, 4, G)
  err, err_rtn = (gptq.output_error(_deq(*q) - w, h) for q in ((codes, scale), rtn))
  assert err < 0.5 * err_rtn  # Measured 0.16 of RTN's on this layer.
  # On inputs it was not calibrated on, from the same distribution, GPTQ still wins.
  x2 = _correlated_inputs(seed=1)
  assert np.sum((x2 @ (_deq(codes, scale) - w)) ** 2) < np.sum((x2 @ (_deq(*rtn) - w)) ** 2)
  _groups_on_grid(codes, scale)


def test_awq_protects_a_few_large_input_channels():
  w = _weight(seed=1)
  x = np.random.default_rng(2).normal(size=(2048, K))
  x[:, [3, 17, 40]] *= 30.0  # Salient channels (the activation outliers AWQ is built for).
  h = x.T @ x
  codes, scale, s, alpha = gptq.awq(w, h, np.abs(x).mean(axis=0), 4, G)
  err = gptq.output_error(_deq(codes, scale) / s[:, None] - w, h)
  err_rtn = gptq.output_error(_deq(*gptq.round_to_nearest(w, 4, G)) - w, h)
  assert err < 0.8 * err_rtn and alpha > 0  # Measured 0.39 of RTN's.
  assert s[[3, 17, 40]].min() > 2 * np.median(s)  # The salient channels are scaled up.
  _groups_on_grid(codes, scale)
  # alpha = 0 is round to nearest: AWQ's search can only do as well or better.
  w0 = gptq.awq(w, np.eye(K), np.ones(K), 4, G, grid=1)
  np.testing.assert_array_equal(w0[0], gptq.round_to_nearest(w, 4, G)[0])


def test_a_group_that_does_not_divide_is_refused():
  w, h = _weight(), np.eye(K)
  with pytest.raises(quant.ConfigError, match=r'group size 48 does not divide the contraction '
                     r'dimension of K \(64\)'):
    gptq.gptq(w, h, 4, 48)
  with pytest.raises(quant.ConfigError, match='group size 48 does not divide'):
    gptq.awq(w, h, np.ones(K), 4, 48)
  # What scaling.quant checks on a run's shapes before anything is evaluated: the same message.
  shapes = {'blocks/attn/wo_HKD': jax.ShapeDtypeStruct((2, 4, 16, 64), jnp.float32)}
  with pytest.raises(quant.ConfigError, match=r'--method gptq-int4-g48: group size 48 does not '
                     r'divide the contraction dimension of blocks/attn/wo_HKD \(HxK = 64\)'):
    jax.eval_shape(functools.partial(quant.quantize_params, method=quant.parse_method(
        'gptq-int4-g48'), scale_dtype=jnp.float32), shapes)
  assert quant.parse_method('gptq-int4-g128') == quant.Method('gptq-int4-g128', 'int4', 4, 128,
                                                              'gptq')
  assert quant.parse_method('awq-int8').calib == 'awq'
  with pytest.raises(quant.ConfigError, match='int4 needs a group size'):
    quant.parse_method('gptq-int4')


def _tiny(**model):
  c = base.get_config()
  c.model.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                      **model))
  return c


@pytest.mark.parametrize('algorithm, tied', [('gptq', False), ('awq', True)])
def test_calibrated_model_weights_are_their_stored_codes(algorithm, tied):
  model = numpy_init(Transformer, _tiny(tie_embeddings=tied).model)
  tokens = np.random.default_rng(0).integers(0, 64, size=(8, 16))
  method = quant.parse_method(f'{algorithm}-int4-g16')
  out, summary = gptq.calibrate(model, tokens, method, jnp.float32)
  params = quant.model_params((nnx.state(model),))
  want = {k for k in params if k.rsplit('/', 1)[-1] not in quant.KEEP}
  assert set(out) == want
  assert summary['calibrated_kernels'] == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer; head.
  assert summary['rounded_to_nearest'] == ([] if tied else ['embed_VD'])
  assert summary['output_error_vs_rtn'] < 1.0
  for key, (deq, q, extra) in out.items():
    assert deq.shape == params[key].shape
    back = np.asarray(qwix.dequantize(q))  # The stored codes and scales, dequantized by qwix.
    if extra:  # AWQ: the per-input-channel scales, one vector per layer.
      back = back / np.asarray(extra[0])[..., :, None]
    back = back.T if key == 'embed_VD' else back.reshape(deq.shape)
    np.testing.assert_allclose(back, np.asarray(deq), rtol=1e-6, atol=1e-8)
    assert not np.array_equal(np.asarray(deq), np.asarray(params[key]))
  if algorithm == 'awq':  # One 1/s per input channel, kernel and layer, stored at the scale dtype.
    assert out['blocks/mlp/down_FD'][2][0].shape == (2, 64)
  codes = np.asarray(out['blocks/mlp/down_FD'][1].qvalue[1], np.int8)  # Layer 1: (F, D).
  _groups_on_grid(codes, np.asarray(out['blocks/mlp/down_FD'][1].scale[1]))


def test_mla_and_moe_are_refused_by_name():
  [msg] = gptq.calibration_errors(_tiny(attention='mla', mla_kv_rank=16).model, 'gptq-int4-g32')
  assert msg == ("--method gptq-int4-g32: calibration covers grouped-query attention, the dense "
                 "MLP and the head, not model.attention='mla'")
  [msg] = gptq.calibration_errors(_tiny(moe_num_experts=4).model, 'awq-int4-g32')
  assert 'not MoE layers (model.moe_num_experts=4)' in msg


# ------------------------------------------------------------ python -m scaling.quant


def test_a_trained_run_quantizes_by_gptq(byte_run, capsys):
  status, out, err = run_cli(quant.main, ['--workdir', byte_run, '--method', 'gptq-int4-g32',
                                          '--calib-batches', '2'], capsys)
  assert status == 0, err
  with open(os.path.join(byte_run, 'quant.json')) as f:
    result = json.load(f)
  g = result['methods']['gptq-int4-g32']
  # int4-g32's grid: 4-bit codes plus a float32 scale per 32 weights (tests/test_quant.py's RTN).
  assert g['quantized_bytes_per_param'] == pytest.approx(0.5 + 4 / 32)
  assert g['quantized_params'] == result['params'] - (2 * 2 + 1) * 64  # Norm scales stay float32.
  c = g['calibration']
  assert c['sequences'] == 2 * 8 and c['tokens'] == 2 * 8 * 32 and c['layers'] == 2
  assert c['calibrated_kernels'] == 15 and c['output_error_vs_rtn'] < 1.0
  assert g['eval_loss'] != result['full']['eval_loss'] and abs(g['gap_pct']) < 10
  assert re.search(r'run\s+gptq-int4-g32\s+0\.\d{4}\s+0\.50', out), out
  err = run_cli_error(quant.main, ['--workdir', byte_run, '--calib-batches', '0'], capsys)
  assert 'error: --calib-batches 0: must be >= 1' in err
