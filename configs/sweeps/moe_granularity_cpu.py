"""Granularity at fixed active and total size, on CPU: G in {1, 2, 4, 8} with E = 4G experts, top-G.

  python -m launch.sweep --config configs/sweeps/moe_granularity_cpu.py --workdir runs/moe_gran --dry-run

Krajewski et al. 2024's axis: each expert is d_ff / G wide and a token goes to
G of them, so active and stored parameters stay the same while the experts
get finer. One budget, 3 sizes, plus the dense reference.
"""

import ml_collections

from configs.sweeps import moe_experts_cpu

GRANULARITIES = (1, 2, 4, 8)


def get_config() -> ml_collections.ConfigDict:
  c = moe_experts_cpu.get_config()
  variants = {'dense': {}}
  for g in GRANULARITIES:
    variants[f'g{g}'] = {'model': {'moe_num_experts': 4 * g, 'moe_top_k': g, 'moe_granularity': g}}
  c.variants = ml_collections.ConfigDict(variants)
  return c
