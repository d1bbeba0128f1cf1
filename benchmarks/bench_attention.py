"""The loss cost of GQA and MLA against MHA at equal parameters and compute, on CPU (issue 17, item 2).

  JAX_PLATFORMS=cpu PYTHONPATH=. python -m benchmarks.bench_attention [--json OUT.json] [--steps 500]

Three attention variants of one byte-level model (2 layers, d_model 64, 4 heads of
16): MHA (4 kv heads), GQA (2 kv heads) and MLA (kv latent rank 32, RoPE key 8,
queries from the residual stream). GQA's and MLA's d_ff is solved so that every
variant has MHA's N (parameters with head, model.counts) to within one d_ff step
(3 D = 192 parameters), so at the same tokens D the runs spend the same 6 N D;
their PaLM model FLOPs per token (with the attention term) are listed too. Each
variant trains with `train.loop.run` on the built-in corpus for `--steps` steps
of 16 x 128 bytes, cosine LR 3e-3, once per init seed (`--seeds`, the same data
order), and is scored by its eval loss (nats per byte). Next to it: the KV cache
each caches per token (model.counts.kv_cache_elements_per_token; bytes at bf16).
Measures; asserts nothing.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

from configs import tiny_cpu
from model import counts
from train import loop

SEQ_LEN, BATCH = 128, 16
BASE = dict(vocab_size=257, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, d_ff=192)
VARIANTS = {
    'mha': {},
    'gqa': dict(n_kv_heads=2),
    'mla': dict(attention='mla', mla_kv_rank=32, mla_rope_dim=8, mla_q_rank=0),
}
KV_BYTES = 2  # bf16, as generation caches on an accelerator.


def model_config(variant: str):
  """The variant's model config, its d_ff solved to MHA's N (parameters with head)."""
  c = tiny_cpu.get_config()
  c.model.update(BASE)
  target = counts.param_counts(c.model).with_head
  c.model.update(VARIANTS[variant])
  n0 = counts.param_counts(_with(c.model, d_ff=0)).with_head
  slope = counts.param_counts(_with(c.model, d_ff=1)).with_head - n0
  c.model.d_ff = round((target - n0) / slope)
  return c


def _with(m, **overrides):
  m = m.copy_and_resolve_references()
  m.update(overrides)
  return m


def config(variant: str, seed: int, steps: int):
  c = model_config(variant)
  c.init_seed = seed
  c.data.update(dict(tokenizer='byte', seq_len=SEQ_LEN, global_batch_size=BATCH))
  c.train.update(dict(steps=steps, eval_every=steps, log_every=steps, checkpoint_every=0,
                      eval_batches=16))
  return c


def sweep(root: str, steps: int, seeds) -> list[dict]:
  rows = []
  for variant in VARIANTS:
    for seed in seeds:
      c = config(variant, seed, steps)
      t0 = time.perf_counter()
      s = loop.run(c, os.path.join(root, f'{variant}_s{seed}'))
      m = c.model
      rows.append(dict(variant=variant, seed=seed, eval_loss=s['eval_loss'],
                       seconds=round(time.perf_counter() - t0, 1), d_ff=m.d_ff,
                       params_with_head=counts.param_counts(m).with_head,
                       model_flops_per_token=counts.model_flops_per_token(m, SEQ_LEN),
                       kv_elements_per_token=counts.kv_cache_elements_per_token(m),
                       tokens=steps * SEQ_LEN * BATCH))
      print(f'{variant} seed {seed}: eval loss {s["eval_loss"]:.4f} ({rows[-1]["seconds"]} s)',
            flush=True)
  return rows


def summarise(rows) -> dict:
  """{variant: mean eval loss, its spread over seeds, the gap to MHA, the KV cache per token}."""
  out = {}
  for v in VARIANTS:
    r = [x for x in rows if x['variant'] == v]
    losses = [x['eval_loss'] for x in r]
    out[v] = dict(d_ff=r[0]['d_ff'], params_with_head=r[0]['params_with_head'],
                  model_flops_per_token=r[0]['model_flops_per_token'],
                  kv_elements_per_token=r[0]['kv_elements_per_token'],
                  kv_bytes_per_token_bf16=r[0]['kv_elements_per_token'] * KV_BYTES,
                  eval_loss_mean=statistics.mean(losses),
                  eval_loss_range=max(losses) - min(losses), eval_losses=losses)
  for v in VARIANTS:  # Paired by seed: the same data order, the same init seed.
    out[v]['gap_to_mha'] = out[v]['eval_loss_mean'] - out['mha']['eval_loss_mean']
    out[v]['gap_to_mha_per_seed'] = [a - b for a, b in zip(out[v]['eval_losses'],
                                                           out['mha']['eval_losses'])]
  return out


def format_table(summary: dict) -> str:
  lines = [f'{"variant":8} {"d_ff":>5} {"N":>8} {"FLOPs/tok":>10} {"KV/tok":>7} {"B bf16":>7} '
           f'{"eval loss":>10} {"range":>7} {"vs MHA":>8}  per seed']
  for v, s in summary.items():
    lines.append(f'{v:8} {s["d_ff"]:5d} {s["params_with_head"]:8,d} '
                 f'{s["model_flops_per_token"]:10.3g} {s["kv_elements_per_token"]:7d} '
                 f'{s["kv_bytes_per_token_bf16"]:7d} {s["eval_loss_mean"]:10.4f} '
                 f'{s["eval_loss_range"]:7.4f} {s["gap_to_mha"]:+8.4f}  '
                 + ' '.join(f'{g:+.4f}' for g in s['gap_to_mha_per_seed']))
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m benchmarks.bench_attention',
                              description=__doc__.split('\n')[0])
  p.add_argument('--steps', type=int, default=500)
  p.add_argument('--seeds', default='0,1')
  p.add_argument('--workdir', default='')
  p.add_argument('--json', default='')
  a = p.parse_args(argv)
  seeds = [int(s) for s in a.seeds.split(',')]
  root = a.workdir or tempfile.mkdtemp(prefix='bench_attention_')
  t0 = time.perf_counter()
  rows = sweep(root, a.steps, seeds)
  summary = summarise(rows)
  print(format_table(summary))
  print(f'{len(rows)} runs in {time.perf_counter() - t0:.0f} s')
  if a.json:
    with open(a.json, 'w') as f:
      json.dump({'steps': a.steps, 'seq_len': SEQ_LEN, 'global_batch_size': BATCH, 'base': BASE,
                 'variants': VARIANTS, 'runs': rows, 'summary': summary}, f, indent=1)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
