"""Sweep runs as Ray tasks, and the run ledger that both sweep backends keep.

  python -m launch.sweep --config SWEEP --workdir DIR --backend ray [--ray-address ADDR]
  python -m launch.sweep --config SWEEP --workdir DIR --backend ray --dry-run  # + cluster configs

Each run is one Ray task holding `resources_per_run` ({'CPU': 1}, {'TPU': 4},
{'GPU': 1}, ...). The task starts the run's `python -m train ...` argv as a
subprocess, in the repository root of the node that holds it, with its
output appended to DIR/<run>/train.log. Every run is submitted at once and
Ray's scheduler packs them onto free resources (an autoscaler adds nodes).
Ray sets CUDA_VISIBLE_DEVICES / TPU_VISIBLE_CHIPS to the chips a task holds
and the subprocess inherits them, so runs can share a host (not tried here
on GPUs or TPUs: only on a CPU-only local cluster). The process dies
with its Ray worker (PR_SET_PDEATHSIG, Linux), so a requeued run never
shares its folder with what is left of the attempt before. DIR must be one
path that every node sees: the driver's machine alone, or an NFS share.

Preemption is told apart from failure, in both backends (`Ledger.finish`):
  - preempted: the task's node or worker died (NodeDiedError,
    WorkerCrashedError, ActorDiedError, LocalRayletDiedError,
    TaskUnschedulableError, ObjectLostError), or the process exited with
    PREEMPTED_EXIT = 75 (the training loop's status after it saved a
    checkpoint on SIGTERM). The run is requeued and resumes from its latest
    checkpoint, up to `max_preemptions` times; one more preemption leaves it
    'preempted-out' (rerun the sweep to continue it).
  - failed: any other non-zero status, or status 0 without summary.json. The
    run is recorded with its log tail and retried at most `max_failures`
    times (a retry resumes from its checkpoint too); then it is 'failed'.

The status file DIR/sweep_status.json is rewritten, atomically (a temporary
file, then os.replace), after every event. Format 1, JSON:

  format           1
  backend          'local' or 'ray'
  workdir          the sweep folder (absolute path)
  updated          UTC time of the last event, ISO 8601 ('2026-12-01T11:30:00Z')
  max_preemptions  the budgets the runs were given (int)
  max_failures
  counts           {state: number of runs in that state}
  runs             one object per run, in the sweep's order:
    name           the run (also its folder under workdir)
    state          'queued' (waiting for its first start), 'running' (Ray: its task
                   is submitted, and runs once Ray finds it free resources), 'requeued'
                   (waiting to resume after a preemption or a retried failure), or
                   final: 'ok', 'skipped' (finished before this sweep started),
                   'failed', 'preempted-out'
    attempts       processes started for it by this sweep
    preemptions    attempts that ended in a preemption
    failures       attempts that ended in a failure
    last_exit      exit status of the last attempt (negative: killed by that signal);
                   null when there was none (never started, or its node died)
    last_event     how the last attempt ended, in words ('' before the first)
    history        how each attempt ended, oldest first (the last_event of each)
    node           host name of the last attempt ('' for the local backend)
    seconds        wall time of its attempts in this sweep, in total (s)
    log            its train.log
    log_tail       the last lines (at most TAIL_LINES) of the last attempt's log

The cluster configs (`cluster_configs`) are YAML for `ray up` on GCP: one
with single-host TPU VMs from the sweep config's `tpu` block (zone, project
and the optional keys of TPU_KEYS: accelerator_type, runtime_version, spot),
one with a group of GPU hosts; the sweep config's optional `ray` block
(`default_config`) shapes both. This module imports `ray` only inside the
functions that need it (an optional extra: pip install -e '.[ray]').
"""

import ctypes
import dataclasses
import importlib.metadata
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import ml_collections
import yaml  # PyYAML comes with ml_collections, flax and orbax.

from configs import cli
from configs import load
from launch import runs

