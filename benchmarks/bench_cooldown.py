"""WSD cooldown branches against cosine runs at the same D, on CPU (issue 11, item 1).

  JAX_PLATFORMS=cpu python -m benchmarks.bench_cooldown [--workdir DIR] [--json OUT.json]

One model of the demo's shapes (byte-level, built-in corpus): one long WSD run
to the largest D that keeps a checkpoint at each shorter run's decay start,
cooldown branches from it to each shorter D, and a cosine run from scratch to
every D. Prints eval loss per D for the branch and for cosine, the difference,
and the compute: the branches' own steps against separate runs. Measures;
asserts nothing.
"""

import argparse
import json
import os
import tempfile

from configs import tiny_cpu
from train import loop
from train import optim

SHAPE = dict(n_layers=1, d_model=40, n_heads=2, n_kv_heads=2, d_ff=104, vocab_size=257)
STEPS = (300, 600, 1200)  # D = steps x 2,048 tokens; the longest is the parent.


def config(steps: int, schedule: str, **train):
  c = tiny_cpu.get_config()
  c.model.update(SHAPE)
  c.data.update(dict(tokenizer='byte', seq_len=64, global_batch_size=32))
  c.optim.update(dict(lr=3e-3, b2=0.99, schedule=schedule, decay_fraction=0.2, warmup_steps=30))
  c.train.update(dict(steps=steps, eval_every=steps, log_every=50, checkpoint_every=0,
                      eval_batches=16, peak_flops=1.7e11, **train))
  return c


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', default='')
  p.add_argument('--json')
  args = p.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix='cooldown_')
  parent_steps = STEPS[-1]
  branch_at = {s: optim.decay_start(config(s, 'wsd')) for s in STEPS[:-1]}
  parent_dir = os.path.join(root, f'wsd_{parent_steps}')
  parent = loop.run(config(parent_steps, 'wsd', checkpoint_steps=','.join(map(str, branch_at.values()))),
                    parent_dir)
  rows = []
  for steps in STEPS:
    if steps == parent_steps:
      wsd = parent
      own = steps
    else:
      wsd = loop.run(config(steps, 'wsd', init_from=f'{parent_dir}:{branch_at[steps]}'),
                     os.path.join(root, f'wsd_{steps}'))
      own = steps - branch_at[steps]
    cos = loop.run(config(steps, 'cosine'), os.path.join(root, f'cosine_{steps}'))
    rows.append(dict(steps=steps, tokens=wsd['tokens'], wsd_eval=wsd['eval_loss'],
                     cosine_eval=cos['eval_loss'], own_steps=own))
  print(f'{"D (tokens)":>12} {"WSD branch":>11} {"cosine":>8} {"diff":>8} {"own steps":>10}')
  for r in rows:
    print(f'{r["tokens"]:>12,} {r["wsd_eval"]:>11.4f} {r["cosine_eval"]:>8.4f} '
          f'{r["wsd_eval"] - r["cosine_eval"]:>+8.4f} {r["own_steps"]:>10}')
  separate = sum(STEPS)
  family = sum(r['own_steps'] for r in rows)
  print(f'steps for {len(STEPS)} points: {family} as one WSD family vs {separate} as separate '
        f'cosine runs ({1 - family / separate:.0%} saved)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'rows': rows, 'family_steps': family, 'separate_steps': separate}, f, indent=1)


if __name__ == '__main__':
  main()
