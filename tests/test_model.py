"""The transformer: shapes, causality, parameter counts, scan/unroll/remat equivalence, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from model.counts import model_flops_per_token, param_counts
from model.transformer import Transformer


def tiny(**overrides):
  m = base.get_config().model
  m.update(dict(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64))
  m.update(overrides)
  return m


def _n_params(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize('overrides', [
    {}, {'tie_embeddings': True}, {'qk_norm': True}, {'n_kv_heads': 1}, {'n_layers': 1},
])
def test_param_counts_match_closed_form_and_built_model(overrides):
  m = tiny(**overrides)
  c = param_counts(m)
  V, D, L, H, G, F = m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff
  K = D // H
  block = D * H * K * 2 + 2 * D * G * K + 3 * D * F + 2 * D + (2 * K if m.qk_norm else 0)
  assert c.non_embedding == L * block + D
  assert c.embedding == V * D
  assert c.head == (0 if m.tie_embeddings else V * D)
  assert c.with_head == c.non_embedding + V * D
  assert c.total == _n_params(nnx.eval_shape(lambda: Transformer(m, rngs=nnx.Rngs(0))))


@pytest.mark.parametrize('overrides', [
    {}, {'mla_q_rank': 12}, {'mla_q_rank': 12, 'tie_embeddings': True}, {'n_layers': 1},
])
def test_mla_param_counts_and_flops_match_closed_form_and_built_model(overrides):
  m = tiny(attention='mla', mla_kv_rank=16, mla_rope_dim=4, **overrides)
  c = param_counts(m)
  V, D, L, H, F = m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.d_ff
  K, C, Q, R = D // H, m.mla_kv_rank, m.mla_q_rank, m.mla_rope_dim
  q = D * Q + Q + Q * H * (K + R) if Q else D * H * (K + R)  # Query latent and its norm, or none.
  attn = q + D * C + C + D * R + 2 * C * H * K + H * K * D
  assert c.non_embedding == L * (attn + 3 * D * F + 2 * D) + D
  assert c.with_head == c.non_embedding + V * D
  assert c.total == _n_params(nnx.eval_shape(lambda: Transformer(m, rngs=nnx.Rngs(0))))
  # Scores over K + R, values over K: 6 * L * H * (2K + R) * T in place of 12 * L * H * K * T.
  assert model_flops_per_token(m, 16) == 6 * c.with_head + 6 * L * H * (2 * K + R) * 16


def test_logits_shape_and_dtype():
  model = Transformer(tiny(), rngs=nnx.Rngs(0))
  logits = model(jnp.zeros((2, 8), jnp.int32))
  assert logits.shape == (2, 8, 97) and logits.dtype == jnp.float32


def test_causality_future_tokens_do_not_change_past_logits():
  model = Transformer(tiny(), rngs=nnx.Rngs(0))
  toks = jax.random.randint(jax.random.key(1), (1, 12), 0, 97)
  changed = toks.at[0, 7].set((toks[0, 7] + 1) % 97)
  forward = nnx.jit(lambda model, t: model(t))
  a, b = forward(model, toks), forward(model, changed)
  np.testing.assert_array_equal(a[:, :7], b[:, :7])
  assert not np.allclose(a[:, 7:], b[:, 7:])  # The change is visible from position 7 on.


@pytest.mark.parametrize('overrides', [{'scan_layers': False}, {'remat': 'full'},
                                       {'remat': 'dots'}])
def test_scan_unroll_and_remat_compute_the_same_function(overrides):
  toks = jax.random.randint(jax.random.key(1), (2, 10), 0, 97)
  ref = Transformer(tiny(), rngs=nnx.Rngs(0))
  other = Transformer(tiny(**overrides), rngs=nnx.Rngs(0))

  def loss(model):
    return jnp.mean(model(toks) ** 2)

  la, ga = nnx.jit(nnx.value_and_grad(loss))(ref)
  lb, gb = nnx.jit(nnx.value_and_grad(loss))(other)
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)


def test_layers_are_stacked_with_a_leading_layer_axis():
  model = nnx.jit(lambda: Transformer(tiny(n_layers=5), rngs=nnx.Rngs(0)))()
  assert model.blocks.mlp.gate_DF.shape == (5, 32, 64)
  # Layers get different initialisations.
  w = model.blocks.mlp.gate_DF[...]
  assert not np.allclose(w[0], w[1])


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = Transformer(tiny(compute_dtype='bfloat16'), rngs=nnx.Rngs(0))
  assert model.embed_VD[...].dtype == jnp.float32
  assert model(jnp.zeros((1, 4), jnp.int32)).dtype == jnp.float32


def test_tiny_model_overfits_one_batch():
  m = tiny(n_layers=2)
  model = Transformer(m, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  toks = jax.random.randint(jax.random.key(3), (4, 17), 0, 97)
  inputs, targets = toks[:, :-1], toks[:, 1:]

  def loss_fn(model):
    logits = model(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  first = float(step(model, opt))
  for _ in range(150):
    last = float(step(model, opt))
  assert first > 4.0  # ~ln(97) at init.
  assert last < 0.1, last
