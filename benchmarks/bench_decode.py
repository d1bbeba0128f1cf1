"""Cached decode throughput against its roofline (measures; asserts nothing).

  JAX_PLATFORMS=cpu PYTHONPATH=. python -m benchmarks.bench_decode [--json benchmarks/results/decode.json]
      [--batches 1,4,16,64] [--contexts 128,512,2048] [--calls 10]

One decode step is S = 1 new token per sequence through `model.decode.forward_cached`
at the last position of a cache of length T (the context): every layer reads its
whole cache, as generation's later steps do. Per model size, batch B and context T:

* measured: tokens/s = B / (median seconds of `--calls` jitted steps after 2
  warm-up steps; the cache is donated, so it is updated in place);
* bytes per step (`step_bytes`): the weights read once per step (every nnx.Param
  at 4 B, the float32 they are stored in, except the embedding table, of which only
  the B looked-up rows are read when the head is untied) plus the KV cache read,
  B * T * (model.counts.kv_cache_elements_per_token) * bytes of compute_dtype
  (`scaling.memory.kv_cache_bytes`); the new token's cache write (B / T of the
  read) is left out;
* the memory-bound limit: bytes per step / memory bandwidth, as tokens/s = B / that.
  On an accelerator the bandwidth is the chip's (`configs.hardware`); on a CPU it is
  measured in the same process (`measure_read_bandwidth`: a jitted sum over a float32
  array, median of repeats) at working sets from 16 MiB to 1 GiB, and the limit uses
  the size nearest the step's bytes (a CPU's caches serve small working sets far
  faster than its DRAM; the 1 GiB figure is the DRAM one);
* the compute-bound limit: forward FLOPs per token, 2 N + 4 L H K T (a third of
  `model.counts.model_flops_per_token`, the PaLM count), against the float32
  matmul peak measured in the same process (`train.hardware.measure_matmul_peak`);
* the roofline is the lower of the two limits; ratio = measured / roofline.
Cases whose cache would exceed `--max-cache-mib` are skipped (listed).
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import base
from configs.hardware import chip_for_device_kind
from model import counts, decode
from model.transformer import Transformer
from scaling import memory
from train import hardware

MiB = 2**20
PARAM_BYTES = memory.PARAM_BYTES  # Parameters are stored (and read each step) in float32.
BANDWIDTH_SIZES_MIB = (16, 64, 256, 1024)

# name -> model overrides: three sizes, 1.0M, 5.2M and 32.5M parameters (4 to 130 MB of float32).
MODELS = {
    'S-L2-d128': dict(n_layers=2, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512),
    'M-L4-d256': dict(n_layers=4, d_model=256, n_heads=4, n_kv_heads=4, d_ff=1024),
    'L-L8-d512-kv2': dict(n_layers=8, d_model=512, n_heads=8, n_kv_heads=2, d_ff=2048),
}


def model_config(**overrides):
  """A base model config (vocabulary 2048, untied head, float32) with `overrides`."""
  m = base.get_config().model
  m.update(dict(vocab_size=2048, compute_dtype='float32'))
  m.update(overrides)
  return m


def step_bytes(cfg, batch: int, context: int) -> dict[str, float]:
  """Bytes one decode step of `batch` sequences reads from memory, at a cache of `context` tokens.

  weights: every stored parameter at 4 B, except the embedding table when the head is
  untied (then only its `batch` looked-up rows of D); kv: the cache,
  batch * context * kv_cache_elements_per_token * bytes of compute_dtype.
  """
  n = counts.param_counts(cfg)
  table = 0 if cfg.tie_embeddings else n.embedding - batch * cfg.d_model
  weights = (n.total - table) * PARAM_BYTES
  kv = memory.kv_cache_bytes(cfg, context, batch, jnp.dtype(cfg.compute_dtype).itemsize)
  return {'weights': float(weights), 'kv': float(kv), 'total': float(weights + kv)}


def decode_flops_per_token(cfg, context: int) -> float:
  """Forward FLOPs of one new token at a cache of `context`: 2 N + 4 L H K T (PaLM count / 3)."""
  return counts.model_flops_per_token(cfg, context) / 3.0


def measure_read_bandwidth(size_bytes: int, repeats: int = 7) -> float:
  """Bytes/s of one device reading a float32 array of `size_bytes`: a jitted sum, median of repeats."""
  x = jnp.ones((size_bytes // 4,), jnp.float32)
  f = jax.jit(jnp.sum)
  f(x).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    times.append(time.perf_counter() - t)
  return x.nbytes / statistics.median(times)


def bandwidth_for(curve: dict[int, float], nbytes: float) -> float:
  """The bandwidth (bytes/s) measured at the working-set size nearest `nbytes` (in log size)."""
  size = min(curve, key=lambda s: abs(np.log(s / max(nbytes, 1.0))))
  return curve[size]


def build_model(cfg, seed: int = 0):
  """Transformer(cfg) with N(0, init_std) weights drawn by numpy (the values do not affect timing)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)

  def draw(path, x):
    if path[-1] == 'scale':
      return jnp.ones(x.shape, x.dtype)
    return jnp.asarray(rng.normal(0.0, cfg.init_std, x.shape), x.dtype)

  return nnx.merge(graphdef, nnx.map_state(draw, state))


