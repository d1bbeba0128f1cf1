"""R vmapped replicas (train.replicas) against one run, for the demo's shapes: the cost of an LR sweep.

  JAX_PLATFORMS=cpu python -m benchmarks.bench_replicas [--json OUT.json] [--calls 5] [--rounds 3]

For each demo shape, R in (1, 4, 16) replicas differing in optim.lr
(R = 1: the lone run's step), with 1 and 8 steps per call: the median wall
time per optimizer step of all R replicas together (dispatch included,
compilation excluded), the time per replica-step, and the summed MFU of the R
replicas against the float32 matmul peak measured in the same process. The
configurations are timed in interleaved rounds (the median of the round
medians), so a change in machine load hits all of them alike. Measures;
asserts nothing.
"""

import argparse
import json
import statistics

from benchmarks.bench_step import median_call_seconds
from benchmarks.bench_steps_per_call import SHAPES, config, prepare_k
from model import counts
from train import hardware

RS = (1, 4, 16)
KS = (1, 8)


def with_replicas(c, r: int):
  """The config with R replicas at learning rates spread over a decade around optim.lr."""
  if r > 1:
    lrs = [c.optim.lr * 10 ** (i / (r - 1) - 0.5) for i in range(r)]
    c.train.replicas = 'optim.lr=' + ','.join(f'{x:.4g}' for x in lrs)
  return c


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--json')
  p.add_argument('--calls', type=int, default=5)
  p.add_argument('--rounds', type=int, default=3)
  args = p.parse_args()
  peak = hardware.measure_matmul_peak(n=1024)
  print(f'float32 matmul peak {peak:.3g} FLOP/s')
  cases = [(name, r, k) for name in SHAPES for k in KS for r in RS]
  ready = {case: prepare_k(with_replicas(config(SHAPES[case[0]]), case[1]), case[2])
           for case in cases}  # Compiled once; each round times every case again.
  times = {case: [] for case in cases}
  for i in range(args.rounds):
    for case, (fn, state, batch) in ready.items():
      seconds, state = median_call_seconds(fn, state, batch, args.calls)
      ready[case] = fn, state, batch
      times[case].append(seconds / case[2])
    print(f'round {i + 1}/{args.rounds} done', flush=True)
  rows = []
  for name, r, k in cases:
    c = config(SHAPES[name])
    flops_step = counts.model_flops_per_token(c.model, c.data.seq_len) * counts.tokens_per_step(c)
    s = statistics.median(times[(name, r, k)])
    solo = statistics.median(times[(name, 1, k)])
    rows.append(dict(shape=name, replicas=r, k=k, ms_per_step=1e3 * s,
                     ms_per_replica_step=1e3 * s / r, speedup_vs_solo_runs=r * solo / s,
                     mfu_all_replicas=r * flops_step / s / peak))
    print(f'{name:<36} K={k:<3} R={r:<3} {1e3 * s:8.2f} ms/step  {1e3 * s / r:7.2f} ms/replica-step'
          f'  {r * solo / s:5.2f}x R lone runs  MFU {100 * r * flops_step / s / peak:5.1f}%')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'peak': peak, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
