"""Quantization-aware training: fake-quantized weights with a straight-through estimator.

`model.qat` names the weight format the model trains towards:
  'none'     float weights (the default; the forward is untouched)
  'int8'     symmetric int8, one scale per output channel
  'int8-gG'  symmetric int8, one scale per G consecutive weights along the contraction
  'int4-gG'  symmetric int4, likewise (G = 32, 64, 128, ...)
Every matrix is fake-quantized, as post-training quantization (scaling/quant.py)
quantizes it: attention, MLP and expert kernels, the embedding table and the head,
each along the dimension its matmul contracts (CONTRACTION); the RMSNorm scales and
the MoE router stay float32 (KEEP). Scales are float32, there are no zero points.
A model trained with 'int4-g64' is therefore deployed exactly as
`python -m scaling.quant --method int4-g64` quantizes its float weights, and its own
eval loss is that quantized model's. (Running scaling.quant on a QAT run quantizes
twice: its eval uses the run's config, whose forward fake-quantizes the already
quantized weights again, and qwix's rounding is not idempotent: its scale is
absmax / 7.5 (int4; int8: / 127.5), the absmax comes back as 7/7.5 of itself
(measured: 1.0 -> 0.9333 -> 0.8711), and each pass picks another grid.)

The forward uses w_q = w + stop_gradient(dequantize(quantize(w)) - w): its value is
the quantize-dequantize of w, its gradient with respect to w the identity (the
straight-through estimator, Bengio et al. 2013), so the float32 weights and Adam's
moments keep training in full precision (Jacob et al. 2018).

Which is whose: the numerics (absmax scales, rounding, int4/int8 codes, per-channel
and tiled groups) are qwix's array-level `qwix.quantize` / `qwix.dequantize`, the
same calls scaling/quant.py makes. By hand here: the straight-through wrapper, the
per-parameter contraction rule, and applying it to the model's state (`fake_quantized`)
rather than through qwix's model rewriting (`qwix.QtProvider` + `qwix.quantize_model`,
which intercepts the ops it finds and did not work on this model's nnx.scan stacks).
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx

from configs.load import ConfigError
from model.counts import expert_width, moe_layers, num_experts

QAT_FORMATS = "'none', 'int8', 'int8-gG' or 'int4-gG' (G weights per scale, e.g. 'int4-g64')"

# Parameter name -> the letters of its shape suffix that its matmul contracts.
CONTRACTION = {
    'embed_VD': 'D', 'head_DV': 'D',  # The tied head contracts the table's D.
    'wq_DHK': 'D', 'wk_DGK': 'D', 'wv_DGK': 'D', 'wo_HKD': 'HK',
    'wq_DHJ': 'D', 'wdq_DQ': 'D', 'wuq_QHJ': 'Q', 'wdkv_DC': 'D', 'wkr_DR': 'D',
    'wuk_CHK': 'C', 'wuv_CHK': 'C',
    'gate_DF': 'D', 'up_DF': 'D', 'down_FD': 'F',
    'gate_EDF': 'D', 'up_EDF': 'D', 'down_EFD': 'F',
    'shared_gate_DS': 'D', 'shared_up_DS': 'D', 'shared_down_SD': 'S',
}
KEEP = {'scale', 'router_DE'}  # Left in float32: norm scales, and routing (its top-k is fragile).


def parse(text: str) -> tuple[int, int] | None:
  """model.qat -> (bits, weights per scale along the contraction; 0 = per channel), None for 'none'.

  ValueError (message naming model.qat) for anything else.
  """
  if text == 'none':
    return None
  m = re.fullmatch(r'int(\d+)(?:-g(\d+))?', str(text))
  if not m or int(m.group(1)) not in (4, 8):
    raise ValueError(f'model.qat={text!r}: must be {QAT_FORMATS}')
  bits, group = int(m.group(1)), int(m.group(2) or 0)
  if m.group(2) is not None and group < 1:
    raise ValueError(f'model.qat={text!r}: the group size must be >= 1')
  if bits == 4 and not group:
    raise ValueError(f"model.qat={text!r}: int4 needs a group size, e.g. 'int4-g64'")
  return bits, group


def contraction_sizes(m) -> dict[str, int]:
  """{what: size} of every contraction dimension the config's kernels have (model config `m`)."""
  sizes = {'model.d_model': m.d_model}
  moe = bool(num_experts(m))
  if len(moe_layers(m)) < m.n_layers:  # Some layers keep the dense MLP.
    sizes['model.d_ff (the MLP down projection)'] = m.d_ff
  if moe:
    sizes['the expert width (model.moe_d_expert or d_ff // moe_granularity)'] = expert_width(m)
    if m.moe_shared_experts:
      sizes['the shared experts\' width'] = m.moe_shared_experts * expert_width(m)
  if getattr(m, 'attention', 'gqa') == 'mla':
    sizes['model.mla_kv_rank'] = m.mla_kv_rank
    if m.mla_q_rank:
      sizes['model.mla_q_rank'] = m.mla_q_rank
  return sizes


