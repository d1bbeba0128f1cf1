"""Generation with a KV cache for model/transformer.py's Transformer: prefill, then a token a step.

Prompts are right-padded: row b holds its n_b prompt tokens at positions
0..n_b-1, padding after them. Prefill runs the padded block through every
layer at once and writes each position's keys and values into the cache; row
b's first new token comes from its logits at n_b - 1. Decode step i feeds each
row's previous token at its own position n_b + i - 1. A token attends to cached
positions up to its own only, so a short row never sees its padding, which its
later tokens overwrite; RoPE uses the true positions, so a padded row computes
what it would alone.

The cache is a dict of arrays with a leading layer axis, in model.compute_dtype:
GQA/MHA {'k', 'v'}: (L, B, T, G, K) each; MLA {'latent': (L, B, T, C),
'rope_key': (L, B, T, R)}; T = longest prompt + max new tokens (+ P, below).
`forward_cached` runs the model's own modules (`Transformer.embed`, each
`Block.decode`, `Transformer.logits`), scanning each stack of layers with
nnx.scan and handing layer l its slice of the cache; MoE layouts split the
cache as the Transformer stacks its layers (dense prefix, periods, dense tail).

Sampling: temperature 0 is greedy (argmax). Otherwise tokens are drawn from
softmax(logits / temperature) restricted to the top-p nucleus: the most likely
tokens until their probability reaches p, the most likely always kept (so
p -> 0 is greedy; p = 1 keeps every token).

Prefix and prompt tuning (train/peft.py): a model with n_virtual = P puts its
tokens at positions P.., so the cache is P slots longer and `forward_cached`
adds P to the positions it is given; slots 0..P-1 hold the prefix (each
attention layer writes its own) or the prompt's virtual tokens, which `prime`
runs through the layers once before the prefill.

MoE layers decode in eval mode (sigmoid routing's bias stays fixed). On a
one-token step the capacity dispatch path keeps every assignment (capacity 1
per sequence, distinct top-k experts), so there decode agrees with the full
forward only where the full forward drops nothing.

Shape suffixes as in model/transformer.py: B batch, S new tokens, T cache
length, D d_model, V vocabulary, N generated tokens.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model import qat
from model.transformer import attention_class


def init_cache(cfg, batch: int, max_len: int) -> dict[str, jax.Array]:
  """Zeros for every layer's cache: {name: (L, B, T, ...)} in `cfg.compute_dtype`."""
  shapes = attention_class(cfg).cache_shapes(cfg, batch, max_len)
  dt = jnp.dtype(cfg.compute_dtype)
  return {name: jnp.zeros((cfg.n_layers, *shape), dt) for name, shape in shapes.items()}


def cache_bytes_per_token(cache: dict[str, jax.Array]) -> float:
  """Bytes the cache holds per token of one sequence, all layers together: total / (B * T)."""
  leaves = jax.tree.leaves(cache)
  _, B, T = leaves[0].shape[:3]
  return sum(x.nbytes for x in leaves) / (B * T)


def _scan_layers(fn, stack, x_BSD, cache):
  """x, cache[l] = fn(layer l, x, cache[l]) over a stack's layers in order: -> (x_BSD, cache)."""
  scan = nnx.scan(fn, in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0),
                  transform_metadata={nnx.PARTITION_NAME: None})
  return scan(stack, x_BSD, cache)


def _layers(cache, start: int, stop: int, groups: int = 0):
  """cache[start:stop] (every array), reshaped to (groups, -1, ...) when groups > 0."""
  def take(a):
    a = a if (start, stop) == (0, a.shape[0]) else a[start:stop]
    return a.reshape(groups, -1, *a.shape[1:]) if groups else a
  return jax.tree.map(take, cache)


