"""The modules PEFT adds beside a frozen base, which model/transformer.py's hooks call.

The model holds None in each hook until train/peft.py's `apply` puts one of
these there; every trainable number is an `Adapter` Variable, drawn from a
numpy generator (no compile per shape). Shapes carry the stack's leading axes
(*lead: L, or periods x layers for MoE layouts), which nnx.scan slices away, so
inside a layer the shapes are as written below.

  Bottleneck  Block.attn_adapter / Block.mlp_adapter (post.peft='adapter';
              Houlsby et al. 2019): a sublayer's output h_BTD becomes
              h + gelu(h W_down + b_down) W_up + b_up, before the residual
              add. W_down (D, r) ~ N(0, 1/D), b_down (r,), W_up (r, D) and
              b_up (D,) start at 0, so the block starts as its base:
              2·D·r + r + D numbers per adapter and layer.
  Prefix      Attention.prefix (post.peft='prefix'; Li & Liang 2021): P keys
              and values per kv head, k_PGK and v_PGK, held in cache slots
              0..P-1 of every layer and attended by every token, which sits
              at position P + t (RoPE included). The keys are stored as
              attention reads them: already rotated, at positions 0..P-1, so
              they are used as they are. 2·P·G·K numbers per layer; trained
              directly (no MLP reparameterisation).
  Prompt      Transformer.prompt (post.peft='prompt'; Lester et al. 2021):
              P input embeddings embed_PD before the token embeddings, at
              positions 0..P-1; the model drops their outputs, so logits,
              targets and masks keep the tokens' length. P·D numbers.

Init (train/peft.py): the prompt starts as the embeddings of P token ids
drawn from the vocabulary (Lester et al.'s sampled-vocabulary init), the prefix
as the base's own keys and values of the same P ids (Li & Liang's
real-word init), so at init either model is the base reading those P tokens first.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import decode
from model.transformer import dense


class Adapter(nnx.Param):
  """Trainable adapter numbers: the only Variables post-training updates under post.peft."""


def _trainable(x) -> Adapter:
  return Adapter(jnp.asarray(x, jnp.float32))


class Bottleneck(nnx.Module):
  """h_BTD -> h + gelu(h W_down + b_down) W_up + b_up: a bottleneck of width r, starting as h."""

  def __init__(self, lead: tuple[int, ...], d: int, r: int, rng: np.random.Generator):
    self.down_DR = _trainable(rng.normal(0, d ** -0.5, (*lead, d, r)))
    self.down_bias = _trainable(np.zeros((*lead, r)))
    self.up_RD = _trainable(np.zeros((*lead, r, d)))  # Zero: the adapter starts as the identity.
    self.up_bias = _trainable(np.zeros((*lead, d)))

  def __call__(self, h_BTD):
    dt = h_BTD.dtype
    z_BTR = jax.nn.gelu(dense(h_BTD, self.down_DR[...].astype(dt)) + self.down_bias[...].astype(dt))
    return h_BTD + dense(z_BTR, self.up_RD[...].astype(dt)) + self.up_bias[...].astype(dt)


class Prefix(nnx.Module):
  """P learned keys and values per kv head, in cache slots 0..P-1 of one attention layer."""

  def __init__(self, k_PGK: jax.Array, v_PGK: jax.Array):
    """From (*lead, P, G, K) keys (rotated as attention reads them) and values."""
    self.k_PGK = Adapter(jnp.asarray(k_PGK, jnp.float32))
    self.v_PGK = Adapter(jnp.asarray(v_PGK, jnp.float32))

  @property
  def length(self) -> int:
    """P: the cache slots the prefix fills."""
    return self.k_PGK.shape[-3]

  def empty_cache(self, batch: int, tokens: int, dtype) -> dict[str, jax.Array]:
    """Zeros for one layer's {'k', 'v'} of P + `tokens` slots, (B, P + T, G, K) each."""
    shape = (batch, self.length + tokens, *self.k_PGK.shape[-2:])
    return {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}

  def write(self, cache: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """One layer's cache {'k', 'v'}, (B, T, G, K) each, with every row's slots 0..P-1 the prefix."""
    def put(c_BTGK, p_PGK):
      p_BPGK = jnp.broadcast_to(p_PGK.astype(c_BTGK.dtype), (c_BTGK.shape[0], *p_PGK.shape))
      return jax.lax.dynamic_update_slice_in_dim(c_BTGK, p_BPGK, 0, axis=1)
    return {'k': put(cache['k'], self.k_PGK[...]), 'v': put(cache['v'], self.v_PGK[...])}


class Prompt(nnx.Module):
  """P learned input embeddings, read before the tokens' (the model drops their outputs)."""

  def __init__(self, embed_PD: jax.Array):
    self.embed_PD = Adapter(jnp.asarray(embed_PD, jnp.float32))

  @property
  def length(self) -> int:
    """P: the virtual tokens before token 0."""
    return self.embed_PD.shape[0]

  def embeddings(self, batch: int, dtype) -> jax.Array:
    """x_BPD: the P embeddings for each of `batch` rows, in `dtype`."""
    return jnp.broadcast_to(self.embed_PD[...].astype(dtype), (batch, *self.embed_PD.shape))

  def prepend(self, x_BTD: jax.Array) -> jax.Array:
    """x_BTD -> x_B(P+T)D: the P embeddings, then the tokens'."""
    return jnp.concatenate([self.embeddings(x_BTD.shape[0], x_BTD.dtype), x_BTD], axis=1)


# ---- The prefix's init.

def layer_indices(model) -> dict[tuple, np.ndarray]:
  """Path of each stack of Blocks -> its layers' indices in the cache, shaped as the stack."""
  n_lead, n_periods, n_tail = model.layout
  L = model.cfg.n_layers
  out = {('blocks',): np.arange(n_lead), ('tail_blocks',): np.arange(L - n_tail, L)}
  if n_periods:  # moe_every layers a period, its MoE block last.
    e = model.cfg.moe_every
    period = n_lead + np.arange(n_periods * e).reshape(n_periods, e)
    out.update({('moe_periods', 'dense'): period[:, :-1], ('moe_periods', 'moe'): period[:, -1]})
  return out


def base_keys_values(model, ids: np.ndarray) -> dict[str, jax.Array]:
  """The base's keys (rotated) and values of the tokens `ids` at positions 0..P-1, every layer:
  {'k', 'v'}: (L, P, G, K), read from a KV-cache prefill (model/decode.py)."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def prefill(state):
    base = nnx.merge(graphdef, state)
    base.eval()
    cache = decode.init_cache(base.cfg, 1, len(ids))
    tokens = jnp.asarray(ids, jnp.int32)[None]
    return decode.forward_cached(base, tokens, cache, jnp.zeros((1,), jnp.int32))[1]

  return {name: c[:, 0] for name, c in prefill(state).items()}