REPO_ROOT = load.REPO_ROOT
PREEMPTED_EXIT = cli.PREEMPTED  # 75: `python -m train` saved a checkpoint on SIGTERM; resume it.
STATUS_FILE = 'sweep_status.json'
STATUS_FORMAT = 1
TAIL_LINES = 20
FINAL_STATES = ('ok', 'skipped', 'failed', 'preempted-out')
# Ray exceptions that mean the run's machine went away, not that the run failed (looked up by
# name: older Ray versions lack some).
PREEMPTION_ERRORS = ('NodeDiedError', 'WorkerCrashedError', 'ActorDiedError', 'LocalRayletDiedError',
                     'TaskUnschedulableError', 'ObjectLostError')
# Optional keys of the sweep config's `tpu` block that the TPU cluster config reads, with defaults.
TPU_KEYS = {'accelerator_type': 'v4-8', 'runtime_version': 'tpu-ubuntu2204-base', 'spot': True}
STOP_GRACE_S = 30.0  # Seconds a stopped run gets between SIGTERM and SIGKILL.

_PR_SET_PDEATHSIG = 1
try:
  _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith('linux') else None
  if _prctl is not None:
    _prctl.restype, _prctl.argtypes = ctypes.c_int, [ctypes.c_int] + [ctypes.c_ulong] * 4
except (OSError, AttributeError):
  _prctl = None


def default_config() -> ml_collections.ConfigDict:
  """The optional `ray` block of a sweep config, with every field commented."""
  r = ml_collections.ConfigDict()
  r.cluster_name = 'chinchax'  # Ray cluster name (`ray up`/`ray down`); node names start with it.
  r.resources = ''  # Ray resources one run holds, 'TPU=4' or 'GPU=1,CPU=8'; '' = CPU=1 (--ray-resources wins).
  r.head_machine_type = 'n2-standard-8'  # GCE machine of the head node: runs the driver, never a run; not spot.
  r.max_tpu_hosts = 4  # Most TPU VMs the autoscaler keeps (one run per TPU VM with the default resources).
  r.gpu_machine_type = 'a2-highgpu-1g'  # GCE machine of a GPU host.
  r.gpu_type = 'nvidia-tesla-a100'  # Its GPUs (GCE accelerator type).
  r.gpus_per_host = 1  # GPUs per GPU host.
  r.gpu_spot = True  # GPU hosts as spot VMs.
  r.gpu_image = 'projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11'  # With NVIDIA drivers.
  r.max_gpu_hosts = 4  # Most GPU hosts the autoscaler keeps.
  r.nfs = ''  # 'HOST:/EXPORT' of an NFS share (e.g. Filestore) mounted at mount_dir on every node; '' = none.
  r.mount_dir = '/mnt/sweeps'  # Where every node mounts the share; the sweep's --workdir goes under it.
  r.repo_dir = '~/chinchax'  # Where `ray up` copies this checkout on every node (installed with pip -e).
  r.venv = '~/venv'  # Python 3.11 virtual environment on every node (made with uv).
  return r


# ---------------------------------------------------------------------------- run folders and logs


def run_state(run_dir: str) -> str:
  """'finished' (summary.json), 'resume' (a checkpoint), or 'new'."""
  if os.path.isfile(os.path.join(run_dir, 'summary.json')):
    return 'finished'
  ckpts = os.path.join(run_dir, 'checkpoints')
  if os.path.isdir(ckpts) and any(n.isdigit() for n in os.listdir(ckpts)):
    return 'resume'
  return 'new'


def log_header(argv: list) -> str:
  """The line that opens each attempt in train.log (attempts are appended)."""
  return f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(argv)}\n'


def log_tail(path: str, lines: int = TAIL_LINES) -> list:
  """The last non-empty lines of the last attempt in a train.log (after its last '=== ' line)."""
  try:
    with open(path, 'rb') as f:
      f.seek(0, os.SEEK_END)
      f.seek(max(0, f.tell() - 64 * 1024))
      text = f.read().decode(errors='replace')
  except OSError:
    return []
  start = text.rfind('\n=== ')
  body = text[start + 1:].split('\n')[1:] if start >= 0 else text.split('\n')
  return [ln.strip()[:300] for ln in body if ln.strip()][-lines:]


def eval_loss(run_dir: str):
  """The final eval loss of a finished run (nats/token), or None."""
  try:
    with open(os.path.join(run_dir, 'summary.json')) as f:
      return json.load(f).get('eval_loss')
  except (OSError, ValueError):
    return None


