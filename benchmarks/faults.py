"""The fault table (issue 14): inject faults into tiny training runs, resume them, compare.

  python -m benchmarks.faults [--json OUT] [--only NAME,...] [--keep]

Each fault starts `python -m train` as a child process on one tiny synthetic
config (60 steps, a checkpoint every 7 steps, an eval every 20, every step's
train loss in curve.json), injects the fault, reruns the same command to
resume, and compares the workdir with one uninterrupted reference run of the
same config. It measures and asserts nothing. The columns:

  recovered     the documented behaviour was seen (the exit status, the one warning or error
                line, no traceback; see the notes) and the resume finished from the expected
                checkpoint (the newest complete one on disk after the fault, the previous one
                when the newest was damaged).
  steps lost    the newest step the interrupted process logged minus the step the resume
                started from: steps trained twice. The target for SIGTERM is 0.
  final state   bit-identical: every array of the final checkpoint (step 60), restored with
                orbax as numpy, equal byte for byte to the reference's, and summary.json's
                final_train_loss and eval_loss, and every eval row of curve.json, equal bit for
                bit. The resharded row reports the max relative difference instead (relative L2
                norm per array, relative per loss).
  curve         curve.json rows (step, train or eval row) missing / duplicated against the
                reference's curve.json.
  data windows  repeated / skipped, inferred (not observed): 0 / 0 when every step's train
                loss equals the reference's step for step (on the resharded resume: within 1%
                of the reference's median step-to-step change) and the final data-iterator
                state (the next window's index) equals the reference's.

Faults (names for --only): kill -9 between checkpoints, right after one, while orbax writes one
(its `<step>.orbax-checkpoint-tmp-*` folder exists) and after orbax's rename but before the
manifest; SIGTERM; the newest checkpoint truncated, overwritten with 4 KiB of random bytes, its
manifest or its data-iterator file deleted, its arrays replaced by the previous step's (readable
but wrong: only the manifest's checksums can tell); NaN gradients (train.poison_step) under
'stop' and 'skip'; a full disk (a 2 MiB tmpfs, filled after a checkpoint; skipped with the
reason where it cannot be mounted); a resume on 8 forced host devices of a run killed on 1. A
fault whose moment never comes (the run ends first) is reported as skipped, with the reason.
Progress goes to stderr; about 6 minutes on 2 shared CPU cores (338 s measured).
"""

import argparse
import collections
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp

from configs import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
EVERY = 7  # Checkpoint steps: 7, 14, 21, ..., 56 and 60.
POISON = 9  # The step whose gradients train.poison_step makes NaN.
FLAGS = ['--config', 'configs/base.py', '--config.model.vocab_size=64', '--config.model.d_model=32',
         '--config.model.n_layers=2', '--config.model.n_heads=4', '--config.model.n_kv_heads=2',
         '--config.model.d_ff=64', '--config.data.seq_len=16', '--config.data.global_batch_size=8',
         '--config.data.synthetic_tokens=40000', f'--config.train.steps={STEPS}',
         '--config.train.eval_every=20', '--config.train.log_every=1',
         f'--config.train.checkpoint_every={EVERY}', '--config.train.eval_batches=2',
         '--config.train.peak_flops=1e11', '--config.optim.lr=1e-2']
TIMEOUT = 300  # Seconds one child may take before it is killed and the row reported as hung.
TMPFS_SIZE = '2m'
TMPFS_FREE = 96 * 1024  # Bytes left free on the tmpfs: room for curve.json, not for a checkpoint.
EIGHT_DEVICES = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
STEP_LINE = re.compile(r'\] step (\d+)/\d+ \|')
RESUMED = re.compile(r'resumed from step (\d+)')
SKIP_WARNING = 'skipping checkpoint step'
T0 = time.perf_counter()


def log(message: str) -> None:
  print(f'[{time.perf_counter() - T0:6.1f} s] {message}', file=sys.stderr, flush=True)


