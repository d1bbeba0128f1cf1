"""125M-class model (GPT-3 Small shape, SwiGLU) for one TPU/GPU host or a small slice.

N with head = 110M; Chinchilla-optimal data is ~20 tokens per parameter = 2.2B tokens.
Point `data` at your own corpus for that (the built-in one has ~10M tokens and repeats).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.update(dict(vocab_size=32768, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12,
                      d_ff=2048, compute_dtype='bfloat16', remat='none'))
  c.data.update(dict(source='builtin', tokenizer='bpe', seq_len=1024, global_batch_size=256))
  c.optim.update(dict(lr=1e-3, b2=0.95, warmup_steps=700))
  c.train.update(dict(steps=0, tokens=2_200_000_000, eval_every=1000, eval_batches=16,
                      log_every=50, checkpoint_every=2000))
  c.mesh.update(dict(data=-1, fsdp=1))
  return c
