"""A 125M-class IsoFLOP sweep for one TPU slice or GPU host: 3 budgets x 5 sizes around Chinchilla's optimum.

  python -m launch.sweep --config configs/sweeps/isoflop_125m.py --workdir DIR --dry-run
  python -m launch.sweep --config configs/sweeps/isoflop_125m.py --workdir DIR --tpu       # gcloud
  python -m launch.sweep --config configs/sweeps/isoflop_125m.py --workdir DIR --backend ray

Budgets 1e18..1e19 FLOPs put N_opt at about 90M..290M parameters (Chinchilla's
law, with head) and need 0.5B..6B tokens per run: more than the built-in
corpus (about 10M tokens) holds, so `data.paths` must name your own text (or
use data.source='arrayrecord'). Set the `tpu` block (or run with --backend ray)
before launching. Not run from this project: no accelerator was lent to it.
"""

import ml_collections

from configs.tpu import tpu_block


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.base_config = 'configs/gpt_125m.py'  # Run config every run starts from (repo-relative).
  c.overrides = ml_collections.ConfigDict({  # Fields set on every run.
      'data': {'source': 'files', 'paths': 'gs://BUCKET/text/*.jsonl', 'tokenizer': 'bpe'},
      'optim': {'warmup_steps': 0, 'warmup_fraction': 0.02},  # Warmup matched to each run's length.
  })
  c.budgets = (1e18, 3e18, 1e19)  # Training FLOPs C per run (6 N D, N with head).
  c.law = 'chinchilla'  # Centre of each budget's sizes.
  c.n_sizes = 5  # Model sizes per budget.
  c.span = 2.5  # Sizes from N_opt/span to N_opt*span.
  c.min_steps = 200  # Refuse runs shorter than this.

  s = c.shape = ml_collections.ConfigDict()  # How a target N becomes a shape (launch/sweep.py build_shape).
  s.d_multiple = 64  # d_model is a multiple of this.
  s.head_dim = 64  # Head size: the smallest even divisor of d_model >= this.
  s.aspect = 64  # d_model per layer.
  s.kv_group = 1  # Query heads per key/value head.
  s.ff_ratio = 2.67  # Starting d_ff / d_model (SwiGLU's 8/3).
  s.ff_min = 2.0  # Smallest d_ff / d_model.
  s.ff_max = 4.0  # Largest d_ff / d_model.
  s.ff_multiple = 64  # d_ff is a multiple of this.
  s.max_d_model = 4096  # Largest d_model considered.
  s.max_layers = 48  # Cap on n_layers.
  s.tolerance = 0.10  # Largest relative gap between the built shape's N and the plan's target.

  c.evals_per_run = 8  # Evaluations per run (curves for approach 1).
  c.logs_per_run = 50  # Train-loss logs per run.
  c.checkpoints_per_run = 10  # Checkpoints per run: preemptible machines resume from them.

  f = c.fit = ml_collections.ConfigDict()
  f.out = 'fit'  # Sub-folder of the sweep folder for the fit.
  f.bootstrap = 200  # Bootstrap samples for the 95% intervals.
  f.plots = True  # PNGs, report and TensorBoard events.

  c.tpu = tpu_block(name='chinchax-v5e-16', zone='us-west4-a', python='.venv/bin/python',
                    workdir='/mnt/bucket/sweeps/isoflop_125m')  # A bucket mounted (gcsfuse) on every worker.
  return c