class Child:
  """One `python -m train` run on the tiny config; its stdout and stderr collected as they come."""

  def __init__(self, workdir: str, *extra: str, env: dict | None = None):
    self.workdir = workdir
    self.last_step = 0  # Newest step whose train line was printed.
    self.caught = None  # What a kill condition saw (set by the condition).
    self.out, self.err = [], []
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'train', *FLAGS, '--workdir', workdir, *extra], cwd=REPO,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '', 'PYTHONUNBUFFERED': '1',
             **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pipes = ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
    self.readers = [threading.Thread(target=self._drain, args=pipe, daemon=True) for pipe in pipes]
    for t in self.readers:
      t.start()

  def _drain(self, stream, lines: list) -> None:
    for line in stream:
      lines.append(line)
      if lines is self.out and (m := STEP_LINE.search(line)):
        self.last_step = max(self.last_step, int(m.group(1)))

  def wait_for(self, condition, interval: float = 0.001) -> bool:
    """Poll `condition()` until it holds (True) or the process ends or times out (False)."""
    deadline = time.perf_counter() + TIMEOUT
    while self.proc.poll() is None and time.perf_counter() < deadline:
      if condition():
        return True
      time.sleep(interval)
    return False

  def kill(self, sig=signal.SIGKILL) -> None:
    if self.proc.poll() is None:
      self.proc.send_signal(sig)

  def wait(self) -> int | None:
    """The exit status (negative: killed by that signal), or None if it hung (then killed)."""
    try:
      rc = self.proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      rc = None
    for t in self.readers:
      t.join(10)
    return rc

  @property
  def stdout(self) -> str:
    return ''.join(self.out)

  @property
  def stderr(self) -> str:
    return ''.join(self.err)

  def resumed_from(self) -> int:
    m = RESUMED.search(self.stdout)
    return int(m.group(1)) if m else 0

  def errors(self) -> list[str]:
    return [ln.strip() for ln in self.err if ln.startswith('error:')]

  def tail(self, n: int = 3) -> str:
    lines = [ln.strip() for ln in self.err if ln.strip()]
    return ' / '.join(lines[-n:])


# ---- What is on disk.

def ckpt_dir(workdir: str) -> str:
  return os.path.join(workdir, 'checkpoints')


def step_dir(workdir: str, step: int) -> str:
  return os.path.join(ckpt_dir(workdir), str(step))


def has_manifest(workdir: str, step: int) -> bool:
  return os.path.exists(os.path.join(step_dir(workdir, step), 'manifest.json'))


def complete_steps(workdir: str) -> list[int]:
  """Checkpoint steps with their manifest, oldest first."""
  names = os.listdir(ckpt_dir(workdir)) if os.path.isdir(ckpt_dir(workdir)) else []
  return sorted(int(n) for n in names if n.isdigit() and has_manifest(workdir, int(n)))


def unfinished(workdir: str, step: int) -> str | None:
  """How far an unfinished save of `step` got: 'tmp' (orbax writing), 'no manifest', or None."""
  try:
    names = os.listdir(ckpt_dir(workdir))
  except FileNotFoundError:
    return None
  if any(n.startswith(f'{step}.orbax-checkpoint-tmp') for n in names):
    return 'tmp'
  if str(step) in names and not has_manifest(workdir, step):
    return 'no manifest'
  return None


def on_disk(workdir: str) -> str:
  """The checkpoints folder in one line: '14, 21 (no manifest), corrupt/28-checksum'."""
  d = ckpt_dir(workdir)
  if not os.path.isdir(d):
    return 'no checkpoints folder'
  items = []
  for n in sorted(os.listdir(d), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n)):
    if n.isdigit():
      items.append(n if has_manifest(workdir, int(n)) else f'{n} (no manifest)')
    elif n == 'corrupt':
      items += [f'corrupt/{c}' for c in sorted(os.listdir(os.path.join(d, n)))]
    else:
      items.append(n)
  return ', '.join(items) or 'empty'


def read_json(path: str):
  with open(path) as f:
    return json.load(f)


def restore_arrays(workdir: str, step: int = STEPS) -> dict[str, np.ndarray] | None:
  """Every array of checkpoint `step`, read by orbax as numpy (any device count), or None."""
  path = os.path.join(step_dir(workdir, step), 'state')
  if not os.path.isdir(path):
    return None
  checkpointer = ocp.PyTreeCheckpointer()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    tree = checkpointer.metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_leaves_with_path(state)}


def iterator_state(workdir: str, step: int = STEPS):
  path = os.path.join(step_dir(workdir, step), 'data', 'process_0-of-1.json')
  return read_json(path) if os.path.exists(path) else None


# ---- Comparison with the uninterrupted run.

@dataclasses.dataclass
class Reference:
  workdir: str
  curve: list
  summary: dict
  arrays: dict
  iterator: dict
  step_change: float  # Median relative change of the train loss from one step to the next.

  @classmethod
  def load(cls, workdir: str) -> 'Reference':
    curve = read_json(os.path.join(workdir, 'curve.json'))
    losses = [r['train_loss'] for r in curve if r['eval_loss'] is None]
    change = statistics.median(abs(b - a) / abs(a) for a, b in itertools.pairwise(losses))
    return cls(workdir, curve, read_json(os.path.join(workdir, 'summary.json')),
               restore_arrays(workdir), iterator_state(workdir), change)


def _key(row: dict) -> tuple[int, str]:
  return row['step'], 'train' if row['eval_loss'] is None else 'eval'


