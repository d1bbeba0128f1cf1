"""Training FLOPs and memory: the published analytic counts next to what XLA measures.

  python -m scaling.flops --config configs/tiny_cpu.py [--config.model.d_model=256 ...] [--json[=PATH]]

Units (where FLOP accounting goes wrong):
  * A multiply-add is 2 FLOPs. `*_per_token` functions return training FLOPs
    per token unless named `forward`; `chinchilla_*` return FLOPs per SEQUENCE
    of `seq_len` tokens (as the paper's appendix F does). "Per step" means the
    whole global batch of one optimizer step, summed over all devices.
  * 6ND is always 6 * N * D with N = `active` (model/counts.py: every matmul
    weight a token passes through; `with_head` for a dense model, without the
    idle routed experts for MoE) unless a row says otherwise.

Measured FLOPs and memory come from `train/cost.py` (XLA's cost and memory
analysis of the run's own train step, scan-corrected); this module puts them
next to the published analytic counts.
"""

import jax
from absl import flags

from configs import cli
from model import counts, sharding
from model.counts import palm_flops_per_token  # Re-exported: the MFU count lives with the model.
from scaling import memory
from train import config_check
from train.cost import hlo_dot_flops, measure_memory, measure_step_flops  # noqa: F401  (re-exported)

# ------------------------------------------------------------------ analytic counts (pure)


def six_n_flops_per_token(n_params: float) -> float:
  """Training FLOPs per token, 6N (2 forward + 4 backward per parameter). Pass the N you mean."""
  return 6.0 * n_params


def kaplan_forward_flops_per_token(n_non_embedding: float, n_layers: int, n_ctx: int,
                                   d_attn: int) -> float:
  """Kaplan et al. 2020 Table 1: forward FLOPs per token, 2N + 2 n_layer n_ctx d_attn (N non-embedding)."""
  return 2.0 * n_non_embedding + 2.0 * n_layers * n_ctx * d_attn


def kaplan_train_flops_per_token(n_non_embedding: float, n_layers: int, n_ctx: int,
                                 d_attn: int) -> float:
  """Kaplan's training FLOPs per token: 3x the forward count."""
  return 3.0 * kaplan_forward_flops_per_token(n_non_embedding, n_layers, n_ctx, d_attn)


def chinchilla_forward_terms(n_layers: int, d_model: int, n_heads: int, d_head: int, d_ff: int,
                             vocab: int, seq_len: int, *, n_kv_heads: int | None = None,
                             ffw_matrices: int = 2) -> dict[str, float]:
  """Hoffmann et al. 2022 appendix F, forward FLOPs per SEQUENCE of `seq_len` tokens, by term.

  Per layer: qkv 2*3*S*d*(k*h); logits 2*S^2*(k*h); softmax 3*h*S^2;
  attention_value 2*S^2*(k*h); output 2*S*(k*h)*d; dense 2*S*(2*d*f).
  Once: embeddings 2*S*V*d; final_logits 2*S*d*V. Defaults are the paper's
  architecture; `n_kv_heads` (GQA: K and V projections shrink to n_kv_heads)
  and `ffw_matrices=3` (SwiGLU) adapt it to chinchax's model. Returns the
  per-layer terms (already times n_layers) plus 'embeddings' and 'final_logits'.
  """
  S, d, h, k, V, L = seq_len, d_model, n_heads, d_head, vocab, n_layers
  g = n_heads if n_kv_heads is None else n_kv_heads
  return {
      'embeddings': 2.0 * S * V * d,
      'qkv': L * 2.0 * S * d * (k * h + 2 * k * g),
      'logits': L * 2.0 * S * S * (k * h),
      'softmax': L * 3.0 * h * S * S,
      'attention_value': L * 2.0 * S * S * (k * h),
      'output': L * 2.0 * S * (k * h) * d,
      'dense': L * 2.0 * S * (ffw_matrices * d * d_ff),
      'final_logits': 2.0 * S * d * V,
  }


def chinchilla_forward_flops(n_layers: int, d_model: int, n_heads: int, d_head: int, d_ff: int,
                             vocab: int, seq_len: int, *, n_kv_heads: int | None = None,
                             ffw_matrices: int = 2, include_embeddings: bool = True,
                             include_final_logits: bool = True) -> float:
  """Appendix-F forward FLOPs per SEQUENCE: embeddings + L * (attention + dense) + final logits.

  `include_embeddings`/`include_final_logits=False` drop those terms (Table A4's
  ratios only come out without both; see tests/test_flops.py).
  """
  t = chinchilla_forward_terms(n_layers, d_model, n_heads, d_head, d_ff, vocab, seq_len,
                               n_kv_heads=n_kv_heads, ffw_matrices=ffw_matrices)
  if not include_embeddings:
    t.pop('embeddings')
  if not include_final_logits:
    t.pop('final_logits')
  return sum(t.values())


