"""Dense against MoE at equal active compute, on CPU: 3 FLOP budgets x 5 sizes x 2 variants.

  python -m launch.sweep --config configs/sweeps/moe_cpu.py --workdir runs/moe_cpu --dry-run
  python -m launch.sweep --config configs/sweeps/moe_cpu.py --workdir runs/moe_cpu --parallel 2

The demo's IsoFLOP grid (configs/sweeps/isoflop_cpu.py: byte-level tiny
models on the built-in corpus, WSD cooldown branches) once dense and once with 8 routed experts,
top-2, granularity 2 (each expert half the MLP width, so a token's two
experts cost one dense MLP). The shape rule targets *active* parameters, so
the two variants' runs of a budget have the same N_active, D and C = 6 N_active D;
the MoE stores about 4x the MLP weights. Fits: DIR/fit/dense/, DIR/fit/moe/
(each variant's own IsoFLOP fit) and DIR/fit/ (all runs: the MoE law, the
effective parameter multiplier of each MoE run, scaling/moe_law.py).
The MoE step runs at about half the dense step's model FLOP/s on CPU
(benchmarks/bench_moe.py), so this sweep takes roughly 3x the demo.

Related: configs/sweeps/moe_experts_cpu.py (E = 1..16 at fixed active size)
and configs/sweeps/moe_granularity_cpu.py (G = 1..8 at fixed active and total size).
"""

import ml_collections

from configs.sweeps import isoflop_cpu

MOE = {'moe_num_experts': 8, 'moe_top_k': 2, 'moe_granularity': 2, 'moe_dispatch': 'dropless'}


def get_config() -> ml_collections.ConfigDict:
  c = isoflop_cpu.get_config()
  c.variants = ml_collections.ConfigDict({  # name -> overrides on top of c.overrides (nested).
      'dense': {},
      'moe': {'model': MOE},
  })
  del c['target']  # No target run: which variant's fit would predict it?
  c.fit.bootstrap = 100
  return c
