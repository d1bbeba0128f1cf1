"""Parameter counts and model FLOPs per token as plain functions of the model config.

No module is built and nothing here imports jax: the scaling code and the
launcher call these directly. The counts match the modules in
model/transformer.py (GQA or MLA attention) and model/moe.py exactly
(tests/test_model.py and tests/test_moe.py check this). The MoE layout
(which layers, the expert width) is defined here and used by the modules.

Which N?
- `non_embedding`: Kaplan et al.'s N (no embedding table, no output head).
- `with_head`: non-embedding plus the output head's V*D, counted even when the
  head is tied to the embedding, because its FLOPs are spent either way. This is
  the N that resolves the Kaplan/Chinchilla discrepancy (Porian et al. 2024) and
  the project's default N for 6*N*D and for fits.
- `total`: every stored parameter.
- `active`: the parameters one token passes through: `with_head` minus the
  routed experts it is not sent to (all but top_k of the E per MoE layer). The
  router and shared experts are active. Equal to `with_head` for dense models;
  `model_flops_per_token` (MFU) uses it, and it is the N of 6*N*D for MoE models.

Stored parameters are `nnx.Param`s; the sigmoid router's selection bias
(`model.moe.RouterBias`, E numbers per MoE layer, no gradient) is not one.
"""

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  total: int  # Every stored parameter.
  embedding: int  # Input embedding table V*D.
  head: int  # Untied output head V*D (0 when tied).
  non_embedding: int  # Kaplan's N: total - embedding - head.
  with_head: int  # non_embedding + V*D (the default N).
  active: int  # Per token: with_head minus unused routed experts (== with_head when dense).

  def as_dict(self, prefix: str = 'params_') -> dict[str, int]:
    return {prefix + k: v for k, v in dataclasses.asdict(self).items()}


def num_experts(cfg) -> int:
  """Routed experts E of a model config; 0 (also when the field is absent) means dense."""
  return int(getattr(cfg, 'moe_num_experts', 0) or 0)


def expert_width(cfg) -> int:
  """Hidden width F of one expert: moe_d_expert, or d_ff // moe_granularity when that is 0."""
  return cfg.moe_d_expert or cfg.d_ff // cfg.moe_granularity


def moe_layers(cfg) -> tuple[int, ...]:
  """0-based indices of the MoE layers: after the first moe_first_dense, every moe_every-th.

  With n = moe_first_dense and k = moe_every, layer i is MoE when i >= n and
  (i - n + 1) % k == 0: the layers after the dense prefix come in periods of
  k - 1 dense blocks then one MoE block; layers after the last full period stay dense.
  """
  if not num_experts(cfg):
    return ()
  n, k = cfg.moe_first_dense, cfg.moe_every
  return tuple(i for i in range(n, cfg.n_layers) if (i - n + 1) % k == 0)


def attention_kind(cfg) -> str:
  """model.attention: 'gqa' or 'mla' ('gqa' without the field, as in scaling's ModelShape)."""
  return getattr(cfg, 'attention', 'gqa') or 'gqa'


def attention_params(cfg) -> int:
  """Parameters of one attention layer (model/transformer.py's Attention or MLA), norms included.

  GQA: D*H*K (q) + 2*D*G*K (k, v) + H*K*D (out), + 2K with qk_norm.
  MLA (J = K + R): queries D*H*J, or D*Q + Q (latent, norm) + Q*H*J when
  mla_q_rank Q > 0; D*C + C (kv latent, norm) + D*R (RoPE key) + 2*C*H*K (key
  and value up-projections) + H*K*D (out).
  """
  D, H = cfg.d_model, cfg.n_heads
  K = D // H
  if attention_kind(cfg) == 'mla':
    C, Q, R = cfg.mla_kv_rank, cfg.mla_q_rank, cfg.mla_rope_dim
    q = D * Q + Q + Q * H * (K + R) if Q else D * H * (K + R)
    return q + D * C + C + D * R + 2 * C * H * K + H * K * D
  G = cfg.n_kv_heads
  return D * H * K + 2 * D * G * K + H * K * D + (2 * K if cfg.qk_norm else 0)


def attention_head_dims(cfg) -> tuple[int, int]:
  """(query/key, value) head sizes: (K, K) for GQA, (K + mla_rope_dim, K) for MLA."""
  K = cfg.d_model // cfg.n_heads
  return (K + cfg.mla_rope_dim, K) if attention_kind(cfg) == 'mla' else (K, K)


