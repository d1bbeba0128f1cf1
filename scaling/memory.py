"""Memory arithmetic per stage: training state, LoRA/QLoRA, inference weights, KV cache.

The analytic part here is pure Python (no JAX import); parameter counts come
from `model.counts` (also JAX-free), the one place that counts. Conventions:
  * Bytes are plain bytes; tables show GB = 1e9 bytes (the guide's 7B -> 14 GB
    is decimal). `train.hardware` stores device memory in bytes.
  * "Total" means summed over all devices; "per device" says so in the name.
  * Everything counts parameters and optimizer state only (plus the KV cache
    where named). Activations, XLA workspace, fragmentation and framework
    overhead are NOT included: budget headroom on top.

Mixed-precision Adam keeps 16 bytes per trainable parameter (the guide's
count): 2 (16-bit weight) + 2 (16-bit gradient) + 4 (fp32 master weight)
+ 4 (Adam first moment m) + 4 (Adam second moment v). FSDP/ZeRO-3 shards all
of it evenly over the devices; plain data parallelism replicates it.
"""

import dataclasses
import math

from model import counts

GB = 1e9  # Display unit: decimal gigabytes.

# Bytes per trainable parameter under mixed-precision Adam (sums to 16).
ADAM_MIXED_BYTES: dict[str, float] = {
    'weight_16bit': 2.0,
    'grad_16bit': 2.0,
    'master_fp32': 4.0,
    'adam_m_fp32': 4.0,
    'adam_v_fp32': 4.0,
}

# Bytes per parameter for stored weights (inference, or a frozen base).
WEIGHT_BYTES: dict[str, float] = {
    'fp32': 4.0,
    'fp16': 2.0,
    'bf16': 2.0,
    'int8': 1.0,
    'int4': 0.5,
    'nf4': 0.5,  # QLoRA's 4-bit NormalFloat; block scales (~0.127 bit/param with double quantization) ignored.
}

# Linear maps inside one transformer block, as LoRA can adapt them.
LORA_TARGETS_ALL = ('q', 'k', 'v', 'o', 'gate', 'up', 'down')


def adam_bytes_per_param() -> float:
  """Bytes per trainable parameter of mixed-precision Adam training state (16)."""
  return sum(ADAM_MIXED_BYTES.values())


def training_state_bytes(n_params: float) -> float:
  """Total bytes of weights + grads + fp32 master + Adam m, v for `n_params` (no activations)."""
  return n_params * adam_bytes_per_param()


def sharded_bytes_per_device(total_bytes: float, n_devices: int) -> float:
  """Bytes per device when `total_bytes` is sharded evenly (FSDP/ZeRO-3) over `n_devices`."""
  if n_devices < 1:
    raise ValueError(f'n_devices must be >= 1, got {n_devices}')
  return total_bytes / n_devices


def weight_bytes(n_params: float, precision: str = 'bf16') -> float:
  """Total bytes of `n_params` weights stored at `precision` (a key of WEIGHT_BYTES)."""
  key = precision.lower()
  if key not in WEIGHT_BYTES:
    raise ValueError(f'unknown precision {precision!r}; known: {", ".join(WEIGHT_BYTES)}')
  return n_params * WEIGHT_BYTES[key]


def devices_needed(total_bytes: float, device_bytes: float) -> int:
  """Fewest devices of `device_bytes` memory each that hold `total_bytes` sharded evenly."""
  if device_bytes <= 0:
    raise ValueError(f'device memory must be > 0 bytes, got {device_bytes}')
  return max(1, math.ceil(total_bytes / device_bytes))


