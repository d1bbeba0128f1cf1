"""Peak FLOP/s and memory per device, as data: one table for MFU, the planner and AOT checks.

Peaks are dense bf16 FLOP/s per chip as published (see shared REFERENCE.md);
memory is bytes per chip. The JAX side (the CPU measurement, the lookup by
device) is `train/hardware.py`.
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
