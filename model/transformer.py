"""Decoder-only transformer in Flax NNX.

Pre-norm blocks (RMSNorm), rotary position embeddings, grouped-query attention
through `jax.nn.dot_product_attention`, SwiGLU MLP; the L blocks are one
stacked module applied with `nnx.scan`, so compile time does not grow with
depth (on CPU the scan unrolls up to 16 layers: `scan_unroll`). Weight
matmuls are 2-D (`dense`). Parameters are float32; activations use `compute_dtype`.

Mixture-of-Experts configs (model/moe.py) replace the MLP of chosen layers:
the n = moe_first_dense leading dense blocks are one stack, then P periods of
(moe_every - 1 dense blocks, 1 MoE block) are another, then any remaining dense
blocks a third; each is scanned, so compile time stays flat in depth.

`model.attention = 'mla'` swaps grouped-query attention for DeepSeek-V2's
multi-head latent attention (`MLA`): keys and values come from one low-rank
latent per token, plus a small RoPE key shared by the heads.

`model.parameterization = 'mup'` is the maximal-update parameterization (Yang
et al. 2022, Tensor Programs V, Adam; microsoft/mup's MuReadout/MuAdamW recipe)
relative to a base width, with width multiplier m = d_model / mup_base_width
(every hidden size is assumed to grow with d_model). Hidden (matrix-like)
kernels: init std init_std / sqrt(m), i.e. proportional to 1/sqrt(fan_in), and
Adam LR lr / m (`lr_multiplier`, applied by train/optim.py). Embedding table,
norm scales and output head: init and LR of the base model; the logits are
multiplied by 1/m (the readout multiplier; so a tied table is treated right
too). Attention logits are scaled by 1/head_size instead of 1/sqrt(head_size).
At m = 1 only the attention scale differs from SP. 'sp' (the default) is the
standard parameterization: every kernel N(0, init_std), one LR, 1/sqrt(K).

Generation (model/decode.py) calls `decode` on the same modules: S new tokens
at per-row positions go through every layer with that layer's KV cache (GQA:
keys and values, (B, T, G, K) each; MLA: the latent (B, T, C) and the RoPE key
(B, T, R)); `__call__` is the training path and never touches a cache.

PEFT hooks (train/peft.py puts a module in each; None in a plain model, which
then runs as before): `Block.attn_adapter` / `Block.mlp_adapter` transform a
sublayer's output before the residual add; `Attention.prefix` holds learned
keys and values in cache slots 0..P-1, which the training path attends through
`decode`; `Transformer.prompt` puts P learned embeddings before the tokens and
`residual` drops their outputs. `n_virtual` = P (prefix or prompt) shifts the
tokens to positions P.. (model/decode.py adds it to the decode positions).

Shape suffixes: B batch, T sequence (cache length in `decode`), S new tokens,
D d_model, H query heads, G kv heads, K head size, F MLP width, V vocabulary,
L layers, P MoE periods; MLA: C kv latent rank, Q query latent rank, R RoPE
head size, J = K + R query/key head size.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from model import fp8 as fp8_lib
from model import moe as moe_lib
from model import qat
from model.sharding import constrain

CPU_UNROLL_MAX_LAYERS = 16  # Auto scan_unroll on CPU: stacks up to this deep run without a loop.

REMAT_POLICIES = {
    'full': None,  # Save nothing inside a block: recompute it all on the backward pass.
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


PARAMETERIZATIONS = ('sp', 'mup')
BASE_LR_PARAMS = ('embed_VD', 'head_DV', 'scale')  # µP: the vector-like parameters keep the base LR.


def is_mup(cfg) -> bool:
  return getattr(cfg, 'parameterization', 'sp') == 'mup'


def width_multiplier(cfg) -> float:
  """µP's width multiplier m = d_model / mup_base_width (dimensionless; 1.0 under SP)."""
  return cfg.d_model / cfg.mup_base_width if is_mup(cfg) else 1.0


