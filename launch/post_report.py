"""The report of a post-training study (launch.post_study): study.json, study.md, study.png, TensorBoard.

Units: N is the base's parameters with head (model.counts `with_head`);
exact_match and mean_reward are fractions of the held-out prompts, in [0, 1];
eval_answer_nll is in nats per answer token (train.post's summary.json).

study.json (format 1):
  format, study, question, seeds, baseline, metrics
  sizes     [{name, N}], increasing N
  runs      one per arm run and the teacher: name, arm, size, seed, N, state, and from its
            summary.json (null where it has none): exact_match, mean_reward, eval_answer_nll, their
            `_before` values (the start's), exact_match_by_task, steps, tokens, trained (the numbers
            trained: trainable.params), wall_seconds
  table     {metric: {arm: {size: {n, mean, sd}}}}: over the seeds that finished (sd: the sample
            standard deviation, null when n < 2)
  delta     {metric: {arm: {'sizes': {size: {n, mean, sd}}, 'slope': {per_decade, se, points}}}}:
            arm minus the baseline arm, paired by size and seed; `slope` is the least-squares line
            of those differences against log10 N, per decade of N (se null with < 3 points)
  teacher   the teacher run's record, or null

study.md: the question, per metric a table of mean ± sd (n) per arm and size,
then the deltas with their slopes. study.png: per metric, mean ± sd against N
(log axis), a line per arm (the teacher's score dashed), and the deltas.
TensorBoard (DIR/study/, one run, rewritten each time): scalars
`<metric>_step_100log10N/<arm>` and `delta_<metric>_step_100log10N/<arm>` at
step round(100 log10 N), the markdown as the text `study`, the PNG as the
image `plots/study`.
"""

import json
import math
import os

import numpy as np

from launch.ledger import write_json_atomic

FORMAT = 1
RECORD_KEYS = ('exact_match', 'mean_reward', 'eval_answer_nll', 'exact_match_before',
               'mean_reward_before', 'eval_answer_nll_before', 'exact_match_by_task', 'steps',
               'tokens', 'wall_seconds')
TB_DIR = 'study'  # TensorBoard run of the study, beside its runs.


def _record(run, state: str) -> dict:
  """One run's line of study.json, from its summary.json when it has one."""
  rec = {'name': run.name, 'arm': run.arm, 'size': run.size, 'seed': run.seed, 'N': run.N,
         'state': state, **{k: None for k in RECORD_KEYS}, 'trained': None}
  try:
    with open(os.path.join(run.folder, 'summary.json')) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return rec
  rec.update({k: summary.get(k) for k in RECORD_KEYS})
  rec['trained'] = (summary.get('trainable') or {}).get('params')
  return rec


def _stats(values: list) -> dict:
  """{n, mean, sd} of the finite values (sd: sample, ddof 1; None when fewer than 2)."""
  xs = [float(v) for v in values if v is not None and math.isfinite(v)]
  n = len(xs)
  return {'n': n, 'mean': float(np.mean(xs)) if n else None,
          'sd': float(np.std(xs, ddof=1)) if n > 1 else None}


def _slope(points: list) -> dict:
  """Least-squares slope of (log10 N, y) points, per decade of N, with its standard error."""
  if len({x for x, _ in points}) < 2:
    return {'per_decade': None, 'se': None, 'points': len(points)}
  x, y = np.array(points, float).T
  slope, icept = np.polyfit(x, y, 1)
  se = None
  if len(points) > 2:
    resid = y - (slope * x + icept)
    se = float(np.sqrt(np.sum(resid ** 2) / (len(x) - 2) / np.sum((x - x.mean()) ** 2)))
  return {'per_decade': float(slope), 'se': se, 'points': len(points)}