@dataclasses.dataclass(frozen=True)
class ModelShape:
  """A decoder-only transformer's shape (matches the `model` block of configs/base.py).

  Attention: n_heads query heads and n_kv_heads key/value heads (GQA), each of
  head_dim = d_model // n_heads. MLP: SwiGLU with hidden width d_ff (three
  matrices). No biases. vocab_size may be None when only LoRA/KV sizes matter.
  """
  n_layers: int
  d_model: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  vocab_size: int | None = None
  tie_embeddings: bool = False
  qk_norm: bool = False  # RMSNorm scales on queries and keys (2 * head_dim per layer).

  def __post_init__(self):
    for name in ('n_layers', 'd_model', 'n_heads', 'n_kv_heads', 'd_ff', 'vocab_size'):
      value = getattr(self, name)
      if value is not None and (not isinstance(value, int) or value <= 0):
        flag = '--' + name.replace('_', '-')
        raise ValueError(f'model shape: {name} ({flag}) must be a positive integer, got {value!r}')
    if self.d_model % self.n_heads:
      raise ValueError(f'model shape: n_heads={self.n_heads} (--n-heads) must divide d_model={self.d_model}')
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f'model shape: n_kv_heads={self.n_kv_heads} (--n-kv-heads) must divide n_heads={self.n_heads}')

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @classmethod
  def from_config(cls, model_cfg) -> 'ModelShape':
    """From a config's `model` block (ConfigDict or mapping) with the configs/base.py fields."""
    get = model_cfg.get if hasattr(model_cfg, 'get') else lambda k, d=None: getattr(model_cfg, k, d)
    return cls(
        n_layers=get('n_layers'), d_model=get('d_model'), n_heads=get('n_heads'),
        n_kv_heads=get('n_kv_heads') or get('n_heads'), d_ff=get('d_ff'),
        vocab_size=get('vocab_size'), tie_embeddings=bool(get('tie_embeddings', False)),
        qk_norm=bool(get('qk_norm', False)))


def block_matrices(shape: ModelShape) -> dict[str, tuple[int, int]]:
  """(d_in, d_out) of each linear map in one block, keyed by the LoRA target name."""
  d, hd = shape.d_model, shape.head_dim
  return {
      'q': (d, shape.n_heads * hd),
      'k': (d, shape.n_kv_heads * hd),
      'v': (d, shape.n_kv_heads * hd),
      'o': (shape.n_heads * hd, d),
      'gate': (d, shape.d_ff),
      'up': (d, shape.d_ff),
      'down': (shape.d_ff, d),
  }


def shape_param_count(shape: ModelShape) -> int:
  """Total stored parameters of the shape (`model.counts.param_counts(shape).total`).

  Embeddings, blocks (incl. 2 RMSNorm scales, and qk-norm scales if
  `qk_norm`), final norm and the head unless `tie_embeddings`. Needs vocab_size.
  """
  if shape.vocab_size is None:
    raise ValueError('model shape: vocab_size is needed to count parameters (--vocab-size)')
  return counts.param_counts(shape).total


def lora_params(shape: ModelShape, rank: int, targets: tuple[str, ...] = LORA_TARGETS_ALL) -> int:
  """Trainable LoRA parameters in total: rank*(d_in + d_out) per adapted matrix, all layers."""
  if rank <= 0:
    raise ValueError(f'LoRA rank must be > 0, got {rank}')
  mats = block_matrices(shape)
  unknown = [t for t in targets if t not in mats]
  if unknown or not targets:
    raise ValueError(f'unknown LoRA targets {unknown}; known: {", ".join(mats)}')
  return shape.n_layers * sum(rank * (mats[t][0] + mats[t][1]) for t in targets)


def lora_adapter_count(shape: ModelShape, targets: tuple[str, ...] = LORA_TARGETS_ALL) -> int:
  """Number of adapted matrices (each gets one A, B pair): n_layers * len(targets)."""
  return shape.n_layers * len(targets)


def lora_bytes(n_params: float, n_lora: float, base_precision: str = 'bf16') -> dict[str, float]:
  """Total bytes of LoRA fine-tuning: frozen base at `base_precision` + adapters with Adam.

  The base has no gradient or optimizer state; the adapters carry the full
  16 B/param mixed-precision Adam state. Use base_precision='nf4' for QLoRA.
  """
  base = weight_bytes(n_params, base_precision)
  adapters = training_state_bytes(n_lora)
  return {'base': base, 'adapters': adapters, 'total': base + adapters}


def kv_cache_bytes_per_token(shape: ModelShape, bytes_per_element: float = 2.0) -> float:
  """KV-cache bytes per token of one sequence: 2 (K and V) * n_layers * n_kv_heads * head_dim * bytes.

  GQA-aware: only the n_kv_heads key/value heads are cached. A model config
  with attention='mla' (in place of `shape`) caches n_layers * (mla_kv_rank +
  mla_rope_dim) numbers per token instead (`model.counts.kv_cache_elements_per_token`).
  """
  return counts.kv_cache_elements_per_token(shape) * bytes_per_element


