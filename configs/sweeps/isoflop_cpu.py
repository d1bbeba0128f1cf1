"""The CPU scaling demo: 3 FLOP budgets x 5 model sizes of tiny byte-level models, WSD cooldown
branches, and a target run at 4x the largest budget that the fit predicts before it is trained.

  python -m launch.sweep --config configs/sweeps/isoflop_cpu.py --workdir runs/isoflop_cpu --dry-run
  python -m launch.demo   # runs it (about 5 minutes on 2 CPU cores), then fits

Byte-level tokens (vocabulary 257) keep the output head small, so the models
(5k to 190k parameters with head) are not just an embedding table; the
built-in English corpus has ~31M byte tokens, more than any run sees (no
epoch repeats). Sizes are centred on Epoch AI's law (~37 tokens/param) with a
factor-4 span either side; these tiny models want ~100 tokens/param, which
still lies inside each budget's sizes (approach 2 needs an interior minimum).
The learning rate is one constant rule, 3e-3 for every size (not tuned per size; a `grid`
sweep and the `fitted` rule of scaling.rules are how to tune it). Measured on 2 CPU cores
(29 runs, the fit, the target): 346 s with --parallel 2 (`make demo` from a fresh clone), 860 s
while four other jobs shared the cores.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.base_config = 'configs/tiny_cpu.py'  # Run config file every run starts from (repo-relative).
  c.overrides = ml_collections.ConfigDict({  # Fields set on every run (nested like the run config).
      'data': {'tokenizer': 'byte', 'seq_len': 64, 'global_batch_size': 32},
      'model': {'vocab_size': 257},
      'optim': {'lr': 3e-3, 'b2': 0.99},  # b2 0.99 at small batch (Porian et al.).
      'train': {'eval_batches': 4, 'peak_flops': 1.7e11},  # Fixed CPU peak: skips the startup matmul benchmark.
  })
  c.budgets = (8e10, 2e11, 5e11)  # Training FLOPs C per run (6 N D, N with head).
  c.law = 'epoch'  # Centre of each budget's sizes: a scaling.plan law name or a fit.json.
  c.n_sizes = 5  # Model sizes per budget (odd: includes the law's N_opt).
  c.span = 4.0  # Sizes from N_opt/span to N_opt*span, evenly in log N.
  c.min_steps = 50  # Refuse runs shorter than this (warmup + cosine need room; step rounding moves C).

  s = c.shape = ml_collections.ConfigDict()  # How a target N becomes a model shape (launch/sweep.py build_shape).
  s.d_multiple = 4  # d_model is a multiple of this (even).
  s.head_dim = 16  # Head size: the smallest even divisor of d_model >= this (so heads divide d_model).
  s.aspect = 32  # d_model per layer: n_layers = d_model / aspect, rounded down or up (whichever fits N).
  s.kv_group = 1  # Query heads per key/value head (1 = multi-head attention).
  s.ff_ratio = 3.0  # Starting d_ff / d_model (tuned within [ff_min, ff_max] to hit N).
  s.ff_min = 2.0  # Smallest d_ff / d_model.
  s.ff_max = 4.0  # Largest d_ff / d_model.
  s.ff_multiple = 8  # d_ff is a multiple of this.
  s.max_d_model = 1024  # Largest d_model considered.
  s.max_layers = 48  # Cap on n_layers.
  s.tolerance = 0.10  # Largest relative gap between the built shape's N and the plan's target.

  # WSD cooldown branches (launch/expand.py): every run is warmup-stable-decay, and each run also
  # branches at the 2 next smaller budgets, so the 3 budgets' curves get 5, 10 and 14 sizes.
  c.cooldowns_per_size = 3
  # After the fit: train the compute-optimal run at 4x the largest budget, predicted, then measured.
  c.target = ml_collections.ConfigDict({'flops_factor': 4.0})

  c.evals_per_run = 4  # Evaluations per run (eval_every = steps / this): curves for approach 1.
  c.logs_per_run = 10  # Train-loss logs per run.
  c.checkpoints_per_run = 0  # Checkpoints per run (resume mid-run); 0: none, runs are under 2 minutes.

  f = c.fit = ml_collections.ConfigDict()
  f.out = 'fit'  # Sub-folder of the sweep folder for fit.json, PNGs and TensorBoard events.
  f.bootstrap = 200  # Bootstrap samples for the fit's 95% intervals.
  f.plots = True  # Write PNGs and TensorBoard events.
  return c
