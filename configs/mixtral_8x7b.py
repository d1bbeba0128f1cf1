"""Mixtral-8x7B-shaped MoE model for a TPU v5p slice (Jiang et al. 2024's shape).

32 layers, d 4096, 32 query / 8 kv heads (GQA), 8 routed SwiGLU experts of width 14336 per
layer, top-2 softmax routing with renormalised weights, no shared experts, vocab 32000,
RoPE base 1e6, 4096-token windows. 46.7B stored parameters, 12.7B active per token
(N_active: attention, router, two experts, head); ~20 tokens per active parameter = 255B
tokens. bfloat16 compute, full remat. Parallelism: experts split 8 ways over the
`expert` axis, every weight's model dimension 8 ways over `fsdp`, the batch over both
(64 chips, v5p-128). scaling.aot: 81.45 GiB of 95 GiB per chip at 64 x 4096 tokens per
step, 71 GiB of it temporaries: the partitioner gathers the dropless path's global sort
and dispatch onto every chip (no shard_map yet), so 256 x 4096 needs 199 GiB and does not
fit. Check the fit and the FLOPs before queueing:
  python -m scaling.aot --config configs/mixtral_8x7b.py --topology v5p:4x4x4
Point `data` at your own corpus (files or ArrayRecord) and `tpu` at your slice.
"""

from configs import base
from configs.tpu import tpu_block


def get_config():
  c = base.get_config()
  c.model.update(dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                      d_ff=14336, rope_theta=1e6, compute_dtype='bfloat16', remat='full'))
  c.model.update(dict(moe_num_experts=8, moe_top_k=2, moe_granularity=1, moe_routing='softmax',
                      moe_dispatch='dropless'))
  c.data.update(dict(source='builtin', tokenizer='bpe', seq_len=4096, global_batch_size=64))
  c.optim.update(dict(lr=3e-4, b2=0.95, warmup_steps=2000))
  c.train.update(dict(steps=0, tokens=255_000_000_000, eval_every=1000, eval_batches=16,
                      log_every=50, checkpoint_every=1000))
  c.mesh.update(dict(data=1, fsdp=-1, expert=8))
  c.tpu = tpu_block(name='chinchax-v5p-128', zone='us-east5-a', python='.venv/bin/python',
                    workdir='gs://BUCKET/runs/mixtral_8x7b')
  return c
