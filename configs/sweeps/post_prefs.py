"""Study (b): DPO, ORPO, SimPO and KTO at equal steps from one SFT run per size and seed.

  python -m launch.post_study --study prefs --workdir runs/post/prefs --bases runs/post/bases

Per base size and seed: SFT (SFT_STEPS at SFT_LR), then from it each
preference loss for MORE_STEPS at MORE_LR (β 0.1, SimPO β 2 and γ 0.5, ORPO
λ 0.1: configs/base.py's defaults), and `sft_more`, the same MORE_STEPS of
SFT: the equal-steps baseline the deltas are taken against. `sft` is the
start of all five.
"""

from configs.sweeps import post_common
from configs.sweeps.post_common import from_base, from_sft

METHODS = ('dpo', 'orpo', 'simpo', 'kto')


def get_config():
  c = post_common.get_config()
  c.name = 'prefs'
  c.question = ('DPO, ORPO, SimPO and KTO at equal steps: accuracy and reward against SFT, '
                'across sizes')
  c.arms = ((from_base(),) + tuple(from_sft(m, m) for m in METHODS) +
            (from_sft('sft_more', 'sft'),))
  c.baseline = 'sft_more'
  c.seeds = (0, 1)  # 2 seeds: 36 post-training runs, about 10 minutes on 2 quiet CPU cores.
  return c