def time_decode_step(model, batch: int, context: int, calls: int) -> float:
  """Median seconds of one cached decode step (B = batch new tokens at position context - 1)."""
  graphdef, state = nnx.split(model)

  def step(state, tok_B1, cache, pos_B):
    return decode.forward_cached(nnx.merge(graphdef, state), tok_B1, cache, pos_B)

  step = jax.jit(step, donate_argnums=(2,))
  cache = decode.init_cache(model.cfg, batch, context)
  tok_B1 = jnp.zeros((batch, 1), jnp.int32)
  pos_B = jnp.full((batch,), context - 1, jnp.int32)
  for _ in range(2):
    logits, cache = step(state, tok_B1, cache, pos_B)
  jax.block_until_ready(logits)
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    logits, cache = step(state, tok_B1, cache, pos_B)
    jax.block_until_ready(logits)
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def device_bandwidth() -> dict:
  """{'source', 'bytes_per_sec' (the DRAM/HBM figure), 'curve' {MiB: bytes/s} (CPU only)}."""
  chip = chip_for_device_kind(jax.devices()[0].device_kind)
  if chip is not None and chip.hbm_bandwidth:
    return {'source': f'table ({chip.name})', 'bytes_per_sec': chip.hbm_bandwidth, 'curve': None}
  curve = {s: measure_read_bandwidth(s * MiB) for s in BANDWIDTH_SIZES_MIB}
  return {'source': 'measured: jitted float32 sum, median of 7', 'curve': curve,
          'bytes_per_sec': curve[max(curve)]}


def run(batches, contexts, calls: int, max_cache_mib: float) -> dict:
  bw = device_bandwidth()
  peak = hardware.measure_matmul_peak(n=1024, dtype='float32')
  rows, skipped = [], []
  for name, overrides in MODELS.items():
    cfg = model_config(**overrides)
    model = build_model(cfg)
    for T in contexts:
      for B in batches:
        nbytes = step_bytes(cfg, B, T)
        if nbytes['kv'] > max_cache_mib * MiB:
          skipped.append(f'{name} B={B} T={T}: cache {nbytes["kv"] / MiB:.0f} MiB')
          continue
        seconds = time_decode_step(model, B, T, calls)
        bandwidth = bw['bytes_per_sec'] if bw['curve'] is None else bandwidth_for(
            {s * MiB: v for s, v in bw['curve'].items()}, nbytes['total'])
        memory_limit = B * bandwidth / nbytes['total']
        compute_limit = peak / decode_flops_per_token(cfg, T)
        roofline = min(memory_limit, compute_limit)
        rows.append({
            'model': name, 'params_total': counts.param_counts(cfg).total, 'batch': B,
            'context': T, 'step_seconds': seconds, 'tokens_per_sec': B / seconds,
            'bytes_per_step': nbytes, 'bandwidth_used': bandwidth,
            'memory_bound_tokens_per_sec': memory_limit,
            'compute_bound_tokens_per_sec': compute_limit,
            'roofline_tokens_per_sec': roofline,
            'bound': 'memory' if memory_limit <= compute_limit else 'compute',
            'ratio_to_roofline': B / seconds / roofline,
            'ratio_to_memory_bound': B / seconds / memory_limit,
        })
        print(format_row(rows[-1]), flush=True)
  return {'device_kind': jax.devices()[0].device_kind, 'bandwidth': bw,
          'matmul_peak_flops': peak, 'calls': calls, 'models': MODELS, 'rows': rows,
          'skipped': skipped}


HEADER = (f'{"model":14} {"B":>3} {"T":>5} {"MB/step":>8} {"ms/step":>8} {"tok/s":>9} '
          f'{"mem limit":>10} {"FLOP limit":>10} {"ratio":>6}')


def format_row(r: dict) -> str:
  return (f'{r["model"]:14} {r["batch"]:3d} {r["context"]:5d} '
          f'{r["bytes_per_step"]["total"] / 1e6:8.1f} {1e3 * r["step_seconds"]:8.2f} '
          f'{r["tokens_per_sec"]:9,.0f} {r["memory_bound_tokens_per_sec"]:10,.0f} '
          f'{r["compute_bound_tokens_per_sec"]:10,.0f} {r["ratio_to_roofline"]:6.2f}')


def format_results(r: dict) -> str:
  bw = r['bandwidth']
  curve = '' if bw['curve'] is None else ' | read bandwidth by working set: ' + ', '.join(
      f'{s} MiB {v / 1e9:.1f} GB/s' for s, v in bw['curve'].items())
  lines = [f'{r["device_kind"]}: {bw["source"]}{curve} | float32 matmul peak '
           f'{r["matmul_peak_flops"] / 1e9:.0f} GFLOP/s', HEADER]
  lines += [format_row(row) for row in r['rows']]
  lines += [f'skipped: {s}' for s in r['skipped']]
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m benchmarks.bench_decode', description=__doc__.split('\n')[0])
  p.add_argument('--batches', default='1,4,16,64')
  p.add_argument('--contexts', default='128,512,2048')
  p.add_argument('--calls', type=int, default=10)
  p.add_argument('--max-cache-mib', type=float, default=512.0)
  p.add_argument('--json', default='')
  a = p.parse_args(argv)
  r = run([int(x) for x in a.batches.split(',')], [int(x) for x in a.contexts.split(',')],
          a.calls, a.max_cache_mib)
  print(format_results(r))
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(r, f, indent=1)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
