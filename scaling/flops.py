"""Training FLOPs and memory: the published analytic counts next to what XLA measures.

  python -m scaling.flops --config configs/tiny_cpu.py [--config.model.d_model=256 ...] [--json[=PATH]]

Units (where FLOP accounting goes wrong):
  * A multiply-add is 2 FLOPs. `*_per_token` functions return training FLOPs
    per token unless named `forward`; `chinchilla_*` return FLOPs per SEQUENCE
    of `seq_len` tokens (as the paper's appendix F does). "Per step" means the
    whole global batch of one optimizer step, summed over all devices.
  * 6ND is always 6 * N * D with N = `with_head` (model/counts.py: every matmul
    weight a token passes through) unless a row says otherwise.

Measured FLOPs (`measure_step_flops`) come from XLA's HloCostAnalysis of the
train step (`train.step.build(...).train_step.lower(...)`), on abstract inputs
(nothing allocated), on whatever mesh the caller passes (CPU devices, or TPU
devices from `jax.experimental.topologies`). XLA counts a `while` (scan) body
once, not trip-count times, so a scanned L-layer step is corrected by compiling
the same config unrolled with 1 and 2 layers: body = f(2) - f(1),
outside = f(1) - body, total = outside + L * body. This is exact for
homogeneous stacked layers (tests check it against a full unrolled compile).
Remat recomputation is counted by XLA: with remat on, `flops_xla` are hardware
FLOPs and `flops_xla_model` the same step with remat off.
"""

import copy
import math
import re

from model import counts
from model.counts import palm_flops_per_token  # Re-exported: the MFU count lives with the model.
from scaling import memory

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

  N for the 6ND denominator is `with_head`. (MoE configs, a later issue, must
  pass active parameters here.)
  """
  c = counts.param_counts(model_cfg)
  L, D, H, G, F, V = (model_cfg.n_layers, model_cfg.d_model, model_cfg.n_heads,
                      model_cfg.n_kv_heads, model_cfg.d_ff, model_cfg.vocab_size)
  K = D // H
  T = seq_len
  chin = chinchilla_train_flops(L, D, H, K, F, V, T, n_kv_heads=G, ffw_matrices=3) / T
  chin_no_emb = chinchilla_train_flops(L, D, H, K, F, V, T, n_kv_heads=G, ffw_matrices=3,
                                       include_embeddings=False) / T
  per_token = [
      ('6N, N non-embedding (Kaplan)', six_n_flops_per_token(c.non_embedding)),
      ('6N, N with head (default 6ND)', six_n_flops_per_token(c.with_head)),
      ('Kaplan 3 x (2N + 2 L T d_attn)', kaplan_train_flops_per_token(c.non_embedding, L, T, H * K)),
      ('Chinchilla app. F (GQA, SwiGLU)', chin),
      ('Chinchilla app. F without embeddings', chin_no_emb),
      ('PaLM 6N + 12 L H Q T (MFU)', palm_flops_per_token(c.with_head, L, H, K, T)),
      ('PaLM, causal-halved (MaxText)', palm_flops_per_token(c.with_head, L, H, K, T, causal=True)),
      ('DeepSeek M = 72 L d^2 + 12 L d T', deepseek_flops_per_token(L, D, T)),
  ]
  ref = 6.0 * c.with_head
  return [dict(name=n, flops_per_token=f, flops_per_step=f * tokens_per_step, ratio_6nd=f / ref)
          for n, f in per_token]


# ------------------------------------------------------------------ measured (XLA)


def _variant(config, **model_overrides):
  """A copy of `config` with some `model.*` fields changed (works on locked configs)."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    for k, v in model_overrides.items():
      cfg.model[k] = v
  return cfg


def lower_train_step(config, mesh):
  """The train step of `config` lowered for `mesh` on abstract inputs (no allocation, no compile)."""
  from model import sharding
  from train import step as step_lib
  program = step_lib.build(config, mesh)
  with sharding.use_mesh(mesh):
    return program.train_step.lower(program.abstract_state(config), program.abstract_batch(config))


def _cost(stage_obj) -> dict:
  ca = stage_obj.cost_analysis()
  if isinstance(ca, (list, tuple)):  # Older jax: one dict per partition.
    ca = ca[0] if ca else None
  if not ca:  # e.g. a lowered (not compiled) program for an AOT TPU topology.
    raise ValueError(f'XLA gives no cost analysis for this {type(stage_obj).__name__} program on '
                     'this backend; try stage="compiled"')
  return {'flops': float(ca.get('flops', 0.0)),
          'transcendentals': float(ca.get('transcendentals', 0.0)),
          'bytes_accessed': float(ca.get('bytes accessed', 0.0))}


_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]')
_DOT = re.compile(r'=\s*\w+\[([\d,]*)\]\S*\s+dot\(([^)]*)\)(.*)$')
_COMP = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_CALLEE = re.compile(r'(?:to_apply|calls|body|condition)=%?([\w.\-]+)')
_ATTN_CORE = re.compile(r'BNTS')  # jax.nn.dot_product_attention's score and value einsums.


