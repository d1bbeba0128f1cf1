"""Quantization-aware training (model/qat.py): the straight-through estimator, the forward's
numerics against post-training quantization's, 'none' untouched, and bad values named."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from conftest import numpy_init
from model import qat
from model.transformer import Transformer
from scaling import quant
from train import config_check


def tiny(**overrides):
  m = base.get_config().model
  m.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                init_std=0.3))
  m.update(overrides)
  return m


TOKENS = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 17)), jnp.int32)
LAYOUTS = {  # Every kind of stacked kernel: GQA blocks, MLA with a query latent, MoE periods.
    'gqa': {},
    'mla': dict(attention='mla', mla_kv_rank=16, mla_rope_dim=4, mla_q_rank=16),
    'moe': dict(n_layers=2, moe_num_experts=4, moe_top_k=2, moe_granularity=2, moe_every=2,
                moe_shared_experts=1),
}


def loss(model, tokens=TOKENS):
  logits = model.forward(tokens[:, :-1])[0]
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def with_weights(model, fmt: str):
  """A copy of `model` (qat 'none') whose weights are scaling.quant's PTQ dequantized weights."""
  graphdef, state = nnx.split(model)
  params = {'/'.join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  new, _ = quant.quantize_params(params, quant.parse_method(fmt), jnp.float32)

  def swap(path, v):
    key = '/'.join(map(str, path))
    return v.replace(value=new[key]) if key in new else v

  return nnx.merge(graphdef, nnx.map_state(swap, state))


@pytest.mark.parametrize('fmt', ['int8', 'int4-g16'])
def test_the_straight_through_gradient_is_the_identity(fmt):
  bits, group = qat.parse(fmt)
  w = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 4, 8)), jnp.float32)  # (L, D, G, K)
  cotangent = jnp.asarray(np.random.default_rng(1).normal(size=w.shape), jnp.float32)
  # Both in one program: differently compiled scales can differ in the last bit and flip a tie.
  (value, qdq), vjp = jax.vjp(lambda w: (qat.straight_through(w, 'wk_DGK', bits, group),
                                         qat.quantize_dequantize(w, 'wk_DGK', bits, group)), w)
  np.testing.assert_array_equal(vjp((cotangent, jnp.zeros_like(w)))[0], cotangent)
  np.testing.assert_allclose(value, qdq, atol=1e-6)
  assert not np.allclose(value, w, atol=1e-4)  # It does quantize.


@nnx.jit
def logits(model):
  return model.forward(TOKENS)[0]


@nnx.jit
def grads(model):
  return nnx.grad(loss)(model)


@pytest.mark.parametrize('layout, fmt', [('gqa', 'int4-g16'), ('mla', 'int8'), ('moe', 'int4-g16')])
def test_the_forward_is_post_training_quantizations_model(layout, fmt):
  # Compiled (eager ops would cost minutes). A no-op fake quantization fails too: PTQ's are not.
  float_model = numpy_init(Transformer, tiny(**LAYOUTS[layout]))
  qat_model = numpy_init(Transformer, tiny(**LAYOUTS[layout], qat=fmt))
  np.testing.assert_allclose(logits(qat_model), logits(with_weights(float_model, fmt)), atol=2e-5)


def test_the_gradient_is_the_float_models_at_the_quantized_weights():
  # The straight-through estimator, through the whole model: d loss(q(w)) / dw = loss'(q(w)).
  g_qat = grads(numpy_init(Transformer, tiny(qat='int4-g16')))
  g_ptq = dict(nnx.to_flat_state(grads(with_weights(numpy_init(Transformer, tiny()), 'int4-g16'))))
  for path, g in nnx.to_flat_state(g_qat):
    np.testing.assert_allclose(g[...], g_ptq[path][...], atol=2e-5, err_msg=str(path))


def test_none_is_the_float_model_bit_for_bit():
  m = tiny()
  model = numpy_init(Transformer, m)
  assert qat.fake_quantized(model, 'none') is model
  # Pinned before model.qat existed (numpy-drawn weights, so no RNG implementation detail).
  np.testing.assert_allclose(float(loss(model)), 4.825433731079102, rtol=1e-6)
  del m['qat']  # An older run's config, without the field.
  assert np.asarray(loss(numpy_init(Transformer, m))).tobytes() == np.asarray(loss(model)).tobytes()


def test_the_router_bias_still_updates_under_qat():
  m = tiny(**LAYOUTS['moe'], moe_routing='sigmoid', qat='int8')
  model = numpy_init(Transformer, m)
  before = np.asarray(model.moe_periods.moe.mlp.bias_E[...])
  nnx.jit(lambda model, t: model.forward(t)[0])(model, TOKENS)
  assert not np.array_equal(np.asarray(model.moe_periods.moe.mlp.bias_E[...]), before)


@pytest.mark.parametrize('value, match', [
    ('int3', "model.qat='int3': must be 'none', 'int8'"),
    ('fp8', "model.qat='fp8': must be"),
    ('int4', "model.qat='int4': int4 needs a group size"),
    ('int4-g0', "model.qat='int4-g0': the group size must be >= 1"),
    ('int4-g48', r"model.qat='int4-g48': group size 48 does not divide model.d_model=32"),
    ('int8-g128', r"group size 128 does not divide model.d_model=32"),
])
def test_bad_values_are_named(value, match):
  c = base.get_config()
  c.model.update(dict(d_model=32, n_heads=4, n_kv_heads=4, d_ff=96, qat=value))
  c.train.steps = 10
  with pytest.raises(config_check.ConfigError, match=match):
    config_check.validate(c, 1)


def test_a_group_that_misses_one_contraction_names_it():
  assert qat.qat_errors(tiny(d_ff=72, qat='int4-g16')) == [
      "model.qat='int4-g16': group size 16 does not divide model.d_ff (the MLP down "
      'projection)=72']
  moe = tiny(**LAYOUTS['moe'], moe_d_expert=24, qat='int4-g16')
  assert [e.split(' does not divide ')[1] for e in qat.qat_errors(moe)] == [
      'the expert width (model.moe_d_expert or d_ff // moe_granularity)=24',
      "the shared experts' width=24"]
  assert qat.qat_errors(tiny(qat='int4-g16')) == []
