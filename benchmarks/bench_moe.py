"""MoE train step against the dense one on CPU, and the three dispatch paths (measures; asserts nothing).

  JAX_PLATFORMS=cpu PYTHONPATH=. python -m benchmarks.bench_moe [--json benchmarks/results/moe.json]
      [--rounds 3] [--calls 3]

One process, one CPU device, four cases of the same shape (L layers, d_model D, top-k of E
experts of width F_e):
  * dense: the SwiGLU MLP of width k * F_e, so a token costs what it costs in the MoE
    model (same active parameters but the router's D * E);
  * MoE with dispatch 'dropless' (sort + jax.lax.ragged_dot), 'blocked' (the same sort,
    grouped matmuls over blocks of 128 rows: dropless for CPUs), 'capacity' (factor 1.25)
    and 'dense' (every expert on every token, the reference).
Each case's train step is compiled once; then `--rounds` rounds time every case in turn
(`benchmarks.bench_step.median_call_seconds`: `--calls` calls after one warm-up call), so
drift of a shared machine falls on all cases alike; the step time is the median of the
round medians. Reported per case: step time, model FLOP/s with the PaLM count of ACTIVE
parameters (`model.counts.model_flops_per_token`, what MFU divides by), its ratio to the
dense case (the issue's target: dropless >= 0.5, for both dropless paths), and XLA's FLOPs of the compiled step
(`train.cost.measure_step_flops`, scan-corrected) against 6 * N_active * D.
"""

import argparse
import json
import statistics

import jax
import numpy as np

from benchmarks.bench_step import median_call_seconds
from configs import base
from model import counts, sharding
from train import config_check, cost, hardware
from train import step as step_lib

CASES = ('dense', 'dropless', 'blocked', 'capacity', 'dense-reference')
DROPLESS = ('dropless', 'blocked')  # The two paths that never drop an assignment.


def config(case: str, *, d_model=256, n_layers=4, experts=8, top_k=2, d_expert=256):
  """The benchmark's config for `case`: a dense model of MLP width top_k * d_expert, or the MoE."""
  c = base.get_config()
  c.model.update(dict(vocab_size=1024, d_model=d_model, n_layers=n_layers, n_heads=4,
                      n_kv_heads=4, d_ff=top_k * d_expert))
  if case != 'dense':
    c.model.update(dict(moe_num_experts=experts, moe_top_k=top_k, moe_d_expert=d_expert,
                        moe_dispatch='dense' if case == 'dense-reference' else case))
  c.data.update(dict(seq_len=128, global_batch_size=8))
  c.train.update(dict(steps=1000))
  c.mesh.update(dict(data=1))
  return c


def _prepare(c, mesh):
  """(compiled train step, state, batch) of config `c` on `mesh`."""
  config_check.validate(c, mesh.devices.size)
  program = step_lib.build(c, mesh)
  d = c.data
  with sharding.use_mesh(mesh):
    compiled = program.train_step.lower(program.abstract_state,
                                        program.abstract_batch(c)).compile()
    state = step_lib.init_state(c, program)
    tok = np.random.default_rng(0).integers(0, c.model.vocab_size,
                                            (d.global_batch_size, d.seq_len), dtype=np.int32)
    batch = {k: jax.device_put(tok, program.batch_sharding) for k in ('inputs', 'targets')}
  return compiled, state, batch


def run(rounds: int, calls: int) -> dict:
  mesh = sharding.make_mesh(config('dense').mesh, jax.devices()[:1])
  peak = hardware.measure_matmul_peak(n=1024, dtype='float32')
  configs = {case: config(case) for case in CASES}
  prepared = {case: _prepare(c, mesh) for case, c in configs.items()}
  times = {case: [] for case in CASES}
  for _ in range(rounds):  # Interleaved: every case sees the same load on a shared machine.
    for case, (fn, state, batch) in prepared.items():
      s, state = median_call_seconds(fn, state, batch, calls, warmup=1)
      prepared[case] = (fn, state, batch)
      times[case].append(s)
  rows = {}
  for case, c in configs.items():
    tokens = counts.tokens_per_step(c)
    n = counts.param_counts(c.model)
    step_s = statistics.median(times[case])
    model_flops = tokens * counts.model_flops_per_token(c.model, c.data.seq_len)
    xla = cost.measure_step_flops(c, mesh, stage='compiled', model_flops=False, uncorrected=False)
    rows[case] = {
        'step_seconds': step_s, 'round_medians': times[case], 'tokens_per_sec': tokens / step_s,
        'params_total': n.total, 'params_active': n.active,
        'model_flops_per_step': model_flops, 'model_flops_per_sec': model_flops / step_s,
        'mfu_vs_measured_peak': model_flops / step_s / peak,
        'xla_flops_per_step': xla['flops_xla'],
        'xla_over_6_n_active_d': xla['flops_xla'] / (6.0 * n.active * tokens),
    }
  dense = rows['dense']['model_flops_per_sec']
  for r in rows.values():
    r['model_flops_per_sec_vs_dense'] = r['model_flops_per_sec'] / dense
  m = configs['dropless'].model
  return {
      'device_kind': jax.devices()[0].device_kind, 'matmul_peak_flops': peak,
      'rounds': rounds, 'calls_per_round': calls,
      'shape': {'n_layers': m.n_layers, 'd_model': m.d_model, 'experts': m.moe_num_experts,
                'top_k': m.moe_top_k, 'd_expert': m.moe_d_expert, 'dense_d_ff': m.d_ff,
                'seq_len': configs['dense'].data.seq_len,
                'global_batch_size': configs['dense'].data.global_batch_size,
                'capacity_factor': m.moe_capacity_factor},
      'target_half_of_dense_met': {p: rows[p]['model_flops_per_sec_vs_dense'] >= 0.5
                                   for p in DROPLESS},
      'cases': rows,
  }


def format_results(r: dict) -> str:
  s = r['shape']
  lines = [f"L={s['n_layers']} d={s['d_model']} E={s['experts']} top-{s['top_k']} "
           f"d_expert={s['d_expert']} (dense d_ff={s['dense_d_ff']}) T={s['seq_len']} "
           f"B={s['global_batch_size']} | {r['device_kind']} matmul peak "
           f"{r['matmul_peak_flops']:.3g} FLOP/s | median of {r['rounds']} rounds x "
           f"{r['calls_per_round']} calls",
           f"{'case':<16} {'ms/step':>9} {'tok/s':>8} {'active MFLOP/s':>15} {'vs dense':>9} "
           f"{'XLA/6N_aD':>10}"]
  for case, c in r['cases'].items():
    lines.append(f"{case:<16} {1e3 * c['step_seconds']:>9.1f} {c['tokens_per_sec']:>8.0f} "
                 f"{c['model_flops_per_sec'] / 1e6:>15.0f} {c['model_flops_per_sec_vs_dense']:>9.2f} "
                 f"{c['xla_over_6_n_active_d']:>10.2f}")
  lines += [f"target {p} >= 0.5 x dense model FLOP/s: {'met' if met else 'NOT met'}"
            for p, met in r['target_half_of_dense_met'].items()]
  return '\n'.join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--json', default='', help='Also write the results to this path.')
  p.add_argument('--rounds', type=int, default=3, help='Interleaved timing rounds.')
  p.add_argument('--calls', type=int, default=3, help='Timed calls per case per round.')
  a = p.parse_args()
  r = run(a.rounds, a.calls)
  print(format_results(r))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(r, f, indent=1)
    print(f'wrote {a.json}')


if __name__ == '__main__':
  main()