def forward_cached(model, tokens_BS, cache: dict, pos_B):
  """S new tokens per row at positions pos_B[b] + 0..S-1: -> (logits_BSV float32, new cache).

  Prefill is the call with pos_B = 0 and the padded prompts; a decode step is
  S = 1 at each row's next position. Rows must satisfy n_virtual + pos_B[b] + S <= T. A
  model.qat run decodes with its fake-quantized weights, as it trained.
  """
  model = qat.fake_quantized(model, getattr(model.cfg, 'qat', 'none'))
  if model.n_virtual:  # Prefix or prompt tuning: slots 0..P-1 are theirs.
    pos_B = pos_B + model.n_virtual
  x_BSD, cache = _through_layers(model, model.embed(tokens_BS), cache, pos_B)
  return model.logits(x_BSD), cache


def prime(model, cache: dict):
  """`cache` with slots 0..P-1 of every row holding prompt tuning's P virtual tokens; as it is
  for a model without a prompt (call it once, before the prefill)."""
  if model.prompt is None:
    return cache
  model = qat.fake_quantized(model, getattr(model.cfg, 'qat', 'none'))
  B = jax.tree.leaves(cache)[0].shape[1]
  x_BPD = model.prompt.embeddings(B, model.compute_dtype)
  return _through_layers(model, x_BPD, cache, jnp.zeros((B,), jnp.int32))[1]


def _through_layers(model, x_BSD, cache: dict, pos_B):
  """x_BSD at cache slots pos_B[b] + 0..S-1 through every layer: -> (x_BSD, new cache)."""
  n_lead, n_periods, n_tail = model.layout

  def block_decode(block, x_BSD, c):
    return block.decode(x_BSD, c, pos_B)

  def period_decode(period, x_BSD, c):  # c: the period's moe_every layers, the MoE one last.
    dense = jax.tree.map(lambda a: a[:-1], c)
    if period.dense is not None:
      x_BSD, dense = _scan_layers(block_decode, period.dense, x_BSD, dense)
    x_BSD, last = period.moe.decode(x_BSD, jax.tree.map(lambda a: a[-1], c), pos_B)
    return x_BSD, jax.tree.map(lambda d, m: jnp.concatenate([d, m[None]]), dense, last)

  L = model.cfg.n_layers
  parts = []  # Each scan returns its stack's updated slices (so a call writes the whole cache).
  if model.blocks is not None:
    x_BSD, c = _scan_layers(block_decode, model.blocks, x_BSD, _layers(cache, 0, n_lead))
    parts.append(c)
  if model.moe_periods is not None:
    stop = n_lead + n_periods * model.cfg.moe_every
    x_BSD, c = _scan_layers(period_decode, model.moe_periods, x_BSD,
                            _layers(cache, n_lead, stop, groups=n_periods))
    parts.append(jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), c))
  if model.tail_blocks is not None:
    x_BSD, c = _scan_layers(block_decode, model.tail_blocks, x_BSD, _layers(cache, L - n_tail, L))
    parts.append(c)
  cache = parts[0] if len(parts) == 1 else jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
  return x_BSD, cache


def sample(logits_BV, key, temperature, top_p, greedy: bool = False):
  """Next tokens (B,) int32: the argmax if `greedy`, else a draw from the top-p nucleus.

  `temperature` (> 0) and `top_p` (in (0, 1]) may be traced scalars.
  """
  if greedy:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  sorted_BV = jnp.flip(jnp.sort(logits_BV, axis=-1), axis=-1)
  p_BV = jax.nn.softmax(sorted_BV, axis=-1)
  before_BV = jnp.cumsum(p_BV, axis=-1) - p_BV  # Mass of the more likely tokens.
  n_B = jnp.sum(before_BV < top_p, axis=-1)  # >= 1: before[0] = 0.
  cutoff_B1 = jnp.take_along_axis(sorted_BV, n_B[:, None] - 1, axis=-1)
  keep_BV = (logits_BV >= cutoff_B1) | (top_p >= 1.0)
  return jax.random.categorical(key, jnp.where(keep_BV, logits_BV, -jnp.inf)).astype(jnp.int32)