def _rel(a: float, b: float) -> float:
  if a == b:
    return 0.0
  if not (math.isfinite(a) and math.isfinite(b)):
    return math.inf
  return abs(a - b) / max(abs(b), 1e-30)


def compare(workdir: str, ref: Reference) -> dict:
  """Curve rows, per-step losses, final arrays and iterator state of `workdir` against `ref`."""
  curve = read_json(os.path.join(workdir, 'curve.json'))
  summary = read_json(os.path.join(workdir, 'summary.json'))
  got, want = collections.Counter(map(_key, curve)), collections.Counter(map(_key, ref.curve))
  ref_rows = {_key(r): r for r in ref.curve}
  common = [(r, ref_rows[_key(r)]) for r in curve if _key(r) in ref_rows]
  train = [(a['train_loss'], b['train_loss'], a['step']) for a, b in common
           if a['eval_loss'] is None]
  evals = [(a['eval_loss'], b['eval_loss']) for a, b in common if a['eval_loss'] is not None]
  differ = [s for a, b, s in train if a != b]
  arrays = restore_arrays(workdir)
  array_diff, array_rel = None, None
  if arrays is not None:
    array_diff = [k for k in ref.arrays if k not in arrays or arrays[k].dtype != ref.arrays[k].dtype
                  or arrays[k].shape != ref.arrays[k].shape
                  or arrays[k].tobytes() != ref.arrays[k].tobytes()]
    array_rel = max((float(np.linalg.norm((arrays[k].astype(np.float64) - ref.arrays[k])))
                     / max(float(np.linalg.norm(ref.arrays[k].astype(np.float64))), 1e-30)
                     for k in ref.arrays if k in arrays and arrays[k].shape == ref.arrays[k].shape
                     and np.issubdtype(ref.arrays[k].dtype, np.floating)), default=0.0)
  return {
      'curve_missing': sorted((want - got).keys()),
      'curve_duplicated': sorted((got - want).keys()),  # Or extra: more often than the reference.
      'train_losses_compared': len(train),
      'train_losses_differing': len(differ),
      'first_differing_step': differ[0] if differ else None,
      'max_rel_train_loss': max((_rel(a, b) for a, b, _ in train), default=0.0),
      'max_rel_eval_loss': max((_rel(a, b) for a, b in evals), default=0.0),
      'eval_losses_compared': len(evals),
      'eval_losses_differing': sum(a != b for a, b in evals),
      'summary_losses_equal': (summary['final_train_loss'] == ref.summary['final_train_loss']
                               and summary['eval_loss'] == ref.summary['eval_loss']),
      'max_rel_final_loss': max(_rel(summary['final_train_loss'], ref.summary['final_train_loss']),
                                _rel(summary['eval_loss'], ref.summary['eval_loss'])),
      'arrays_compared': len(ref.arrays),
      'arrays_differing': array_diff,  # None: no final checkpoint.
      'max_rel_array': array_rel,
      'iterator_equal': iterator_state(workdir) == ref.iterator,
      'iterator': iterator_state(workdir),
      'skipped_updates': summary.get('skipped_updates'),
      'n_devices': summary.get('n_devices'),
  }


def _fmt_keys(keys) -> str:
  return ', '.join(f'{kind} {step}' for step, kind in keys)


def curve_cell(c: dict | None) -> str:
  if c is None:
    return 'n/a'
  miss, dup = c['curve_missing'], c['curve_duplicated']
  return (f'{len(miss)}{f" ({_fmt_keys(miss)})" if miss else ""} / '
          f'{len(dup)}{f" ({_fmt_keys(dup)})" if dup else ""}')


def state_cell(c: dict | None, mode: str) -> str:
  if c is None:
    return 'n/a (did not finish)'
  if mode == 'tolerance':
    return (f'max rel diff: arrays {c["max_rel_array"]:.1e}, '
            f'train loss {c["max_rel_train_loss"]:.1e}, eval loss {c["max_rel_eval_loss"]:.1e}')
  if c['arrays_differing'] is None:
    return 'no (no final checkpoint)'
  if not c['arrays_differing'] and c['summary_losses_equal'] and not c['eval_losses_differing']:
    return 'yes'
  why = f'{len(c["arrays_differing"])} of {c["arrays_compared"]} arrays differ'
  if c['eval_losses_differing']:
    why += f', {c["eval_losses_differing"]} of {c["eval_losses_compared"]} eval rows differ'
  if not c['summary_losses_equal']:
    why += f', final losses differ (max rel {c["max_rel_final_loss"]:.1e})'
  return f'no ({why}{"; by design" if mode == "skip" else ""})'