def collect(s, runs: list, states: dict) -> dict:
  """study.json's contents (module docstring) from the runs' folders and their final states."""
  arms = [a['name'] for a in s.arms]
  sizes = sorted({(r.N, r.size) for r in runs if r.kind == 'base'})
  records = [_record(r, states.get(r.name, 'not run')) for r in runs if r.kind != 'base']
  by = {(r['arm'], r['size'], r['seed']): r for r in records}
  table, delta = {}, {}
  for m in s.metrics:
    table[m] = {a: {z: _stats([by[(a, z, seed)][m] for seed in s.seeds if (a, z, seed) in by])
                    for _, z in sizes} for a in arms}
    if not s.baseline:
      continue
    delta[m] = {}
    for a in (a for a in arms if a != s.baseline):
      diffs = {z: [by[(a, z, seed)][m] - by[(s.baseline, z, seed)][m] for seed in s.seeds
                   if by[(a, z, seed)][m] is not None and by[(s.baseline, z, seed)][m] is not None]
               for _, z in sizes}
      points = [(math.log10(N), d) for N, z in sizes for d in diffs[z]]
      delta[m][a] = {'sizes': {z: _stats(d) for z, d in diffs.items()}, 'slope': _slope(points)}
  teacher = next((r for r in records if r['arm'] == 'teacher'), None)
  return {'format': FORMAT, 'study': s.name, 'question': s.question, 'seeds': list(s.seeds),
          'baseline': s.baseline, 'metrics': list(s.metrics),
          'sizes': [{'name': z, 'N': N} for N, z in sizes], 'table': table, 'delta': delta,
          'runs': [r for r in records if r['arm'] != 'teacher'], 'teacher': teacher}


# ---------------------------------------------------------------------------- markdown


def _cell(st: dict, signed: bool = False) -> str:
  if st['mean'] is None:
    return '-'
  mean = f'{st["mean"]:+.3f}' if signed else f'{st["mean"]:.3f}'
  return mean + (f' ± {st["sd"]:.3f}' if st['sd'] is not None else '') + f' ({st["n"]})'


def _size_head(result: dict) -> str:
  return ' | '.join(f'{z["name"]} (N {z["N"]:,})' for z in result['sizes'])


def markdown(result: dict) -> str:
  """study.md: the question, the tables of mean ± sd (seeds) per arm and size, the deltas."""
  seeds = result['seeds']
  lines = [f'# Post-training study `{result["study"]}`', '', result['question'], '',
           f'{len(seeds)} seed(s) ({", ".join(map(str, seeds))}); cells are mean ± sample sd over '
           'the seeds that finished (their count in brackets).', '']
  heads = [z['name'] for z in result['sizes']]
  for m, rows in result['table'].items():
    lines += [f'## {m}', '', f'| arm | {_size_head(result)} |', '|---' * (len(heads) + 1) + '|']
    lines += [f'| {a} | ' + ' | '.join(_cell(st[z]) for z in heads) + ' |' for a, st in rows.items()]
    lines.append('')
  for m, rows in result['delta'].items():
    lines += [f'## {m}: arm − {result["baseline"]} (paired by size and seed)', '',
              f'| arm | {_size_head(result)} | slope per decade of N |',
              '|---' * (len(heads) + 2) + '|']
    for a, d in rows.items():
      sl = d['slope']
      slope = ('-' if sl['per_decade'] is None else f'{sl["per_decade"]:+.3f}' +
               (f' ± {sl["se"]:.3f}' if sl['se'] is not None else '') + f' ({sl["points"]} pts)')
      lines.append(f'| {a} | ' + ' | '.join(_cell(d['sizes'][z], True) for z in heads) +
                   f' | {slope} |')
    lines.append('')
  t = result['teacher']
  if t is not None:
    lines += [f'Teacher `{t["name"]}` (N {t["N"]:,}): ' + ', '.join(
        f'{m} {t[m]:.3f}' for m in result['metrics'] if t.get(m) is not None), '']
  tokens = sorted({(r['arm'], r['tokens']) for r in result['runs'] if r['tokens']})
  if tokens:
    lines += ['Tokens per run (steps x rows x seq_len): ' +
              ', '.join(f'{a} {n:,}' for a, n in tokens), '']
  return '\n'.join(lines)


# ---------------------------------------------------------------------------- plot, events


