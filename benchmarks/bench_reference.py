"""The project's train step against a plain-JAX reference step of the same math (measures; asserts nothing).

  JAX_PLATFORMS=cpu PYTHONPATH=. python -m benchmarks.bench_reference \
      [--cases tiny_cpu,d256,d512,demo_smallest,demo_largest] [--rounds 4] [--calls 2] \
      [--before] [--profile] [--json benchmarks/results/reference.json]

The reference (`reference_loss`, `reference_step`) is the dense SP model of
model/transformer.py written as pure functions on a dict of arrays, one dict
per layer, with no NNX merge/split: RMSNorm, RoPE (halves convention, sin/cos
computed once per step), GQA attention (query heads grouped onto their kv head,
no repeats), SwiGLU, the untied head, the cross-entropy of train/step.py, and
the project's optax optimizer (`train.optim.optimizer`: global-norm clip,
AdamW, norm scales not decayed). Two forms: 'reference' writes the weight
matmuls on (B, T, ...) activations, as nanodo does; 'reference_2d' on
(B*T, ...) rows, as the project's `model.transformer.dense` does (on CPU the
3-D form costs XLA an activation transpose per weight gradient). Every step
starts from the project's own initialised parameters: the loss check prints
each step's loss difference to the reference's at the start and after one
update (nats; float32 round-off). `--before` adds 'project_before', the
project's step as it was before this work (`_model_before`: 3-D matmuls, a
scan loop over the layers), traced from the same code.

Timing (one process, one CPU device, compile excluded): `--rounds` interleaved
rounds in which every step of every case runs
`benchmarks.bench_step.median_call_seconds` (`--calls` calls after one
warm-up), so load on a shared machine falls on all alike; a step's time is the
median of its round medians. MFU = model FLOPs per step (PaLM count,
`model.counts.model_flops_per_token`) / (step seconds x peak), the peak the
float32 matmul FLOP/s of `train.hardware.measure_matmul_peak` (n=1024), measured
before and after the rounds, the higher of the two. Reported per case and step:
ms per step, MFU, the ratio to the reference (< 1: faster), the loss check.

`--profile` also runs each step under `jax.profiler` and sums the XLA CPU
runtime's per-op events by op kind (`profile_top_ops`): thread-ms per step
(summed over the runtime's threads, so up to the core count x wall time).
"""

import argparse
import collections
import contextlib
import glob
import json
import math
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks.bench_step import median_call_seconds
from configs import base, tiny_cpu
from launch import expand
from model import counts, sharding, transformer
from train import config_check, hardware, optim
from train import step as step_lib

DEMO_SWEEP = 'configs/sweeps/isoflop_cpu.py'
CASES = ('tiny_cpu', 'd256', 'd512', 'demo_smallest', 'demo_largest')


# ---------------------------------------------------------------------------- the configs


