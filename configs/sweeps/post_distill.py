"""Study (d): a distilled student against the same student trained without a teacher, equal tokens.

  python -m launch.post_study --study distill --workdir runs/post/distill --bases runs/post/bases

The teacher is the largest base after TEACHER_STEPS of SFT (one run, seed 0).
Each student is a pre-trained base of every size (the largest one's is
self-distillation), trained SFT_STEPS at SFT_LR on 16 packed windows a step,
so every arm sees the same tokens: `sft` on the gold answers (no teacher),
`distill_logits` on the teacher's softened distributions over the gold text
(τ 2, forward KL), `distill_text` by SFT on the answers the teacher writes
(greedy) for the same training prompts. Deltas are against `sft`.
"""

import ml_collections

from configs.sweeps import post_common
from configs.sweeps.post_common import SFT_LR, from_base

TEACHER_STEPS = 800


def get_config():
  c = post_common.get_config()
  c.name = 'distill'
  c.question = ('a distilled student against the same student without a teacher, at equal '
                'tokens (teacher: the largest base after SFT)')
  c.teacher = ml_collections.ConfigDict({
      'size': post_common.SIZES[-1]['name'], 'seed': 0,
      'post': {'method': 'sft', 'steps': TEACHER_STEPS, 'lr': SFT_LR}})
  c.arms = (from_base(),
            from_base('distill_logits', teacher=True, method='distill', distill_source='logits'),
            from_base('distill_text', teacher=True, method='distill', distill_source='text'))
  c.baseline = 'sft'
  return c