def _pyplot():
  """matplotlib.pyplot on the Agg backend."""
  import matplotlib  # Local: plots only.
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # Local: plots only.
  return plt


def figure(result: dict):
  """Per metric: mean ± sd against N per arm; with a baseline, the deltas below."""
  plt = _pyplot()
  metrics, rows = result['metrics'], 2 if result['delta'] else 1
  fig, axes = plt.subplots(rows, len(metrics), figsize=(5 * len(metrics), 3.6 * rows),
                           squeeze=False)
  Ns, names = [z['N'] for z in result['sizes']], [z['name'] for z in result['sizes']]
  color = {a: f'C{i}' for i, a in enumerate(result['table'][metrics[0]])}  # One per arm.
  panels = [(0, m, result['table'][m], m, False) for m in metrics]
  panels += [(1, m, {a: d['sizes'] for a, d in result['delta'][m].items()},
              f'{m} − {result["baseline"]}', True) for m in result['delta']]
  for row, m, data, label, is_delta in panels:
    ax = axes[row][metrics.index(m)]
    for a, st in data.items():
      pts = [(N, st[z]['mean'], st[z]['sd'] or 0.0) for N, z in zip(Ns, names)
             if st[z]['mean'] is not None]
      if pts:
        x, y, e = zip(*pts)
        ax.errorbar(x, y, yerr=e, marker='o', capsize=3, label=a, color=color[a])
    if is_delta:
      ax.axhline(0.0, color='grey', lw=0.8)
    elif result['teacher'] is not None and result['teacher'].get(m) is not None:
      ax.axhline(result['teacher'][m], color='black', ls='--', lw=0.8, label='teacher')
    ax.set_xscale('log')
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel('base parameters N (with head)')
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  fig.suptitle(f'{result["study"]}: mean ± sd over {len(result["seeds"])} seed(s)')
  fig.tight_layout()
  return fig


def _scalars(result: dict) -> dict:
  """{tag: [(step = round(100 log10 N), value)]} of the table and the deltas."""
  steps = {z['name']: round(100 * math.log10(z['N'])) for z in result['sizes']}
  out = {}
  for prefix, block in (('', result['table']),
                        ('delta_', {m: {a: d['sizes'] for a, d in rows.items()}
                                    for m, rows in result['delta'].items()})):
    for m, rows in block.items():
      for a, st in rows.items():
        out[f'{prefix}{m}_step_100log10N/{a}'] = [(steps[z], v['mean']) for z, v in st.items()
                                                  if v['mean'] is not None]
  return out


def write_tensorboard(result: dict, folder: str, png: str, text: str) -> None:
  """Events in `folder` (earlier events there are replaced): scalars, the text, the image."""
  from tensorboardX import SummaryWriter  # Local: only when writing events.

  os.makedirs(folder, exist_ok=True)
  for n in os.listdir(folder):
    if n.startswith('events.out.tfevents.'):
      os.remove(os.path.join(folder, n))
  with SummaryWriter(folder) as writer:
    for tag, rows in _scalars(result).items():
      for step, value in rows:
        writer.add_scalar(tag, float(value), int(step))
    writer.add_text('study', text, 0)
    rgba_HW4 = _pyplot().imread(png)
    writer.add_image('plots/study', (rgba_HW4[..., :3] * 255).round().astype(np.uint8), 0,
                     dataformats='HWC')


def write_all(result: dict, workdir: str) -> list[str]:
  """study.json, study.md, study.png and the TensorBoard run in WORKDIR/study/; -> the paths."""
  os.makedirs(workdir, exist_ok=True)
  paths = [os.path.join(workdir, n) for n in ('study.json', 'study.md', 'study.png')]
  write_json_atomic(result, paths[0])
  text = markdown(result)
  with open(paths[1], 'w') as f:
    f.write(text)
  fig = figure(result)
  fig.savefig(paths[2], dpi=100)
  _pyplot().close(fig)
  write_tensorboard(result, os.path.join(workdir, TB_DIR), paths[2], text)
  return paths + [os.path.join(workdir, TB_DIR)]