def hlo_dot_flops(hlo_text: str) -> dict[str, float]:
  """Dot FLOPs by category from HLO text (2 * output elements * contraction size, XLA's convention).

  Categories: 'dot_attention' (the T x T score and probability-value products
  and their gradients, recognised by jax's 'BNTS' einsum names in the op
  metadata; needs `debug_info=True` HLO) and 'dot_weights' (every other dot:
  projections, MLP, head, and weight gradients). XLA does not expose its
  per-instruction counts, so this parses the text, following calls from the
  entry computation once per call site; like XLA, a `while` body counts once.
  """
  shapes, comps, entry, cur = {}, {}, None, None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and '=' not in line.split('{')[0]:
      cur = comps.setdefault(m.group(2), {'dot_attention': 0.0, 'dot_weights': 0.0, 'calls': []})
      entry = m.group(2) if m.group(1) else entry
      continue
    m = _INSTR.match(line)
    if m:
      shapes[m.group(1)] = [int(x) for x in m.group(3).split(',') if x]
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and '=' not in line.split('{')[0]:
      cur = comps[m.group(2)]
      continue
    if cur is None:
      continue
    cur['calls'] += _CALLEE.findall(line)
    b = re.search(r'branch_computations=\{([^}]*)\}', line)
    if b:
      cur['calls'] += [x.strip().lstrip('%') for x in b.group(1).split(',')]
    m = _DOT.search(line)
    if not m:
      continue
    out_shape = [int(x) for x in m.group(1).split(',') if x]
    lhs = m.group(2).split(',')[0].strip()
    inline = re.match(r'\w+\[([\d,]*)\]', lhs)  # Some printers give operand types inline.
    lhs_shape = ([int(x) for x in inline.group(1).split(',') if x] if inline
                 else shapes[lhs.split()[-1].lstrip('%')])
    cdims = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', m.group(3))
    contract = math.prod(lhs_shape[int(i)] for i in cdims.group(1).split(',') if i) if cdims else 1
    key = 'dot_attention' if _ATTN_CORE.search(m.group(3)) else 'dot_weights'
    cur[key] += 2.0 * math.prod(out_shape) * contract

  memo = {}

  def total(name, depth=0):
    if name not in memo:
      c = comps.get(name)
      if c is None or depth > 200:
        return {'dot_attention': 0.0, 'dot_weights': 0.0}
      acc = {'dot_attention': c['dot_attention'], 'dot_weights': c['dot_weights']}
      for callee in c['calls']:
        sub = total(callee, depth + 1)
        for k in acc:
          acc[k] += sub[k]
      memo[name] = acc
    return memo[name]

  if entry is None:
    raise ValueError('hlo_dot_flops: no ENTRY computation in the HLO text')
  return dict(total(entry))


def _measure_one(config, mesh, stage: str) -> dict:
  """Cost of one lowering (or compile) of `config`; FLOPs summed over all devices."""
  lowered = lower_train_step(config, mesh)
  n_dev = mesh.devices.size
  if stage == 'compiled':
    # The compiled (SPMD-partitioned) module is one device's program: scale to all devices.
    cost = {k: v * n_dev for k, v in _cost(lowered.compile()).items()}
  elif stage == 'lowered':
    cost = _cost(lowered)  # The global program before partitioning.
  else:
    raise ValueError(f"stage={stage!r}: must be 'lowered' or 'compiled'")
  cost.update(hlo_dot_flops(lowered.as_text(dialect='hlo', debug_info=True)))
  cost['non_dot'] = cost['flops'] - cost['dot_attention'] - cost['dot_weights']
  return cost


def _extrapolate(config, mesh, stage: str) -> tuple[dict, dict, dict]:
  """(total, per layer, outside the layers) per step from unrolled 1- and 2-layer programs."""
  L = config.model.n_layers
  f1 = _measure_one(_variant(config, n_layers=1, scan_layers=False), mesh, stage)
  if L == 1:
    return f1, {k: v for k, v in f1.items()}, {k: 0.0 for k in f1}
  f2 = _measure_one(_variant(config, n_layers=2, scan_layers=False), mesh, stage)
  body = {k: f2[k] - f1[k] for k in f1}
  outside = {k: f1[k] - body[k] for k in f1}
  total = {k: outside[k] + L * body[k] for k in f1}
  return total, body, outside


