"""Parameter counts and model FLOPs per token as plain functions of the model config.

No module is built: the scaling code calls these directly. The counts match the
modules in model/transformer.py exactly (tests/test_model.py checks this).

Which N?
- `non_embedding`: Kaplan et al.'s N (no embedding table, no output head).
- `with_head`: non-embedding plus the output head's V*D, counted even when the
  head is tied to the embedding, because its FLOPs are spent either way. This is
  the N that resolves the Kaplan/Chinchilla discrepancy (Porian et al. 2024) and
  the project's default N for 6*N*D and for fits.
- `total`: every stored parameter.
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

  def as_dict(self, prefix: str = 'params_') -> dict[str, int]:
    return {prefix + k: v for k, v in dataclasses.asdict(self).items()}


def block_params(cfg) -> int:
  """Parameters of one transformer block (attention, SwiGLU MLP, two norms)."""
  D, H, G, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_ff
  K = D // H
  attn = D * H * K + 2 * D * G * K + H * K * D
  qk_norm = 2 * K if cfg.qk_norm else 0
  mlp = 3 * D * F
  return attn + qk_norm + mlp + 2 * D


def param_counts(cfg) -> ParamCounts:
  """Closed-form parameter counts of `model` config `cfg`."""
  V, D = cfg.vocab_size, cfg.d_model
  embedding = V * D
  head = 0 if cfg.tie_embeddings else V * D
  non_embedding = cfg.n_layers * block_params(cfg) + D  # + final norm
  return ParamCounts(total=embedding + head + non_embedding, embedding=embedding, head=head,
                     non_embedding=non_embedding, with_head=non_embedding + V * D)


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

  N is `with_head` (every matmul weight a token passes through); the attention
  term counts the full T x T score and value products (no causal halving, as in
  PaLM and levanter). Remat recomputation is not included: this is what MFU
  divides by.
  """
  return palm_flops_per_token(param_counts(cfg).with_head, cfg.n_layers, cfg.n_heads,
                              cfg.d_model // cfg.n_heads, seq_len)

FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D: 2 FLOPs per multiply-add x (forward + 2x backward).


def tokens_per_step(config) -> int:
  """Tokens of one optimizer step: data.global_batch_size * data.seq_len."""
  return config.data.global_batch_size * config.data.seq_len


def planned_steps(config) -> int:
  """Optimizer steps of a run, from whichever of train.steps / train.tokens / train.flops is set.

  A FLOP budget C becomes tokens D = C / (6 N) with N = params with head, and
  D becomes ceil(D / tokens per step) steps (so 6 N D >= C by under one step).
  The one place the run length is computed: the schedule, validation and the
  sweep launcher all call this.
  """
  t = config.train
  if t.steps:
    return int(t.steps)
  tokens = t.tokens or t.flops / (FLOPS_PER_PARAM_TOKEN * param_counts(config.model).with_head)
  return max(1, math.ceil(tokens / tokens_per_step(config)))
