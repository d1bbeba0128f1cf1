"""7B-class model (Llama-2-7B shape: d 4096, 32 layers, 32 heads, SwiGLU 11008) for a TPU pod slice.

N with head = 6.74B; ~20 tokens per parameter = 135B tokens. Full multi-head attention
(32 kv heads), vocab 32768, bfloat16 compute, full remat (only each block's input is
kept), FSDP over every device. Check it fits before queueing:
  python -m scaling.aot --config configs/gpt_7b.py --topology v5p:4x4x4
16 B/param of training state is 108 GB in total: at least 8 v5p or 64 v5e chips before
activations. Point `data` at your own corpus (files or ArrayRecord).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.model.update(dict(vocab_size=32768, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                      d_ff=11008, compute_dtype='bfloat16', remat='full'))
  c.data.update(dict(source='builtin', tokenizer='bpe', seq_len=4096, global_batch_size=256))
  c.optim.update(dict(lr=3e-4, b2=0.95, warmup_steps=2000))
  c.train.update(dict(steps=0, tokens=135_000_000_000, eval_every=1000, eval_batches=16,
                      log_every=50, checkpoint_every=1000))
  c.mesh.update(dict(data=1, fsdp=-1))
  return c
