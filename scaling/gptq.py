"""GPTQ and AWQ: post-training weight quantization calibrated on the run's own training data.

scaling/quant.py's `gptq-intB-gG` and `awq-intB-gG` methods (B = 4 or 8 bits, G
weights per scale along the contraction; `gptq-int8` per output channel). Both
write every calibrated kernel on the same grid as quant.py's round-to-nearest
`intB-gG` (qwix's symmetric absmax numerics: scale = absmax / (2^(B-1) - 0.5)
per G weights, codes round(w / scale) clipped to [-2^(B-1), 2^(B-1) - 1]), so
their codes and scales have the same shapes and bytes; only which code each
weight gets differs.

Units and conventions. A kernel is read as W (K, N): K the product of the axes
its matmul contracts (model.qat.CONTRACTION; H·K for wo), N the rest, as
model.transformer.dense multiplies it (x_TK @ W_KN). Calibration inputs X
(tokens, K) give H = XᵀX (K, K; the paper's 2·XᵀX without the 2, which no step
depends on) and mean|X| per input channel (K,). The output error of a
quantized Ŵ is ‖X (Ŵ − W)‖²_F = tr(ΔWᵀ H ΔW), summed over the calibration tokens.

GPTQ (Frantar et al. 2022, arXiv:2210.17323; the IST-DASLab reference code):
dampen H by percdamp · mean(diag H) (0.01), take the upper Cholesky factor U of
H⁻¹, then quantize the K input channels in order, each one's rounding error
(w − q) / U_kk fed back into the channels not yet quantized through U's row k;
in blocks of whole groups (as many as fit in 128 channels, at least one),
whose feedback to later blocks is applied once per block (lazy batch updates). A group's scale is taken
when its first channel comes up, from its weights as updated so far (the
reference reads them before the updates of the current block). Channels that
no token uses (H_kk = 0) are zeroed.

AWQ (Lin et al. 2023, arXiv:2306.00978): per input channel s = a^α with
a = mean|X| / max mean|X| (clipped at 1e-4), normalised by sqrt(max s · min s)
and rounded to the scale dtype; α on a grid of 20 points over [0, 1] (qwix's
`awq_core` grid) minimising the output error of Ŵ = Q(diag(s) W) / s, where Q
is round-to-nearest on the grid. α = 0 is round-to-nearest itself, so AWQ's
calibration error never exceeds it. The evaluated weights are Ŵ (fake quant);
the K numbers 1/s per kernel and layer are counted as stored (at the scale
dtype), although for q/k/v, gate/up and the head they could be folded into the
preceding RMSNorm's scale. AWQ's clipping search is not done.

Calibration, sequential (the GPTQ paper's order): the run's training batches
go through the model one layer at a time (each layer one jitted call): each
kernel is quantized at its own matmul, on the host, from the input it sees
there, and hands the quantized product on, so a layer's later kernels (wo after q/k/v, down after gate/up) and every
later layer see the already quantized model. The scanned stack's layer l is
the stack's module with every parameter sliced at l; its kernels are replaced
by `_Probe`s that `dense` multiplies like arrays. Covered: grouped-query
attention (wq, wk, wv, wo), the dense SwiGLU MLP (gate, up, down) and the head
(final norm output; a tied embedding table is calibrated as the head, and the
layers are fed the float table); an untied embedding table is a lookup, with no
matmul input, and is rounded to nearest (it is fed to layer 0 quantized). MLA
and MoE models are refused (their kernels are multiplied by einsums here).

Which is whose: the grid is qwix's (tests check the round-to-nearest here
against qwix.quantize bit for bit); the algorithms, the calibration and the
byte layout are written here in numpy. qwix.contrib has GPTQ and AWQ, but its
calibration goes through qwix.quantize_model, which fails on the nnx.scan
stacks; its array-level GPTQ (gptq_core.quantize_weight, the same algorithm:
with its block size set to the group size it picked the same codes as `gptq`
here on a 64x16 test layer) took 21 s eager for one K = 128, N = 256 kernel on
2 shared CPU cores, and 5-25 s to compile per shape jitted; its AWQ search
weighs the weight error by mean|X| instead of measuring the output error on
the calibration inputs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import qwix
import scipy.linalg
from flax import nnx
from jax.experimental import io_callback

from configs.load import ConfigError
from model import moe as moe_lib
from model.qat import CONTRACTION, KEEP
from train import data as data_lib

PERCDAMP = 0.01  # GPTQ's dampening, relative to the mean diagonal of H.
BLOCK = 128  # GPTQ's lazy-batch block, in input channels (rounded up to whole groups).
AWQ_GRID = 20  # AWQ's grid of exponents alpha over [0, 1].
AWQ_MIN_SCALE = 1e-4  # AWQ's floor of the normalised activation and the scale (qwix's, the paper's).
ALGORITHMS = ('gptq', 'awq')


# ------------------------------------------------------------------ the grid (qwix's numerics)


def qmax(bits: int) -> float:
  """qwix's symmetric bound: |w| up to qmax · scale rounds onto the grid (int4: 7.5, int8: 127.5)."""
  return 2 ** (bits - 1) - 0.5