def chinchilla_train_flops(*args, **kwargs) -> float:
  """Appendix-F training FLOPs per SEQUENCE: forward + backward (= 2x forward) = 3x forward."""
  return 3.0 * chinchilla_forward_flops(*args, **kwargs)


def deepseek_flops_per_token(n_layers: int, d_model: int, seq_len: int) -> float:
  """DeepSeek LLM's non-embedding training FLOPs per token M = 72 L d^2 + 12 L d l_seq."""
  return 72.0 * n_layers * d_model**2 + 12.0 * n_layers * d_model * seq_len


def deepseek_6n1(n_layers: int, d_model: int) -> float:
  """DeepSeek LLM's 6*N1 per token = 72 L d^2 (N1 = 12 L d^2 non-embedding parameters)."""
  return 72.0 * n_layers * d_model**2


def analytic_rows(model_cfg, seq_len: int, tokens_per_step: int) -> list[dict]:
  """Every analytic count for a `model` config: name, FLOPs per token and per step, ratio to 6ND.

  N for the 6ND denominator is `active` (= `with_head` for a dense model): for
  MoE, the parameters a token passes through. The layer-by-layer formulas see
  an MoE layer as a SwiGLU MLP of the width a token uses, (top_k + shared) x
  the expert width, averaged over the layers (the router's 2·D·E per token
  per layer is left out).
  """
  c = counts.param_counts(model_cfg)
  L, D, H, G, V = (model_cfg.n_layers, model_cfg.d_model, model_cfg.n_heads,
                   model_cfg.n_kv_heads, model_cfg.vocab_size)
  n_moe = len(counts.moe_layers(model_cfg))
  F = model_cfg.d_ff
  if n_moe:
    routed_width = (model_cfg.moe_top_k + model_cfg.moe_shared_experts) * counts.expert_width(model_cfg)
    F = ((L - n_moe) * model_cfg.d_ff + n_moe * routed_width) / L
  idle = c.with_head - c.active  # Routed experts a token does not use (0 when dense).
  K = D // H
  T = seq_len
  chin = chinchilla_train_flops(L, D, H, K, F, V, T, n_kv_heads=G, ffw_matrices=3) / T
  chin_no_emb = chinchilla_train_flops(L, D, H, K, F, V, T, n_kv_heads=G, ffw_matrices=3,
                                       include_embeddings=False) / T
  per_token = [
      ('6N, N non-embedding (Kaplan)', six_n_flops_per_token(c.non_embedding - idle)),
      ('6N, N with head (default 6ND)', six_n_flops_per_token(c.active)),
      ('Kaplan 3 x (2N + 2 L T d_attn)', kaplan_train_flops_per_token(c.non_embedding - idle, L, T,
                                                                       H * K)),
      ('Chinchilla app. F (GQA, SwiGLU)', chin),
      ('Chinchilla app. F without embeddings', chin_no_emb),
      ('PaLM 6N + 12 L H Q T (MFU)', palm_flops_per_token(c.active, L, H, K, T)),
      ('PaLM, causal-halved (MaxText)', palm_flops_per_token(c.active, L, H, K, T, causal=True)),
      ('DeepSeek M = 72 L d^2 + 12 L d T', deepseek_flops_per_token(L, D, T)),
  ]
  ref = 6.0 * c.active
  return [dict(name=n, flops_per_token=f, flops_per_step=f * tokens_per_step, ratio_6nd=f / ref)
          for n, f in per_token]


# ------------------------------------------------------------------ the report