def write_json_atomic(obj, path: str) -> None:
  """Write JSON so that a reader sees the old file or the new one, never half of one."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1)
    f.write('\n')
  os.replace(tmp, path)


# ---------------------------------------------------------------------------- the ledger


@dataclasses.dataclass
class RunRecord:
  """What the sweep knows about one run: one entry of the status file."""
  name: str
  index: int  # Position in the sweep (0-based): the [i/total] tag of its status lines.
  argv: list  # The command of every attempt.
  log: str  # Its train.log.
  state: str = 'queued'
  attempts: int = 0
  preemptions: int = 0
  failures: int = 0
  last_exit: int | None = None
  last_event: str = ''
  node: str = ''
  seconds: float = 0.0  # Wall time of its attempts, in total (s).
  log_tail: list = dataclasses.field(default_factory=list)
  history: list = dataclasses.field(default_factory=list)

  def status(self) -> dict:
    d = dataclasses.asdict(self)
    del d['index'], d['argv']
    d['seconds'] = round(self.seconds, 2)
    return d


class Ledger:
  """Skip finished runs, hand out the others, and decide what each attempt's end means.

  Both backends drive it the same way: while `waiting()` or runs are active,
  `next()` for each run that `pending()` says can start, `finish(...)` when
  its attempt ends, `summary()` at the end. It prints one status line per
  event and rewrites DIR/sweep_status.json after each.

  after: {run: the run it starts from} (a WSD cooldown branch and its
  parent). Such a run waits until its parent is finished ('ok' or
  'skipped'); when the parent ends failed or preempted out, the branch ends
  'failed' without starting (rerun the sweep once the parent is fixed).
  """

  def __init__(self, commands: list, workdir: str, backend: str, max_preemptions: int,
               max_failures: int, log=print, after: dict | None = None):
    if max_preemptions < 0 or max_failures < 0:
      raise ValueError(f'max_preemptions={max_preemptions} and max_failures={max_failures} must be >= 0')
    self.workdir, self.backend, self.log = workdir, backend, log
    self.max_preemptions, self.max_failures = max_preemptions, max_failures
    self.total = len(commands)
    self.t_start = time.perf_counter()
    self.records, self.queue = {}, []
    self.after = dict(after or {})
    os.makedirs(workdir, exist_ok=True)
    for i, (name, argv) in enumerate(commands):
      run_dir = os.path.join(workdir, name)
      rec = self.records[name] = RunRecord(name, i, list(argv), os.path.join(run_dir, 'train.log'))
      if run_state(run_dir) == 'finished':
        rec.state = 'skipped'
        loss = eval_loss(run_dir)
        self._say(rec, 'skip   ', 'finished' + (f' (eval loss {loss:.4f})' if isinstance(loss, float) else ''),
                  sep=': ')
      else:
        self.queue.append(rec)
    self.write()

  def _say(self, rec: RunRecord, verb: str, text: str, sep: str = ' ') -> None:
    self.log(f'[{rec.index + 1:>3}/{self.total}] {verb} {rec.name}{sep}{text}')

  def waiting(self) -> bool:
    """Runs are left to start (now or once their parents finish)."""
    return bool(self.queue)

  def _ready(self, rec: RunRecord) -> bool:
    parent = self.after.get(rec.name)
    return parent is None or self.records[parent].state in ('ok', 'skipped')

  def pending(self) -> bool:
    """A run can start now."""
    return any(self._ready(r) for r in self.queue)

  def next(self, where: str = '') -> RunRecord:
    """The next run that can start (first in, first out; requeued runs go last); marks it running."""
    rec = next(r for r in self.queue if self._ready(r))
    self.queue.remove(rec)
    resume = run_state(os.path.dirname(rec.log)) == 'resume'
    rec.state, rec.attempts = 'running', rec.attempts + 1
    self._say(rec, 'resume ' if resume else 'start  ', f'({where}log {rec.log})')
    self.write()
    return rec

  def finish(self, name: str, exit_status: int | None, seconds: float, node: str = '',
             lost: str = '', tail: list | None = None) -> str:
    """Record how an attempt ended; returns the run's new state.

    exit_status: the process's status, None when there is none (`lost`: the
    reason its node or worker went away, which counts as a preemption).
    seconds: the attempt's wall time. tail: the log tail as the node saw it
    (default: read from the log here).
    """
    rec = self.records[name]
    rec.seconds += seconds
    rec.node, rec.last_exit = node, exit_status
    rec.log_tail = log_tail(rec.log) if tail is None else list(tail)
    on = f' on {node}' if node else ''
    if lost or exit_status == PREEMPTED_EXIT:
      rec.preemptions += 1
      why = lost or f'exit {PREEMPTED_EXIT}'
      rec.last_event = f'preempted ({why})'
      head = f'({why}, {seconds:.1f} s{on})'
      if rec.preemptions <= self.max_preemptions:
        self._requeue(rec)
        self._say(rec, 'PREEMPT', f'{head}: requeued, resumes from its checkpoint (preemption '
                  f'{rec.preemptions} of {self.max_preemptions} allowed)')
      else:
        rec.state = 'preempted-out'
        self._say(rec, 'PREEMPT', f'{head}: preempted {rec.preemptions} times, more than '
                  f'--max-preemptions {self.max_preemptions}; rerun the sweep to resume it')
    elif exit_status == 0 and run_state(os.path.dirname(rec.log)) == 'finished':
      rec.state, rec.last_event = 'ok', 'finished'
      loss = eval_loss(os.path.dirname(rec.log))
      self._say(rec, 'done   ', f'in {seconds:.1f} s{on}' +
                (f': eval loss {loss:.4f}' if isinstance(loss, float) else ''))
    else:
      rec.failures += 1
      code = 'no exit status' if exit_status is None else f'exit {exit_status}'
      rec.last_event = f'failed ({code}' + (' without summary.json)' if exit_status == 0 else ')')
      last = rec.log_tail[-1][:200] if rec.log_tail else ''
      text = f'({code}, {seconds:.1f} s{on}): {last}\n          see {rec.log}'
      if rec.failures <= self.max_failures:
        self._requeue(rec)
        self._say(rec, 'FAILED ', f'{text}; retry {rec.failures} of {self.max_failures}')
      else:
        rec.state = 'failed'
        self._say(rec, 'FAILED ', text)
    rec.history.append(rec.last_event)
    if rec.state in ('failed', 'preempted-out'):
      self._fail_dependents(rec.name)
    self.write()
    return rec.state

  def _fail_dependents(self, parent: str) -> None:
    """Runs that start from `parent` (and theirs) end failed without starting."""
    for rec in [r for r in self.queue if self.after.get(r.name) == parent]:
      self.queue.remove(rec)
      rec.state = 'failed'
      rec.last_event = f'not started: its parent {parent} ended {self.records[parent].state}'
      rec.history.append(rec.last_event)
      self._say(rec, 'FAILED ', f'({rec.last_event})')
      self._fail_dependents(rec.name)

  def _requeue(self, rec: RunRecord) -> None:
    rec.state = 'requeued'
    self.queue.append(rec)

  def results(self) -> dict:
    """{name: 'skipped' | 'ok' | 'failed' | 'preempted-out'} for the runs that reached a final state."""
    return {n: r.state for n, r in self.records.items() if r.state in FINAL_STATES}

  def summary(self) -> dict:
    """Print the closing line; returns `results()`."""
    states = [r.state for r in self.records.values()]
    out = states.count('preempted-out')
    retried = sum(r.preemptions for r in self.records.values()), sum(r.failures for r in self.records.values())
    self.log(f'{states.count("ok")} ran, {states.count("skipped")} skipped (finished), '
             f'{states.count("failed")} failed' + (f', {out} preempted out' if out else '') +
             f' in {time.perf_counter() - self.t_start:.1f} s' +
             (f' ({retried[0]} preemption(s), {retried[1]} failure(s) along the way)' if any(retried) else ''))
    return self.results()

  def write(self) -> None:
    """Rewrite DIR/sweep_status.json (format in the module docstring)."""
    runs = [r.status() for r in self.records.values()]
    counts = {}
    for r in runs:
      counts[r['state']] = counts.get(r['state'], 0) + 1
    write_json_atomic(dict(
        format=STATUS_FORMAT, backend=self.backend, workdir=self.workdir,
        updated=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        max_preemptions=self.max_preemptions, max_failures=self.max_failures, counts=counts, runs=runs),
        os.path.join(self.workdir, STATUS_FILE))


# ---------------------------------------------------------------------------- on the node


def _die_with_parent(parent_pid: int):
  """preexec_fn: SIGKILL this child when its parent (the Ray worker) dies, Linux only."""
  def preexec():
    if _prctl is not None:
      _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # The parent died before prctl took effect.
      os._exit(1)
  return preexec


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
  """SIGTERM (the training loop saves a checkpoint and exits), then SIGKILL after `grace_s`."""
  proc.terminate()
  try:
    proc.wait(timeout=grace_s)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def _wait(proc: subprocess.Popen, poll_s: float = 0.5) -> int:
  """proc.wait(), in short waits: Ray delivers a cancellation between Python steps, not inside one."""
  while True:
    try:
      return proc.wait(timeout=poll_s)
    except subprocess.TimeoutExpired:
      pass


def run_on_node(argv: list, log_path: str) -> dict:
  """The body of a run's Ray task: `argv` from this node's repository root, output into log_path.

  Returns {'exit': status (127: could not start), 'seconds': wall time (s),
  'node': host name, 'tail': the last lines of this attempt's log}. If the
  task is cancelled (Ctrl-C on the driver) the run is stopped with `stop`.
  """
  t0 = time.perf_counter()
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'a') as f:
    f.write(log_header(argv))
    f.flush()
    try:
      proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                              env=runs.run_env(os.path.dirname(os.path.dirname(log_path))),
                              preexec_fn=_die_with_parent(os.getpid()))
    except OSError as e:
      f.write(f'cannot start {argv[0]} on {socket.gethostname()}: {e}\n')
      status = 127
    else:
      try:
        status = _wait(proc)
      except BaseException:
        stop(proc)
        raise
  return dict(exit=status, seconds=time.perf_counter() - t0, node=socket.gethostname(),
              tail=log_tail(log_path))


# ---------------------------------------------------------------------------- the driver


def parse_resources(text: str) -> dict:
  """'TPU=4,CPU=8' -> {'TPU': 4.0, 'CPU': 8.0}; '' -> {'CPU': 1.0}. ValueError names the bad item."""
  out = {}
  for item in filter(None, (s.strip() for s in text.split(','))):
    key, eq, value = item.partition('=')
    try:
      amount = float(value)
    except ValueError:
      amount = -1.0
    if not eq or not key.strip() or amount < 0:
      raise ValueError(f'resources: {item!r} is not NAME=AMOUNT (e.g. TPU=4, GPU=1, CPU=2)')
    out[key.strip()] = amount
  return out or {'CPU': 1.0}


def _task_options(resources: dict) -> dict:
  """Ray task options holding `resources`, never retried by Ray (the ledger decides)."""
  rest = dict(resources)
  opts = dict(num_cpus=rest.pop('CPU', 0.0 if rest else 1.0), max_retries=0, retry_exceptions=False)
  if 'GPU' in rest:
    opts['num_gpus'] = rest.pop('GPU')
  if rest:
    opts['resources'] = rest
  return opts


def _preemption(ray, error: Exception) -> bool:
  kinds = tuple(getattr(ray.exceptions, n) for n in PREEMPTION_ERRORS if hasattr(ray.exceptions, n))
  return isinstance(error, kinds)


def run_all_ray(commands: list, workdir: str, address: str | None = None, max_preemptions: int = 3,
                max_failures: int = 1, log=print, resources_per_run: dict | None = None,
                poll_seconds: float = 0.5, after: dict | None = None) -> dict:
  """Run (name, argv) pairs as Ray tasks, one per run, packed by Ray onto free resources.

  Same contract as `launch.sweep.run_all`: logs appended to DIR/<name>/train.log,
  finished runs (summary.json) skipped, unfinished ones resumed, failures
  recorded with their log tail, one status line per event, DIR/sweep_status.json.
  address: the Ray cluster ('auto', 'ray://HOST:10001', ...); None = RAY_ADDRESS,
  a running local cluster, or a new local one. Uses the connection of an
  already initialized Ray as it is. resources_per_run: Ray resources each run
  holds (default {'CPU': 1}). Returns {name: 'skipped' | 'ok' | 'failed' |
  'preempted-out'}. after: {branch: parent}, as `Ledger` takes it (a branch is
  submitted once its parent finished). Ctrl-C cancels the running tasks, which
  stop their runs.
  """
  import ray  # Local: ray is an optional extra (pip install -e '.[ray]'), only for --backend ray.
  ledger = Ledger(commands, workdir, 'ray', max_preemptions, max_failures, log, after)
  if not ledger.waiting():
    return ledger.summary()
  started_ray = not ray.is_initialized()
  if started_ray:
    ray.init(address=address)
  resources = dict(resources_per_run or {'CPU': 1.0})
  task = ray.remote(run_on_node).options(**_task_options(resources))
  log(f'ray: {len(ray.nodes())} node(s), {ray.cluster_resources().get("CPU", 0):g} CPUs in the cluster; '
      f'each run holds {resources}')
  active = {}  # ObjectRef -> (run name, submit time)
  try:
    while ledger.waiting() or active:
      while ledger.pending():  # Everything that can start is submitted; Ray starts what fits.
        rec = ledger.next('Ray task; ')
        active[task.remote(rec.argv, rec.log)] = (rec.name, time.perf_counter())
      done, _ = ray.wait(list(active), num_returns=1, timeout=poll_seconds)
      for ref in done:
        name, t0 = active.pop(ref)
        _finish_task(ray, ledger, name, ref, time.perf_counter() - t0)
  except KeyboardInterrupt:
    for ref in active:
      ray.cancel(ref)  # Raises KeyboardInterrupt in the task, which stops its run.
    if active:
      ray.wait(list(active), num_returns=len(active), timeout=STOP_GRACE_S + 5)
    log('interrupted: running tasks cancelled; rerun the same command to resume')
    raise
  finally:
    if started_ray:
      ray.shutdown()
  return ledger.summary()


def _finish_task(ray, ledger: Ledger, name: str, ref, waited: float) -> None:
  """Hand a finished task's outcome to the ledger: its exit status, or why it has none."""
  try:
    out = ray.get(ref)
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [''])[0].split('. ')[0]
    detail = f'{type(e).__name__}: {first}'[:200]
    if _preemption(ray, e):
      ledger.finish(name, None, waited, lost=detail)
    else:  # The task itself broke (e.g. the log folder is not writable there): a failure.
      ledger.finish(name, None, waited, tail=log_tail(ledger.records[name].log) + [detail])
    return
  ledger.finish(name, out['exit'], out['seconds'], node=out['node'], tail=out['tail'])