def hidden_init_std(cfg) -> float:
  """Init std of the hidden kernels (attention, MLP): init_std, over sqrt(m) under µP."""
  return cfg.init_std / width_multiplier(cfg) ** 0.5 if is_mup(cfg) else cfg.init_std


def lr_multiplier(cfg, path_names) -> float:
  """Adam LR multiplier of the parameter with these path keys: 1/m for µP's hidden kernels, else 1."""
  if not is_mup(cfg) or set(path_names) & set(BASE_LR_PARAMS):
    return 1.0
  return 1.0 / width_multiplier(cfg)


def parameterization_errors(m) -> list[str]:
  """Problems with model.parameterization and model.mup_base_width (unused under 'sp')."""
  kind = getattr(m, 'parameterization', 'sp')
  if kind not in PARAMETERIZATIONS:
    return [f'model.parameterization={kind!r}: must be one of '
            f'{", ".join(map(repr, PARAMETERIZATIONS))}']
  if kind == 'sp':
    return []
  errors = []
  base = getattr(m, 'mup_base_width', None)
  if not isinstance(base, int) or isinstance(base, bool) or base <= 0:
    errors.append(f"model.mup_base_width={base!r}: must be a positive integer with "
                  "model.parameterization='mup'")
  if m.moe_num_experts:
    errors.append(f"model.moe_num_experts={m.moe_num_experts}: not available with "
                  "model.parameterization='mup' (model/moe.py's init is not width-scaled)")
  return errors


def _param(rngs: nnx.Rngs, init, shape, names, std=None):
  init_fn = init if std is None else init(std)
  return nnx.Param(init_fn(rngs.params(), shape, jnp.float32), out_sharding=names, eager_sharding=False)


def _normal(std):
  return jax.nn.initializers.normal(std)


def dense(x, w, n_in: int = 1):
  """x (..., *I) times w (*I, *O), contracting the n_in axes I: -> (..., *O).

  One 2-D matmul with every leading axis of x folded into its rows (a free
  reshape): XLA's CPU backend otherwise transposes the activations for each
  weight gradient of a (B, T, ...) matmul, about a third of a CPU train step
  (benchmarks/bench_reference.py); other backends see the same dot.
  """
  lead, inner, out = x.shape[:x.ndim - n_in], x.shape[x.ndim - n_in:], w.shape[n_in:]
  rows, k = math.prod(lead), math.prod(inner)
  return (x.reshape(rows, k) @ w.reshape(k, math.prod(out))).reshape(*lead, *out)


