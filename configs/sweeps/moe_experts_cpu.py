"""Expert count at fixed active size, on CPU: E in {1, 2, 4, 8, 16} (top-1) and dense, 3 sizes each.

  python -m launch.sweep --config configs/sweeps/moe_experts_cpu.py --workdir runs/moe_experts --dry-run

One FLOP budget, 3 sizes around its N_opt, each trained dense and as a top-1
MoE with E experts of the dense MLP's width (Clark et al. 2022's axis: the
active parameters stay put while the stored ones grow with E). The fit of
all runs (DIR/fit/) gives Clark's law at this D and the joint law over
(N_active, D, E) with the effective parameter multiplier per E.
"""

import ml_collections

from configs.sweeps import moe_cpu

EXPERTS = (1, 2, 4, 8, 16)


def get_config() -> ml_collections.ConfigDict:
  c = moe_cpu.get_config()
  c.budgets = (2e11,)
  c.n_sizes = 3
  c.span = 2.0
  variants = {'dense': {}}
  for e in EXPERTS:
    variants[f'e{e}'] = {'model': {'moe_num_experts': e, 'moe_top_k': 1, 'moe_granularity': 1}}
  c.variants = ml_collections.ConfigDict(variants)
  return c
