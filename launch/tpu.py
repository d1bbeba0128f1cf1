"""Sweep runs on a Cloud TPU VM through gcloud: command building and a sequential runner.

A sweep config opts in with a `tpu` block (see `default_config`); then

  python -m launch.sweep --config SWEEP --workdir DIR --tpu --dry-run

prints, per run, the `gcloud compute tpus tpu-vm ssh NAME --worker=all
--command=...` line that starts `python -m train ... --multihost` on every
worker of the slice at once (jax.distributed.initialize() finds its peers).
Without --dry-run the runs go one after another (a slice runs one job at a
time); each run's console output is logged to DIR/<run>/train.log here, and
its summary.json and curve.json are copied back from worker 0 (scp) or from
the bucket (`gcloud storage cp`, for a gs:// workdir) so `scaling.fit` can read
DIR as usual. The repository and its environment must already be on every
worker at `repo_dir`. Tests only build the commands; nothing here has been run
against a real TPU VM from this project.
"""

import os
import shlex
import subprocess
import time

import ml_collections

from configs.tpu import tpu_block


def default_config() -> ml_collections.ConfigDict:
  """The `tpu` block of a sweep config, with every field commented (configs/tpu.py)."""
  return tpu_block()


def _scope(tpu) -> list:
  flags = [f'--zone={tpu.zone}']
  if tpu.get('project'):
    flags.append(f'--project={tpu.project}')
  return flags


def ssh_command(tpu: ml_collections.ConfigDict, train_argv: list) -> list:
  """argv of `gcloud ... tpu-vm ssh` running `train_argv` on every worker, from repo_dir."""
  if not tpu.name or not tpu.zone:
    raise ValueError('tpu.name and tpu.zone must be set in the sweep config\'s tpu block')
  remote = f'cd {tpu.repo_dir} && {shlex.join(train_argv)}'
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', tpu.name, *_scope(tpu), '--worker=all',
          f'--command={remote}']


def fetch_commands(tpu: ml_collections.ConfigDict, run_name: str, local_dir: str) -> list:
  """Commands copying summary.json and curve.json of one run back to `local_dir`."""
  out = []
  for f in ('summary.json', 'curve.json'):
    remote = f'{tpu.workdir.rstrip("/")}/{run_name}/{f}'
    if tpu.workdir.startswith('gs://'):
      out.append(['gcloud', 'storage', 'cp', remote, os.path.join(local_dir, f)])
    else:
      out.append(['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', f'{tpu.name}:{remote}',
                  os.path.join(local_dir, f), *_scope(tpu), '--worker=0'])
  return out


def run_all(sweep, commands: list, workdir: str, log=print) -> dict:
  """Run (name, gcloud argv) pairs one at a time; same result dict as sweep.run_all."""
  results = {}
  for i, (name, argv) in enumerate(commands):
    run_dir = os.path.join(workdir, name)
    tag = f'[{i + 1:>3}/{len(commands)}]'
    if os.path.isfile(os.path.join(run_dir, 'summary.json')):
      results[name] = 'skipped'
      log(f'{tag} skip    {name}: finished')
      continue
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, 'train.log')
    t0 = time.perf_counter()
    log(f'{tag} start   {name} on TPU {sweep.tpu.name} (log {log_path})')
    with open(log_path, 'a') as f:
      f.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(argv)}\n')
      f.flush()
      rc = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT)
      for fetch in fetch_commands(sweep.tpu, name, run_dir) if rc == 0 else []:
        rc = rc or subprocess.call(fetch, stdout=f, stderr=subprocess.STDOUT)
    ok = rc == 0 and os.path.isfile(os.path.join(run_dir, 'summary.json'))
    results[name] = 'ok' if ok else 'failed'
    log(f'{tag} {"done   " if ok else "FAILED "} {name} ({time.perf_counter() - t0:.0f} s)'
        + ('' if ok else f': exit {rc}, see {log_path}'))
  return results
