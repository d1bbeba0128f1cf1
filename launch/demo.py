"""The CPU scaling demo: an IsoFLOP sweep of tiny models, then the Chinchilla fits.

  python -m launch.demo [--workdir runs/isoflop_cpu] [--parallel 2] [--dry-run]

Runs the sweep configs/sweeps/isoflop_cpu.py with `launch.sweep`: 3 FLOP
budgets x 5 sizes of tiny byte-level transformers on the built-in English
corpus, each a warmup-stable-decay run to its own budget, plus 14 cooldown
branches (a larger budget's size cooled down at a smaller budget); then the
fit (approaches 1-3, `scaling.fit`) into WORKDIR/fit; then the target run at
4x the largest budget at the fit's N_opt, trained last and compared with its
predicted loss. Rerunning skips the finished runs and refits. Prints where
fit.json, the plots and the TensorBoard logs are. Runs are deterministic: the
fit does not depend on the parallelism (2 runs at a time by default: one
run's compilation overlaps the other's training), trained by 2 long-lived
workers (`launch.sweep --worker-pool`: JAX is imported once per worker).
"""

import argparse
import os
import sys
import time

from launch import sweep

SWEEP_CONFIG = 'configs/sweeps/isoflop_cpu.py'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m launch.demo', description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', default='runs/isoflop_cpu', help='sweep folder (default runs/isoflop_cpu)')
  p.add_argument('--parallel', type=int, default=2, help='runs at once (default 2)')
  p.add_argument('--dry-run', action='store_true', help='print the plan only')
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  argv = ['--config', SWEEP_CONFIG, '--workdir', args.workdir, '--parallel', str(args.parallel),
          '--worker-pool']
  rc = sweep.main(argv + (['--dry-run'] if args.dry_run else []))
  if args.dry_run or rc == 2:
    return rc
  workdir = os.path.abspath(args.workdir)
  fit_dir = os.path.join(workdir, sweep.load_config_file(SWEEP_CONFIG).fit.out)
  print(f'\ndemo finished in {time.perf_counter() - t0:.0f} s' + ('' if rc == 0 else ' (some runs failed)'))
  print(f'  runs (summary.json, curve.json, train.log, TensorBoard events): {workdir}/<run>/')
  if os.path.isfile(os.path.join(fit_dir, 'fit.json')):
    print(f'  fit: {os.path.join(fit_dir, "fit.json")} and PNGs in {fit_dir}')
    print(f'  one-page report: {os.path.join(fit_dir, "report.html")} (and report.md, points.csv)')
  print(f'  TensorBoard (curves against tokens and FLOPs, HParams per run, the fit):\n'
        f'    .venv/bin/pip install tensorboard && .venv/bin/tensorboard --logdir {workdir}')
  return rc


if __name__ == '__main__':
  sys.exit(main())
