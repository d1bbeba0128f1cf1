"""Peak FLOP/s and memory per device, as data: one table for MFU, the planner and AOT checks.

Peaks are dense bf16 FLOP/s per chip as published (see shared REFERENCE.md);
memory is bytes per chip; memory bandwidth is bytes/s per chip as published
(decimal: 1 TB/s = 1e12 B/s), each with its source in BANDWIDTH_SOURCES. The JAX
side (the CPU measurement, the lookup by device) is `train/hardware.py`.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str  # Short name used on command lines, e.g. 'v5p', 'h100'.
  peak_flops: float  # Dense bf16 FLOP/s per chip.
  hbm_bytes: float  # Memory per chip in bytes.
  device_kinds: tuple[str, ...]  # jax Device.device_kind strings that map to this chip.
  hbm_bandwidth: float = 0.0  # Memory bandwidth per chip, bytes/s (0: unknown).


GiB = 1024**3

CHIPS: dict[str, Chip] = {c.name: c for c in [
    Chip('v4', 275e12, 32 * GiB, ('TPU v4',), hbm_bandwidth=1200e9),
    Chip('v5e', 197e12, 16 * GiB, ('TPU v5 lite', 'TPU v5e'), hbm_bandwidth=819e9),
    Chip('v5p', 459e12, 95 * GiB, ('TPU v5', 'TPU v5p'), hbm_bandwidth=2765e9),
    Chip('v6e', 918e12, 32 * GiB, ('TPU v6 lite', 'TPU v6e'), hbm_bandwidth=1638e9),
    Chip('a100', 312e12, 80 * GiB, ('NVIDIA A100-SXM4-80GB', 'NVIDIA A100-SXM4-40GB', 'NVIDIA A100 80GB PCIe'),
         hbm_bandwidth=2039e9),
    Chip('h100', 989e12, 80 * GiB, ('NVIDIA H100 80GB HBM3', 'NVIDIA H100', 'NVIDIA H100 PCIe'),
         hbm_bandwidth=3.35e12),
    Chip('h200', 989e12, 141e9, ('NVIDIA H200',), hbm_bandwidth=4.8e12),
]}

# Where each chip's hbm_bandwidth comes from. The TPU figures are Google's Cloud TPU
# system-architecture pages; the NVIDIA ones are NVIDIA's datasheets as quoted by the
# pages named (NVIDIA's own pages were not reachable from here to check).
BANDWIDTH_SOURCES: dict[str, str] = {
    'v4': 'cloud.google.com/tpu/docs/v4: "HBM2 capacity and bandwidth 32 GiB, 1200 GBps"',
    'v5e': 'cloud.google.com/tpu/docs/v5e: "HBM2 capacity and bandwidth 16 GB, 819 GBps" '
           '(one localized revision of the page says 800 GiBps)',
    'v5p': 'cloud.google.com/tpu/docs/v5p: "HBM2e capacity and bandwidth 95GB, 2765 GBps" '
           '(a newer revision says 2575 GiBps, the same rate in binary units)',
    'v6e': 'cloud.google.com/tpu/docs/v6e: "HBM bandwidth per chip 1638 GBps"',
    'a100': 'NVIDIA A100 datasheet, 80GB SXM: 2,039 GB/s (as quoted by glennklockwood.com/garden/'
            'processors/A100); the 40GB SXM, also mapped to this row, has 1,555 GB/s',
    'h100': 'NVIDIA H100 datasheet, SXM: 3.35 TB/s (as quoted by archive-lib.hpctech.co.jp/'
            'gpuproduct/nvidia-h100.html: 3,350 GB/sec); the PCIe card has 2.0 TB/s',
    'h200': 'NVIDIA H200 (SC23 announcement and datasheet): 141 GB HBM3e at 4.8 TB/s (as quoted '
            'by aiwiki.ai/wiki/nvidia_h200 and others)',
}


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