def windows_cell(c: dict | None, mode: str, ref: Reference) -> str:
  if c is None:
    return 'n/a'
  n, bad = c['train_losses_compared'], c['train_losses_differing']
  it = 'iterator state equal' if c['iterator_equal'] else f'iterator state differs: {c["iterator"]}'
  if mode == 'tolerance':
    close = c['max_rel_train_loss'] < 0.01 * ref.step_change
    head = '0 / 0' if close and c['iterator_equal'] else 'unknown'
    return (f'{head} (inferred: {n} step losses within {c["max_rel_train_loss"]:.1e} rel, vs a '
            f'median step-to-step change of {ref.step_change:.1e}; {it})')
  if mode == 'skip':
    head = '0 / 0' if c['iterator_equal'] else 'unknown'
    first = c['first_differing_step']
    return (f'{head} (inferred from the iterator position; train losses bit-equal at every step '
            f'before {first or STEPS + 1}, then differ: the dropped update)')
  if bad == 0 and c['iterator_equal']:
    return f'0 / 0 (inferred: all {n} step losses bit-equal; {it})'
  return (f'unknown ({bad} of {n} step losses differ, first at step {c["first_differing_step"]}; '
          f'{it})')


# ---- The faults.

@dataclasses.dataclass
class Row:
  name: str
  fault: str
  recovered: bool | None  # None: skipped.
  steps_lost: int | None
  final_state: str
  curve: str
  windows: str
  notes: str
  seconds: float = 0.0
  details: dict = dataclasses.field(default_factory=dict)


class NotInjected(Exception):
  """The fault could not be injected (the run ended before its moment, or the machine refuses)."""

  def __init__(self, fault: str, reason: str):
    super().__init__(reason)
    self.fault = fault


def inject(c: Child, condition, fault: str, moment: str, interval: float = 0.001) -> None:
  """Return once `condition()` holds: the moment to inject `fault`; else raise NotInjected."""
  if not c.wait_for(condition, interval):
    c.kill()
    rc = c.wait()
    raise NotInjected(fault, f'the moment ({moment}) never came: the run ended first with status '
                      f'{rc}' + (f': {c.tail(1)}' if rc else ''))


class Bench:
  """The temporary folder, the reference run, and the shared base of the damaged-checkpoint rows."""

  def __init__(self, root: str):
    self.root = root
    self.ref = None
    self._damaged_base = None

  def workdir(self, name: str) -> str:
    return os.path.join(self.root, name)

  def reference(self) -> Reference:
    log('reference: the uninterrupted run')
    c = Child(self.workdir('reference'))
    rc = c.wait()
    if rc != 0:
      raise RuntimeError(f'the uninterrupted run failed (status {rc}): {c.tail(5)}')
    self.ref = Reference.load(c.workdir)
    log(f'reference: done, final train loss {self.ref.summary["final_train_loss"]!r}, eval loss '
        f'{self.ref.summary["eval_loss"]!r}')
    return self.ref

  def resume(self, name: str, fault: str, workdir: str, last_step: int, expect_from: int,
             fault_ok: bool, notes: list[str], *extra: str, env: dict | None = None,
             mode: str = 'exact', warnings_expected: int = 0) -> Row:
    """Rerun `workdir`, compare it with the reference, and make the row."""
    log(f'{name}: resuming ({on_disk(workdir)})')
    c = Child(workdir, *extra, env=env)
    rc = c.wait()
    start = c.resumed_from()
    warned = [ln.strip() for ln in c.err if SKIP_WARNING in ln]
    cmp = compare(workdir, self.ref) if rc == 0 else None
    recovered = (fault_ok and rc == 0 and start == expect_from and len(warned) == warnings_expected
                 and 'Traceback' not in c.stderr)
    notes.append(f'resume: status {rc}, from step {start} (expected {expect_from})')
    if warned or warnings_expected:
      notes.append(f'{len(warned)} skip warning(s) (expected {warnings_expected})'
                   + (f': "{_short(warned[0].replace(self.root, "$RUNS"))}"' if warned else ''))
    if 'Traceback' in c.stderr:
      notes.append('a traceback on the resume')
    if rc != 0:
      notes.append(f'resume stderr: {c.tail()}')
    if cmp and mode == 'tolerance':
      notes.append(f'resumed on {cmp["n_devices"]} devices')
    log(f'{name}: resume status {rc} from step {start}; '
        f'{"recovered" if recovered else "NOT recovered"}')
    return Row(name, fault, recovered, last_step - start if rc == 0 else None,
               state_cell(cmp, mode), curve_cell(cmp), windows_cell(cmp, mode, self.ref),
               '; '.join(notes), details={'compare': cmp, 'resume_status': rc,
                                          'resumed_from': start,
                                          'interrupted_last_step': last_step})

  def damaged_base(self, fault: str) -> tuple[str, int, int, int]:
    """A run killed right after its checkpoint 28: (workdir, last logged step, newest, previous)."""
    if self._damaged_base is None:
      wd, newest = self.workdir('damaged-base'), 4 * EVERY
      log(f'damaged checkpoints: a run killed right after checkpoint {newest} is complete')
      c = Child(wd)
      try:
        inject(c, lambda: has_manifest(wd, newest), fault, f'checkpoint {newest} complete')
      except NotInjected as e:
        self._damaged_base = str(e)
        raise
      c.kill()
      c.wait()
      steps = complete_steps(wd)
      log(f'damaged checkpoints: killed after step {c.last_step}; on disk: {on_disk(wd)}')
      self._damaged_base = wd, c.last_step, steps[-1], steps[-2] if len(steps) > 1 else 0
    if isinstance(self._damaged_base, str):  # The base run failed: so does every row on it.
      raise NotInjected(fault, self._damaged_base)
    return self._damaged_base