def matmul_fn(cfg):
  """The weight matmul of the attention projections and the dense MLP: `dense`, or under
  model.fp8 `model.fp8.fp8_dense` (E4M3 inputs, E5M2 gradients, one current scale per tensor;
  the embedding, the head, the attention core, MLA's and the MoE experts' matmuls keep
  compute_dtype, as Transformer Engine's recipe keeps the first and last layers)."""
  return fp8_lib.fp8_dense if cfg.get('fp8', False) else dense


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.scale = _param(rngs, jax.nn.initializers.ones, (dim,), ('norm',))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def rope(x_BTNK: jax.Array, theta: float, positions_BT: jax.Array | None = None) -> jax.Array:
  """Rotary embedding over the last axis (split in halves) at positions 0..T-1 or positions_BT."""
  _, T, _, K = x_BTNK.shape
  freq_k = theta ** (-jnp.arange(0, K // 2, dtype=jnp.float32) / (K // 2))
  if positions_BT is None:
    angle_TK = jnp.arange(T, dtype=jnp.float32)[:, None] * freq_k[None, :]
    sin, cos = jnp.sin(angle_TK)[None, :, None, :], jnp.cos(angle_TK)[None, :, None, :]
  else:  # Decoding: each row's new tokens sit at their own positions.
    angle_BTK = positions_BT.astype(jnp.float32)[:, :, None] * freq_k[None, None, :]
    sin, cos = jnp.sin(angle_BTK)[:, :, None, :], jnp.cos(angle_BTK)[:, :, None, :]
  x1, x2 = jnp.split(x_BTNK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNK.dtype)


def write_cache(cache_BTX: jax.Array, new_BSX: jax.Array, pos_B: jax.Array) -> jax.Array:
  """The cache with row b's S new entries at positions pos_B[b]..pos_B[b]+S-1 (X: any axes)."""
  def put(c_TX, u_SX, p):
    return jax.lax.dynamic_update_slice_in_dim(c_TX, u_SX.astype(c_TX.dtype), p, axis=0)
  return jax.vmap(put)(cache_BTX, new_BSX, pos_B)


def visible(positions_BS: jax.Array, max_len: int) -> jax.Array:
  """mask_BST: cache position t is visible to the new token at positions_BS[b, s] iff t <= it."""
  return jnp.arange(max_len)[None, None, :] <= positions_BS[:, :, None]


class Attention(nnx.Module):
  """Causal grouped-query attention with RoPE (MHA when n_kv_heads == n_heads): x_BTD -> y_BTD."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    D, H, G = cfg.d_model, cfg.n_heads, cfg.n_kv_heads
    K = D // H
    std = hidden_init_std(cfg)
    self.wq_DHK = _param(rngs, _normal, (D, H, K), ('embed', 'heads', 'head_dim'), std)
    self.wk_DGK = _param(rngs, _normal, (D, G, K), ('embed', 'kv_heads', 'head_dim'), std)
    self.wv_DGK = _param(rngs, _normal, (D, G, K), ('embed', 'kv_heads', 'head_dim'), std)
    self.wo_HKD = _param(rngs, _normal, (H, K, D), ('heads', 'head_dim', 'embed'), std)
    self.q_norm = RMSNorm(K, cfg.norm_eps, rngs=rngs) if cfg.qk_norm else None
    self.k_norm = RMSNorm(K, cfg.norm_eps, rngs=rngs) if cfg.qk_norm else None
    self.rope_theta = cfg.rope_theta
    self.impl = cfg.attention_impl
    self.scale = 1.0 / K if is_mup(cfg) else None  # None: jax's 1/sqrt(K), as SP always had.
    self.prefix = None  # PEFT hook: learned keys and values for cache slots 0..P-1 (train/peft.py).
    self.matmul = matmul_fn(cfg)

  @staticmethod
  def cache_shapes(cfg, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
    """One layer's cache: keys and values of the G kv heads, (B, T, G, K) each."""
    shape = (batch, max_len, cfg.n_kv_heads, cfg.d_model // cfg.n_heads)
    return {'k': shape, 'v': shape}

  def _qkv(self, x_BTD, positions_BT=None):
    """Queries, keys and values of x_BTD, normed and rotated: (q_BTHK, k_BTGK, v_BTGK)."""
    dt = x_BTD.dtype
    q_BTHK = self.matmul(x_BTD, self.wq_DHK[...].astype(dt))
    k_BTGK = self.matmul(x_BTD, self.wk_DGK[...].astype(dt))
    v_BTGK = self.matmul(x_BTD, self.wv_DGK[...].astype(dt))
    if self.q_norm is not None:
      q_BTHK, k_BTGK = self.q_norm(q_BTHK), self.k_norm(k_BTGK)
    q_BTHK = rope(q_BTHK, self.rope_theta, positions_BT)
    k_BTGK = rope(k_BTGK, self.rope_theta, positions_BT)
    return q_BTHK, k_BTGK, v_BTGK

  def _out(self, o_BTHK):
    return self.matmul(o_BTHK, self.wo_HKD[...].astype(o_BTHK.dtype), n_in=2)

  def __call__(self, x_BTD):
    if self.prefix is not None:  # Prefix tuning: the tokens at positions P.. after the prefix.
      B, T, _ = x_BTD.shape
      pos_B = jnp.full((B,), self.prefix.length, jnp.int32)
      return self.decode(x_BTD, self.prefix.empty_cache(B, T, x_BTD.dtype), pos_B)[0]
    q_BTHK, k_BTGK, v_BTGK = self._qkv(x_BTD)
    q_BTHK = constrain(q_BTHK, ('batch', 'seq', 'act_heads', None))
    # GQA: H query heads share G kv heads; the fused kernels handle the grouping.
    o_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, is_causal=True,
                                          scale=self.scale, implementation=self.impl)
    return self._out(o_BTHK)

  def decode(self, x_BSD, cache: dict, pos_B):
    """S new tokens at positions pos_B[b] + 0..S-1: -> (y_BSD, cache holding their keys and values).

    Each new token attends to every cached position up to its own. Always the
    'xla' implementation: the fused kernels' causal masks assume aligned positions.
    """
    positions_BS = pos_B[:, None] + jnp.arange(x_BSD.shape[1])
    q_BSHK, k_BSGK, v_BSGK = self._qkv(x_BSD, positions_BS)
    if self.prefix is not None:  # Slots 0..P-1 always hold the prefix.
      cache = self.prefix.write(cache)
    cache = {'k': write_cache(cache['k'], k_BSGK, pos_B),
             'v': write_cache(cache['v'], v_BSGK, pos_B)}
    mask_B1ST = visible(positions_BS, cache['k'].shape[1])[:, None]
    o_BSHK = jax.nn.dot_product_attention(q_BSHK, cache['k'], cache['v'], mask=mask_B1ST,
                                          scale=self.scale, implementation='xla')
    return self._out(o_BSHK), cache


class MLA(nnx.Module):
  """Multi-head latent attention (DeepSeek-V2, 2024): every head's keys and values from one latent.

  Per token only the latent c_C = RMSNorm(x W_dkv) (C = mla_kv_rank) and one
  RoPE key k_R = rope(x W_kr) (R = mla_rope_dim), shared by all heads, are
  cached: C + R numbers per layer. Head h's key is [c W_uk[h], k_R] (J = K + R)
  and its value c W_uv[h] (K); its query [q_K, rope(q_R)] comes from x, or
  from a normalised query latent of rank Q = mla_q_rank when Q > 0. The latents
  are normalised, so there is no qk_norm. Scores are float32, scaled by 1/sqrt(J) (µP: 1/J).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    D, H = cfg.d_model, cfg.n_heads
    K, C, Q, R = D // H, cfg.mla_kv_rank, cfg.mla_q_rank, cfg.mla_rope_dim
    std = hidden_init_std(cfg)
    heads = ('heads', 'head_dim')
    self.wq_DHJ = None if Q else _param(rngs, _normal, (D, H, K + R), ('embed', *heads), std)
    self.wdq_DQ = _param(rngs, _normal, (D, Q), ('embed', None), std) if Q else None
    self.q_norm = RMSNorm(Q, cfg.norm_eps, rngs=rngs) if Q else None
    self.wuq_QHJ = _param(rngs, _normal, (Q, H, K + R), (None, *heads), std) if Q else None
    self.wdkv_DC = _param(rngs, _normal, (D, C), ('embed', None), std)
    self.kv_norm = RMSNorm(C, cfg.norm_eps, rngs=rngs)
    self.wkr_DR = _param(rngs, _normal, (D, R), ('embed', None), std)
    self.wuk_CHK = _param(rngs, _normal, (C, H, K), (None, *heads), std)
    self.wuv_CHK = _param(rngs, _normal, (C, H, K), (None, *heads), std)
    self.wo_HKD = _param(rngs, _normal, (H, K, D), ('heads', 'head_dim', 'embed'), std)
    self.rope_theta = cfg.rope_theta
    self.head_dim = K
    self.scale = 1.0 / (K + R) if is_mup(cfg) else (K + R) ** -0.5

  @staticmethod
  def cache_shapes(cfg, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
    """One layer's cache: the kv latent (B, T, C) and the shared RoPE key (B, T, R)."""
    return {'latent': (batch, max_len, cfg.mla_kv_rank),
            'rope_key': (batch, max_len, cfg.mla_rope_dim)}

  def _queries(self, x_BTD, positions_BT=None):
    """The two parts of each head's query: (q_BTHK, rope(q_BTHR))."""
    dt = x_BTD.dtype
    if self.wq_DHJ is not None:
      q_BTHJ = jnp.einsum('btd,dhj->bthj', x_BTD, self.wq_DHJ[...].astype(dt))
    else:
      c_BTQ = self.q_norm(x_BTD @ self.wdq_DQ[...].astype(dt))
      q_BTHJ = jnp.einsum('btq,qhj->bthj', c_BTQ, self.wuq_QHJ[...].astype(dt))
    q_BTHK, q_BTHR = q_BTHJ[..., :self.head_dim], q_BTHJ[..., self.head_dim:]
    return q_BTHK, rope(q_BTHR, self.rope_theta, positions_BT)

  def _latents(self, x_BTD, positions_BT=None):
    """What the cache holds per token: (latent c_BTC, RoPE key k_BTR)."""
    dt = x_BTD.dtype
    c_BTC = self.kv_norm(x_BTD @ self.wdkv_DC[...].astype(dt))
    k_BT1R = rope((x_BTD @ self.wkr_DR[...].astype(dt))[:, :, None, :], self.rope_theta,
                  positions_BT)
    return c_BTC, k_BT1R[:, :, 0, :]

  def _attend(self, q_BSHK, q_BSHR, c_BTC, k_BTR, mask_BST):
    """The queries attend to the keys and values expanded from the latents: -> y_BSD."""
    dt = q_BSHK.dtype
    k_BTHK = jnp.einsum('btc,chk->bthk', c_BTC, self.wuk_CHK[...].astype(dt))
    v_BTHK = jnp.einsum('btc,chk->bthk', c_BTC, self.wuv_CHK[...].astype(dt))
    f32 = jnp.float32
    s_BHST = (jnp.einsum('bshk,bthk->bhst', q_BSHK, k_BTHK, preferred_element_type=f32) +
              jnp.einsum('bshr,btr->bhst', q_BSHR, k_BTR, preferred_element_type=f32))
    s_BHST = jnp.where(mask_BST[:, None], s_BHST * self.scale, -jnp.inf)
    p_BHST = jax.nn.softmax(s_BHST, axis=-1).astype(dt)
    o_BSHK = jnp.einsum('bhst,bthk->bshk', p_BHST, v_BTHK)
    return jnp.einsum('bshk,hkd->bsd', o_BSHK, self.wo_HKD[...].astype(dt))

  def __call__(self, x_BTD):
    T = x_BTD.shape[1]
    q_BTHK, q_BTHR = self._queries(x_BTD)
    q_BTHK = constrain(q_BTHK, ('batch', 'seq', 'act_heads', None))
    c_BTC, k_BTR = self._latents(x_BTD)
    return self._attend(q_BTHK, q_BTHR, c_BTC, k_BTR, jnp.tril(jnp.ones((1, T, T), bool)))

  def decode(self, x_BSD, cache: dict, pos_B):
    """As `Attention.decode`, with the cache {'latent': (B, T, C), 'rope_key': (B, T, R)}."""
    positions_BS = pos_B[:, None] + jnp.arange(x_BSD.shape[1])
    q_BSHK, q_BSHR = self._queries(x_BSD, positions_BS)
    c_BSC, k_BSR = self._latents(x_BSD, positions_BS)
    cache = {'latent': write_cache(cache['latent'], c_BSC, pos_B),
             'rope_key': write_cache(cache['rope_key'], k_BSR, pos_B)}
    mask_BST = visible(positions_BS, cache['latent'].shape[1])
    return self._attend(q_BSHK, q_BSHR, cache['latent'], cache['rope_key'], mask_BST), cache


ATTENTIONS = ('gqa', 'mla')


def attention_class(cfg):
  """`Attention` (GQA; MHA when n_kv_heads == n_heads) or `MLA`, as model.attention says."""
  return MLA if getattr(cfg, 'attention', 'gqa') == 'mla' else Attention


def attention_errors(m) -> list[str]:
  """Problems with model.attention and the MLA fields (unused under 'gqa'), one per bad key."""
  kind = getattr(m, 'attention', 'gqa')
  if kind not in ATTENTIONS:
    return [f'model.attention={kind!r}: must be one of {", ".join(map(repr, ATTENTIONS))}']
  if kind != 'mla':
    return []
  errors = []
  for key, lo in (('mla_kv_rank', 1), ('mla_q_rank', 0), ('mla_rope_dim', 2)):
    v = m[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
      errors.append(f'model.{key}={v!r}: must be an integer >= {lo} with model.attention=\'mla\'')
    elif key == 'mla_rope_dim' and v % 2:
      errors.append(f'model.mla_rope_dim={v}: must be even (rotary embeddings rotate pairs)')
  if m.qk_norm:
    errors.append("model.qk_norm=True: not available with model.attention='mla' (MLA "
                  'normalises its latents instead)')
  return errors


class MLP(nnx.Module):
  """SwiGLU: down(silu(x W_gate) * (x W_up))."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    D, F, std = cfg.d_model, cfg.d_ff, hidden_init_std(cfg)
    self.gate_DF = _param(rngs, _normal, (D, F), ('embed', 'mlp'), std)
    self.up_DF = _param(rngs, _normal, (D, F), ('embed', 'mlp'), std)
    self.down_FD = _param(rngs, _normal, (F, D), ('mlp', 'embed'), std)
    self.matmul = matmul_fn(cfg)

  def __call__(self, x_BTD):
    dt = x_BTD.dtype
    h_BTF = (jax.nn.silu(self.matmul(x_BTD, self.gate_DF[...].astype(dt))) *
             self.matmul(x_BTD, self.up_DF[...].astype(dt)))
    h_BTF = constrain(h_BTF, ('batch', 'seq', 'act_mlp'))
    return self.matmul(h_BTF, self.down_FD[...].astype(dt))


class Block(nnx.Module):
  """x_BTD -> (x_BTD, aux): attention then the MLP (or MoE; aux holds its losses, {} if dense)."""

  def __init__(self, cfg, *, moe: bool = False, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    self.attn = attention_class(cfg)(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    self.mlp = moe_lib.MoE(cfg, rngs=rngs) if moe else MLP(cfg, rngs=rngs)
    self.is_moe = moe
    self.attn_adapter = self.mlp_adapter = None  # PEFT hooks: h_BTD -> h_BTD, sublayer outputs.

  def __call__(self, x_BTD):
    return self._mlp_residual(x_BTD + _adapt(self.attn_adapter, self.attn(self.attn_norm(x_BTD))))

  def decode(self, x_BSD, cache: dict, pos_B):
    """S new tokens at positions pos_B[b] + 0..S-1 with this layer's cache: -> (x_BSD, cache)."""
    a_BSD, cache = self.attn.decode(self.attn_norm(x_BSD), cache, pos_B)
    return self._mlp_residual(x_BSD + _adapt(self.attn_adapter, a_BSD))[0], cache

  def _mlp_residual(self, x_BTD):
    """x + MLP(norm(x)), or the MoE layer's: -> (x_BTD, aux)."""
    h_BTD = self.mlp_norm(x_BTD)
    y_BTD, aux = self.mlp(h_BTD) if self.is_moe else (self.mlp(h_BTD), {})
    y_BTD = _adapt(self.mlp_adapter, y_BTD)
    return constrain(x_BTD + y_BTD, ('batch', 'seq', 'act_embed')), aux


def _adapt(adapter, h_BTD):
  """A sublayer's output through its PEFT adapter, if it has one."""
  return h_BTD if adapter is None else adapter(h_BTD)


def _stack(n: int, make, rngs: nnx.Rngs):
  """n modules `make(rngs)` with their parameters stacked on a new leading axis; None if n == 0."""
  if n == 0:
    return None

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
  def make_stack(rngs):
    return make(rngs)

  return make_stack(rngs)


def _block_fn(cfg):
  """(block, x_BTD) -> block(x_BTD), recomputed on the backward pass as `cfg.remat` says."""
  def apply_block(block, x_BTD):
    return block(x_BTD)

  if cfg.remat == 'none':
    return apply_block
  return nnx.remat(apply_block, policy=REMAT_POLICIES[cfg.remat])


def _platform() -> str:
  """The platform the model is traced for: the current mesh's devices (AOT: the target), else JAX's default."""
  device = getattr(jax.sharding.get_abstract_mesh(), 'abstract_device', None)
  return device.platform if device is not None else jax.default_backend()


def scan_unroll(cfg, n: int) -> int:
  """jax.lax.scan's `unroll` for a stack of n layers: layers per loop iteration, 0 = no loop.

  model.scan_unroll = u >= 1: u layers per iteration (no loop once u >= n);
  scan_layers=False: no loop. Auto (scan_unroll = 0): on CPU no loop up to
  CPU_UNROLL_MAX_LAYERS layers (measured on 2 cores: the loop cost 12-14% of
  a 4- and 8-layer step, partial unrolls 2 and 4 gained nothing, and compile
  time grows about 0.3 s per unrolled layer), else 1; on TPU/GPU 1 (compile
  time flat in depth).
  """
  if not cfg.scan_layers:
    return 0
  u = getattr(cfg, 'scan_unroll', 1)
  if u:
    return u if u < n else 0
  return 0 if _platform() == 'cpu' and n <= CPU_UNROLL_MAX_LAYERS else 1


def scan_unroll_errors(m) -> list[str]:
  """Problems with model.scan_unroll."""
  u = getattr(m, 'scan_unroll', 1)
  if not isinstance(u, int) or isinstance(u, bool) or u < 0:
    return [f'model.scan_unroll={u!r}: must be an integer >= 0 (0 = auto: CPU unrolls, TPU/GPU 1)']
  return []


def _scan(fn, stack, x_BTD, cfg):
  """x = fn(module, x) over a stack's modules in order; -> (x_BTD, aux stacked on a new axis 0)."""
  n = jax.tree.leaves(nnx.state(stack, nnx.Param))[0].shape[0]
  scan = nnx.scan(fn, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0),
                  transform_metadata={nnx.PARTITION_NAME: None}, unroll=scan_unroll(cfg, n))
  return scan(stack, x_BTD)


class Period(nnx.Module):
  """x_BTD -> (x_BTD, aux): moe_every - 1 dense blocks (one scanned stack), then one MoE block."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dense = _stack(cfg.moe_every - 1, lambda r: Block(cfg, rngs=r), rngs)
    self.moe = Block(cfg, moe=True, rngs=rngs)

  def __call__(self, x_BTD):
    if self.dense is not None:
      x_BTD, _ = _scan(_block_fn(self.cfg), self.dense, x_BTD, self.cfg)
    return _block_fn(self.cfg)(self.moe, x_BTD)


class Transformer(nnx.Module):
  """tokens (B, T) int32 -> logits (B, T, V) float32; `forward` also returns the MoE aux dict."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.cfg = cfg
    V, D, L, std = cfg.vocab_size, cfg.d_model, cfg.n_layers, cfg.init_std
    self.embed_VD = _param(rngs, _normal, (V, D), ('vocab', 'embed'), std)
    n_periods = len(moe_lib.moe_layers(cfg))  # One MoE layer per period.
    n_lead, n_tail = L, 0
    if n_periods:
      n_lead = cfg.moe_first_dense
      n_tail = L - n_lead - n_periods * cfg.moe_every

    def dense_block(rngs):
      return Block(cfg, rngs=rngs)

    # Every parameter of a stack gets a leading axis (L for a dense model, P for the periods).
    self.blocks = _stack(n_lead, dense_block, rngs)
    self.moe_periods = _stack(n_periods, lambda r: Period(cfg, rngs=r), rngs)
    self.tail_blocks = _stack(n_tail, dense_block, rngs)
    self.final_norm = RMSNorm(D, cfg.norm_eps, rngs=rngs)
    self.head_DV = None if cfg.tie_embeddings else _param(
        rngs, _normal, (D, V), ('embed', 'vocab'), std)
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)
    self.readout_mult = 1.0 / width_multiplier(cfg) if is_mup(cfg) else None  # µP: logits / m.
    self.layout = (n_lead, n_periods, n_tail)  # Layers per stack, in order (model/decode.py).
    self.prompt = None  # PEFT hook: P learned embeddings before the tokens (train/peft_hooks.py).
    self.n_virtual = 0  # P of prefix or prompt tuning: the tokens sit at positions P.. .

  def embed(self, tokens_BT):
    """Token ids (B, T) int32 -> the residual stream x_BTD in compute_dtype."""
    # Gather the (FSDP/tensor-sharded) table whole before the lookup, as FSDP does for every
    # weight; a lookup into a sharded table makes XLA replicate the result involuntarily.
    table_VD = constrain(self.embed_VD[...], (None, None))
    x_BTD = jnp.take(table_VD, tokens_BT, axis=0).astype(self.compute_dtype)
    return constrain(x_BTD, ('batch', 'seq', 'act_embed'))

  def logits(self, x_BTD):
    """The final norm and the output head (times 1/m under µP): x_BTD -> logits_BTV float32."""
    x_BTD = self.final_norm(x_BTD)
    head_DV = self.embed_VD[...].T if self.head_DV is None else self.head_DV[...]
    logits_BTV = dense(x_BTD, head_DV.astype(self.compute_dtype)).astype(jnp.float32)
    if self.readout_mult is not None:
      logits_BTV = logits_BTV * self.readout_mult
    return constrain(logits_BTV, ('batch', 'seq', 'vocab'))

  def forward(self, tokens_BT):
    """-> (logits_BTV, aux): the MoE losses and metrics averaged over MoE layers ({} if dense).

    aux values are float32 scalars except 'moe_expert_load', shape (E,); see model.moe.MoE.
    With model.qat set, every weight is fake-quantized first (model/qat.py).
    """
    model = qat.fake_quantized(self, getattr(self.cfg, 'qat', 'none'))
    x_BTD, aux = model.residual(tokens_BT)
    return model.logits(x_BTD), aux

  def residual(self, tokens_BT):
    """-> (x_BTD, aux): the residual stream after the last block (before the final norm), and aux."""
    cfg = self.cfg
    x_BTD = self.embed(tokens_BT)
    if self.prompt is not None:
      x_BTD = self.prompt.prepend(x_BTD)
    aux = {}
    if self.blocks is not None:
      x_BTD, _ = _scan(_block_fn(cfg), self.blocks, x_BTD, cfg)
    if self.moe_periods is not None:
      x_BTD, aux_P = _scan(lambda period, x: period(x), self.moe_periods, x_BTD, cfg)
      aux = jax.tree.map(lambda a_P: jnp.mean(a_P, axis=0), aux_P)
    if self.tail_blocks is not None:
      x_BTD, _ = _scan(_block_fn(cfg), self.tail_blocks, x_BTD, cfg)
    if self.prompt is not None:  # The virtual tokens' outputs are no one's prediction.
      x_BTD = x_BTD[:, self.prompt.length:]
    return x_BTD, aux

  def __call__(self, tokens_BT):
    return self.forward(tokens_BT)[0]