def kv_cache_elements_per_token(cfg) -> int:
  """Numbers cached per token of one sequence over all layers (times bytes/element = bytes/token).

  GQA/MHA: 2 * L * n_kv_heads * head size (keys and values); MLA: L * (mla_kv_rank
  + mla_rope_dim) (the latent and the shared RoPE key). model/decode.py allocates exactly this.
  """
  if attention_kind(cfg) == 'mla':
    return cfg.n_layers * (cfg.mla_kv_rank + cfg.mla_rope_dim)
  return 2 * cfg.n_layers * cfg.n_kv_heads * (cfg.d_model // cfg.n_heads)


def block_params(cfg, moe: bool = False) -> int:
  """Parameters of one transformer block (attention, SwiGLU MLP or MoE layer, two norms)."""
  mlp = moe_mlp_params(cfg) if moe else 3 * cfg.d_model * cfg.d_ff
  return attention_params(cfg) + mlp + 2 * cfg.d_model


def moe_mlp_params(cfg, active: bool = False) -> int:
  """Parameters of one MoE layer: router D*E, routed and shared SwiGLU experts (3*D*F each).

  `active=True`: those one token uses (router, top_k routed experts, shared experts).
  """
  D, E, F = cfg.d_model, num_experts(cfg), expert_width(cfg)
  routed = cfg.moe_top_k if active else E
  return D * E + 3 * D * F * (routed + cfg.moe_shared_experts)


def param_counts(cfg) -> ParamCounts:
  """Closed-form parameter counts of `model` config `cfg`."""
  V, D = cfg.vocab_size, cfg.d_model
  embedding = V * D
  head = 0 if cfg.tie_embeddings else V * D
  n_moe = len(moe_layers(cfg))
  non_embedding = (cfg.n_layers - n_moe) * block_params(cfg) + D  # + final norm
  inactive = 0  # Routed experts a token is not sent to.
  if n_moe:
    non_embedding += n_moe * block_params(cfg, moe=True)
    inactive = n_moe * (moe_mlp_params(cfg) - moe_mlp_params(cfg, active=True))
  with_head = non_embedding + V * D
  return ParamCounts(total=embedding + head + non_embedding, embedding=embedding, head=head,
                     non_embedding=non_embedding, with_head=with_head, active=with_head - inactive)


def palm_flops_per_token(n_params: float, n_layers: int, n_heads: int, d_head: int, seq_len: int,
                         causal: bool = False) -> float:
  """PaLM/MaxText model FLOPs per training token: 6N + 12*L*H*Q*T.

  `causal=True` halves the attention term (MaxText: a causal mask skips half the
  T x T products); PaLM, levanter and `model_flops_per_token` (chinchax's MFU)
  count it in full.
  """
  attn = 12.0 * n_layers * n_heads * d_head * seq_len
  return 6.0 * n_params + (0.5 if causal else 1.0) * attn


def model_flops_per_token(cfg, seq_len: int) -> float:
  """Training model FLOPs per token, PaLM convention: 6*N + 12*L*H*K*T.

  N is `active` (every matmul weight a token passes through: `with_head` for a
  dense model; for MoE the router, top_k routed and the shared experts, not
  the other experts, so these are active FLOPs); the attention term counts the
  full T x T score and value products (no causal halving, as in PaLM and
  levanter). MLA's scores run over K + R and its values over K, so its
  attention term is 6*L*H*(2K + R)*T (K above becomes K + R/2). Remat
  recomputation is not included: this is what MFU divides by.
  Dispatch overhead (the capacity path's padding and einsums, the dense
  reference's every-expert compute) is not model FLOPs either.
  """
  d_qk, d_v = attention_head_dims(cfg)
  d_head = d_qk if d_qk == d_v else (d_qk + d_v) / 2
  return palm_flops_per_token(param_counts(cfg).active, cfg.n_layers, cfg.n_heads, d_head, seq_len)


FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D: 2 FLOPs per multiply-add x (forward + 2x backward).


def tokens_per_step(config) -> int:
  """Tokens of one optimizer step: data.global_batch_size * data.seq_len."""
  return config.data.global_batch_size * config.data.seq_len


def planned_steps(config) -> int:
  """Optimizer steps of a run, from whichever of train.steps / train.tokens / train.flops is set.

  A FLOP budget C becomes tokens D = C / (6 N) with N = the active params
  (with head; for MoE the parameters one token passes through), and
  D becomes ceil(D / tokens per step) steps (so 6 N D >= C by under one step).
  The one place the run length is computed: the schedule, validation and the
  sweep launcher all call this.
  """
  t = config.train
  if t.steps:
    return int(t.steps)
  tokens = t.tokens or t.flops / (FLOPS_PER_PARAM_TOKEN * param_counts(config.model).active)
  return max(1, math.ceil(tokens / tokens_per_step(config)))


def warmup_steps(config) -> int:
  """Linear warmup steps: optim.warmup_steps, else optim.warmup_fraction of the planned steps."""
  o, steps = config.optim, planned_steps(config)
  return min(o.warmup_steps or int(o.warmup_fraction * steps), steps - 1)


def decay_start(config) -> int:
  """WSD: the last step at peak LR; the decay covers steps decay_start+1 .. planned steps.

  Here (JAX-free) so that the schedule (train.optim) and the sweep launcher,
  which plans cooldown branches at these steps, share one definition.
  """
  steps = planned_steps(config)
  return max(warmup_steps(config), steps - round(config.optim.decay_fraction * steps))
