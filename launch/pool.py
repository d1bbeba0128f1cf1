"""Long-lived local workers: each `python -m train.worker` process trains many runs in turn.

`launch.sweep --worker-pool` runs a sweep's local runs through N such workers
(N = --parallel) instead of one `python -m train` process per run, so each
worker imports JAX and the project once. The worker protocol is in
train/worker.py; launch only starts it as a process and never imports train.

Isolation as with processes: each run's output goes to its own train.log; a run
that fails gives its exit status to the ledger like a process would; a run
that kills its worker (a crash, the OOM killer) is recorded as failed with the
worker's exit status, and a new worker takes the next run. Workers' own output
outside runs (import errors) goes to DIR/worker_pool.log.
"""

import json
import os
import queue
import subprocess
import threading
import time

from launch import ledger as ledger_lib
from launch import runs
from launch.expand import REPO_ROOT

TRAIN = ['-m', 'train']


def worker_request(argv: list) -> tuple[str, list]:
  """(interpreter, train flags) of a `python -m train ...` argv; ValueError for anything else."""
  if list(argv[1:3]) != TRAIN:
    raise ValueError(f'not a python -m train command: {argv[:3]}')
  return argv[0], list(argv[3:])


class Worker:
  """One `python -m train.worker` process, fed one run at a time."""

  def __init__(self, python: str, workdir: str):
    self.log = open(os.path.join(workdir, 'worker_pool.log'), 'a')
    self.proc = subprocess.Popen([python, '-m', 'train.worker'], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=self.log, cwd=REPO_ROOT,
                                 env=runs.run_env(workdir), text=True, bufsize=1)
    self.results = queue.Queue()
    self.run = None  # (name, log path, start time) of the run it is training.
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self.results.put(json.loads(line))

  def submit(self, name: str, argv: list, log_path: str) -> None:
    self.run = (name, log_path, time.perf_counter())
    self.proc.stdin.write(json.dumps({'argv': argv, 'log': log_path}) + '\n')
    self.proc.stdin.flush()

  def poll(self) -> int | None:
    """The exit status of the current run once it ended (the worker's, if the run killed it)."""
    try:
      return self.results.get_nowait()['status']
    except queue.Empty:
      pass
    if self.proc.poll() is None:
      return None
    try:  # It may have written its result just before exiting.
      return self.results.get(timeout=1.0)['status']
    except queue.Empty:
      with open(self.run[1], 'a') as f:
        f.write(f'\nthe worker process died with status {self.proc.returncode} during this run\n')
      return self.proc.returncode if self.proc.returncode else 1

  def alive(self) -> bool:
    return self.proc.poll() is None

  def close(self, kill: bool = False) -> None:
    if self.alive():
      if kill:
        self.proc.terminate()
      else:
        self.proc.stdin.close()
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
    self.log.close()


def run_pool(ledger, workdir: str, parallel: int, poll_seconds: float = 0.2, log=print) -> dict:
  """Drive `ledger` (launch.ledger.Ledger) with `parallel` long-lived workers."""
  idle, busy = [], []
  try:
    while ledger.waiting() or busy:
      while ledger.pending() and len(busy) < parallel:
        rec = ledger.next()
        os.makedirs(os.path.dirname(rec.log), exist_ok=True)
        python, argv = worker_request(rec.argv)
        with open(rec.log, 'a') as f:
          f.write(ledger_lib.log_header(rec.argv) + f'(worker pool: {python} -m train.worker)\n')
        worker = idle.pop() if idle else Worker(python, workdir)
        worker.submit(rec.name, argv, rec.log)
        busy.append(worker)
      time.sleep(poll_seconds)
      for worker in list(busy):
        status = worker.poll()
        if status is None:
          continue
        busy.remove(worker)
        name, _, t0 = worker.run
        ledger.finish(name, status, time.perf_counter() - t0)
        if worker.alive():
          idle.append(worker)
        else:
          log(f'worker for {name} exited (status {worker.proc.returncode}); a new one takes the next run')
          worker.close()
  except KeyboardInterrupt:
    for worker in busy:
      worker.close(kill=True)
    log('interrupted: running workers stopped; rerun the same command to resume')
    raise
  finally:
    for worker in idle:
      worker.close()
  return ledger.summary()