def qat_errors(m) -> list[str]:
  """Problems with model.qat: an unknown format, or a group size that does not divide a contraction."""
  try:
    fmt = parse(getattr(m, 'qat', 'none'))
  except ValueError as e:
    return [str(e)]
  if fmt is None or not fmt[1]:
    return []
  return [f'model.qat={m.qat!r}: group size {fmt[1]} does not divide {what}={size}'
          for what, size in contraction_sizes(m).items() if size % fmt[1]]


def _as_matrix(w, suffix: str, letters: str):
  """w as (rows, contraction) with the contracted axes last; and how to undo it."""
  lead = w.ndim - len(suffix)  # Stacked layers, periods.
  c_axes = [lead + suffix.index(ch) for ch in letters]
  perm = [a for a in range(w.ndim) if a not in c_axes] + c_axes
  moved = jnp.transpose(w, perm)
  return moved.reshape(-1, math.prod(w.shape[a] for a in c_axes)), perm, moved.shape


def quantize_dequantize(w, name: str, bits: int, group: int) -> jax.Array:
  """dequantize(quantize(w)) of the parameter called `name` (its dtype and shape), via qwix.

  One scale per output channel (per layer and expert: leading stacked axes are
  rows too), or per `group` weights along the contraction when group > 0.
  """
  suffix, letters = name.rsplit('_', 1)[-1], CONTRACTION[name]
  w_RK, perm, moved_shape = _as_matrix(w, suffix, letters)
  if group and w_RK.shape[1] % group:
    raise ValueError(f'group size {group} does not divide the contraction of {name} '
                     f'({"x".join(letters)} = {w_RK.shape[1]})')
  q = qwix.quantize(w_RK, f'int{bits}', channelwise_axes=(0,),
                    tiled_axes={1: group} if group else None, scale_dtype=jnp.float32)
  back = qwix.dequantize(q).astype(w.dtype).reshape(moved_shape)
  return jnp.transpose(back, np.argsort(perm))


def straight_through(w, name: str, bits: int, group: int) -> jax.Array:
  """The fake-quantized w: the value of quantize_dequantize, the gradient of the identity."""
  return w + jax.lax.stop_gradient(quantize_dequantize(w, name, bits, group) - w)


def fake_quantized(model, qat: str):
  """`model` itself when qat == 'none'; else a copy whose weights are fake-quantized (STE).

  The copy shares every non-parameter variable (the MoE router bias) with `model`,
  so updates made by its forward land in `model`. Call inside the traced step.
  """
  fmt = parse(qat)
  if fmt is None:
    return model
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def quantize(path, v):
    name = str(path[-1])
    if name in KEEP:
      return v
    if name not in CONTRACTION:
      raise ConfigError(f'model.qat={qat!r}: parameter {"/".join(map(str, path))} has no '
                        'quantization rule (add its contraction letters to model.qat.CONTRACTION, '
                        'or its name to KEEP)')
    return v.replace(value=straight_through(v[...], name, *fmt))

  return nnx.merge(graphdef, nnx.map_state(quantize, params), rest, recreate_variables=False)