def report(config, mesh, stage: str = 'compiled', verify: bool = False,
           with_memory: bool = True) -> dict:
  """Everything the CLI prints: analytic rows, measured rows, memory rows (dict, JSON-ready)."""
  d = config.data
  tokens_per_step = d.global_batch_size * d.seq_len
  c = counts.param_counts(config.model)
  six_nd = 6.0 * c.active * tokens_per_step
  rows = analytic_rows(config.model, d.seq_len, tokens_per_step)
  meas = measure_step_flops(config, mesh, stage=stage, verify=verify)
  def mrow(name, flops):
    return dict(name=name, flops_per_token=flops / tokens_per_step, flops_per_step=flops,
                ratio_6nd=flops / six_nd)
  measured = [mrow(f'XLA {stage}, scan-corrected (hardware)', meas['flops_xla'])]
  if config.model.remat != 'none':
    measured.append(mrow(f'XLA {stage}, scan-corrected, remat off (model)', meas['flops_xla_model']))
  if config.model.scan_layers:
    measured.append(mrow(f'XLA {stage}, uncorrected (scan body once)', meas['flops_xla_uncorrected']))
  if verify:
    measured.append(mrow(f'XLA {stage}, fully unrolled (check)', meas['verify_unrolled_flops']))
  measured += [mrow(f'  of which {k}', v) for k, v in meas['breakdown'].items()]

  mesh_sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
  shape = memory.ModelShape.from_config(config.model)
  pred = memory.training_memory_per_device(config.model, d.seq_len, d.global_batch_size,
                                           sharding.resolve_mesh_shape(config.mesh, mesh.devices.size))
  mem = [
      dict(name='params (float32)', bytes=pred['params']),
      dict(name='grads (float32)', bytes=pred['grads']),
      dict(name='Adam m + v (float32)', bytes=pred['optimizer']),
      dict(name=f'activations ({config.model.compute_dtype}, remat={config.model.remat})',
           bytes=pred['activations']),
      dict(name='analytic total', bytes=pred['total']),
      dict(name='16 B/param rule (params on this device)', bytes=pred['rule_16_bytes']),
  ]
  if with_memory:
    ma = measure_memory(config, mesh)
    mem += [dict(name='XLA arguments (state + batch)', bytes=ma['argument_size']),
            dict(name='XLA temporaries', bytes=ma['temp_size']),
            dict(name='XLA peak estimate (args + out - alias + temp)', bytes=ma['peak_estimate'])]
    pred['measured'] = ma
  inference = [dict(name=f'inference weights {p}', bytes=memory.weight_bytes(c.total, p))
               for p in ('fp16', 'int8', 'int4')]
  kv = memory.kv_cache_bytes_per_token(shape, 2.0)
  inference.append(dict(name=f'KV cache per token (16-bit, {shape.n_kv_heads} kv heads)', bytes=kv))
  return {
      'config': {'n_layers': config.model.n_layers, 'd_model': config.model.d_model,
                 'seq_len': d.seq_len, 'global_batch_size': d.global_batch_size,
                 'remat': config.model.remat, 'compute_dtype': config.model.compute_dtype},
      'params': c.as_dict(''),
      'tokens_per_step': tokens_per_step,
      'flops_6nd_per_step': six_nd,
      'mesh': mesh_sizes,
      'analytic': rows,
      'measured': measured,
      'measurement': meas,
      'memory_per_device': mem,
      'memory_analytic': pred,
      'inference_total': inference,
  }


def format_report(r: dict) -> str:
  """One plain-text table of `report(...)`."""
  cfg, p = r['config'], r['params']
  lines = [f"L={cfg['n_layers']} d={cfg['d_model']} T={cfg['seq_len']} B={cfg['global_batch_size']} "
           f"remat={cfg['remat']} {cfg['compute_dtype']} | N with head {p['with_head']:,} "
           + (f"(active {p['active']:,}) " if p.get('active', p['with_head']) != p['with_head'] else '')
           + f"(non-embedding {p['non_embedding']:,}, total {p['total']:,}) | mesh "
           + (' x '.join(f'{k}={v}' for k, v in r['mesh'].items() if v > 1) or '1 device'),
           f"{'FLOPs (training)':<52} {'per token':>11} {'per step':>11} {'/ 6ND':>7}"]
  for section in ('analytic', 'measured'):
    for row in r[section]:
      lines.append(f"{row['name']:<52} {row['flops_per_token']:>11.4g} {row['flops_per_step']:>11.4g} "
                   f"{row['ratio_6nd']:>7.3f}")
  lines.append(f"method: {r['measurement']['method']}")
  lines.append(f"{'memory per device (training)':<52} {'MB':>11}")
  for row in r['memory_per_device']:
    lines.append(f"{row['name']:<52} {row['bytes'] / 1e6:>11.4g}")
  ma = r['memory_analytic'].get('measured')
  if ma:
    lines.append(f"{'analytic total / XLA peak estimate':<52} "
                 f"{r['memory_analytic']['total'] / ma['peak_estimate']:>11.3f}")
  lines.append(f"{'inference (total, all devices)':<52} {'MB':>11}")
  for row in r['inference_total']:
    lines.append(f"{row['name']:<52} {row['bytes'] / 1e6:>11.4g}")
  return '\n'.join(lines)


def main(argv):
  del argv
  F = flags.FLAGS
  config = F.config
  config_check.validate(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh, jax.devices())
  r = report(config, mesh, stage=F.stage, verify=F.verify, with_memory=F.memory)
  cli.emit(r, format_report(r), F.json)


def _define_flags():
  cli.define_config_flag()
  cli.define_json_flag()
  flags.DEFINE_enum('stage', 'compiled', ['compiled', 'lowered'],
                    'Cost analysis of the compiled (per-device, optimised) or lowered (global) HLO.')
  flags.DEFINE_bool('verify', False, 'Also measure the fully unrolled program (checks the scan correction).')
  flags.DEFINE_bool('memory', True, 'Compile the config as-is for memory_analysis().')
  flags.mark_flags_as_required(['config'])


if __name__ == '__main__':
  _define_flags()
  cli.run_absl(main)