def check_group(k: int, group: int, what: str = 'K') -> int:
  """The group size along a contraction of k channels (0: all k); ConfigError if it does not divide."""
  if group and k % group:
    raise ConfigError(f'group size {group} does not divide the contraction dimension of {what} '
                      f'({k})')
  return group or k


def absmax_scale(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
  """float32 scales of weights grouped along `axis`: absmax / qmax; 1 where that is ~0 (qwix).

  As XLA compiles qwix's absmax / qmax (scaling.quant jits it): times qmax's float32 reciprocal.
  """
  scale = np.abs(w.astype(np.float32)).max(axis=axis) * np.float32(1 / qmax(bits))
  return np.where(scale < np.sqrt(np.finfo(np.float32).tiny), np.float32(1), scale)


def to_codes(w: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
  """Integer codes (int8) of float32 weights at a float32 scale: round half to even, then clip.

  w / scale is taken as XLA compiles qwix's division by a broadcast scale: w times 1 / scale.
  """
  lo, hi = -2 ** (bits - 1), 2 ** (bits - 1) - 1
  inv = np.float32(1) / scale.astype(np.float32)
  return np.clip(np.rint(w.astype(np.float32) * inv), lo, hi).astype(np.int8)


def dequantize(codes_KN: np.ndarray, scale_GN: np.ndarray, scale_dtype) -> np.ndarray:
  """Weights (K, N) float32 of codes and one scale per K/G rows, as qwix.dequantize computes them."""
  dt = np.dtype(scale_dtype)
  stored_GN = scale_GN.astype(dt).astype(np.float32)
  w = codes_KN.astype(np.float32) * np.repeat(stored_GN, codes_KN.shape[0] // len(scale_GN), axis=0)
  return w.astype(dt).astype(np.float32)  # qwix multiplies in the scale's dtype.


def round_to_nearest(w_KN: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, np.ndarray]:
  """(codes (K, N) int8, scales (K/G, N) float32): quant.py's intB-gG, in numpy."""
  k, n = w_KN.shape
  g = check_group(k, group)
  scale_GN = absmax_scale(w_KN.reshape(k // g, g, n), bits, axis=1)
  return to_codes(w_KN, np.repeat(scale_GN, g, axis=0), bits), scale_GN


def output_error(dw_KN: np.ndarray, h_KK: np.ndarray) -> float:
  """‖X ΔW‖²_F = tr(ΔWᵀ H ΔW) for H = XᵀX: the squared output error summed over the tokens."""
  dw = dw_KN.astype(np.float64)
  return float(np.sum((h_KK @ dw) * dw))


# ------------------------------------------------------------------ GPTQ


def _inverse_cholesky(h_KK: np.ndarray, percdamp: float) -> np.ndarray:
  """Upper U with Uᵀ U = (H + λ I)⁻¹, λ = percdamp · mean(diag H); dead channels get H_kk = 1."""
  h = h_KK.astype(np.float64).copy()
  diag = np.arange(len(h))
  h[diag, diag] = np.where(np.diag(h_KK) == 0, 1.0, np.diag(h))
  h[diag, diag] += percdamp * np.mean(np.diag(h_KK))
  hinv = scipy.linalg.cho_solve(scipy.linalg.cho_factor(h, lower=True), np.eye(len(h)))
  return np.linalg.cholesky((hinv + hinv.T) / 2).T


def gptq(w_KN: np.ndarray, h_KK: np.ndarray, bits: int, group: int, scale_dtype=np.float32,
         percdamp: float = PERCDAMP, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
  """(codes (K, N) int8, scales (K/G, N) float32) of W by GPTQ with the Hessian H (see the docstring)."""
  k, _ = w_KN.shape
  g = check_group(k, group)
  block = g * max(1, block // g)  # Whole groups per block: a group's scale sees its updated weights.
  u_KK = _inverse_cholesky(h_KK, percdamp)
  w_NK = np.where(np.diag(h_KK) == 0, 0.0, w_KN.T.astype(np.float64))  # The paper's W (out, in).
  codes_NK = np.zeros(w_NK.shape, np.int8)
  scales = []
  for i1 in range(0, k, block):
    i2 = min(i1 + block, k)
    w1, err1, u1 = w_NK[:, i1:i2].copy(), np.zeros((len(w_NK), i2 - i1)), u_KK[i1:i2, i1:i2]
    for i in range(i2 - i1):
      if (i1 + i) % g == 0:
        scales.append(absmax_scale(w1[:, i:i + g], bits, axis=1))
      q = to_codes(w1[:, i], scales[-1], bits)
      dq = dequantize(q[None], scales[-1][None], scale_dtype)[0]
      err1[:, i] = (w1[:, i] - dq) / u1[i, i]
      w1[:, i:] -= np.outer(err1[:, i], u1[i, i:])
      codes_NK[:, i1 + i] = q
    w_NK[:, i2:] -= err1 @ u_KK[i1:i2, i2:]
  return codes_NK.T, np.stack(scales)


# ------------------------------------------------------------------ AWQ


def awq_scales(absmean_K: np.ndarray, alpha: float, scale_dtype=np.float32) -> np.ndarray:
  """AWQ's per-input-channel scales s (K,) float32 for exponent alpha (see the docstring)."""
  a = np.clip(absmean_K / max(absmean_K.max(), 1e-30), AWQ_MIN_SCALE, None)
  s = np.clip(a ** alpha, AWQ_MIN_SCALE, None)
  s = s / np.sqrt(max(s.max() * s.min(), 1e-8))
  return s.astype(np.dtype(scale_dtype)).astype(np.float32)


def awq(w_KN: np.ndarray, h_KK: np.ndarray, absmean_K: np.ndarray, bits: int, group: int,
        scale_dtype=np.float32, grid: int = AWQ_GRID):
  """(codes (K, N) int8 of diag(s) W, scales (K/G, N), s (K,), alpha): AWQ's grid search on H."""
  w = w_KN.astype(np.float32)
  best = None
  for alpha in np.linspace(0.0, 1.0, grid):
    s_K = awq_scales(absmean_K, alpha, scale_dtype)
    codes, scale_GN = round_to_nearest(w * s_K[:, None], bits, group)
    err = output_error(dequantize(codes, scale_GN, scale_dtype) / s_K[:, None] - w, h_KK)
    if best is None or err < best[0]:
      best = (err, codes, scale_GN, s_K, float(alpha))
  return best[1:]


# ------------------------------------------------------------------ calibration through the model


def calibration_errors(m, name: str) -> list[str]:
  """Why method `name` cannot calibrate the model config `m` (MLA, MoE: einsum kernels)."""
  covered = 'calibration covers grouped-query attention, the dense MLP and the head'
  errors = []
  if getattr(m, 'attention', 'gqa') == 'mla':
    errors.append(f"--method {name}: {covered}, not model.attention='mla'")
  if moe_lib.moe_layers(m):
    errors.append(f'--method {name}: {covered}, not MoE layers (model.moe_num_experts='
                  f'{m.moe_num_experts})')
  return errors


def calibration_tokens(split, config, n_batches: int) -> np.ndarray:
  """Inputs (n_batches · global batch, seq_len) int32: fixed windows of the run's training split."""
  d = config.data
  batches = data_lib.eval_batches(split, d.seq_len, d.global_batch_size, n_batches, config.seed)
  return np.concatenate([b['inputs'] for b in batches])


class _Probe:
  """A kernel that `model.transformer.dense` multiplies like an array, quantizing itself first.

  dense asks for w[...], w.astype(dt), w.shape, w.reshape(k, n) and x @ w; at the
  matmul the probe hands (x (rows, k), W (k, n)) to `quantize` on the host (an
  ordered io_callback: the layer is jitted, its kernels quantized once each, in
  the model's order), which returns Ŵ, and x @ Ŵ goes on through the model.
  """

  def __init__(self, w, quantize, dtype=None, kn=None):
    self.w, self.quantize, self.dtype, self.kn = w, quantize, dtype or w.dtype, kn
    self.shape = w.shape

  def __getitem__(self, index):
    return self

  def astype(self, dtype):
    return _Probe(self.w, self.quantize, jnp.dtype(dtype), self.kn)

  def reshape(self, *shape):
    return _Probe(self.w, self.quantize, self.dtype, shape)

  def __rmatmul__(self, x_RK):
    def host(x, w):
      return self.quantize(np.asarray(x, np.float64), np.asarray(w, np.float32).reshape(self.kn))
    deq_KN = io_callback(host, jax.ShapeDtypeStruct(self.kn, jnp.float32), x_RK, self.w,
                         ordered=True)
    return x_RK @ deq_KN.astype(self.dtype)


@dataclasses.dataclass
class _Calibration:
  """Quantizes kernels at their inputs and keeps, per parameter key, each layer's pieces."""
  algorithm: str
  bits: int
  group: int
  scale_dtype: object
  parts: dict = dataclasses.field(default_factory=dict)  # key -> [(deq_KN, codes, scales, s)]
  errors: list = dataclasses.field(default_factory=list)  # (this algorithm's, RTN's) output error.
  alphas: list = dataclasses.field(default_factory=list)

  def rtn(self, key: str, w_KN: np.ndarray) -> np.ndarray:
    """Ŵ (K, N) float32 of the parameter at `key`, rounded to nearest (no calibration input)."""
    codes, scale_GN = round_to_nearest(w_KN, self.bits, self.group)
    deq = dequantize(codes, scale_GN, self.scale_dtype)
    self.parts.setdefault(key, []).append((deq, codes, scale_GN, None))
    return deq

  def quantize(self, key: str, x_RK: np.ndarray, w_KN: np.ndarray) -> np.ndarray:
    """Ŵ (K, N) float32 of the kernel at `key`, calibrated on its inputs x (rows, K)."""
    check_group(w_KN.shape[0], self.group, key)
    h_KK, s_K = x_RK.T @ x_RK, None
    if self.algorithm == 'gptq':
      codes, scale_GN = gptq(w_KN, h_KK, self.bits, self.group, self.scale_dtype)
      deq = dequantize(codes, scale_GN, self.scale_dtype)
    else:
      codes, scale_GN, s_K, alpha = awq(w_KN, h_KK, np.abs(x_RK).mean(axis=0), self.bits,
                                        self.group, self.scale_dtype)
      deq = dequantize(codes, scale_GN, self.scale_dtype) / s_K[:, None]
      self.alphas.append(alpha)
    rtn = dequantize(*round_to_nearest(w_KN, self.bits, self.group), self.scale_dtype)
    self.errors.append((output_error(deq - w_KN, h_KK), output_error(rtn - w_KN, h_KK)))
    self.parts.setdefault(key, []).append((deq, codes, scale_GN, s_K))
    return deq

  def result(self, key: str, to_param) -> tuple:
    """(dequantized parameter, QArray of its codes and scales, extra stored arrays) of `key`.

    to_param maps one layer's (K, N) array to the parameter's own layout; several
    layers are stacked on a new leading axis.
    """
    layers = self.parts[key]
    stack = (lambda xs: xs[0]) if len(layers) == 1 else np.stack
    deq = stack([to_param(p[0]) for p in layers])
    codes_dt = jnp.dtype(f'int{self.bits}')  # ml_dtypes' int4 converts in numpy, not compiled.
    q = qwix.QArray(qvalue=jnp.asarray(stack([p[1] for p in layers]).astype(codes_dt)),
                    scale=jnp.asarray(stack([p[2] for p in layers]).astype(self.scale_dtype)),
                    qtype=f'int{self.bits}')
    extra = () if layers[0][3] is None else (
        jnp.asarray(stack([p[3] for p in layers]).astype(self.scale_dtype)),)
    return jnp.asarray(deq, jnp.float32), q, extra


def _kernels(layer) -> list[tuple[object, str, str]]:
  """(owning module, attribute, path) of every quantized parameter of one unstacked layer.

  Each must contract its leading axes (as `dense` reads it), so that W (K, N) groups
  along the same K as scaling.quant's round-to-nearest.
  """
  out = []
  for path, _ in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
    name, key = str(path[-1]), '/'.join(map(str, path))
    if name in KEEP:
      continue
    if not name.rsplit('_', 1)[-1].startswith(CONTRACTION.get(name, '?')):
      raise ConfigError(f'parameter {key}: no calibration rule (GPTQ/AWQ read kernels that '
                        'contract their leading axes, model.qat.CONTRACTION)')
    out.append((functools.reduce(getattr, path[:-1], layer), name, key))
  return out


def calibrate(model, tokens_BT: np.ndarray, method, scale_dtype) -> tuple[dict, dict]:
  """({param key: (dequantized, QArray, extra stored arrays)}, summary) of `method` on `model`.

  model: a dense GQA Transformer (calibration_errors says which are not);
  tokens_BT: calibration inputs (calibration_tokens); method: scaling.quant's
  Method with .calib in ALGORITHMS, .bits and .group. Keys are scaling.quant's
  ('blocks/attn/wq_DHK', 'embed_VD', ...); every parameter outside KEEP is here.
  """
  errors = calibration_errors(model.cfg, method.name)
  if errors:
    raise ConfigError(errors[0])
  cal = _Calibration(method.calib, method.bits, method.group, jnp.dtype(scale_dtype))
  table_VD = np.asarray(model.embed_VD[...], np.float32)
  tied = model.head_DV is None
  if tied:  # The table is calibrated as the head, below; the layers see the float table.
    x_BTD = nnx.jit(lambda m, t: m.embed(t))(model, jnp.asarray(tokens_BT))
  else:  # A lookup: rounded to nearest, and fed to layer 0 as quantized (Transformer.embed's take).
    deq_VD = cal.rtn('embed_VD', table_VD.T).T
    x_BTD = jnp.asarray(deq_VD[tokens_BT].astype(model.compute_dtype))
  graphdef, stack = nnx.split(model.blocks)

  @jax.jit
  def quantized_layer(layer_state, x_BTD):
    """The layer's output, each kernel quantized at its matmul (_Probe)."""
    layer = nnx.merge(graphdef, layer_state)
    for owner, name, path in _kernels(layer):
      w = getattr(owner, name)[...]
      setattr(owner, name, _Probe(w, functools.partial(cal.quantize, f'blocks/{path}')))
    return layer(x_BTD)[0]

  n_layers = model.layout[0]
  for l in range(n_layers):
    x_BTD = quantized_layer(jax.tree.map(lambda a, l=l: np.asarray(a)[l], stack), x_BTD)
  h_BTD = nnx.jit(lambda norm, x: norm(x))(model.final_norm, x_BTD)
  h_RD = np.asarray(h_BTD, np.float64).reshape(-1, x_BTD.shape[-1])
  head_key = 'embed_VD' if tied else 'head_DV'
  cal.quantize(head_key, h_RD, table_VD.T if tied else np.asarray(model.head_DV[...], np.float32))
  shapes = {'/'.join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  out = {}
  for key in cal.parts:
    layer_shape = shapes[key][1:] if key.startswith('blocks/') else shapes[key]
    if key == 'embed_VD':
      out[key] = cal.result(key, lambda a_KN: a_KN.T)
    else:
      out[key] = cal.result(key, lambda a_KN, s=layer_shape: a_KN.reshape(s))
  err, rtn_err = (sum(e) for e in zip(*cal.errors))
  summary = {'algorithm': method.calib, 'sequences': len(tokens_BT), 'tokens': int(tokens_BT.size),
             'calibrated_kernels': len(cal.errors), 'layers': n_layers,
             'rounded_to_nearest': [] if tied else ['embed_VD'],
             'output_error_vs_rtn': err / rtn_err if rtn_err else 1.0}
  if method.calib == 'gptq':
    summary.update(percdamp=PERCDAMP, block=BLOCK)
  else:
    summary.update(alpha_grid=AWQ_GRID, alpha_mean=float(np.mean(cal.alphas)))
  return out, summary