def _short(text: str, n: int = 160) -> str:
  text = re.sub(r'^[WIE]\d{4} [^\]]*\]\s*', '', text.strip())  # absl's log-line prefix.
  return text if len(text) <= n else text[:n - 3] + '...'


def kill9(b: Bench, name: str, fault: str, condition, moment: str,
          interval: float = 0.0005) -> Row:
  """SIGKILL once `condition(child, workdir)` holds; resume from the newest complete checkpoint."""
  wd = b.workdir(name)
  log(f'{name}: started')
  c = Child(wd)
  inject(c, lambda: condition(c, wd), fault, moment, interval)
  c.kill()
  rc = c.wait()
  disk = on_disk(wd)
  log(f'{name}: killed (status {rc}) after step {c.last_step} was logged; on disk: {disk}')
  notes = [f'killed after step {c.last_step} was logged' +
           (f', with checkpoint {c.caught}' if c.caught else ''), f'on disk at the kill: {disk}']
  steps = complete_steps(wd)
  newest = steps[-1] if steps else 0
  # A step folder without its manifest newer than the newest complete one: skipped with a warning.
  incomplete = [s for s in range(newest + 1, STEPS + 1) if os.path.isdir(step_dir(wd, s))]
  return b.resume(name, fault, wd, c.last_step, newest, rc == -9, notes,
                  warnings_expected=len(incomplete))


def _mid_save(target: str | None):
  """A condition: some checkpoint step after 14 is in the middle of its save (`target` state)."""
  steps = range(3 * EVERY, STEPS, EVERY)

  def condition(c, wd):
    for s in steps:
      state = unfinished(wd, s)
      if state is not None and (target is None or state == target):
        c.caught = f'{s} mid-save ({state})'
        return True
    return False
  return condition


def fault_kill9_between(b: Bench) -> Row:
  after = 2 * EVERY + 3
  return kill9(b, 'kill9-between', f'kill -9 between checkpoints (after step {after} is logged)',
               lambda c, wd: c.last_step >= after, f'step {after} logged')


def fault_kill9_after_save(b: Bench) -> Row:
  step = 2 * EVERY
  return kill9(b, 'kill9-after-save',
               f'kill -9 right after checkpoint {step} (its manifest appears)',
               lambda c, wd: has_manifest(wd, step), f'checkpoint {step} complete')


def fault_kill9_mid_save(b: Bench) -> Row:
  return kill9(b, 'kill9-mid-save', 'kill -9 mid-save (a <step>.orbax-checkpoint-tmp-* folder '
               'appears)', _mid_save(None), 'a save in progress')


def fault_kill9_before_manifest(b: Bench) -> Row:
  return kill9(b, 'kill9-before-manifest', 'kill -9 after orbax renamed the step, before its '
               'manifest.json', _mid_save('no manifest'), 'a step folder without its manifest',
               interval=0)


def fault_sigterm(b: Bench) -> Row:
  name, wd, after = 'sigterm', b.workdir('sigterm'), 10
  fault = 'SIGTERM mid-run, then resume'
  log(f'{name}: started')
  c = Child(wd)
  inject(c, lambda: c.last_step >= after, fault, f'step {after} logged')
  c.kill(signal.SIGTERM)
  rc = c.wait()
  m = re.search(r'SIGTERM: stopped after step (\d+)', c.stdout)
  stopped = int(m.group(1)) if m else None
  steps = complete_steps(wd)
  errors = c.errors()
  ok = (rc == cli.PREEMPTED and stopped is not None and steps and steps[-1] == stopped
        and len(errors) == 1 and 'Traceback' not in c.stderr)
  log(f'{name}: SIGTERM after step {after} was logged: status {rc}, stopped after step {stopped}')
  notes = [(f'SIGTERM once step {after} was logged: status {rc} (expected {cli.PREEMPTED}), '
            f'"stopped after step {stopped}", newest checkpoint {steps[-1] if steps else None}'),
           f'{len(errors)} error line(s)' + (f': "{_short(errors[0])}"' if errors else '')]
  if rc != cli.PREEMPTED:
    notes.append(f'stderr: {c.tail()}')
  return b.resume(name, fault, wd, c.last_step,
                  stopped if stopped is not None else -1, ok, notes)