def measure_step_flops(config, mesh, stage: str = 'lowered', verify: bool = False,
                       model_flops: bool = True, uncorrected: bool = True) -> dict:
  """Measured FLOPs PER TRAIN STEP (global batch, summed over devices), scan-corrected.

  stage='lowered' (default, cheap: no XLA compile) runs XLA's cost analysis on
  the unoptimised global HLO; 'compiled' on the optimised SPMD program (one
  device's, times the device count: includes work replicated across devices).
  The two agree within about 1% on the tiny config (tests/test_flops.py).
  `verify=True` also measures the fully unrolled L-layer program (slow for
  deep models) and reports the relative error of the correction.

  Keys: flops_xla (hardware FLOPs per step, remat recomputation included),
  flops_xla_model (same with remat off), flops_xla_per_device, flops_xla_uncorrected
  (the config as-is; a scanned stack counts one layer), flops_per_layer,
  flops_outside_layers, breakdown (per-step FLOPs by op category), transcendentals,
  method, stage, n_devices, remat, and verify_* when asked.
  `model_flops=False` skips the remat-off programs (flops_xla_model then equals
  flops_xla) and `uncorrected=False` skips compiling the config as-is (no
  flops_xla_uncorrected key): each is a full compile, minutes for big configs
  on a TPU topology (scaling/aot.py measures the as-is program itself).
  """
  n_dev = mesh.devices.size
  total, body, outside = _extrapolate(config, mesh, stage)
  out = {
      'flops_xla': total['flops'],
      'flops_xla_hardware': total['flops'],
      'flops_xla_model': total['flops'],
      'flops_xla_per_device': total['flops'] / n_dev,
      'flops_per_layer': body['flops'],
      'flops_outside_layers': outside['flops'],
      'transcendentals': total['transcendentals'],
      'breakdown': {
          'layers_dot_weights': config.model.n_layers * body['dot_weights'],
          'layers_dot_attention': config.model.n_layers * body['dot_attention'],
          'layers_non_dot': config.model.n_layers * body['non_dot'],
          'outside_dot': outside['dot_weights'] + outside['dot_attention'],
          'outside_non_dot': outside['non_dot'],
      },
      'stage': stage,
      'n_devices': n_dev,
      'remat': config.model.remat,
      'method': (f'XLA cost analysis ({stage} HLO) of the train step unrolled with 1 and 2 layers: '
                 f'per layer = f(2) - f(1), outside = f(1) - per layer, '
                 f'total = outside + {config.model.n_layers} x per layer'),
  }
  if model_flops and config.model.remat != 'none':
    model_total, _, _ = _extrapolate(_variant(config, remat='none'), mesh, stage)
    out['flops_xla_model'] = model_total['flops']
    out['method'] += '; model FLOPs: the same with model.remat=none'
  if uncorrected:
    out['flops_xla_uncorrected'] = (_measure_one(config, mesh, stage)['flops']
                                    if config.model.scan_layers or verify else total['flops'])
  if verify:
    full = _measure_one(_variant(config, scan_layers=False), mesh, stage)['flops']
    out['verify_unrolled_flops'] = full
    out['verify_rel_error'] = abs(total['flops'] - full) / full
  return out


def measure_memory(config, mesh) -> dict:
  """The compiled train step's `memory_analysis()`, in bytes PER DEVICE (the config as-is).

  peak_estimate = arguments + outputs - aliased (donated state) + temporaries.
  """
  compiled = lower_train_step(config, mesh).compile()
  m = compiled.memory_analysis()
  get = (lambda k: getattr(m, k + '_in_bytes', 0)) if m is not None else (lambda k: 0)
  out = {k: float(get(k)) for k in ('argument_size', 'output_size', 'alias_size', 'temp_size',
                                     'generated_code_size')}
  out['peak_estimate'] = (out['argument_size'] + out['output_size'] - out['alias_size']
                          + out['temp_size'])
  return out


# ------------------------------------------------------------------ the report


def report(config, mesh, stage: str = 'compiled', verify: bool = False,
           with_memory: bool = True) -> dict:
  """Everything the CLI prints: analytic rows, measured rows, memory rows (dict, JSON-ready)."""
  from model import sharding
  d = config.data
  tokens_per_step = d.global_batch_size * d.seq_len
  c = counts.param_counts(config.model)
  six_nd = 6.0 * c.with_head * tokens_per_step
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
           f"(non-embedding {p['non_embedding']:,}, total {p['total']:,}) | mesh "
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
  import jax
  from absl import flags
  from model import sharding
  from train import cli, config_check
  F = flags.FLAGS
  if len(argv) > 1:
    raise config_check.ConfigError(f'unexpected arguments {argv[1:]}')
  config = F.config
  config_check.validate(config, jax.device_count())
  mesh = sharding.make_mesh(config.mesh, jax.devices())
  r = report(config, mesh, stage=F.stage, verify=F.verify, with_memory=F.memory)
  cli.emit(r, format_report(r), F.json)


def _define_flags():
  from absl import flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Config file (a get_config() module).',
                                  lock_config=True)
  flags.DEFINE_string('json', None, 'Bare --json: print the report as JSON instead of the table; '
                      '--json=PATH: print the table and write the JSON to PATH.')
  flags.DEFINE_enum('stage', 'compiled', ['compiled', 'lowered'],
                    'Cost analysis of the compiled (per-device, optimised) or lowered (global) HLO.')
  flags.DEFINE_bool('verify', False, 'Also measure the fully unrolled program (checks the scan correction).')
  flags.DEFINE_bool('memory', True, 'Compile the config as-is for memory_analysis().')
  flags.mark_flags_as_required(['config'])


if __name__ == '__main__':
  from train import cli
  _define_flags()
  cli.run(main)
