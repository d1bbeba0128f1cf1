"""Study (a): LoRA at rank 1, 4, 16 and 64 against full fine-tuning, SFT from each base size.

  python -m launch.post_study --study lora_rank --workdir runs/post/lora_rank --bases runs/post/bases

Every arm is SFT_STEPS of SFT from the pre-trained base at one LR (SFT_LR, not
tuned per arm or size), LoRA on every attention and MLP kernel with α = 16
fixed (the update is (α/r)·A B; embeddings, head and norms stay frozen).
The table's deltas are arm - full, paired by size and seed: the accuracy gap.
"""

from configs.sweeps import post_common
from configs.sweeps.post_common import from_base

RANKS = (1, 4, 16, 64)


def get_config():
  c = post_common.get_config()
  c.name = 'lora_rank'
  c.question = 'LoRA rank 1-64 against full fine-tuning: does the accuracy gap shrink with N?'
  c.arms = (from_base('full'),) + tuple(
      from_base(f'lora_r{r}', peft='lora', lora_rank=r, lora_alpha=16.0) for r in RANKS)
  c.baseline = 'full'
  return c
