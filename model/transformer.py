"""Decoder-only transformer in Flax NNX.

Pre-norm blocks (RMSNorm), rotary position embeddings, grouped-query attention
through `jax.nn.dot_product_attention`, SwiGLU MLP; the L blocks are one
stacked module applied with `nnx.scan`, so compile time does not grow with
depth. Parameters are float32; activations use `compute_dtype`.

Shape suffixes: B batch, T sequence, D d_model, H query heads, G kv heads,
K head size, F MLP width, V vocabulary, L layers.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from model.sharding import constrain

REMAT_POLICIES = {
    'full': None,  # Save nothing inside a block: recompute it all on the backward pass.
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _param(rngs: nnx.Rngs, init, shape, names, std=None):
  init_fn = init if std is None else init(std)
  return nnx.Param(init_fn(rngs.params(), shape, jnp.float32), out_sharding=names, eager_sharding=False)


def _normal(std):
  return jax.nn.initializers.normal(std)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs):
    self.scale = _param(rngs, jax.nn.initializers.ones, (dim,), ('norm',))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


def rope(x_BTNK: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding over the last axis (split in halves), positions 0..T-1."""
  _, T, _, K = x_BTNK.shape
  freq_k = theta ** (-jnp.arange(0, K // 2, dtype=jnp.float32) / (K // 2))
  angle_TK = jnp.arange(T, dtype=jnp.float32)[:, None] * freq_k[None, :]
  sin, cos = jnp.sin(angle_TK)[None, :, None, :], jnp.cos(angle_TK)[None, :, None, :]
  x1, x2 = jnp.split(x_BTNK.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BTNK.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    D, H, G = cfg.d_model, cfg.n_heads, cfg.n_kv_heads
    K = D // H
    std = cfg.init_std
    self.wq_DHK = _param(rngs, _normal, (D, H, K), ('embed', 'heads', 'head_dim'), std)
    self.wk_DGK = _param(rngs, _normal, (D, G, K), ('embed', 'kv_heads', 'head_dim'), std)
    self.wv_DGK = _param(rngs, _normal, (D, G, K), ('embed', 'kv_heads', 'head_dim'), std)
    self.wo_HKD = _param(rngs, _normal, (H, K, D), ('heads', 'head_dim', 'embed'), std)
    self.q_norm = RMSNorm(K, cfg.norm_eps, rngs=rngs) if cfg.qk_norm else None
    self.k_norm = RMSNorm(K, cfg.norm_eps, rngs=rngs) if cfg.qk_norm else None
    self.rope_theta = cfg.rope_theta
    self.impl = cfg.attention_impl

  def __call__(self, x_BTD):
    dt = x_BTD.dtype
    q_BTHK = jnp.einsum('btd,dhk->bthk', x_BTD, self.wq_DHK[...].astype(dt))
    k_BTGK = jnp.einsum('btd,dgk->btgk', x_BTD, self.wk_DGK[...].astype(dt))
    v_BTGK = jnp.einsum('btd,dgk->btgk', x_BTD, self.wv_DGK[...].astype(dt))
    if self.q_norm is not None:
      q_BTHK, k_BTGK = self.q_norm(q_BTHK), self.k_norm(k_BTGK)
    q_BTHK = rope(q_BTHK, self.rope_theta)
    k_BTGK = rope(k_BTGK, self.rope_theta)
    q_BTHK = constrain(q_BTHK, ('batch', 'seq', 'act_heads', None))
    # GQA: H query heads share G kv heads; the fused kernels handle the grouping.
    o_BTHK = jax.nn.dot_product_attention(q_BTHK, k_BTGK, v_BTGK, is_causal=True,
                                          implementation=self.impl)
    return jnp.einsum('bthk,hkd->btd', o_BTHK, self.wo_HKD[...].astype(dt))


class MLP(nnx.Module):
  """SwiGLU: down(silu(x W_gate) * (x W_up))."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    D, F, std = cfg.d_model, cfg.d_ff, cfg.init_std
    self.gate_DF = _param(rngs, _normal, (D, F), ('embed', 'mlp'), std)
    self.up_DF = _param(rngs, _normal, (D, F), ('embed', 'mlp'), std)
    self.down_FD = _param(rngs, _normal, (F, D), ('mlp', 'embed'), std)

  def __call__(self, x_BTD):
    dt = x_BTD.dtype
    h_BTF = jax.nn.silu(x_BTD @ self.gate_DF[...].astype(dt)) * (x_BTD @ self.up_DF[...].astype(dt))
    h_BTF = constrain(h_BTF, ('batch', 'seq', 'act_mlp'))
    return h_BTF @ self.down_FD[...].astype(dt)


class Block(nnx.Module):

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x_BTD):
    x_BTD = x_BTD + self.attn(self.attn_norm(x_BTD))
    x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD))
    return constrain(x_BTD, ('batch', 'seq', 'act_embed'))


class Transformer(nnx.Module):
  """tokens (B, T) int32 -> logits (B, T, V) float32."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    self.cfg = cfg
    V, D, std = cfg.vocab_size, cfg.d_model, cfg.init_std
    self.embed_VD = _param(rngs, _normal, (V, D), ('vocab', 'embed'), std)

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: None})
    def make_blocks(rngs):
      return Block(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)  # Every parameter gets a leading L axis.
    self.final_norm = RMSNorm(D, cfg.norm_eps, rngs=rngs)
    self.head_DV = None if cfg.tie_embeddings else _param(
        rngs, _normal, (D, V), ('embed', 'vocab'), std)
    self.compute_dtype = jnp.dtype(cfg.compute_dtype)

  def __call__(self, tokens_BT):
    cfg = self.cfg
    # Gather the (FSDP/tensor-sharded) table whole before the lookup, as FSDP does for every
    # weight; a lookup into a sharded table makes XLA replicate the result involuntarily.
    table_VD = constrain(self.embed_VD[...], (None, None))
    x_BTD = jnp.take(table_VD, tokens_BT, axis=0).astype(self.compute_dtype)
    x_BTD = constrain(x_BTD, ('batch', 'seq', 'act_embed'))

    def apply_block(block, x):
      return block(x)

    if cfg.remat != 'none':
      apply_block = nnx.remat(apply_block, policy=REMAT_POLICIES[cfg.remat])
    # scan_layers=False fully unrolls the same stacked parameters (for FLOP checks).
    stack = nnx.scan(apply_block, in_axes=(0, nnx.Carry), out_axes=nnx.Carry,
                     transform_metadata={nnx.PARTITION_NAME: None},
                     unroll=1 if cfg.scan_layers else True)
    x_BTD = stack(self.blocks, x_BTD)
    x_BTD = self.final_norm(x_BTD)
    head_DV = self.embed_VD[...].T if self.head_DV is None else self.head_DV[...]
    logits_BTV = x_BTD @ head_DV.astype(self.compute_dtype)
    return constrain(logits_BTV.astype(jnp.float32), ('batch', 'seq', 'vocab'))
