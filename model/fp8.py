"""FP8 matmuls with per-tensor scaling: the numerics of FP8 training (`model.fp8`).

Formats (OCP FP8, as on H100/H200 and recent TPUs): matmul inputs in E4M3
(`float8_e4m3fn`: 3 mantissa bits, largest finite 448, no infinities) and the
gradients flowing back in E5M2 (`float8_e5m2`: 2 mantissa bits, largest finite
57344), the Transformer Engine recipe (Micikevicius et al. 2022, "FP8 Formats for
Deep Learning").

Per-tensor scaling: a tensor x is stored as q = saturate(x / s) in FP8 and read
back as q * s, with one float32 scale s per tensor:
- current scaling: s = amax(x) / fp8_max from x itself (`current_scale`): an extra
  reduction over x per matmul, nothing carried between steps;
- delayed scaling: s = max(amax history) * 2^margin / fp8_max from the last n
  steps' amaxes (`delayed_scale`, `record_amax`): no extra pass, but a value larger
  than the history's amax saturates at ±fp8_max * s (which `quantize` clips to,
  never producing NaN).
A zero or non-finite amax keeps the previous scale.

`fp8_dense(x, w)` is `model.transformer.dense` with both inputs in E4M3 (current
scaling), the product accumulated in float32 and multiplied by s_x * s_w; its
backward quantizes the incoming gradient to E5M2 (current scaling) and forms
dx = g_q w_q^T and dw = x_q^T g_q from the same FP8 operands. Written as
quantize-dequantize around a float dot, the pattern XLA's GPU compiler rewrites
into an FP8 GEMM on Hopper; on a CPU it emulates the numerics exactly (the FP8
values are exact in float32), at float32 speed.

Whose is what: `quantize`/`dequantize` (saturating casts), `compute_scale` (Transformer
Engine's rule) and `compute_amax_history` are flax's (flax.linen.fp8_ops), reused
here; the current-scaling wrapper, `fp8_dense` and its backward are written here.
`model.fp8 = True` makes fp8_dense the matmul of the attention projections and the
dense MLP (`model.transformer.matmul_fn`), with current scaling. Delayed scaling is
written and tested here but not wired: its history would need the train step to
carry and update it (train/step.py).
"""

import math

import jax
import jax.numpy as jnp
from flax.linen import fp8_ops

E4M3 = jnp.float8_e4m3fn  # Forward: activations and weights.
E5M2 = jnp.float8_e5m2  # Backward: gradients (wider range, one mantissa bit less).


def fp8_max(dtype) -> float:
  """Largest finite value of an FP8 dtype: 448 (E4M3), 57344 (E5M2)."""
  return float(jnp.finfo(dtype).max)


def _scale_from_amax(amax, prev_scale, dtype, margin: int = 0):
  """s = amax * 2^margin / fp8_max; prev_scale where amax is 0 or not finite (float32 scalars)."""
  amax = jnp.asarray(amax, jnp.float32)
  return fp8_ops.compute_scale(amax, jnp.asarray(prev_scale, jnp.float32),
                               jnp.float32(fp8_max(dtype)), margin)


def current_scale(x, dtype, prev_scale=1.0, margin: int = 0):
  """Per-tensor scale of x for `dtype` from x itself: amax(|x|) * 2^margin / fp8_max."""
  return _scale_from_amax(jnp.max(jnp.abs(x)), prev_scale, dtype, margin)


def record_amax(x, history):
  """The amax history (n,) with amax(|x|) as the newest entry (index 0) and the oldest dropped."""
  return fp8_ops.compute_amax_history(x, history)


def delayed_scale(history, prev_scale, dtype, margin: int = 0):
  """Scale for this step from the last n amaxes: max(history) * 2^margin / fp8_max."""
  return _scale_from_amax(jnp.max(history), prev_scale, dtype, margin)


def quantize(x, dtype, scale):
  """saturate(x / scale) in `dtype`: values beyond ±fp8_max * scale become ±fp8_max."""
  return fp8_ops.quantize(x, dtype, scale, jnp.float32)


def dequantize(q, scale, dtype=jnp.float32):
  """q * scale in `dtype`."""
  return fp8_ops.dequantize(q, dtype, scale)


def qdq(x, dtype, scale):
  """dequantize(quantize(x)): x rounded to the FP8 grid of `scale`, in float32."""
  return dequantize(quantize(x, dtype, scale), scale)


def _qdq_current(x, dtype):
  return qdq(x.astype(jnp.float32), dtype, current_scale(x, dtype))


def _matmul(x_RK, w_KO):
  return jnp.dot(x_RK, w_KO, preferred_element_type=jnp.float32)


@jax.custom_vjp
def _fp8_matmul(x_RK, w_KO):
  return _matmul(_qdq_current(x_RK, E4M3), _qdq_current(w_KO, E4M3))


def _fp8_matmul_fwd(x_RK, w_KO):
  xq_RK, wq_KO = _qdq_current(x_RK, E4M3), _qdq_current(w_KO, E4M3)
  return _matmul(xq_RK, wq_KO), (xq_RK, wq_KO)


def _fp8_matmul_bwd(res, g_RO):
  """(dx, dw) from the E5M2 gradient and the forward's E4M3 operands (float32, as the inputs)."""
  xq_RK, wq_KO = res
  gq_RO = _qdq_current(g_RO, E5M2)
  return _matmul(gq_RO, wq_KO.T), _matmul(xq_RK.T, gq_RO)


_fp8_matmul.defvjp(_fp8_matmul_fwd, _fp8_matmul_bwd)


def fp8_dense(x, w, n_in: int = 1):
  """x (..., *I) times w (*I, *O) as `model.transformer.dense`, both in E4M3: -> (..., *O) in x.dtype.

  One scale per tensor (current scaling), float32 accumulation; the backward pass
  quantizes the incoming gradient to E5M2.
  """
  lead, inner, out = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:], w.shape[n_in:]
  rows, k = math.prod(lead), math.prod(inner)
  f32 = jnp.float32  # The custom gradient is float32 in, float32 out; the casts carry dtypes.
  y_RO = _fp8_matmul(x.reshape(rows, k).astype(f32), w.reshape(k, math.prod(out)).astype(f32))
  return y_RO.astype(x.dtype).reshape(*lead, *out)
