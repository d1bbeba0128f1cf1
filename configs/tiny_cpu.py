"""Tiny model for CPU demos: ~1.3M parameters on the built-in English corpus, a few minutes on 2 cores."""

from configs import base


def get_config():
  c = base.get_config()
  c.model.update(dict(vocab_size=2048, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384))
  c.data.update(dict(source='builtin', tokenizer='bpe', seq_len=128, global_batch_size=16))
  c.optim.lr = 3e-3
  c.train.update(dict(steps=400, eval_every=100, eval_batches=8, log_every=20))
  return c
