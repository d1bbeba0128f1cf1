"""The run ledger that both sweep backends keep: which run is where, and what each attempt's end means.

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
file, then os.replace; in a bucket one object upload, at most every
BUCKET_WRITE_S seconds and once at the end), after every event. Format 1, JSON:

  format           1
  backend          'local' or 'ray'
  workdir          the sweep folder (absolute path, or the bucket URL)
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
"""

import dataclasses
import json
import os
import shlex
import time

from etils import epath

from configs import cli
from launch import remote

PREEMPTED_EXIT = cli.PREEMPTED  # 75: `python -m train` saved a checkpoint on SIGTERM; resume it.
STATUS_FILE = 'sweep_status.json'
STATUS_FORMAT = 1
TAIL_LINES = 20
FINAL_STATES = ('ok', 'skipped', 'failed', 'preempted-out')
BUCKET_WRITE_S = 2.0  # Seconds between rewrites of a status file in a bucket (a final one always).


# ---------------------------------------------------------------------------- run folders and logs


def run_state(run_dir: str) -> str:
  """'finished' (summary.json), 'resume' (a checkpoint), or 'new'."""
  if remote.exists(os.path.join(run_dir, 'summary.json')):
    return 'finished'
  if any(n.isdigit() for n in remote.listdir(os.path.join(run_dir, 'checkpoints'))):
    return 'resume'
  return 'new'


def log_header(argv: list) -> str:
  """The line that opens each attempt in train.log (attempts are appended)."""
  return f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {shlex.join(argv)}\n'


def log_tail(path: str, lines: int = TAIL_LINES) -> list:
  """The last non-empty lines of the last attempt in a train.log (after its last '=== ' line)."""
  try:
    with epath.Path(path).open('rb') as f:
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
    return json.loads(remote.read_text(os.path.join(run_dir, 'summary.json'))).get('eval_loss')
  except (OSError, ValueError):
    return None


def write_json_atomic(obj, path: str) -> None:
  """Write JSON so that a reader sees the old file or the new one, never half of one (local or bucket)."""
  remote.write_text_atomic(path, json.dumps(obj, indent=1) + '\n')


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
    self._t_written = float('-inf')
    remote.makedirs(workdir)
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
    self.write(force=True)
    return self.results()

  def write(self, force: bool = False) -> None:
    """Rewrite DIR/sweep_status.json (format in the module docstring); in a bucket at most once
    per BUCKET_WRITE_S unless `force` (GCS allows about one write per object per second)."""
    if remote.is_remote(self.workdir) and not force:
      if time.monotonic() - self._t_written < BUCKET_WRITE_S:
        return
    self._t_written = time.monotonic()
    runs = [r.status() for r in self.records.values()]
    counts = {}
    for r in runs:
      counts[r['state']] = counts.get(r['state'], 0) + 1
    write_json_atomic(dict(
        format=STATUS_FORMAT, backend=self.backend, workdir=self.workdir,
        updated=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        max_preemptions=self.max_preemptions, max_failures=self.max_failures, counts=counts, runs=runs),
        os.path.join(self.workdir, STATUS_FILE))
