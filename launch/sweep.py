"""IsoFLOP sweeps: expand a sweep config into runs, run them as processes, then fit.

  python -m launch.sweep --config configs/sweeps/isoflop_cpu.py --workdir runs/isoflop_cpu --dry-run
  python -m launch.sweep --config configs/sweeps/isoflop_cpu.py --workdir runs/isoflop_cpu [--parallel 2]

A sweep config (`configs/sweeps/*.py`, a `get_config()`) becomes runs in
`launch.expand` (budgets, shapes, hyper-parameter rules, variants, cooldown
branches; its docstring lists the keys and units).

Runs live in DIR/<budget>_<shape>/ (train.log, summary.json, curve.json,
TensorBoard events, checkpoints). Finished runs (summary.json present) are
skipped and unfinished ones resume from their checkpoints, so rerunning the
same command continues a sweep. A failed run is reported with its log and the
rest go on. A run that exits with status 75 (preempted: its checkpoint is
saved) is requeued and resumes, up to --max-preemptions times; a failed one
is retried up to --max-failures times. DIR/sweep_status.json says which run
is where (`launch.ledger` specifies it). At the end the finished runs
are fitted (`scaling.fit`: approaches 1-3) into DIR/fit/ (fit.json, PNGs,
TensorBoard events); with variants, each variant also alone into
DIR/fit/<variant>/. A sweep with a `target` then trains the compute-optimal
run at its target budget, predicted by that fit, and writes predicted
against measured (`train_target`).

Backends: the local process pool (`run_all`, --parallel N at once), a Ray
cluster (--backend ray: `launch.ray_backend`; also with runs of several hosts,
--hosts-per-run, and a bucket workdir, gs://..., `launch.remote`), or one TPU
VM through gcloud (--tpu: `launch.tpu`). Both of the first two keep their
runs' states in `launch.ledger`.

This module never imports the training loop: runs are processes
(`python -m train`, and `python -m scaling.aot` for --check-fit); from the
model it uses only the closed-form counts (`model.counts`).
"""

import argparse
import importlib.util
import os
import shlex
import subprocess
import sys
import time
import warnings

from launch import ledger as ledger_lib
from launch import pool
from launch import remote
from launch import ray_backend
from launch import ray_cluster
from launch import runs
from launch import tpu
from launch import expand as expand_lib
from launch.expand import (REPO_ROOT, Run, Sweep, SweepError, expand, flag_value, format_table,
                           load_config_file, train_command)
from scaling import fit as fit_lib
from scaling import hparams
from scaling import moe_law
from scaling import ladder
from scaling import points as points_lib
from scaling import tables


# ---------------------------------------------------------------------------- local pool