# ---------------------------------------------------------------------------- cluster configs


def tpu_hosts(accelerator_type: str) -> tuple[int, int]:
  """(hosts, chips per host) of a TPU VM type: 'v4-8' -> (1, 4), 'v5litepod-16' -> (4, 4).

  The number in v2, v3, v4 and v5p names counts TensorCores (2 per chip);
  in v5litepod / v5e / v6e names it counts chips. Hosts hold 4 chips, except
  single-host v5e/v6e slices of up to 8.
  """
  gen, _, count = accelerator_type.lower().partition('-')
  if not count.isdigit() or int(count) < 1:
    raise ValueError(f'tpu.accelerator_type={accelerator_type!r}: expected e.g. v4-8, v5p-8, '
                     'v5litepod-8 or v6e-8')
  one_core = gen in ('v5litepod', 'v5e', 'v6e')
  if not one_core and gen not in ('v2', 'v3', 'v4', 'v5p'):
    raise ValueError(f'tpu.accelerator_type={accelerator_type!r}: unknown TPU generation {gen!r}')
  chips = int(count) if one_core else max(1, int(count) // 2)
  per_host = chips if one_core and chips <= 8 else min(chips, 4)
  return -(-chips // per_host), per_host


def _region(zone: str) -> str:
  return zone.rsplit('-', 1)[0] if zone.count('-') >= 2 else zone


def _setup_commands(r, extras: str, also: str = '') -> list:
  """Node set-up: Python 3.11 (uv), then this checkout installed with pip -e and its extras."""
  ray_pin = ''
  try:
    ray_pin = f' "ray[default]=={importlib.metadata.version("ray")}"'  # Same Ray as the driver's.
  except importlib.metadata.PackageNotFoundError:
    pass
  return [
      'command -v uv || test -x ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh',
      f'test -x {r.venv}/bin/python || ~/.local/bin/uv venv --seed --python 3.11 {r.venv}',
      f"cd {r.repo_dir} && {r.venv}/bin/python -m pip install -e '.[{extras}]'{ray_pin}{also}",
  ]


def _cluster(r, zone: str, project: str, name: str, worker: str, worker_node: dict,
             worker_setup: list) -> dict:
  """A GCP cluster config: an on-demand CPU head node and one autoscaled type of worker node."""
  mount = []
  if r.nfs:
    mount = [f'sudo apt-get install -y nfs-common && sudo mkdir -p {r.mount_dir} && '
             f'(mountpoint -q {r.mount_dir} || sudo mount -t nfs {r.nfs} {r.mount_dir}) && '
             f'sudo chmod a+rwx {r.mount_dir}']
  ray_bin = f'{r.venv}/bin/ray'
  return dict(
      cluster_name=name,
      max_workers=worker_node['max_workers'],
      idle_timeout_minutes=10,
      provider=dict(type='gcp', region=_region(zone), availability_zone=zone, project_id=project),
      auth=dict(ssh_user='ubuntu'),
      available_node_types={'head': _head_node(r), worker: worker_node},
      head_node_type='head',
      file_mounts={r.repo_dir: REPO_ROOT},  # This checkout, copied to every node by `ray up`.
      rsync_exclude=['.venv', '.git', 'runs', '**/__pycache__', '*.egg-info'],
      initialization_commands=[],
      setup_commands=mount,
      head_setup_commands=_setup_commands(r, 'ray', ' "google-api-python-client>=2,<3"'),  # The autoscaler's.
      worker_setup_commands=worker_setup,
      head_start_ray_commands=[
          f'{ray_bin} stop',
          f'ulimit -n 65536; {ray_bin} start --head --port=6379 --num-cpus=0 '
          '--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0'],
      worker_start_ray_commands=[
          f'{ray_bin} stop',
          f'ulimit -n 65536; {ray_bin} start --address=$RAY_HEAD_IP:6379'],
  )


def _head_node(r) -> dict:
  return dict(resources={'CPU': 0}, node_config=dict(
      machineType=r.head_machine_type,
      disks=[dict(boot=True, autoDelete=True, type='PERSISTENT', initializeParams=dict(
          diskSizeGb=100,
          sourceImage='projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts'))]))


def _tpu_fields(tpu) -> dict:
  """zone, project and TPU_KEYS from a `tpu` block (None or '' -> the default or a placeholder)."""
  t = dict(TPU_KEYS, zone='ZONE', project='PROJECT')
  for k in t:
    value = tpu.get(k, None) if tpu is not None else None
    if value not in ('', None):
      t[k] = value
  return t


def cluster_configs(tpu: ml_collections.ConfigDict | None, ray_cfg: ml_collections.ConfigDict | None
                    ) -> dict:
  """{'tpu': config, 'gpu': config}: Ray cluster configs (dicts for YAML) for `ray up` on GCP.

  tpu: the sweep config's `tpu` block (zone, project, and the TPU_KEYS);
  None gives placeholders. The head node is an on-demand CPU VM that runs
  the sweep's driver and no run (so it survives spot preemptions); workers
  are single-host TPU VMs (or GPU hosts), each installing this checkout
  (copied by `ray up` to repo_dir) with `pip install -e` in a Python 3.11
  virtual environment. Raises ValueError for a multi-host TPU type: one run
  is one process here, and a slice of several hosts needs one per host.
  """
  t, r = _tpu_fields(tpu), ray_cfg if ray_cfg is not None else default_config()
  hosts, chips = tpu_hosts(t['accelerator_type'])
  if hosts > 1:
    raise ValueError(f'tpu.accelerator_type={t["accelerator_type"]!r} is a slice of {hosts} hosts; the '
                     'Ray backend runs each run as one process, so use a single-host type (v4-8, '
                     'v5p-8, v5litepod-8, v6e-8) or the gcloud path (--tpu)')
  tpu_cfg = _cluster(r, t['zone'], t['project'], f'{r.cluster_name}-tpu', 'tpu_worker', dict(
      min_workers=0, max_workers=r.max_tpu_hosts, resources={'TPU': chips},
      node_config=dict(acceleratorType=t['accelerator_type'], runtimeVersion=t['runtime_version'],
                       schedulingConfig=dict(spot=bool(t['spot'])))),
      _setup_commands(r, 'ray,tpu-aot'))  # tpu-aot = jax[tpu], with libtpu.
  scheduling = dict(onHostMaintenance='TERMINATE', automaticRestart=False)
  if r.gpu_spot:
    scheduling.update(provisioningModel='SPOT', instanceTerminationAction='DELETE')
  gpu_cfg = _cluster(r, t['zone'], t['project'], f'{r.cluster_name}-gpu', 'gpu_worker', dict(
      min_workers=0, max_workers=r.max_gpu_hosts, resources={'GPU': r.gpus_per_host},
      node_config=dict(
          machineType=r.gpu_machine_type,
          guestAccelerators=[dict(acceleratorType=r.gpu_type, acceleratorCount=r.gpus_per_host)],
          scheduling=scheduling,
          metadata=dict(items=[dict(key='install-nvidia-driver', value='True')]),
          disks=[dict(boot=True, autoDelete=True, type='PERSISTENT',
                      initializeParams=dict(diskSizeGb=200, sourceImage=r.gpu_image))])),
      _setup_commands(r, 'ray', ' "jax[cuda12]"'))
  return {'tpu': tpu_cfg, 'gpu': gpu_cfg}


def dry_run_text(tpu, ray_cfg, sweep_config: str, workdir: str, extra_flags: list) -> str:
  """The two cluster configs as YAML, and the commands that start the sweep on each cluster.

  sweep_config and workdir as given to launch.sweep; extra_flags: further
  launch.sweep flags for the driver on the head node (e.g. --max-preemptions 5).
  """
  r = ray_cfg if ray_cfg is not None else default_config()
  cfgs = cluster_configs(tpu, r)
  _, chips = tpu_hosts(_tpu_fields(tpu)['accelerator_type'])
  resources = {'tpu': f'TPU={chips}', 'gpu': f'GPU={r.gpus_per_host}'}
  remote_workdir = workdir if workdir.startswith(r.mount_dir + '/') else \
      f'{r.mount_dir}/{os.path.basename(workdir.rstrip("/"))}'
  config_rel = os.path.relpath(os.path.abspath(sweep_config), REPO_ROOT)
  out = []
  for kind, what in (('tpu', 'GCP TPU VMs (single-host slices)'), ('gpu', 'a group of GCP GPU hosts')):
    path = f'ray_{kind}.yaml'
    # The venv path stays unquoted so that the head node's shell expands its ~.
    driver = f'{r.venv}/bin/python ' + shlex.join(
        ['-m', 'launch.sweep', '--config', config_rel, '--workdir', remote_workdir, '--backend', 'ray',
         '--ray-address', 'auto', '--ray-resources', resources[kind], *extra_flags])
    out += [f'# ---- Ray cluster config for {what}: save as {path}',
            yaml.safe_dump(cfgs[kind], sort_keys=False, default_flow_style=False, width=1000).rstrip(),
            f'# ---- commands ({kind}): start the cluster, forward its dashboard, submit the sweep, follow it',
            f'ray up -y {path}',
            f'ray dashboard {path} &  # forwards localhost:8265 to the head node',
            'ray job submit --address http://127.0.0.1:8265 --no-wait -- '
            + shlex.quote(f'cd {r.repo_dir} && {driver}'),
            'ray job logs --address http://127.0.0.1:8265 --follow JOB_ID  # the status lines',
            f'ray rsync-down {path} {remote_workdir}/ {workdir}/  # the runs, status file and fit',
            f'ray down -y {path}', '']
  if config_rel.startswith('..'):
    out.append(f'# note: the sweep config {sweep_config} is outside this checkout; ray up copies only the '
               f'checkout to {r.repo_dir}, so put the config in it.')
  if not r.nfs:
    out.append(f'# note: ray.nfs is empty; with worker nodes, --workdir ({remote_workdir}) must be a '
               'share every node mounts: set ray.nfs to an NFS (Filestore) export.')
  return '\n'.join(out)
