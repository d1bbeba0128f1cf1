"""Tiny MoE model for CPU demos: configs/tiny_cpu.py with 8 routed experts (top-2) in every layer.

Granularity 2 makes each expert half the dense MLP's width, so a token's two
experts cost what tiny_cpu's MLP costs: the same active parameters per token in
the MLP, 4x the stored ones. Built-in English corpus, a few minutes on 2 cores.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.update(dict(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384))
  c.model.update(dict(moe_num_experts=8, moe_top_k=2, moe_granularity=2, moe_dispatch='dropless'))
  c.data.update(dict(source='builtin', tokenizer='bpe', seq_len=128, global_batch_size=16))
  c.optim.lr = 3e-3
  c.train.update(dict(steps=400, eval_every=100, eval_batches=8, log_every=20))
  return c