def run_all(commands: list, workdir: str, parallel: int = 1, log=print, poll_seconds: float = 0.2,
            max_preemptions: int = 3, max_failures: int = 0, after: dict | None = None,
            worker_pool: bool = False) -> dict:
  """Run (name, argv) pairs as processes, at most `parallel` at once.

  worker_pool: `parallel` long-lived `python -m train.worker` processes train
  the runs in turn instead (`launch.pool`), with the same logs and statuses.

  Each run's stdout and stderr go (appended) to DIR/<name>/train.log. Runs
  with summary.json are skipped; others start (train resumes from their
  checkpoints). Exit status 75 (preempted) requeues a run, at most
  `max_preemptions` times; another non-zero status is a failure, retried at
  most `max_failures` times. One status line per event; DIR/sweep_status.json
  after each. after: {branch: parent}: a cooldown branch starts once its
  parent finished (`launch.ledger.Ledger`). Returns {name: 'skipped' | 'ok' |
  'failed' | 'preempted-out'}. Ctrl-C stops the running processes (rerun to
  resume).
  """
  ledger = ledger_lib.Ledger(commands, workdir, 'local', max_preemptions, max_failures, log, after)
  if worker_pool:
    return pool.run_pool(ledger, workdir, parallel, poll_seconds, log)
  active = {}

  def start(rec):
    f = open(rec.log, 'a')
    f.write(ledger_lib.log_header(rec.argv))
    f.flush()
    env = runs.run_env(workdir)
    try:
      proc = subprocess.Popen(rec.argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
    except OSError as e:  # No such interpreter: a failure of this run, not of the sweep.
      f.write(f'cannot start {rec.argv[0]}: {e}\n')
      f.close()
      ledger.finish(rec.name, 127, 0.0)
      return
    active[proc] = (rec.name, f, time.perf_counter())

  try:
    while ledger.waiting() or active:
      while ledger.pending() and len(active) < parallel:
        rec = ledger.next()
        os.makedirs(os.path.dirname(rec.log), exist_ok=True)
        start(rec)
      time.sleep(poll_seconds)
      for proc in [p for p in active if p.poll() is not None]:
        name, f, t0 = active.pop(proc)
        f.close()
        ledger.finish(name, proc.returncode, time.perf_counter() - t0)
  except KeyboardInterrupt:
    for proc in active:
      proc.terminate()
    for proc, (_, f, _) in active.items():
      try:
        proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        proc.kill()
      f.close()
    log('interrupted: running processes stopped; rerun the same command to resume')
    raise
  return ledger.summary()


# ---------------------------------------------------------------------------- fit


def sweep_points(workdir: str, names: list, log=print):
  """The finished runs among `names` in `workdir` as scaling Points, or None (logged) when none."""
  try:
    points = points_lib.load_runs(workdir, warn=lambda m: None)
  except ValueError as e:
    log(f'fit: {e}')
    return None
  mine = set(names)
  keep = [i for i, n in enumerate(points.names) if n in mine]
  if not keep:
    log(f'fit: no finished runs of this sweep in {workdir}')
    return None
  points = points.subset(keep)
  points.excluded = [e for e in points.excluded if e[0] in mine]
  return points


def fit_sweep(workdir: str, names: list, out: str, bootstrap: int = 200, plots: bool = True,
              log=print) -> dict | None:
  """scaling.fit on this sweep's finished runs in `workdir`; writes OUT/fit.json.

  Only the sweep's own run folders are read (not DIR/fit or other folders).
  Returns the fit dict (with its in-memory bootstrap samples), or None when
  nothing could be fitted.
  """
  points = sweep_points(workdir, names, log)
  if points is None:
    return None
  for name, reason in points.excluded:
    log(f'fit: run {name} left out: {reason}')
  with warnings.catch_warnings():
    # Overflow in L-BFGS from far-off grid starts is expected and harmless; keep the console clean.
    warnings.simplefilter('ignore', RuntimeWarning)
    try:
      result = fit_lib.fit_all(points, n_boot=bootstrap, log=lambda m: log(f'fit: {m}'))
    except ValueError as e:  # The runs stay on disk; say why there is no fit.
      log(f'fit: failed: {e}. Reproduce with: python -m scaling.fit --runs {workdir} --out {out}')
      return None
  path = tables.write_json(result, out)
  log(tables.format_table(result))
  if 'moe' in result:
    log(moe_law.format_moe(result['moe']))
  if plots:
    from scaling import plot  # Local: matplotlib, only when plotting.
    plot.write_all(points, result, out)
  log(f'fit: wrote {path}' + (f' and plots; TensorBoard: tensorboard --logdir {out}' if plots else ''))
  return result


def fit_hparams(workdir: str, names: list, out: str, bootstrap: int = 200, log=print) -> dict | None:
  """scaling.hparams on a tuning grid's finished runs: OUT/hparams.json, eta_opt(C) and B_opt(C)."""
  points = sweep_points(workdir, names, log)
  if points is None:
    return None
  try:
    result = hparams.fit_hparams(points, n_boot=bootstrap)
  except ValueError as e:
    log(f'hparams: failed: {e}. Reproduce with: python -m scaling.hparams --runs {workdir} --out {out}')
    return None
  path = tables.write_json(result, out, 'hparams.json')
  log(hparams.format_table(result))
  log(f'hparams: wrote {path}; a sweep can use it: hparams = {{\'lr\': {{\'rule\': \'fitted\', '
      f'\'path\': \'{path}\'}}}}')
  return result


# ---------------------------------------------------------------------------- the target run


def train_target(sweep_cfg, sweep: Sweep, result: dict, workdir: str, out: str, run,
                 log=print) -> dict | None:
  """Predict, then train, then verify: the sweep's `target` run.

  From the sweep's fit (`result`), `scaling.ladder.target_run` gives the
  compute-optimal N at the target budget C_t (approach 3, else 2, else 1) and
  the loss predicted there. The run is built at that N (the shape rule's
  nearest shape), trained by `run` (the sweep's backend: Runs -> {name: state};
  the sweep's finished runs are skipped),
  and then `scaling.ladder.verify` compares its measured loss with the fit's
  prediction at its own N and D, with the 95% prediction interval. The fit
  is not redone: the target never enters it. fit.json gains `target_run`
  (the plan) and `ladder` (predicted against measured). Returns the ladder
  block, or None (logged) when the fit cannot plan it or the run fails.
  """
  C = sweep.target_flops
  fitted = sweep_points(workdir, [r.name for r in sweep.runs], log)  # What `result` was fitted to.
  try:
    plan = ladder.target_run(result, C, fitted)
    target = expand_lib.target_run(sweep_cfg, C, plan['N'])
  except (ValueError, SweepError) as e:
    log(f'target: not trained: {e}')
    return None
  log(f'target: {target.name}: N_opt = {plan["N"]:,.0f} at C = {C:.3g} FLOPs ({plan["approach"]}), '
      f'built N = {target.params:,}, D = {target.tokens:,} tokens')
  status = run(sweep.runs + [target])
  if status.get(target.name) not in ('ok', 'skipped'):
    log(f'target: {target.name} {status.get(target.name)}; see {os.path.join(workdir, target.name)}')
    return None
  held = sweep_points(workdir, [target.name], log)
  result['target_run'] = plan
  result['ladder'] = block = ladder.verify(result, fitted, held, 'target')
  tables.write_json(result, out)
  for line in tables.format_ladder(block):
    log(f'target: {line}')
  return block


# ---------------------------------------------------------------------------- AOT fit check (hook)


def aot_command(sweep: Sweep, run: Run, topology: str, python: str = sys.executable) -> list:
  """argv of `python -m scaling.aot` for one run's config on a TPU slice (no FLOP compiles)."""
  argv = [python, '-m', 'scaling.aot', '--config', sweep.base_config, '--topology', topology,
          '--noflops']
  return argv + [f'--config.{k}={flag_value(v)}' for k, v in run.overrides.items()]


def check_fit(sweep: Sweep, topology: str, log=print, python: str = sys.executable) -> bool | None:
  """Ask `python -m scaling.aot` whether each run's config fits `topology` (e.g. 'v5p:2x2x2').

  One AOT compile per run for that TPU slice, in its own process (no TPU
  needed, but libtpu is: without it the check is skipped with a note). Exit
  status 0 = fits, 1 = does not fit, 2 = the config cannot go on this slice
  as configured (counts as not fitting); any other status means the check
  itself could not run. Returns True when every run fits, False when any does
  not, None when the check is unavailable (nothing fails).
  """
  if importlib.util.find_spec('libtpu') is None:
    log(f'--check-fit {topology}: skipped, libtpu is not installed (pip install -e \'.[tpu-aot]\')')
    return None
  all_fit = True
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  for r in sweep.runs:
    p = subprocess.run(aot_command(sweep, r, topology, python), cwd=REPO_ROOT, env=env,
                       capture_output=True, text=True)
    out = [ln.strip() for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    last = out[-1] if out else ''
    if p.returncode not in (0, 1, 2):
      log(f'--check-fit {topology}: skipped, scaling.aot could not run (exit {p.returncode}: {last})')
      return None
    fits = p.returncode == 0
    msg = last if p.returncode != 2 else f'check failed: {last.removeprefix("error: ")}'
    log(f'check-fit {topology}: {r.name}: {"fits" if fits else "DOES NOT FIT"} ({msg})')
    all_fit = all_fit and fits
  return all_fit


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m launch.sweep', description=__doc__.split('\n\n')[0])
  p.add_argument('--config', required=True, help='sweep config file (configs/sweeps/*.py)')
  p.add_argument('--workdir', required=True, help='sweep folder: one sub-folder per run, fit/ at the end')
  p.add_argument('--dry-run', action='store_true', help='print the runs and commands; run nothing')
  p.add_argument('--parallel', type=int, default=1, help='runs at once on this machine (default 1)')
  p.add_argument('--no-fit', action='store_true', help='do not call scaling.fit at the end')
  p.add_argument('--bootstrap', type=int, default=None, help='fit bootstrap samples (default: sweep fit.bootstrap)')
  p.add_argument('--tpu', action='store_true',
                 help='run on the TPU VM of the sweep config\'s tpu block (gcloud), one run at a time')
  p.add_argument('--check-fit', metavar='TOPOLOGY',
                 help='compile each run for a TPU slice (scaling.aot, e.g. v5p:2x2x2) and refuse to '
                 'start if one does not fit; skipped with a note when scaling.aot/libtpu is missing')
  p.add_argument('--python', default=sys.executable,
                 help='interpreter of the runs (with --backend ray: its path on every node)')
  p.add_argument('--backend', choices=('local', 'ray'), default='local',
                 help='local: a process pool on this machine (--parallel); ray: one Ray task per run on a '
                 'Ray cluster (pip install -e \'.[ray]\'); with --dry-run, prints Ray cluster configs')
  p.add_argument('--ray-address', default=None, metavar='ADDR',
                 help='Ray cluster to join (auto, ray://HOST:10001); default RAY_ADDRESS or a local one')
  p.add_argument('--ray-resources', default=None, metavar='R',
                 help='Ray resources one run holds, e.g. TPU=4 or GPU=1,CPU=8 (default: the sweep config\'s '
                 'ray.resources, else CPU=1); with --hosts-per-run, what each host\'s process holds')
  p.add_argument('--hosts-per-run', type=int, default=None, metavar='H',
                 help='--backend ray: each run is one process on every host of a slice of H hosts, joined by '
                 'jax.distributed (default: the sweep config\'s ray.hosts_per_run, else the hosts of '
                 'tpu.accelerator_type when runs hold TPUs, else 1)')
  p.add_argument('--ray-slice-head', default=None, metavar='RES',
                 help='with --hosts-per-run > 1: the Ray resource that marks a slice\'s first host (default: '
                 'ray.slice_head, else TPU-<tpu.accelerator_type>-head for TPUs, else slice-head)')
  p.add_argument('--max-preemptions', type=int, default=3, metavar='N',
                 help='requeue a preempted run (exit 75, or its Ray node died) at most N times (default 3)')
  p.add_argument('--max-failures', type=int, default=0, metavar='N',
                 help='retry a failed run (any other non-zero exit) at most N times (default 0)')
  p.add_argument('--worker-pool', action='store_true',
                 help='local backend: --parallel long-lived `python -m train.worker` processes train '
                 'the runs in turn (JAX imported once per worker, not once per run)')
  return p


def main(argv=None, log=print) -> int:
  args = build_parser().parse_args(argv)
  if args.parallel < 1:
    print('error: --parallel must be >= 1', file=sys.stderr)
    return 2
  if args.max_preemptions < 0 or args.max_failures < 0:
    print('error: --max-preemptions and --max-failures must be >= 0', file=sys.stderr)
    return 2
  try:
    config = load_config_file(args.config, 'sweep config')
    sweep = expand(config)
    if args.tpu and sweep.tpu is None:
      raise SweepError(f'--tpu: the sweep config {args.config} has no tpu block')
    if args.tpu and args.backend == 'ray':
      raise SweepError('--tpu and --backend ray: choose one (gcloud on one TPU VM, or a Ray cluster)')
    if args.worker_pool and (args.tpu or args.backend == 'ray'):
      raise SweepError('--worker-pool is for the local backend (not --tpu or --backend ray)')
    resources = _ray_resources(args, sweep)
    if args.hosts_per_run is not None and args.backend != 'ray':
      raise SweepError('--hosts-per-run is for --backend ray')
    hosts, slice_head = _ray_slices(args, sweep, resources) if args.backend == 'ray' else (1, '')
    if remote.is_remote(args.workdir):
      _check_bucket(args, sweep, hosts)
    if args.backend == 'ray' and not args.dry_run and importlib.util.find_spec('ray') is None:
      raise SweepError("--backend ray: ray is not installed (pip install -e '.[ray]')")
  except SweepError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  workdir = args.workdir if remote.is_remote(args.workdir) else os.path.abspath(args.workdir)
  for w in sweep.warnings:
    log(f'warning: {w}')
  log(format_table(sweep))
  if args.check_fit:
    if check_fit(sweep, args.check_fit, log) is False and not args.dry_run:
      print(f'error: some runs do not fit {args.check_fit}; not starting', file=sys.stderr)
      return 2
  commands = _commands(args, sweep, sweep.runs, workdir)
  if args.dry_run:
    log(f'\ncommands (run from {REPO_ROOT}):')
    for name, c in commands:
      log(shlex.join(c))
    if args.backend == 'ray':
      try:
        text = ray_cluster.dry_run_text(sweep.tpu, sweep.ray, args.config, args.workdir,
                                        _budget_flags(args))
      except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
      log(f'\n{text}')
    return 0
  try:
    remote.makedirs(workdir)
  except Exception as e:  # pylint: disable=broad-except  (epath's backends raise their own kinds)
    print(f'error: --workdir {workdir}: cannot create it ({type(e).__name__}: {e})'
          + (" (gs:// needs gcsfs: pip install -e '.[gcs]')" if workdir.startswith('gs://') else ''),
          file=sys.stderr)
    return 2

  def run(these: list) -> dict:  # Runs -> {name: final state}, on the chosen backend.
    commands = _commands(args, sweep, these, workdir)
    if args.tpu:
      return tpu.run_all(sweep, commands, workdir, log)
    if args.backend == 'ray':
      return ray_backend.run_all_ray(commands, workdir, args.ray_address, args.max_preemptions,
                                     args.max_failures, log, resources, after=sweep.after(),
                                     hosts_per_run=hosts, slice_head=slice_head)
    return run_all(commands, workdir, args.parallel, log, max_preemptions=args.max_preemptions,
                   max_failures=args.max_failures, after=sweep.after(),
                   worker_pool=args.worker_pool)

  results = run(sweep.runs)
  failed = [n for n, v in results.items() if v in ('failed', 'preempted-out')]
  target_ok = True
  if not args.no_fit:
    here, fit_run = _local_results(workdir, sweep, run, log)
    bootstrap = sweep.fit.bootstrap if args.bootstrap is None else args.bootstrap
    out = os.path.join(here, sweep.fit.out)
    for variant in sorted({r.variant for r in sweep.runs} - {''}):
      log(f'fit: variant {variant}')
      fit_sweep(here, [r.name for r in sweep.runs if r.variant == variant],
                os.path.join(out, variant), bootstrap, sweep.fit.plots, log)
    result = fit_sweep(here, [r.name for r in sweep.runs], out, bootstrap, sweep.fit.plots, log)
    if sweep.grid:
      fit_hparams(here, [r.name for r in sweep.runs], os.path.join(out, 'hparams'), bootstrap, log)
    if sweep.target_flops:
      target_ok = (result is not None and not failed
                   and train_target(config, sweep, result, here, out, fit_run, log) is not None)
      if not target_ok:
        log('target: not verified' + (' (runs failed or no fit)' if failed or result is None else ''))
    if here != workdir and os.path.isdir(out):
      n = remote.push_tree(out, os.path.join(workdir, sweep.fit.out))
      log(f'fit: {n} file(s) copied to {os.path.join(workdir, sweep.fit.out)}')
  if not target_ok and not failed:
    return 1
  if failed:
    log(f'{len(failed)} run(s) failed: ' + ', '.join(
        f'{n} ({results[n]}, see {os.path.join(workdir, n, "train.log")})' for n in failed))
    return 1
  return 0


def _commands(args, sweep: Sweep, these: list, workdir: str) -> list:
  """(name, argv) of each run: `python -m train` here, or over gcloud ssh on the TPU VM (--tpu)."""
  if args.tpu:
    return [(r.name, tpu.ssh_command(sweep.tpu, train_command(sweep, r, sweep.tpu.workdir,
                                                              sweep.tpu.python) + ['--multihost']))
            for r in these]
  return [(r.name, train_command(sweep, r, workdir, args.python)) for r in these]


def _ray_resources(args, sweep: Sweep) -> dict:
  """Ray resources of one run: --ray-resources, else the sweep config's ray.resources, else CPU=1."""
  text = args.ray_resources if args.ray_resources is not None else (
      sweep.ray.get('resources', '') if sweep.ray is not None else '')
  try:
    return ray_backend.parse_resources(text)
  except ValueError as e:
    raise SweepError(f'--ray-resources / ray.resources: {e}') from None


def _ray_slices(args, sweep: Sweep, resources: dict) -> tuple[int, str]:
  """(hosts per run, the slice head resource) for --backend ray (see --hosts-per-run)."""
  ray_cfg = sweep.ray if sweep.ray is not None else ray_cluster.default_config()
  tpu_type = sweep.tpu.get('accelerator_type', '') if sweep.tpu is not None else ''
  on_tpu = 'TPU' in resources and bool(tpu_type)
  hosts = args.hosts_per_run if args.hosts_per_run is not None else ray_cfg.get('hosts_per_run', 0)
  if not hosts:
    try:
      hosts = ray_cluster.tpu_hosts(tpu_type)[0] if on_tpu else 1
    except ValueError as e:
      raise SweepError(str(e)) from None
  if hosts < 1:
    raise SweepError(f'--hosts-per-run / ray.hosts_per_run={hosts}: must be >= 1')
  head = args.ray_slice_head or ray_cfg.get('slice_head', '') or (
      f'TPU-{tpu_type}-head' if on_tpu else ray_backend.SLICE_HEAD)
  return hosts, head


def _local_results(workdir: str, sweep: Sweep, run, log):
  """(a local folder holding the runs' results, a `run` whose results land there too) for the fit.

  A local workdir is that folder. For a bucket, each run's summary.json,
  curve.json and config.json are copied into a local mirror (the fit reads
  local files), and the target run, trained into the bucket, is copied too.
  """
  if not remote.is_remote(workdir):
    return workdir, run
  here = remote.mirror_results(workdir, [r.name for r in sweep.runs])
  log(f'fit: the runs\' results copied from {workdir} to {here}')

  def run_and_copy(these: list) -> dict:
    out = run(these)
    remote.mirror_results(workdir, [r.name for r in these])
    return out
  return here, run_and_copy


def _check_bucket(args, sweep: Sweep, hosts: int) -> None:
  """A bucket --workdir (gs://...) needs the Ray backend, runs of one host each, no cooldown branches."""
  if args.backend != 'ray' or args.tpu or args.worker_pool:
    raise SweepError(f'--workdir {args.workdir}: a bucket workdir needs --backend ray (each run is '
                     'staged on its node and copied to the bucket: launch/remote.py); the local backend '
                     'and --tpu write a local or shared folder')
  if hosts > 1:
    raise SweepError(f'--workdir {args.workdir} with {hosts} hosts per run: the hosts of a run write one '
                     'checkpoint together, so they need a folder they all mount (ray.nfs), not a bucket')
  if sweep.after():
    raise SweepError(f'--workdir {args.workdir}: this sweep has cooldown branches, which start from '
                     "their parent's checkpoint by path (train.init_from); that path is not staged "
                     'yet, so use a folder every node mounts (ray.nfs)')


def _budget_flags(args) -> list:
  """The retry budgets as flags for the driver on a Ray head node (those not at their default)."""
  parser, out = build_parser(), []
  for key in ('max_preemptions', 'max_failures'):
    if getattr(args, key) != parser.get_default(key):
      out += [f'--{key.replace("_", "-")}', str(getattr(args, key))]
  return out


if __name__ == '__main__':
  sys.exit(main())