def kv_cache_bytes(shape: ModelShape, context: int, batch: int = 1,
                   bytes_per_element: float = 2.0) -> float:
  """Total KV-cache bytes for `batch` sequences of `context` tokens each."""
  if context <= 0 or batch <= 0:
    raise ValueError(f'context and batch must be > 0, got context={context}, batch={batch}')
  return kv_cache_bytes_per_token(shape, bytes_per_element) * context * batch


def memory_stages(n_params: float, n_devices: int = 1, device_bytes: float | None = None,
                  shape: ModelShape | None = None, lora_rank: int = 16,
                  lora_targets: tuple[str, ...] = LORA_TARGETS_ALL,
                  context: int | None = None, batch: int = 1,
                  kv_bytes_per_element: float = 2.0) -> list[dict]:
  """The analytic memory table: one row per stage, sizes in bytes.

  Each row: stage, what (how the number is made), bytes_total (all devices
  together), bytes_per_device (on `n_devices` under that stage's layout:
  'replicated' keeps a full copy per device, 'sharded' divides evenly),
  and devices_needed (fewest devices of `device_bytes` that hold it; for a
  replicated stage 1 if it fits on one device, else None). Rows that need a
  shape (LoRA, QLoRA, KV) are skipped without one; rows that need a context
  (KV) are skipped without one. Activations are never included.
  """
  rows = []

  def add(stage, what, total, layout):
    per_device = total if layout == 'replicated' else total / n_devices
    if device_bytes is None:
      need = None
    elif layout == 'replicated':
      need = 1 if total <= device_bytes else None
    else:
      need = devices_needed(total, device_bytes)
    rows.append(dict(stage=stage, what=what, layout=layout, bytes_total=total,
                     bytes_per_device=per_device, devices_needed=need))

  adam = adam_bytes_per_param()
  train = training_state_bytes(n_params)
  add('train (pre-training / full fine-tune), data parallel',
      f'{adam:g} B/param: 2 weight16 + 2 grad16 + 4 fp32 master + 4 Adam m + 4 Adam v',
      train, 'replicated')
  devs = f'{n_devices} device' + ('s' if n_devices != 1 else '')
  add(f'train, FSDP over {devs}', f'{adam:g} B/param / {devs}',
      train, 'sharded')
  if shape is not None:
    n_lora = lora_params(shape, lora_rank, lora_targets)
    count = lora_adapter_count(shape, lora_targets)
    for stage, precision in (('LoRA', 'bf16'), ('QLoRA', 'nf4')):
      b = lora_bytes(n_params, n_lora, precision)
      add(f'{stage} r={lora_rank} ({count} adapters, {n_lora:.3g} params)',
          f'{WEIGHT_BYTES[precision]:g} B/param frozen {precision} base + {adam:g} B/adapter param',
          b['total'], 'sharded')
  for precision in ('fp16', 'int8', 'int4'):
    add(f'inference weights {precision}', f'{WEIGHT_BYTES[precision]:g} B/param',
        weight_bytes(n_params, precision), 'sharded')
  if shape is not None and context is not None:
    per_token = kv_cache_bytes_per_token(shape, kv_bytes_per_element)
    kv = kv_cache_bytes(shape, context, batch, kv_bytes_per_element)
    add(f'KV cache, context {context} x batch {batch}',
        f'2*{shape.n_layers} layers*{shape.n_kv_heads} kv heads*{shape.head_dim} head dim'
        f'*{kv_bytes_per_element:g} B = {per_token:g} B/token', kv, 'sharded')
    add('inference fp16 weights + KV cache', 'sum of the two rows above',
        weight_bytes(n_params, 'fp16') + kv, 'sharded')
  return rows


# ------------------------------------------------ a run's training memory per device (analytic)

DTYPE_BYTES: dict[str, int] = {'float32': 4, 'bfloat16': 2, 'float16': 2}
PARAM_BYTES = 4  # chinchax keeps parameters, gradients and Adam moments in float32.


