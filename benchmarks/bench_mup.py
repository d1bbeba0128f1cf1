"""Where the best learning rate sits as width grows, under SP and µP, on CPU (issue 11, item 4).

  JAX_PLATFORMS=cpu python -m benchmarks.bench_mup [--workdir DIR] [--json OUT.json] [--png OUT.png]

A width sweep at fixed depth: byte-level models of d_model 32, 64 and 128 (2
layers, 4 heads, d_ff = 3 d_model), each trained at five peak learning rates
half a decade apart under model.parameterization 'sp' and 'mup' (base width
32), with `train.loop.run` on the built-in corpus (the real training path).
Every run sees the same 163,840 tokens (160 steps of 16 x 64). Prints the eval loss
(nats per byte) of each run and the best LR per width, writes them as JSON and
plots loss against LR, one curve per width, SP and µP side by side. The best
LR is the grid's argmin and, where it is interior, the vertex of a parabola in
log LR through it and its neighbours. Measures; asserts nothing. The 30 runs
took 647 s on 2 CPU cores shared with other jobs (load average about 8).
"""

import argparse
import json
import math
import os
import tempfile
import time

import numpy as np

from configs import tiny_cpu
from train import loop

WIDTHS = (32, 64, 128)
LRS = tuple(float(f'{x:.3g}') for x in np.geomspace(1e-3, 1e-1, 5))  # 1e-3 .. 0.1, x3.16 apart.
BASE_WIDTH = 32
STEPS = 160


def config(width: int, parameterization: str, lr: float):
  """The run at `width` and peak `lr`: warmup 16 steps, cosine to 0.1 lr, no checkpoints."""
  c = tiny_cpu.get_config()
  c.model.update(dict(vocab_size=257, d_model=width, n_layers=2, n_heads=4, n_kv_heads=4,
                      d_ff=3 * width, parameterization=parameterization,
                      mup_base_width=BASE_WIDTH))
  c.data.update(dict(tokenizer='byte', seq_len=64, global_batch_size=16))
  c.optim.update(dict(lr=lr, b2=0.99, warmup_steps=16))
  c.train.update(dict(steps=STEPS, eval_every=STEPS, log_every=STEPS, checkpoint_every=0,
                      eval_batches=16, peak_flops=1.7e11, nonfinite='skip', max_skips=STEPS))
  return c


def best_lr(lrs, losses) -> dict:
  """The grid's argmin, and the parabola vertex in log10 LR through it and its neighbours."""
  finite = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
  i = min(range(len(finite)), key=lambda k: finite[k][1])
  out = {'grid_lr': finite[i][0], 'grid_loss': finite[i][1], 'interior': 0 < i < len(finite) - 1,
         'fit_lr': None}
  if out['interior']:
    x = np.log10([finite[k][0] for k in (i - 1, i, i + 1)])
    a, b, _ = np.polyfit(x, [finite[k][1] for k in (i - 1, i, i + 1)], 2)
    out['fit_lr'] = float(10 ** (-b / (2 * a)))
  return out


def sweep(root: str) -> list[dict]:
  """One run per (parameterization, width, LR); -> rows with eval loss and seconds."""
  rows = []
  for param in ('sp', 'mup'):
    for width in WIDTHS:
      for lr in LRS:
        t0 = time.perf_counter()
        s = loop.run(config(width, param, lr), os.path.join(root, f'{param}_d{width}_lr{lr:g}'))
        loss = s['eval_loss'] if s['eval_loss'] is not None else float('nan')
        rows.append(dict(parameterization=param, width=width, lr=lr, eval_loss=loss,
                         seconds=round(time.perf_counter() - t0, 1)))
        print(f'{param:>4} d={width:<4} lr={lr:<8g} eval loss {loss:.4f}', flush=True)
  return rows


def summarise(rows) -> dict:
  """{parameterization: {width: best_lr(...)}}."""
  return {p: {w: best_lr(LRS, [r['eval_loss'] for r in rows
                               if r['parameterization'] == p and r['width'] == w])
              for w in WIDTHS} for p in ('sp', 'mup')}


def plot(rows, best, path: str) -> None:
  """Eval loss against peak LR, one curve per width; SP left, µP right; the best LR marked."""
  import matplotlib  # Plots only (optional heavy dependency).
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  for ax, (param, title) in zip(axes, (('sp', 'SP'), ('mup', f'µP (base width {BASE_WIDTH})'))):
    for width in WIDTHS:
      losses = [r['eval_loss'] for r in rows if r['parameterization'] == param and r['width'] == width]
      line, = ax.plot(LRS, losses, marker='o', label=f'd_model {width}')
      b = best[param][width]
      ax.axvline(b['fit_lr'] or b['grid_lr'], color=line.get_color(), ls=':', lw=1)
    ax.set_xscale('log')
    ax.set_xlabel('peak learning rate')
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel(f'eval loss (nats/byte) after {STEPS} steps')
  axes[1].legend()
  lo = min(r['eval_loss'] for r in rows if math.isfinite(r['eval_loss']))
  axes[0].set_ylim(lo - 0.05, lo + 1.0)
  fig.suptitle('Width sweep at 2 layers: loss vs LR (dotted: best LR per width)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', default='')
  p.add_argument('--json', default='benchmarks/results/mup.json')
  p.add_argument('--png', default='benchmarks/results/mup_lr_sweep.png')
  args = p.parse_args()
  t0 = time.perf_counter()
  rows = sweep(args.workdir or tempfile.mkdtemp(prefix='mup_'))
  best = summarise(rows)
  print(f'{"":>4} {"width":>5} {"best grid LR":>12} {"loss":>7} {"parabola LR":>11}')
  for param in ('sp', 'mup'):
    for width in WIDTHS:
      b = best[param][width]
      fit = f'{b["fit_lr"]:.3g}' if b['fit_lr'] else 'edge'
      print(f'{param:>4} {width:>5} {b["grid_lr"]:>12g} {b["grid_loss"]:>7.4f} {fit:>11}')
  total = time.perf_counter() - t0
  print(f'{len(rows)} runs in {total:.0f} s')
  with open(args.json, 'w') as f:
    json.dump({'widths': WIDTHS, 'lrs': LRS, 'base_width': BASE_WIDTH, 'steps': STEPS,
               'tokens_per_run': STEPS * 16 * 64, 'rows': rows,
               'best': {p: {str(w): b for w, b in v.items()} for p, v in best.items()},
               'seconds': round(total)}, f, indent=1)
  plot(rows, best, args.png)


if __name__ == '__main__':
  main()
