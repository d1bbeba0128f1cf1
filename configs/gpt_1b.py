"""1B-class model (TinyLlama-1.1B shape: GQA with 4 kv heads) for a TPU slice or a GPU host.

N with head = 1.03B; ~20 tokens per parameter = 21B tokens. FSDP over every device; remat
saves only the weight matmuls ('dots_no_batch'): plain 'dots' also keeps the T x T attention
scores, 30 GiB per chip at 2 x 2048 tokens per chip (scaling.aot: does not fit a v5e, 8.1 GiB
with 'dots_no_batch'). Point `data` at your own corpus (files or ArrayRecord): the built-in one
is far too small.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.update(dict(vocab_size=32768, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                      d_ff=5632, compute_dtype='bfloat16', remat='dots_no_batch'))
  c.data.update(dict(source='builtin', tokenizer='bpe', seq_len=2048, global_batch_size=256))
  c.optim.update(dict(lr=4e-4, b2=0.95, warmup_steps=2000))
  c.train.update(dict(steps=0, tokens=21_000_000_000, eval_every=1000, eval_batches=16,
                      log_every=50, checkpoint_every=1000))
  c.mesh.update(dict(data=1, fsdp=-1))
  return c
