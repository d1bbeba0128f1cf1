"""FP8 numerics (model/fp8.py) on CPU: scales, the amax history, saturation, round-trip error
bounds, and the scaled matmul with its E5M2 backward. No step-time claims: CPUs have no FP8 units."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import fp8
from model.transformer import dense

# (dtype, largest finite, mantissa bits, smallest normal exponent) of the two OCP formats.
FORMATS = [(fp8.E4M3, 448.0, 3, -6), (fp8.E5M2, 57344.0, 2, -14)]


def _normal(shape, seed=0, scale=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, shape), jnp.float32)


@pytest.mark.parametrize('dtype, fmax, _m, _e', FORMATS)
def test_current_scale_maps_the_amax_to_the_largest_finite_value(dtype, fmax, _m, _e):
  assert fp8.fp8_max(dtype) == fmax
  x = _normal((64, 32), scale=3.0)
  s = fp8.current_scale(x, dtype)
  np.testing.assert_allclose(s, np.abs(np.asarray(x)).max() / fmax, rtol=1e-6)
  np.testing.assert_allclose(fp8.current_scale(x, dtype, margin=2), 4 * s, rtol=1e-6)
  assert float(np.abs(np.asarray(fp8.qdq(x, dtype, s))).max()) == pytest.approx(
      float(np.abs(np.asarray(x)).max()), rel=1e-6)  # The amax itself is representable.
  # Nothing to scale by: the previous scale is kept (a zero tensor, an overflowed one).
  assert float(fp8.current_scale(jnp.zeros((4,)), dtype, prev_scale=0.5)) == 0.5
  assert float(fp8.current_scale(jnp.array([1.0, jnp.inf]), dtype, prev_scale=0.25)) == 0.25


def test_the_amax_history_keeps_the_last_n_and_the_delayed_scale_their_max():
  history = jnp.zeros((4,), jnp.float32)
  for amax in (1.0, 2.0, 7.0, 3.0, 0.5):
    history = fp8.record_amax(jnp.array([amax, -amax / 2]), history)
  assert float(history[0]) == 0.5  # The newest.
  assert sorted(np.asarray(history).tolist()) == [0.5, 2.0, 3.0, 7.0]  # 1.0, the oldest, dropped.
  np.testing.assert_allclose(fp8.delayed_scale(history, 1.0, fp8.E4M3), 7.0 / 448, rtol=1e-6)
  np.testing.assert_allclose(fp8.delayed_scale(history, 1.0, fp8.E4M3, margin=1), 14.0 / 448,
                             rtol=1e-6)
  assert float(fp8.delayed_scale(jnp.zeros((4,)), 0.125, fp8.E4M3)) == 0.125


@pytest.mark.parametrize('dtype, fmax, _m, _e', FORMATS)
def test_values_beyond_a_delayed_scale_saturate_instead_of_overflowing(dtype, fmax, _m, _e):
  s = fp8.delayed_scale(jnp.array([1.0, 0.5]), 1.0, dtype)  # Last steps' amax 1; now a spike of 10.
  x = jnp.array([10.0, -10.0, 0.75])
  q = fp8.quantize(x, dtype, s)
  assert q.dtype == dtype
  np.testing.assert_array_equal(np.asarray(q.astype(jnp.float32))[:2], [fmax, -fmax])
  np.testing.assert_allclose(fp8.qdq(x, dtype, s)[:2], [1.0, -1.0], rtol=1e-6)
  # The bare cast is what saturation prevents: E4M3 has no infinity (NaN), E5M2 overflows to inf.
  assert not np.isfinite(float((x[0] / s).astype(dtype).astype(jnp.float32)))


@pytest.mark.parametrize('dtype, fmax, mantissa, emin', FORMATS)
def test_round_trip_error_is_half_an_ulp(dtype, fmax, mantissa, emin):
  # Normal range: relative error <= 2^-(m+1); below the smallest normal: half the subnormal step.
  x = jnp.concatenate([_normal((4096,), seed=1), _normal((512,), seed=2, scale=1e-4),
                       _normal((256,), seed=3, scale=1e-9)])  # Subnormal in both formats.
  s = fp8.current_scale(x, dtype)
  err = np.abs(np.asarray(fp8.qdq(x, dtype, s)) - np.asarray(x))
  bound = np.maximum(2.0**-(mantissa + 1) * np.abs(np.asarray(x)),
                     2.0**(emin - mantissa - 1) * float(s))
  assert np.all(err <= bound * (1 + 1e-6))
  normal = np.abs(np.asarray(x)) >= 2.0**emin * float(s)
  assert (err / np.abs(np.asarray(x)))[normal].max() > 0.5 * 2.0**-(mantissa + 1)  # Not vacuous.


def test_the_fp8_matmul_is_the_float_product_of_e4m3_operands():
  x_BTD, w_DF = _normal((2, 8, 64), seed=3), _normal((64, 48), seed=4, scale=0.05)
  y = jax.jit(fp8.fp8_dense)(x_BTD, w_DF)
  xq = fp8.qdq(x_BTD, fp8.E4M3, fp8.current_scale(x_BTD, fp8.E4M3))
  wq = fp8.qdq(w_DF, fp8.E4M3, fp8.current_scale(w_DF, fp8.E4M3))
  np.testing.assert_allclose(y, dense(xq, wq), rtol=1e-5, atol=1e-6)
  exact = dense(x_BTD, w_DF)
  rel = float(jnp.linalg.norm(y - exact) / jnp.linalg.norm(exact))
  assert 1e-3 < rel < 0.05  # Measured 0.036: E4M3's <= 2^-4 per operand, averaged over D = 64.
  # Contracting two axes (the attention output, H x K -> D), as `dense` does.
  o_BTHK, w_HKD = _normal((2, 8, 4, 16), seed=5), _normal((4, 16, 32), seed=6, scale=0.05)
  y2 = fp8.fp8_dense(o_BTHK, w_HKD, n_in=2)
  assert y2.shape == (2, 8, 32)
  exact2 = dense(o_BTHK, w_HKD, n_in=2)
  assert float(jnp.linalg.norm(y2 - exact2) / jnp.linalg.norm(exact2)) < 0.05  # Measured 0.036.


def test_the_backward_uses_the_e5m2_gradient_and_the_e4m3_operands():
  x_RK, w_KO = _normal((16, 64), seed=7), _normal((64, 32), seed=8, scale=0.05)
  g_RO = _normal((16, 32), seed=9, scale=1e-3)  # A small upstream gradient: the scale matters.
  _, vjp = jax.vjp(fp8.fp8_dense, x_RK, w_KO)
  dx, dw = jax.jit(vjp)(g_RO)
  q = {name: fp8.qdq(a, dt, fp8.current_scale(a, dt))
       for name, a, dt in (('x', x_RK, fp8.E4M3), ('w', w_KO, fp8.E4M3), ('g', g_RO, fp8.E5M2))}
  np.testing.assert_allclose(dx, q['g'] @ q['w'].T, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(dw, q['x'].T @ q['g'], rtol=1e-5, atol=1e-9)
  for got, exact in ((dx, g_RO @ w_KO.T), (dw, x_RK.T @ g_RO)):
    rel = float(jnp.linalg.norm(got - exact) / jnp.linalg.norm(exact))
    assert 1e-3 < rel < 0.1  # Measured 0.065 (dx and dw): E5M2 has one mantissa bit less.


def test_dtypes_are_kept_and_the_gradient_compiles():
  x, w = _normal((4, 32)).astype(jnp.bfloat16), _normal((32, 8), scale=0.1)
  y = fp8.fp8_dense(x, w)
  assert y.dtype == jnp.bfloat16 and y.shape == (4, 8)
  dx, dw = jax.jit(jax.grad(lambda x, w: jnp.sum(fp8.fp8_dense(x, w).astype(jnp.float32) ** 2),
                            argnums=(0, 1)))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(dw))) and float(jnp.abs(dw).max()) > 0


# ---------------------------------------------------------------------------- model.fp8


def _tiny_model(**overrides):
  from configs import base
  from flax import nnx
  from model.transformer import Transformer
  m = base.get_config().model
  m.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
  m.update(overrides)
  return Transformer(m, rngs=nnx.Rngs(0))


def _loss(model, tokens):
  import optax
  logits = model.forward(tokens[:, :-1])[0]
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def test_model_fp8_runs_the_projections_and_mlp_in_e4m3_with_e5m2_gradients():
  from flax import nnx
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (2, 17)), jnp.int32)
  plain, eight = _tiny_model(), _tiny_model(fp8=True)  # Same seed: the same weights.
  assert plain.blocks.attn.matmul is dense and eight.blocks.mlp.matmul is fp8.fp8_dense
  jaxpr = str(jax.make_jaxpr(lambda m: nnx.grad(_loss)(m, tokens))(eight))
  # Per layer (scanned once): q, k, v, o, gate, up, down; each quantizes both operands forward.
  assert jaxpr.count('f8_e4m3fn') >= 14 and 'f8_e5m2' in jaxpr
  assert 'f8_e4m3fn' not in str(jax.make_jaxpr(lambda m: _loss(m, tokens))(plain))
  loss_and_grad = nnx.jit(nnx.value_and_grad(_loss))
  (l32, g32), (l8, g8) = loss_and_grad(plain, tokens), loss_and_grad(eight, tokens)
  assert l8 != l32 and abs(l8 - l32) < 0.02 * l32  # E4M3 rounding, no more.
  a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(nnx.state(g, nnx.Param))]) for g in (g32, g8))
  assert np.isfinite(b).all() and np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_a_few_fp8_steps_lower_the_loss_like_float_steps():
  import optax
  from flax import nnx
  tokens = jnp.asarray(np.tile(np.arange(17) % 7, (4, 1)), jnp.int32)  # Learnable in a few steps.
  out = {}
  for flag in (False, True):
    model = _tiny_model(fp8=flag)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
      loss, g = nnx.value_and_grad(_loss)(model, tokens)
      opt.update(model, g)
      return loss
    out[flag] = [float(step(model, opt)) for _ in range(12)]
  assert out[True][-1] < 0.5 * out[True][0]
  assert abs(out[True][-1] - out[False][-1]) < 0.2 * out[False][0]
