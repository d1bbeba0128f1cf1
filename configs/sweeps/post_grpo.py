"""Study (c): GRPO against SFT alone on the verifiable tasks, from one SFT run per size and seed.

  python -m launch.post_study --study grpo --workdir runs/post/grpo --bases runs/post/bases

Per base size and seed: SFT (SFT_STEPS at SFT_LR), then from it GRPO for
MORE_STEPS at MORE_LR (8 prompts x 8 sampled answers a step, temperature 1,
β 0.1, ε 0.2, one update per sample), and `sft_more`, MORE_STEPS more SFT
steps (16 packed windows of gold answers a step): the SFT-only baseline at
equal steps. `sft` is where both start.
"""

from configs.sweeps import post_common
from configs.sweeps.post_common import from_base, from_sft


def get_config():
  c = post_common.get_config()
  c.name = 'grpo'
  c.question = 'GRPO against SFT alone at equal steps, across sizes'
  c.arms = (from_base(), from_sft('grpo', 'grpo', batch_size=8, group_size=8),
            from_sft('sft_more', 'sft'))
  c.baseline = 'sft_more'
  return c
