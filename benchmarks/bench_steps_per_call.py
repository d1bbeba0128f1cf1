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

import jax
import numpy as np

from benchmarks.bench_step import median_call_seconds
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


def prepare_k(c, k: int):
  """(compiled K-step call, its state, a batch): K = 1 is the plain train step."""
  mesh = sharding.make_mesh(c.mesh)
  program = step_lib.build(c, mesh)
  stacked = k if k > 1 else 0  # abstract_batch(c, 0) is the (B, T) batch of one step.
  spec = program.abstract_batch(c, stacked)
  with sharding.use_mesh(mesh):
    state = step_lib.init_state(c, program)
    step_fn = program.multi_step if stacked else program.train_step
    fn = step_fn.lower(program.abstract_state, spec).compile()
  tok = np.random.default_rng(0).integers(0, c.model.vocab_size, spec['inputs'].shape,
                                          dtype=np.int32)
  batch = {n: jax.device_put(tok, s.sharding) for n, s in spec.items()}
  return fn, state, batch


def time_k(c, k: int, calls: int) -> float:
  """Median seconds per optimizer step of K-step calls (K = 1: the plain train step)."""
  fn, state, batch = prepare_k(c, k)
  seconds, _ = median_call_seconds(fn, state, batch, calls)
  return seconds / k


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
