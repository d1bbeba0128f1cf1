"""Step time against steps per call K (one jitted lax.scan of K steps), for the demo's shapes.

  JAX_PLATFORMS=cpu python -m benchmarks.bench_steps_per_call [--json OUT.json] [--calls 5]

For each shape and K in (1, 4, 16, 64): compile the K-step call, run it after a
warm-up call, and report the median wall time per optimizer step over
`--calls` calls (dispatch included, compilation excluded), with the model
FLOP/s and MFU against the float32 matmul peak measured in the same process.
Measures; asserts nothing.
"""

import argparse
import json
import statistics
import time

import jax
import numpy as np

from configs import tiny_cpu
from model import counts, sharding
from train import hardware
from train import step as step_lib

# The demo sweep's smallest and largest runs (configs/sweeps/isoflop_cpu.py, byte-level, B=32, T=64).
SHAPES = {
    'demo smallest (L1 d12, 14k params)': dict(n_layers=1, d_model=12, n_heads=1, n_kv_heads=1, d_ff=24),
    'demo largest (L2 d80, 190k params)': dict(n_layers=2, d_model=80, n_heads=5, n_kv_heads=5, d_ff=248),
}
KS = (1, 4, 16, 64)


def config(shape):
  c = tiny_cpu.get_config()
  c.model.update(dict(vocab_size=257, **shape))
  c.data.update(dict(tokenizer='byte', seq_len=64, global_batch_size=32))
  c.train.update(dict(steps=1000, peak_flops=1.7e11))
  return c


def time_k(c, k: int, calls: int) -> float:
  """Median seconds per optimizer step of K-step calls."""
  mesh = sharding.make_mesh(c.mesh)
  program = step_lib.build(c, mesh)
  rng = np.random.default_rng(0)
  with sharding.use_mesh(mesh):
    state = step_lib.init_state(c, program)
    shape = (k, c.data.global_batch_size, c.data.seq_len) if k > 1 else (c.data.global_batch_size, c.data.seq_len)
    tok = rng.integers(0, c.model.vocab_size, shape, dtype=np.int32)
    if k > 1:
      fn = program.multi_step.lower(program.abstract_state, program.abstract_batch(c, k)).compile()
      batch = {n: jax.device_put(tok, program.abstract_batch(c, k)['inputs'].sharding) for n in ('inputs', 'targets')}
    else:
      fn = program.train_step.lower(program.abstract_state, program.abstract_batch(c)).compile()
      batch = {n: jax.device_put(tok, program.batch_sharding) for n in ('inputs', 'targets')}
    state, m = fn(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(calls):
      t = time.perf_counter()
      state, m = fn(state, batch)
      jax.block_until_ready(m)
      times.append((time.perf_counter() - t) / k)
  return statistics.median(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--json')
  p.add_argument('--calls', type=int, default=5)
  args = p.parse_args()
  peak = hardware.measure_matmul_peak(n=1024)
  rows = []
  print(f'float32 matmul peak {peak:.3g} FLOP/s')
  for name, shape in SHAPES.items():
    c = config(shape)
    flops_step = counts.model_flops_per_token(c.model, c.data.seq_len) * counts.tokens_per_step(c)
    for k in KS:
      s = time_k(c, k, args.calls)
      rows.append(dict(shape=name, k=k, ms_per_step=1e3 * s, mfu=flops_step / s / peak))
      print(f'{name:<36} K={k:<3} {1e3 * s:8.2f} ms/step  MFU {100 * flops_step / s / peak:5.2f}%',
            flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'peak': peak, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