def _largest_data_file(step_path: str) -> str:
  files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_path, 'state')) for f in fs
           if os.path.basename(d) == 'd']
  return max(files, key=os.path.getsize)


def _truncate(step_path: str, previous_path: str) -> str:
  path = _largest_data_file(step_path)
  size = os.path.getsize(path)
  os.truncate(path, size // 2)
  return f'cut {os.path.relpath(path, step_path)} from {size:,} to {size // 2:,} bytes'


def _overwrite(step_path: str, previous_path: str) -> str:
  path = _largest_data_file(step_path)
  size = os.path.getsize(path)
  n = min(4096, size // 2)
  with open(path, 'r+b') as f:
    f.seek(size // 2 - n // 2)
    f.write(random.Random(0).randbytes(n))
  return (f'overwrote {n:,} bytes in the middle of {os.path.relpath(path, step_path)} '
          f'({size:,} bytes)')


def _delete(relative: str):
  def damage(step_path: str, previous_path: str) -> str:
    os.remove(os.path.join(step_path, relative))
    return f'deleted {relative}'
  return damage


def _swap_state(step_path: str, previous_path: str) -> str:
  """Readable arrays of the wrong step: only the manifest's array checksums can tell."""
  shutil.rmtree(os.path.join(step_path, 'state'))
  shutil.copytree(os.path.join(previous_path, 'state'), os.path.join(step_path, 'state'))
  return f'replaced state/ by the state/ of checkpoint {os.path.basename(previous_path)}'


def damaged(b: Bench, name: str, fault: str, damage) -> Row:
  base, last, newest, previous = b.damaged_base(fault)
  wd = b.workdir(name)
  shutil.copytree(base, wd, symlinks=True)
  did = damage(step_dir(wd, newest), step_dir(wd, previous))
  log(f'{name}: {did} in checkpoint {newest}')
  row = b.resume(name, fault, wd, last, previous, True,
                 [f'{did} in checkpoint {newest} of a run killed after step {last}'],
                 warnings_expected=1)
  corrupt = os.path.join(ckpt_dir(wd), 'corrupt')
  moved = sorted(os.listdir(corrupt)) if os.path.isdir(corrupt) else []
  row.notes += f'; moved aside: {", ".join(moved) or "nothing"}'
  if not any(n.startswith(f'{newest}-') for n in moved):
    row.recovered = False
  return row


def fault_truncated(b: Bench) -> Row:
  return damaged(b, 'ckpt-truncated', 'newest checkpoint truncated (a data file cut in half)',
                 _truncate)


def fault_overwritten(b: Bench) -> Row:
  return damaged(b, 'ckpt-overwritten', 'newest checkpoint with 4 KiB overwritten by random bytes',
                 _overwrite)


def fault_no_manifest(b: Bench) -> Row:
  return damaged(b, 'ckpt-no-manifest', 'newest checkpoint\'s manifest.json deleted',
                 _delete('manifest.json'))


def fault_no_iterator(b: Bench) -> Row:
  return damaged(b, 'ckpt-no-iterator', 'newest checkpoint\'s data-iterator file deleted',
                 _delete(os.path.join('data', 'process_0-of-1.json')))


def fault_swapped_state(b: Bench) -> Row:
  return damaged(b, 'ckpt-swapped-state', 'newest checkpoint\'s arrays replaced by the previous '
                 'step\'s (readable, wrong)', _swap_state)


def _finite_checkpoints(wd: str) -> tuple[list[int], bool]:
  steps = complete_steps(wd)
  return steps, all(all(np.isfinite(x).all() for x in restore_arrays(wd, s).values()
                        if np.issubdtype(x.dtype, np.floating)) for s in steps)


def fault_nan_stop(b: Bench) -> Row:
  name, wd = 'nan-stop', b.workdir('nan-stop')
  log(f'{name}: started with train.poison_step={POISON}')
  c = Child(wd, f'--config.train.poison_step={POISON}')
  rc = c.wait()
  steps, finite = _finite_checkpoints(wd)
  rows = read_json(os.path.join(wd, 'curve.json')) if os.path.exists(
      os.path.join(wd, 'curve.json')) else []
  errors = c.errors()
  ok = (rc == cli.NONFINITE and len(errors) == 1 and 'Traceback' not in c.stderr and finite
        and all(s < POISON for s in steps) and all(r['step'] < POISON for r in rows))
  log(f'{name}: status {rc}; checkpoints {steps}; resuming without the poison')
  notes = [(f'status {rc} (expected {cli.NONFINITE}); checkpoints {steps}, all finite: {finite}; '
            f'curve rows up to step {max((r["step"] for r in rows), default=0)}'),
           f'{len(errors)} error line(s)' + (f': "{_short(errors[0])}"' if errors else ''),
           'resumed with train.poison_step=0 (the last good checkpoint must be usable)']
  if rc != cli.NONFINITE:
    notes.append(f'stderr: {c.tail()}')
  return b.resume(name, f'NaN gradients at step {POISON}, train.nonfinite=stop', wd, c.last_step,
                  steps[-1] if steps else 0, ok, notes, '--config.train.poison_step=0')


def fault_nan_skip(b: Bench) -> Row:
  name, wd = 'nan-skip', b.workdir('nan-skip')
  log(f'{name}: started with train.poison_step={POISON}, train.nonfinite=skip')
  c = Child(wd, f'--config.train.poison_step={POISON}', '--config.train.nonfinite=skip')
  rc = c.wait()
  cmp = compare(wd, b.ref) if rc == 0 else None
  _, finite = _finite_checkpoints(wd)
  said = f'skipped the update of step {POISON}' in c.stdout
  skipped = cmp['skipped_updates'] if cmp else None
  log(f'{name}: status {rc}, skipped_updates {skipped}')
  return Row(name, f'NaN gradients at step {POISON}, train.nonfinite=skip', rc == 0 and skipped == 1
             and said and finite and 'Traceback' not in c.stderr, None, state_cell(cmp, 'skip'),
             curve_cell(cmp), windows_cell(cmp, 'skip', b.ref),
             f'status {rc}; summary skipped_updates={skipped} (expected 1); said "skipped the '
             f'update of step {POISON}": {said}; all checkpoints finite: {finite}; steps lost: '
             'n/a (no resume; the skipped step has no curve row by design)'
             + (f'; stderr: {c.tail()}' if rc else ''),
             details={'compare': cmp, 'status': rc})


def _fill(path: str, leave: int) -> int:
  st = os.statvfs(os.path.dirname(path))
  n = max(st.f_bavail * st.f_frsize - leave, 0)
  with open(path, 'wb') as f:
    f.write(b'\0' * n)
  return n


def fault_disk_full(b: Bench) -> Row:
  name, fault = 'disk-full', f'disk full ({TMPFS_SIZE} tmpfs filled after a checkpoint)'
  mnt = b.workdir('tmpfs')
  os.makedirs(mnt)
  p = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={TMPFS_SIZE}', 'tmpfs', mnt],
                     capture_output=True, text=True, check=False)
  if p.returncode:
    raise NotInjected(fault, f'`mount -t tmpfs` refused here: '
                      f'{p.stderr.strip() or f"status {p.returncode}"}')
  try:
    wd, after = os.path.join(mnt, 'run'), 2 * EVERY
    log(f'{name}: started on a {TMPFS_SIZE} tmpfs')
    c = Child(wd)
    inject(c, lambda: has_manifest(wd, after), fault, f'checkpoint {after} complete')
    filler = os.path.join(mnt, 'filler')
    n = _fill(filler, TMPFS_FREE)
    rc = c.wait()
    errors = c.errors()
    disk = on_disk(wd)
    ok = (rc == cli.STORAGE_ERROR and len(errors) == 1 and wd in errors[0]
          and 'Traceback' not in c.stderr)
    log(f'{name}: status {rc}: {errors[0] if errors else c.tail()}')
    notes = [(f'filled the tmpfs ({n:,} bytes) once checkpoint {after} was complete, leaving '
              f'{TMPFS_FREE // 1024} KiB: status {rc} (expected {cli.STORAGE_ERROR}) after step '
              f'{c.last_step} was logged'),
             f'{len(errors)} error line(s)'
             + (f': "{_short(errors[0].replace(b.root, "$RUNS"), 300)}"' if errors else ''),
             f'on disk: {disk}', 'the filler removed, then resumed on the same tmpfs']
    if 'Traceback' in c.stderr:
      notes.append(f'a traceback at the failure: {c.tail()}')
    os.remove(filler)
    steps = complete_steps(wd)
    row = b.resume(name, fault, wd, c.last_step, steps[-1] if steps else 0, ok, notes)
    row.details['error'] = errors
    return row
  finally:
    if subprocess.run(['umount', mnt], capture_output=True, check=False).returncode:
      subprocess.run(['umount', '-l', mnt], capture_output=True, check=False)


def fault_reshard(b: Bench) -> Row:
  name, wd, after = 'reshard-1to8', b.workdir('reshard-1to8'), 3 * EVERY + 3
  fault = 'resharded resume: kill -9 on 1 device, resume on 8 (mesh.data=8)'
  log(f'{name}: started on 1 device')
  c = Child(wd)
  inject(c, lambda: c.last_step >= after, fault, f'step {after} logged')
  c.kill()
  rc = c.wait()
  steps = complete_steps(wd)
  log(f'{name}: killed (status {rc}) after step {c.last_step}; resuming on 8 devices')
  row = b.resume(name, fault, wd, c.last_step, steps[-1] if steps else 0, rc == -9,
                 [f'killed after step {c.last_step} was logged on 1 device'],
                 '--config.mesh.data=8', env=EIGHT_DEVICES, mode='tolerance')
  cmp = row.details['compare']
  if cmp and cmp['n_devices'] != 8:
    row.recovered = False
  return row


FAULTS = {
    'kill9-between': fault_kill9_between,
    'kill9-after-save': fault_kill9_after_save,
    'kill9-mid-save': fault_kill9_mid_save,
    'kill9-before-manifest': fault_kill9_before_manifest,
    'sigterm': fault_sigterm,
    'ckpt-truncated': fault_truncated,
    'ckpt-overwritten': fault_overwritten,
    'ckpt-no-manifest': fault_no_manifest,
    'ckpt-no-iterator': fault_no_iterator,
    'ckpt-swapped-state': fault_swapped_state,
    'nan-stop': fault_nan_stop,
    'nan-skip': fault_nan_skip,
    'disk-full': fault_disk_full,
    'reshard-1to8': fault_reshard,
}

HEADER = ('fault', 'recovered', 'steps lost',
          'final state bit-identical (step-60 arrays restored with orbax; summary and eval losses)',
          'curve rows missing / duplicated', 'data windows repeated / skipped', 'notes')


def table(rows: list[Row]) -> str:
  def cell(x) -> str:
    return str(x).replace('|', '\\|')
  lines = ['| ' + ' | '.join(HEADER) + ' |', '|' + '---|' * len(HEADER)]
  for r in rows:
    rec = 'skipped' if r.recovered is None else 'yes' if r.recovered else 'no'
    lost = '-' if r.steps_lost is None else r.steps_lost
    lines.append('| ' + ' | '.join(cell(x) for x in (r.fault, rec, lost, r.final_state, r.curve,
                                                    r.windows, r.notes)) + ' |')
  return '\n'.join(lines)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  cli.add_json_argument(parser)
  parser.add_argument('--only', help=f'comma-separated faults to run (of {", ".join(FAULTS)})')
  parser.add_argument('--keep', action='store_true', help='keep the run folders (printed)')
  args = parser.parse_args()
  names = args.only.split(',') if args.only else list(FAULTS)
  unknown = [n for n in names if n not in FAULTS]
  if unknown:
    parser.error(f'unknown fault(s) {", ".join(unknown)}; choose from {", ".join(FAULTS)}')
  logging.getLogger('absl').setLevel(logging.ERROR)  # orbax's notes on restoring as numpy.
  root = tempfile.mkdtemp(prefix='chinchax-faults-')
  bench = Bench(root)
  rows = []
  try:
    bench.reference()
    for n in names:
      t = time.perf_counter()
      try:
        row = FAULTS[n](bench)
      except NotInjected as e:
        log(f'{n}: not tested: {e}')
        row = Row(n, e.fault, None, None, 'n/a', 'n/a', 'n/a', f'not tested: {e}')
      except Exception as e:  # noqa: BLE001  A benchmark reports a broken row and goes on.
        log(f'{n}: the benchmark itself failed: {type(e).__name__}: {e}')
        row = Row(n, n, None, None, 'n/a', 'n/a', 'n/a',
                  f'not tested: the benchmark itself failed: {type(e).__name__}: {e}')
      row.seconds = round(time.perf_counter() - t, 1)
      row.notes = row.notes.replace(root, '$RUNS')
      rows.append(row)
  finally:
    if args.keep:
      log(f'run folders kept in {root}')
    else:
      shutil.rmtree(root, ignore_errors=True)
  result = {'config_flags': FLAGS, 'reference': {k: bench.ref.summary[k] for k in
                                                 ('final_train_loss', 'eval_loss', 'steps')},
            'header': HEADER, 'rows': [dataclasses.asdict(r) for r in rows],
            'wall_seconds': round(time.perf_counter() - T0, 1)}
  cli.emit(result, table(rows), args.json)
  return 0


if __name__ == '__main__':
  cli.run_argparse(main)
