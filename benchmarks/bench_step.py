"""Benchmark one config's train step on this machine (measures; asserts nothing).

  PYTHONPATH=. python -m benchmarks.bench_step --config configs/tiny_cpu.py [--config.k=v ...] \
      [--steps 10] [--json OUT.json] [--depths 4,32]

In one process: (1) the float32 matmul peak of one device (the MFU denominator
on CPUs, measured next to the step, as big_vision does); (2) the train step of
the config on all local devices: compile time, then after warm-up the median
of `--steps` timed steps: tokens/s, achieved model FLOP/s (PaLM count,
model.counts.model_flops_per_token, remat excluded), MFU = achieved / (peak x
devices), and the compiled program's peak memory per device (memory_analysis);
(3) compile time of the same config with 4 and with 32 scanned layers (scan
keeps it flat in depth). Prints a table; --json writes the same numbers.
"""

import copy
import statistics
import time

import jax
import numpy as np
from absl import flags

from configs import cli
from configs.hardware import chip_for_device_kind
from model import counts, sharding
from train import config_check
from train import cost
from train import hardware
from train import step as step_lib

cli.define_config_flag()
cli.define_json_flag()
flags.DEFINE_integer('steps', 10, 'Timed steps (after 2 warm-up steps).')
flags.DEFINE_string('depths', '4,32', 'Layer counts whose compile time is compared ("" skips).')
flags.DEFINE_integer('matmul_n', 1024, 'Size of the square matmul that measures the peak.')
flags.mark_flags_as_required(['config'])


def median_call_seconds(fn, state, batch, calls: int, warmup: int = 1):
  """(median wall seconds of `calls` calls of fn(state, batch) after `warmup` calls, final state).

  Each call is timed until its outputs are ready, dispatch included; the state
  is threaded through (the train step donates it).
  """
  for _ in range(warmup):
    state, metrics = fn(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(calls):
    t = time.perf_counter()
    state, metrics = fn(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return statistics.median(times), state


def _compile_seconds(config, mesh) -> float:
  t = time.perf_counter()
  cost.lower_train_step(config, mesh).compile()
  return time.perf_counter() - t


def run(config, steps: int, depths: list[int], matmul_n: int) -> dict:
  peak = hardware.measure_matmul_peak(n=matmul_n, dtype='float32')
  mesh = sharding.make_mesh(config.mesh, jax.devices())
  n_dev = mesh.devices.size
  d = config.data
  tokens_per_step = d.global_batch_size * d.seq_len
  program = step_lib.build(config, mesh)
  with sharding.use_mesh(mesh):
    t = time.perf_counter()
    compiled = program.train_step.lower(program.abstract_state,
                                        program.abstract_batch(config)).compile()
    compile_s = time.perf_counter() - t
    state = step_lib.init_state(config, program)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, config.model.vocab_size, (d.global_batch_size, d.seq_len), dtype=np.int32)
    batch = {k: jax.device_put(tok, program.batch_sharding) for k in ('inputs', 'targets')}
    step_s, state = median_call_seconds(compiled, state, batch, steps, warmup=2)
  tps = tokens_per_step / step_s
  model_flops = tps * counts.model_flops_per_token(config.model, d.seq_len)
  mem = compiled.memory_analysis()
  peak_mem = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
              + mem.temp_size_in_bytes) if mem is not None else None
  depth_rows = {}
  for L in depths:
    looped = config.model.scan_layers and config.model.scan_unroll == 1
    if L == config.model.n_layers and looped:
      depth_rows[L] = compile_s  # Already compiled above.
      continue
    cfg = copy.deepcopy(config)
    with cfg.unlocked():  # A scan loop of one layer per iteration (CPU's auto unroll has none).
      cfg.model.n_layers = L
      cfg.model.scan_layers = True
      cfg.model.scan_unroll = 1
    depth_rows[L] = _compile_seconds(cfg, mesh)
  return {
      'device_kind': jax.devices()[0].device_kind, 'n_devices': n_dev,
      'matmul_peak_flops_per_device': peak, 'matmul_n': matmul_n,
      'compile_seconds': compile_s, 'step_seconds_median': step_s, 'timed_steps': steps,
      'tokens_per_sec': tps, 'model_flops_per_sec': model_flops,
      'mfu': model_flops / (peak * n_dev),
      'mfu_published_peak': (model_flops / (chip.peak_flops * n_dev)
                             if (chip := chip_for_device_kind(jax.devices()[0].device_kind)) else None),
      'peak_memory_bytes_per_device': peak_mem,
      'compile_seconds_by_layers_scanned': depth_rows,
      'config': {'n_layers': config.model.n_layers, 'd_model': config.model.d_model,
                 'seq_len': d.seq_len, 'global_batch_size': d.global_batch_size,
                 'remat': config.model.remat, 'compute_dtype': config.model.compute_dtype},
  }


def format_results(r: dict) -> str:
  c = r['config']
  rows = [
      ('config', f"L={c['n_layers']} d={c['d_model']} T={c['seq_len']} B={c['global_batch_size']} "
                 f"remat={c['remat']} {c['compute_dtype']}"),
      ('devices', f"{r['n_devices']} x {r['device_kind']}"),
      (f"float32 matmul peak (n={r['matmul_n']}), per device", f"{r['matmul_peak_flops_per_device']:.4g} FLOP/s"),
      ('compile time', f"{r['compile_seconds']:.2f} s"),
      (f"step time (median of {r['timed_steps']})", f"{1e3 * r['step_seconds_median']:.1f} ms"),
      ('tokens/s', f"{r['tokens_per_sec']:,.0f}"),
      ('achieved model FLOP/s (6N + 12LHQT)', f"{r['model_flops_per_sec']:.4g}"),
      ('MFU (vs measured matmul peak)', f"{100 * r['mfu']:.1f}%"),
      ('MFU (vs published bf16 peak)',
       'n/a' if r['mfu_published_peak'] is None else f"{100 * r['mfu_published_peak']:.1f}%"),
      ('peak memory per device (memory_analysis)',
       'n/a' if r['peak_memory_bytes_per_device'] is None else f"{r['peak_memory_bytes_per_device'] / 1e6:.1f} MB"),
  ]
  rows += [(f'compile time, {L} scanned layers', f'{s:.2f} s')
           for L, s in r['compile_seconds_by_layers_scanned'].items()]
  return '\n'.join(f'{k:<44} {v}' for k, v in rows)


def main(argv):
  del argv
  F = flags.FLAGS
  config_check.validate(F.config, jax.device_count())
  try:
    depths = [int(x) for x in F.depths.split(',') if x.strip()]
  except ValueError as e:
    raise config_check.ConfigError(f'--depths={F.depths!r}: {e}') from e
  r = run(F.config, F.steps, depths, F.matmul_n)
  cli.emit(r, format_results(r), F.json)


if __name__ == '__main__':
  cli.run_absl(main)