def activation_elements_per_token(model_cfg, seq_len: int, tensor: int = 1) -> dict[str, float]:
  """Activation elements per token kept for the backward pass, per device (tensor-sharded parts / `tensor`).

  A hand count of what the model in model/transformer.py saves, by remat policy:
    none: per layer, attention 4D (norm in/out, out-proj, residual) + q, k, v
      and the rotated q, k (2HK + 3GK) + the T x T scores and probabilities
      (2HT); MLP 3D + 4F (norm in/out, down; gate, up, silu, product).
    dots: only matmul outputs: q, k, v (HK + 2GK), scores (HT), attention out
      (HK), out-proj and down (2D), gate and up (2F).
    dots_no_batch: matmuls with weights only (no T x T scores, no attention out).
    full: the block input (D); one block's 'none' set is live at a time.
  Outside the layers: embeddings out and final norm (2D), float32 logits, their
  softmax and gradient (3V; always float32, counted at 4 bytes by the caller).
  Returns {'layers': per token over all layers, 'one_layer_recompute': the
  extra live set under 'full' remat, 'logits': float32 elements per token,
  'other': the 2D outside}.
  """
  D, H, G, F, L = model_cfg.d_model, model_cfg.n_heads, model_cfg.n_kv_heads, model_cfg.d_ff, model_cfg.n_layers
  K = D // H
  tp = max(1, int(tensor))
  heads = (2 * H * K + 3 * G * K + 2 * H * seq_len) / tp
  full_layer = 7 * D + heads + 4 * F / tp
  if model_cfg.remat == 'none':
    per_layer, recompute = full_layer, 0.0
  elif model_cfg.remat == 'dots':
    per_layer, recompute = 2 * D + (2 * H * K + 2 * G * K + H * seq_len + 2 * F) / tp, 0.0
  elif model_cfg.remat == 'dots_no_batch':
    per_layer, recompute = 2 * D + (H * K + 2 * G * K + 2 * F) / tp, 0.0
  elif model_cfg.remat == 'full':
    per_layer, recompute = D, full_layer
  else:
    raise ValueError(f'model.remat={model_cfg.remat!r}: unknown remat policy')
  return {'layers': L * per_layer, 'one_layer_recompute': recompute,
          'logits': 3 * model_cfg.vocab_size / tp, 'other': 2 * D}


def training_memory_per_device(model_cfg, seq_len: int, global_batch_size: int,
                               mesh_sizes: dict[str, int]) -> dict[str, float]:
  """Analytic bytes PER DEVICE of one train step: params, grads, Adam state, activations.

  Layout (model/sharding.py RULES): every weight matrix has one dimension on
  `fsdp` and one on `tensor`, so matrices divide by fsdp*tensor; routed MoE
  experts also have their expert dimension on `expert` (fsdp*tensor*expert);
  norm scales are replicated. Params, grads and both Adam moments are float32 (4 B each: 16 B
  per parameter, the same total as the mixed-precision rule 2+2+4+4+4, reached
  differently). Activations use `model.compute_dtype` (logits float32) over the
  B*T/(data*fsdp*expert) tokens of one device; see activation_elements_per_token.
  XLA workspace and fragmentation are not modelled.
  """
  c = counts.param_counts(model_cfg)
  fsdp, tp = int(mesh_sizes.get('fsdp', 1)), int(mesh_sizes.get('tensor', 1))
  batch_shards = int(mesh_sizes.get('data', 1)) * fsdp * int(mesh_sizes.get('expert', 1))
  D, L = model_cfg.d_model, model_cfg.n_layers
  K = D // model_cfg.n_heads
  norm_params = L * (2 * D + (2 * K if model_cfg.qk_norm else 0)) + D
  routed = (len(counts.moe_layers(model_cfg)) * 3 * D * counts.expert_width(model_cfg)
            * counts.num_experts(model_cfg))  # The experts' (E, D, F) kernels.
  ep = int(mesh_sizes.get('expert', 1))
  per_device_params = ((c.total - norm_params - routed) / (fsdp * tp) + routed / (fsdp * tp * ep)
                       + norm_params)
  params = per_device_params * PARAM_BYTES
  tokens = global_batch_size * seq_len / batch_shards
  act = activation_elements_per_token(model_cfg, seq_len, tp)
  dt = DTYPE_BYTES[model_cfg.compute_dtype]
  activations = tokens * (dt * (act['layers'] + act['one_layer_recompute'] + act['other'])
                          + 4 * act['logits'])
  out = {'params': params, 'grads': params, 'optimizer': 2 * params, 'activations': activations,
         'params_per_device': per_device_params, 'tokens_per_device': tokens}
  out['state'] = out['params'] + out['optimizer']
  out['total'] = out['state'] + out['grads'] + activations
  out['rule_16_bytes'] = adam_bytes_per_param() * per_device_params
  return out