class Generator:
  """Compiled generation for one model; `generate` may be called again with other prompts.

  Holds the model's parameters as they are at construction (the arrays, not a
  copy); the model itself is never changed (MoE eval mode is set on a copy).
  """

  def __init__(self, model):
    self.graphdef, self.state = nnx.split(model)
    self.cfg = model.cfg
    self.n_virtual = model.n_virtual  # Prefix or prompt tuning: P cache slots before the tokens.
    self._run = jax.jit(self._generate_BN, static_argnames=('max_new_tokens', 'greedy',
                                                            'vocab_limit'))

  def generate(self, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, eos_id: int | None = None,
               vocab_limit: int | None = None) -> list[list[int]]:
    """Continue each prompt (token ids) by up to `max_new_tokens` tokens; -> the new ids per prompt.

    A row stops after `eos_id` (kept as its last token). `vocab_limit` keeps
    sampling to ids below it (the tokenizer's vocabulary, when the embedding
    table is larger). temperature == 0 is greedy; `seed` fixes the draws.
    """
    if not prompts or not all(len(p) for p in prompts):
      raise ValueError('every prompt needs at least one token')
    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
      raise ValueError(f'need max_new_tokens >= 1, temperature >= 0 and 0 < top_p <= 1; got '
                       f'{max_new_tokens}, {temperature}, {top_p}')
    lengths_B = np.array([len(p) for p in prompts], np.int32)
    tokens_BT = np.zeros((len(prompts), lengths_B.max()), np.int32)
    for b, p in enumerate(prompts):
      tokens_BT[b, :len(p)] = p
    greedy, V = temperature == 0, self.cfg.vocab_size
    new_BN = self._run(self.state, tokens_BT, lengths_B, jax.random.key(seed),
                       jnp.float32(temperature if not greedy else 1.0), jnp.float32(top_p),
                       jnp.int32(-1 if eos_id is None else eos_id), max_new_tokens=max_new_tokens,
                       greedy=greedy, vocab_limit=min(vocab_limit or V, V))
    out = []
    for row in np.asarray(new_BN).tolist():
      out.append(row[:row.index(eos_id) + 1] if eos_id in row else row)
    return out

  def _generate_BN(self, state, tokens_BT, lengths_B, key, temperature, top_p, eos_id, *,
                   max_new_tokens: int, greedy: bool, vocab_limit: int):
    """Prefill, then max_new_tokens - 1 decode steps (lax.scan): -> new tokens (B, N) int32."""
    B, T = tokens_BT.shape

    def model_of(state):
      model = nnx.merge(self.graphdef, state)
      model.eval()  # MoE: no router-bias updates while generating.
      return model

    def run(state, tokens_BS, cache, pos_B):
      return forward_cached(model_of(state), tokens_BS, cache, pos_B)

    cache = prime(model_of(state), init_cache(self.cfg, B, self.n_virtual + T + max_new_tokens))

    def pick(logits_BV, k):
      return sample(logits_BV[:, :vocab_limit], k, temperature, top_p, greedy)

    logits_BTV, cache = run(state, tokens_BT, cache, jnp.zeros((B,), jnp.int32))
    last_BV = jnp.take_along_axis(logits_BTV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
    keys = jax.random.split(key, max_new_tokens)
    tok_B = pick(last_BV, keys[0])

    # The state rides in the carry: nnx.scan (over layers) refuses Variables of an outer trace.
    def step(carry, k):
      state, tok_B, cache, pos_B, done_B = carry
      logits_B1V, cache = run(state, tok_B[:, None], cache, pos_B)
      nxt_B = jnp.where(done_B, eos_id, pick(logits_B1V[:, 0], k))
      return (state, nxt_B, cache, pos_B + 1, done_B | (nxt_B == eos_id)), nxt_B

    carry = (state, tok_B, cache, lengths_B, tok_B == eos_id)
    _, rest_NB = jax.lax.scan(step, carry, keys[1:])
    return jnp.concatenate([tok_B[None], rest_NB]).T
