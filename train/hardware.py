"""Peak FLOP/s per device for MFU: the chip table (configs/hardware.py), or a measurement on CPUs."""

import statistics
import time

import jax
import jax.numpy as jnp

from configs.hardware import chip_for_device_kind


def measure_matmul_peak(n: int = 2048, dtype: str = 'float32', repeats: int = 5) -> float:
  """FLOP/s of one device on an n x n matmul: the median of `repeats` timed runs after warm-up.

  Used as the 'peak' on CPUs (no published number) and by the benchmarks.
  """
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times)


def peak_flops_per_device(override: float = 0.0) -> tuple[float, str]:
  """(peak FLOP/s per device, where it came from): override, the chip table, or a measurement."""
  if override > 0:
    return override, 'train.peak_flops'
  kind = jax.devices()[0].device_kind
  c = chip_for_device_kind(kind)
  if c is not None:
    return c.peak_flops, f'table ({c.name}, bf16 dense)'
  return measure_matmul_peak(), f'measured float32 matmul on {kind}'
