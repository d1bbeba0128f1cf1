"""Peak FLOP/s and memory per device: one table for MFU, the planner and AOT checks.

Pure Python (no JAX import), so `scaling/plan.py` can use it cheaply.
Peaks are dense bf16 FLOP/s per chip as published (see REFERENCE.md).
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str  # Short name used on command lines, e.g. 'v5p', 'h100'.
  peak_flops: float  # Dense bf16 FLOP/s per chip.
  hbm_bytes: float  # Memory per chip in bytes.
  device_kinds: tuple[str, ...]  # jax Device.device_kind strings that map to this chip.


GiB = 1024**3

CHIPS: dict[str, Chip] = {c.name: c for c in [
    Chip('v4', 275e12, 32 * GiB, ('TPU v4',)),
    Chip('v5e', 197e12, 16 * GiB, ('TPU v5 lite', 'TPU v5e')),
    Chip('v5p', 459e12, 95 * GiB, ('TPU v5', 'TPU v5p')),
    Chip('v6e', 918e12, 32 * GiB, ('TPU v6 lite', 'TPU v6e')),
    Chip('a100', 312e12, 80 * GiB, ('NVIDIA A100-SXM4-80GB', 'NVIDIA A100-SXM4-40GB', 'NVIDIA A100 80GB PCIe')),
    Chip('h100', 989e12, 80 * GiB, ('NVIDIA H100 80GB HBM3', 'NVIDIA H100', 'NVIDIA H100 PCIe')),
    Chip('h200', 989e12, 141e9, ('NVIDIA H200',)),
]}


def chip(name: str) -> Chip:
  """The chip called `name` (case-insensitive); a ValueError lists the known names."""
  key = name.strip().lower()
  if key not in CHIPS:
    raise ValueError(f'unknown hardware {name!r}; known: {", ".join(sorted(CHIPS))}')
  return CHIPS[key]


def chip_for_device_kind(device_kind: str) -> Chip | None:
  """The chip whose jax `device_kind` matches, or None (e.g. CPU or an unknown GPU)."""
  for c in CHIPS.values():
    if device_kind in c.device_kinds or any(device_kind.startswith(k) for k in c.device_kinds):
      return c
  return None


def measure_matmul_peak(n: int = 2048, dtype: str = 'float32', repeats: int = 5) -> float:
  """FLOP/s of one device on an n x n matmul: the median of `repeats` timed runs after warm-up.

  Used as the 'peak' on CPUs (no published number) and by the benchmarks.
  """
  import statistics
  import time

  import jax
  import jax.numpy as jnp
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
  import jax
  if override > 0:
    return override, 'train.peak_flops'
  kind = jax.devices()[0].device_kind
  c = chip_for_device_kind(kind)
  if c is not None:
    return c.peak_flops, f'table ({c.name}, bf16 dense)'
  return measure_matmul_peak(), f'measured float32 matmul on {kind}'