def _shape_config(d_model: int, n_heads: int, vocab: int, batch: int, seq_len: int = 256):
  """A 4-layer GQA config (2 query heads per kv head, d_ff = 3 d_model) at this width and batch."""
  c = base.get_config()
  c.model.update(dict(vocab_size=vocab, d_model=d_model, n_layers=4, n_heads=n_heads,
                      n_kv_heads=n_heads // 2, d_ff=3 * d_model))
  c.data.update(dict(seq_len=seq_len, global_batch_size=batch))
  return c


def _demo_configs() -> tuple:
  """(smallest, largest) run configs of the CPU demo sweep, by N (parameters with head)."""
  runs = expand.expand(expand.load_config_file(DEMO_SWEEP, 'sweep')).runs
  runs = sorted((r for r in runs if not r.parent), key=lambda r: r.params)
  return runs[0].config, runs[-1].config


def case_config(name: str):
  """The benchmark's config of case `name` (one of CASES), on one device."""
  if name == 'tiny_cpu':
    c = tiny_cpu.get_config()
  elif name == 'd256':
    c = _shape_config(256, 4, vocab=2048, batch=8)
  elif name == 'd512':
    c = _shape_config(512, 8, vocab=8192, batch=8)
  elif name in ('demo_smallest', 'demo_largest'):
    c = _demo_configs()[0 if name == 'demo_smallest' else 1]
  else:
    raise config_check.ConfigError(f'--cases: unknown case {name!r}; one of {", ".join(CASES)}')
  with c.unlocked():
    c.data.source = 'synthetic'  # Not read: the benchmark feeds its own random tokens.
    c.train.update(dict(steps=1000, tokens=0, flops=0.0))  # A planned length for the LR schedule.
    c.optim.update(dict(schedule='cosine'))
    c.mesh.update(dict(data=1, fsdp=1, tensor=1, expert=1))
  return c


REFERENCE_MODEL = {'tie_embeddings': False, 'qk_norm': False, 'parameterization': 'sp',
                   'attention': 'gqa', 'moe_num_experts': 0, 'remat': 'none',
                   'compute_dtype': 'float32'}  # The model keys the reference implements.


def reference_errors(m) -> list[str]:
  """What the reference does not implement, one message per model key."""
  return [f'model.{k}={m[k]!r}: the reference implements {v!r} only'
          for k, v in REFERENCE_MODEL.items() if m[k] != v]


# ---------------------------------------------------------------------------- the reference


def reference_params(model_params) -> dict:
  """The project's parameters (an nnx.State of Params) as {'embed_VD', 'layers': [one dict per layer], ...}."""
  p = nnx.to_pure_dict(model_params)
  L = p['blocks']['attn_norm']['scale'].shape[0]
  stacked = p['blocks']
  layers = [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(L)]
  return {'embed_VD': p['embed_VD'], 'layers': layers, 'final_norm': p['final_norm'],
          'head_DV': p['head_DV']}


def rms_norm(x_BTD, scale_D, eps: float):
  """x / rms(x) * scale over the last axis (float32)."""
  return x_BTD * jax.lax.rsqrt(jnp.mean(x_BTD * x_BTD, axis=-1, keepdims=True) + eps) * scale_D


def rope_tables(T: int, K: int, theta: float):
  """(sin_T1K2, cos_T1K2) of positions 0..T-1 for head size K: once per step, shared by the layers."""
  freq_k = theta ** (-jnp.arange(0, K // 2, dtype=jnp.float32) / (K // 2))
  angle_TK = jnp.arange(T, dtype=jnp.float32)[:, None] * freq_k[None, :]
  return jnp.sin(angle_TK)[:, None, :], jnp.cos(angle_TK)[:, None, :]


def apply_rope(x_BTNK, sin_T1K, cos_T1K):
  """Rotate the halves of the last axis (model.transformer.rope's convention)."""
  x1, x2 = jnp.split(x_BTNK, 2, axis=-1)
  return jnp.concatenate([x1 * cos_T1K - x2 * sin_T1K, x2 * cos_T1K + x1 * sin_T1K], axis=-1)


def matmul(x, w, n_in: int, flat: bool):
  """x (..., *I) times w (*I, *O) over the n_in axes I: a tensordot (as nanodo's einsums),
  or with `flat` one 2-D matmul of x's leading axes folded into rows."""
  if not flat:
    return jnp.tensordot(x, w, n_in)
  lead, out = x.shape[:x.ndim - n_in], w.shape[n_in:]
  k = math.prod(w.shape[:n_in])
  return (x.reshape(-1, k) @ w.reshape(k, -1)).reshape(*lead, *out)


def attention(p: dict, x_BTD, sin, cos, flat: bool):
  """Causal GQA: query head h = g * R + r attends with kv head g (R = H / G), scale 1/sqrt(K)."""
  B, T, _ = x_BTD.shape
  _, H, K = p['wq_DHK'].shape
  G = p['wk_DGK'].shape[1]
  q_BTHK = apply_rope(matmul(x_BTD, p['wq_DHK'], 1, flat), sin, cos)
  k_BTGK = apply_rope(matmul(x_BTD, p['wk_DGK'], 1, flat), sin, cos)
  v_BTGK = matmul(x_BTD, p['wv_DGK'], 1, flat)
  q_BTGRK = q_BTHK.reshape(B, T, G, H // G, K)
  s_BGRTS = jnp.einsum('btgrk,bsgk->bgrts', q_BTGRK, k_BTGK) * K ** -0.5
  s_BGRTS = jnp.where(jnp.tril(jnp.ones((T, T), bool)), s_BGRTS, -jnp.inf)
  p_BGRTS = jax.nn.softmax(s_BGRTS, axis=-1)
  o_BTHK = jnp.einsum('bgrts,bsgk->btgrk', p_BGRTS, v_BTGK).reshape(B, T, H, K)
  return matmul(o_BTHK, p['wo_HKD'], 2, flat)


def mlp(p: dict, x_BTD, flat: bool):
  """SwiGLU: down(silu(x W_gate) * (x W_up))."""
  h_BTF = jax.nn.silu(matmul(x_BTD, p['gate_DF'], 1, flat)) * matmul(x_BTD, p['up_DF'], 1, flat)
  return matmul(h_BTF, p['down_FD'], 1, flat)


def reference_loss(params: dict, batch: dict, m, flat: bool = False) -> jax.Array:
  """Mean next-token cross-entropy in nats (float32) of the reference model on batch (B, T) ids.

  flat=False: every weight matmul on (B, T, ...) activations, as nanodo writes
  them; flat=True: on (B*T, ...) rows, as model.transformer.dense does.
  """
  x_BTD = jnp.take(params['embed_VD'], batch['inputs'], axis=0)
  T, K = x_BTD.shape[1], m.d_model // m.n_heads
  sin, cos = rope_tables(T, K, m.rope_theta)
  for p in params['layers']:  # Unrolled: one copy of the block per layer.
    h_BTD = rms_norm(x_BTD, p['attn_norm']['scale'], m.norm_eps)
    x_BTD = x_BTD + attention(p['attn'], h_BTD, sin, cos, flat)
    x_BTD = x_BTD + mlp(p['mlp'], rms_norm(x_BTD, p['mlp_norm']['scale'], m.norm_eps), flat)
  x_BTD = rms_norm(x_BTD, params['final_norm']['scale'], m.norm_eps)
  logits_BTV = matmul(x_BTD, params['head_DV'], 1, flat)
  logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_BT = jnp.take_along_axis(logits_BTV, batch['targets'][..., None], axis=-1)[..., 0]
  return jnp.mean(logz_BT - target_BT)


def reference_step(config, flat: bool = False):
  """(jitted step (params, opt_state), batch -> (state, metrics), donating the state; optimizer)."""
  tx = optim.optimizer(config)
  m = config.model

  def step(state, batch):
    params, opt_state = state
    loss, grads = jax.value_and_grad(reference_loss)(params, batch, m, flat)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {'loss': loss}

  return jax.jit(step, donate_argnums=0), tx


# ---------------------------------------------------------------------------- the steps


@contextlib.contextmanager
def _model_before():
  """The model before issue 12's step work (commit 717cc75), for a model traced inside.

  `model.transformer.dense` is a tensordot (the einsums on (B, T, ...) arrays
  the model had) and the layers are a scan loop (unroll 1, even of 1 layer).
  """
  dense, unroll = transformer.dense, transformer.scan_unroll
  transformer.dense = lambda x, w, n_in=1: jnp.tensordot(x, w, n_in)
  transformer.scan_unroll = lambda cfg, n: 1 if cfg.scan_layers else n
  try:
    yield
  finally:
    transformer.dense, transformer.scan_unroll = dense, unroll


def _project(config, mesh, batch):
  """(compiled train step, its state, jitted loss of a state in nats) of the project."""
  program = step_lib.build(config, mesh)
  compiled = program.train_step.lower(program.abstract_state,
                                      program.abstract_batch(config)).compile()
  state = step_lib.init_state(config, program)
  loss = jax.jit(lambda s: step_lib.loss_fn(nnx.merge(program.graphdef, s)[0], batch, 0.0)[1][0])
  return compiled, state, loss


def _reference(config, params, batch, flat: bool):
  """(compiled reference step, its state, jitted loss of a state) from a copy of `params`."""
  fn, tx = reference_step(config, flat)
  params = jax.tree.map(jnp.copy, params)  # Its own buffers: every step donates its state.
  state = (params, tx.init(params))
  loss = jax.jit(lambda s: reference_loss(s[0], batch, config.model, flat))
  return fn.lower(state, batch).compile(), state, loss


def _losses(fn, state, loss, batch) -> tuple[float, float]:
  """(loss of `state`, loss after one update of a copy of it on `batch`), nats."""
  new_state, _ = fn(jax.tree.map(jnp.copy, state), batch)
  return float(loss(state)), float(loss(new_state))


def prepare(config, before: bool = False) -> dict:
  """Every step of `config` compiled on one device: {name: (fn, state)}, the batch, the loss check.

  The check: each step's loss from the same initial weights, and after one
  update of each, in nats, with its difference to the reference's.
  """
  errors = reference_errors(config.model)
  if errors:
    raise config_check.ConfigError('; '.join(errors))
  config_check.validate(config, 1)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  d = config.data
  tok = np.random.default_rng(0).integers(0, config.model.vocab_size,
                                          (d.global_batch_size, d.seq_len + 1), dtype=np.int32)
  steps, losses = {}, {}
  with sharding.use_mesh(mesh):
    batch = {k: jax.device_put(v, jax.devices()[0])
             for k, v in (('inputs', tok[:, :-1]), ('targets', tok[:, 1:]))}
    *steps['project'], loss = _project(config, mesh, batch)
    losses['project'] = _losses(*steps['project'], loss, batch)
    params = reference_params(nnx.filter_state(steps['project'][1][0], nnx.Param))
    for name, flat in (('reference', False), ('reference_2d', True)):
      *steps[name], loss = _reference(config, params, batch, flat)
      losses[name] = _losses(*steps[name], loss, batch)
    if before:
      with _model_before():
        *steps['project_before'], loss = _project(config, mesh, batch)
        losses['project_before'] = _losses(*steps['project_before'], loss, batch)
  ref = losses['reference']
  check = {name: {'loss': l0, 'loss_after_update': l1, 'abs_diff': abs(l0 - ref[0]),
                  'abs_diff_after_update': abs(l1 - ref[1])} for name, (l0, l1) in losses.items()}
  return {'steps': {k: tuple(v) for k, v in steps.items()}, 'batch': batch, 'check': check}


ROUND_SECONDS = 0.3  # Each step's turn in a round lasts at least about this long (more calls if fast).


def time_steps(prepared: dict, rounds: int, calls: int) -> dict:
  """{case: {step: {'wall': [round medians, s], 'cpu': [process CPU s per call, each round]}}}.

  Every step of every case in turn, each round: `median_call_seconds` (one
  warm-up call, then `calls` timed, or as many as fill ROUND_SECONDS). The
  process CPU time (all threads) is less sensitive than wall time to other
  jobs on a shared machine.
  """
  times = {c: {s: {'wall': [], 'cpu': [], 'calls': 0} for s in p['steps']}
           for c, p in prepared.items()}
  n_calls = {}
  for _ in range(rounds):
    for case, p in prepared.items():
      for name, (fn, state) in p['steps'].items():
        if (case, name) not in n_calls:
          t, state = median_call_seconds(fn, state, p['batch'], 1, warmup=1)
          n_calls[case, name] = max(calls, min(50, int(ROUND_SECONDS / t)))
        n = n_calls[case, name]
        cpu = time.process_time()
        t, state = median_call_seconds(fn, state, p['batch'], n, warmup=1)
        times[case][name]['cpu'].append((time.process_time() - cpu) / (n + 1))
        times[case][name]['wall'].append(t)
        times[case][name]['calls'] = n
        p['steps'][name] = (fn, state)
  return times


# ---------------------------------------------------------------------------- the profile


_OP_NAME = re.compile(r'^(?:end: )?(.+?)(?:\.\d+)*$')
# Profiler events that contain other ops' events (not ops themselves).
_CONTAINERS = ('ThunkExecutor', 'ThreadpoolListener', 'end: ', 'while', 'call', 'conditional')


def op_kind(name: str) -> str:
  """An XLA op's kind from its name: 'loop_fusion.12' -> 'loop_fusion', 'ynn_fusion' -> 'ynn_fusion'."""
  return _OP_NAME.match(name).group(1)


def _op_events(fn, state, batch, calls: int):
  """({op name: thread-ms per step}, state): `calls` steps of fn under jax.profiler.

  The XLA CPU runtime's per-op events on its threads (XLAEigen, XLAPjRtCpuClient),
  without the containers that hold other ops (thunk executors, while loops).
  YNNPACK's own worker threads are not traced, so matmuls are undercounted:
  the sums rank the ops, they do not add up to the process's CPU time.
  """
  state, metrics = fn(state, batch)
  jax.block_until_ready(metrics)
  folder = tempfile.mkdtemp(prefix='bench_reference_')
  with jax.profiler.trace(folder):
    for _ in range(calls):
      state, metrics = fn(state, batch)
      jax.block_until_ready(metrics)
  data = jax.profiler.ProfileData.from_file(glob.glob(f'{folder}/**/*.xplane.pb', recursive=True)[0])
  ms = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith('tf_XLA'):
        continue
      for e in line.events:
        if not e.name.startswith(_CONTAINERS):
          ms[e.name] += e.duration_ns / 1e6 / calls
  return ms, state



def profile_top_ops(fn, state, batch, calls: int = 3, top: int = 12):
  """([(op kind, thread-ms per step, ops of that kind)], state), the largest `top` first.

  Thread-ms: summed over the runtime's threads (2 cores: up to 2x the wall time).
  """
  ms_by_name, state = _op_events(fn, state, batch, calls)
  ms, n = collections.Counter(), collections.Counter()
  for name, v in ms_by_name.items():
    ms[op_kind(name)] += v
    n[op_kind(name)] += 1
  return [(k, v, n[k]) for k, v in ms.most_common(top)], state


# ---------------------------------------------------------------------------- the report


def summarise(config, prepared: dict, times: dict, peak: float) -> dict:
  """One case's row: per step ms, MFU against the measured peak, the loss check; the ratios."""
  d, m = config.data, config.model
  flops = counts.tokens_per_step(config) * counts.model_flops_per_token(m, d.seq_len)
  row = {'shape': {'n_layers': m.n_layers, 'd_model': m.d_model, 'n_heads': m.n_heads,
                   'n_kv_heads': m.n_kv_heads, 'd_ff': m.d_ff, 'vocab_size': m.vocab_size,
                   'seq_len': d.seq_len, 'global_batch_size': d.global_batch_size},
         'params_with_head': counts.param_counts(m).with_head, 'model_flops_per_step': flops,
         'steps': {}}
  for name, t in times.items():
    s = statistics.median(t['wall'])
    row['steps'][name] = {'ms': 1e3 * s, 'round_medians_ms': [1e3 * x for x in t['wall']],
                          'calls_per_round': t['calls'],
                          'cpu_ms': 1e3 * statistics.median(t['cpu']), 'mfu': flops / s / peak,
                          'loss_check': prepared['check'][name]}
  ms = {k: v['ms'] for k, v in row['steps'].items()}
  row['project_over_reference'] = ms['project'] / ms['reference']
  row['project_over_reference_2d'] = ms['project'] / ms['reference_2d']
  if 'project_before' in ms:
    row['project_before_over_reference'] = ms['project_before'] / ms['reference']
  return row


def _shape(s: dict) -> str:
  return (f"L{s['n_layers']} d{s['d_model']} h{s['n_heads']}/{s['n_kv_heads']} f{s['d_ff']} "
          f"V{s['vocab_size']} {s['global_batch_size']}x{s['seq_len']}")


def format_results(r: dict) -> str:
  lines = [f"{r['device_kind']}, float32 matmul peak {r['matmul_peak_flops']:.3g} FLOP/s; "
           f"median of {r['rounds']} interleaved rounds x >= {r['calls_per_round']} calls "
           f"(>= {ROUND_SECONDS} s a turn); cpu ms: process CPU time per call, all threads",
           f"{'case':<14} {'shape':<34} {'step':<15} {'ms':>8} {'MFU':>6} {'/ref':>6} "
           f"{'cpu ms':>8} {'/ref':>6} {'|dloss|':>8} {'1 update':>8}"]
  for case, c in r['cases'].items():
    ref = c['steps']['reference']
    for name, st in c['steps'].items():
      ch = st['loss_check']
      lines.append(f"{case:<14} {_shape(c['shape']):<34} {name:<15} {st['ms']:>8.1f} "
                   f"{100 * st['mfu']:>5.1f}% {st['ms'] / ref['ms']:>6.3f} {st['cpu_ms']:>8.1f} "
                   f"{st['cpu_ms'] / ref['cpu_ms']:>6.3f} {ch['abs_diff']:>8.1e} "
                   f"{ch['abs_diff_after_update']:>8.1e}")
  for case, c in r['cases'].items():
    for name, st in c['steps'].items():
      if 'profile' in st:
        ops = ', '.join(f'{k} {ms:.0f}' for k, ms, _ in st['profile'][:6])
        lines.append(f'profile {case} {name} (thread-ms per step): {ops}')
  return '\n'.join(lines)


def run(cases: list[str], rounds: int, calls: int, profile: bool, before: bool) -> dict:
  configs = {c: case_config(c) for c in cases}
  prepared = {c: prepare(cfg, before) for c, cfg in configs.items()}
  peaks = [hardware.measure_matmul_peak(n=1024, dtype='float32')]
  times = time_steps(prepared, rounds, calls)
  peaks.append(hardware.measure_matmul_peak(n=1024, dtype='float32'))
  peak = max(peaks)  # The less loaded of the two: the lower, more honest MFU.
  rows = {c: summarise(configs[c], prepared[c], times[c], peak) for c in cases}
  if profile:
    for c, p in prepared.items():
      for name, (fn, state) in p['steps'].items():
        rows[c]['steps'][name]['profile'], state = profile_top_ops(fn, state, p['batch'])
        p['steps'][name] = (fn, state)
  return {'device_kind': jax.devices()[0].device_kind, 'matmul_peak_flops': peak,
          'matmul_peak_flops_before_and_after': peaks,
          'rounds': rounds, 'calls_per_round': calls, 'jax': jax.__version__, 'cases': rows}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--cases', default=','.join(CASES), help='Comma-separated cases: ' + ', '.join(CASES))
  p.add_argument('--rounds', type=int, default=4, help='Interleaved timing rounds.')
  p.add_argument('--calls', type=int, default=2, help='Timed calls per step per round.')
  p.add_argument('--before', action='store_true',
                 help="Also time the project's step as it was before (3-D matmuls, scanned).")
  p.add_argument('--profile', action='store_true', help='Also profile every step: top ops by time.')
  p.add_argument('--json', default='', help='Also write the results to this path.')
  a = p.parse_args()
  r = run([c for c in a.cases.split(',') if c], a.rounds, a.calls, a.profile, a.before)
  print(format_results(r))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(r, f, indent=1)
    print(f'wrote {a.json}')


if __name__ == '__main__':
  main()
