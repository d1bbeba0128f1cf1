"""The training run: validate, prepare data, build, measure, resume, step, evaluate, report.

`run(config, workdir)` is what `python -m train` calls. Rerunning it with the
same workdir resumes from the latest checkpoint there. The model is traced
abstractly once (`train.step.build`): validation of sharded shapes, the
shardings, the compile and the restore all use that one trace; the FLOP
measurement lowers two small variants of the model (1 and 2 layers,
`train/cost.py`). `summary.json['startup']` splits the time from process
start to the first step into imports, data, trace and compile, FLOP
measurement and restore.
"""

import dataclasses
import hashlib
import json
import math
import os
import signal
import statistics
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from configs import cli
from configs.load import with_defaults

from model import sharding
from model.counts import model_flops_per_token, param_counts, planned_steps, tokens_per_step
from train import checkpoint as ckpt_lib
from train import config_check
from train import cost
from train import data as data_lib
from train import hardware
from train import optim
from train import replicas as replicas_lib
from train import step as step_lib
from train.metrics import Reporter, write_json_atomic
from train.tokens import bits_per_byte

# Parts of the config that must match to resume a workdir (mesh and logging may change).
RESUME_KEYS = ('seed', 'init_seed', 'model', 'data', 'optim', 'train.steps', 'train.tokens', 'train.flops')
CALL_SECONDS = 0.05  # train.steps_per_call=0 picks K for at least this much work per call.
MAX_STEPS_PER_CALL = 64
# Within those, keys that may differ (where the cache lives, how many loader workers).
RESUME_FREE = ('data.cache_dir', 'data.worker_count', 'data.prefetch')
# Keys that do not change the compiled train step (its FLOP count is cached across them).
FLOP_FREE = ('seed', 'init_seed', 'post', 'train.steps', 'train.tokens', 'train.flops',
             'train.eval_every', 'train.eval_batches', 'train.log_every', 'train.checkpoint_every',
             'train.keep_checkpoints', 'train.peak_flops', 'train.max_skips', 'train.checkpoint_steps',
             'train.init_from', 'train.steps_per_call', 'train.replicas', 'data.source',
             'data.builtin_sources', 'data.paths', 'data.val_paths', 'data.tokenizer',
             'data.cache_dir', 'data.val_fraction', 'data.synthetic_tokens', 'data.worker_count',
             'data.prefetch')


def _get(cfg_dict: dict, dotted: str):
  for k in dotted.split('.'):
    cfg_dict = cfg_dict[k]
  if isinstance(cfg_dict, dict):
    cfg_dict = {k: v for k, v in cfg_dict.items() if f'{dotted}.{k}' not in RESUME_FREE}
  return cfg_dict


def _check_same_run(workdir: str, config) -> None:
  """Refuse to resume a workdir that was started with a different run definition."""
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      old = with_defaults(json.load(f))
    diff = [k for k in RESUME_KEYS if _get(old, k) != _get(new, k)]
    if diff:
      raise config_check.ConfigError(
          f'{workdir} holds a run with a different config ({", ".join(diff)} differ); '
          'use a new --workdir or restore the original settings')
  elif jax.process_index() == 0:
    write_json_atomic(path, new)


def evaluate(program, state, batches, mesh) -> np.ndarray:
  """Mean validation loss in nats per token over the fixed validation batches.

  A 0-d array, or one loss per replica (R,) under train.replicas.
  """
  total = sum(np.asarray(program.eval_step(state, data_lib.to_global(b, mesh)), np.float64)
              for b in batches)
  n = sum(b['targets'].size for b in batches) * jax.process_count()
  return total / n


class Startup:
  """Wall time of each start-up phase, from process start (or `t0`) to the first step."""

  def __init__(self, t0: float | None = None):
    self.t0 = time.perf_counter() if t0 is None else t0
    self.last = self.t0
    self.phases = {}

  def done(self, phase: str) -> None:
    now = time.perf_counter()
    self.phases[phase] = self.phases.get(phase, 0.0) + now - self.last
    self.last = now

  def as_dict(self) -> dict[str, float]:
    return {**{k: round(v, 3) for k, v in self.phases.items()},
            'total': round(self.last - self.t0, 3)}

  def line(self) -> str:
    return ('start-up ' + ', '.join(f'{k} {v:.2f} s' for k, v in self.phases.items())
            + f' = {self.last - self.t0:.2f} s to step 1')


class Throughput:
  """Tokens/s between train logs; evals and checkpoints are paused out, compilation never counts."""

  def __init__(self, start_step: int, tokens_per_step: int):
    self.tokens_per_step = tokens_per_step
    self.intervals = []  # (seconds, steps) between logs.
    self.last_time, self.last_step = None, start_step

  def log(self, step: int) -> float | None:
    """Called at a train log of `step`: tokens/s since the previous log (None at the first)."""
    now, tps = time.perf_counter(), None
    if self.last_time is not None and now - self.last_time < 1e-3:
      return None  # Several logged steps fetched together (one multi-step call): count them once.
    if self.last_time is not None:
      self.intervals.append((now - self.last_time, step - self.last_step))
      tps = (step - self.last_step) * self.tokens_per_step / (now - self.last_time)
    self.last_time, self.last_step = now, step
    return tps

  def pause(self, step: int) -> None:
    """Evals and checkpoints are not training: restart the clock after them."""
    if self.last_time is not None:
      self.last_time, self.last_step = time.perf_counter(), step

  def median(self) -> float | None:
    """Median tokens/s over log intervals (the first, which includes compilation, is never one)."""
    return statistics.median(n * self.tokens_per_step / t for t, n in self.intervals) if self.intervals else None


class NonFinite(cli.Stop, FloatingPointError):
  """Training stopped on a non-finite loss or gradient norm (exit status cli.NONFINITE)."""

  def __init__(self, message: str):
    super().__init__(message, cli.NONFINITE)


class Preemption:
  """SIGTERM/SIGINT -> stop after the current step, at the same step on every process.

  One process: the signal sets a flag (a second signal kills as usual). Several
  processes (after jax.distributed.initialize): JAX's preemption sync point,
  which JAX's coordination service raises on every process at one step.
  """

  def __init__(self):
    self.signal = None
    self.multi = jax.process_count() > 1
    self.previous = {}
    if not self.multi:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self.previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signal = signal.Signals(signum).name
    for sig, old in self.previous.items():  # A second signal acts as it would have.
      signal.signal(sig, old)

  def requested(self, step: int) -> bool:
    if self.multi:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal = self.signal or 'SIGTERM'
        return True
      return False
    return self.signal is not None

  def close(self) -> None:
    for sig, old in self.previous.items():
      signal.signal(sig, old)


@dataclasses.dataclass
class Run:
  """What the steps of one run share."""
  config: object
  workdir: str
  mesh: jax.sharding.Mesh
  mesh_shape: dict
  steps: int
  tokens_per_step: int
  flops_per_token: float
  counts: object
  splits: object
  program: step_lib.Program
  train_step: object  # The compiled train step.
  checkpointer: ckpt_lib.Checkpointer
  report: Reporter
  peak_total: float
  skipped: int = 0  # Updates dropped by train.nonfinite='skip'.
  extra_checkpoints: frozenset = frozenset()  # train.checkpoint_steps (kept: branch points).
  multi_steps: dict = dataclasses.field(default_factory=dict)  # K -> compiled K-step call.
  # The runs this program trains: [self], or one view per replica (train.replicas), each with
  # its own config, folder and Reporter; the group's own Reporter then writes console lines only.
  views: list = dataclasses.field(default_factory=list)
  diverged_at: int | None = None  # A replica's non-finite step (its curve ends there).
  group: str = ''  # A replica's group workdir (which holds the stacked checkpoint).
  data_seconds: float = 0.0  # Host time spent waiting for batches (grain, stacking, device put).
  data_steps: int = 0

  def next_batch(self, train_iter, k: int = 0):
    """The next global batch, or with k the (k, B, T) stack of k; its wait is timed."""
    t0 = time.perf_counter()
    local = data_lib.next_batches(train_iter, k) if k else next(train_iter)
    batch = data_lib.to_global(local, self.mesh)
    self.data_seconds += time.perf_counter() - t0
    self.data_steps += max(k, 1)
    return batch

  def live_views(self) -> list:
    return [v for v in self.views if v.diverged_at is None]

  def bpb(self, loss: float) -> float | None:
    n_bytes = self.splits.val.n_bytes
    return bits_per_byte(loss, len(self.splits.val), n_bytes) if n_bytes else None

  def multi_step(self, k: int):
    """The compiled call of K steps (one lax.scan), compiled the first time it is needed."""
    if k not in self.multi_steps:
      t0 = time.perf_counter()
      self.multi_steps[k] = self.program.multi_step.lower(
          self.program.abstract_state, self.program.abstract_batch(self.config, k)).compile()
      self.report.console(f'compiled {k} steps per call in {time.perf_counter() - t0:.1f} s')
    return self.multi_steps[k]

  def flops_6nd(self, step: int) -> float:
    return 6.0 * self.counts.active * step * self.tokens_per_step  # Active N (== with head if dense).


def _compute_limits(config, step: int) -> tuple[int, int]:
  """(tokens, MFLOPs) at `step`: the compute-axis steps of the last row a resume keeps."""
  tps = tokens_per_step(config)
  return step * tps, int(round(6.0 * param_counts(config.model).active * step * tps / 1e6))


def _parent_dir(config) -> str | None:
  """The parent run of a cooldown branch (train.init_from), or None."""
  return config_check.parse_init_from(config.train.init_from)[0] if config.train.init_from else None


def _branch(config, r) -> dict:
  """summary.json's record of a cooldown branch: parent, branch point, compute of its own steps."""
  if not config.train.init_from:
    return {}
  parent, step = config_check.parse_init_from(config.train.init_from)
  own = (r.steps - step) * r.tokens_per_step
  return {'parent': os.path.abspath(parent), 'branch_step': step,
          'branch_tokens': step * r.tokens_per_step,
          'flops_6nd_own': 6.0 * r.counts.active * own}


def make_workdir(workdir: str) -> None:
  """Create --workdir, or stop with one message naming it (a file, an unwritable parent, ...)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise config_check.ConfigError(f'--workdir {workdir!r} is a file, not a folder')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise config_check.ConfigError(f'--workdir {workdir!r} cannot be created: {e.strerror} '
                                   f'({e.filename})') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise config_check.ConfigError(f'--workdir {workdir!r} is not writable')


def _prepare_data(config):
  d = config.data
  splits = data_lib.prepare_splits(config)
  if splits.train.vocab_size > config.model.vocab_size:
    raise config_check.ConfigError(
        f'model.vocab_size={config.model.vocab_size} is smaller than the tokenizer '
        f'{splits.tokenizer_name!r} vocabulary ({splits.train.vocab_size})')
  train_iter = data_lib.train_iterator(splits.train, d.seq_len, d.global_batch_size, config.seed,
                                       d.worker_count, d.prefetch)
  val_batches = data_lib.eval_batches(splits.val, d.seq_len, d.global_batch_size,
                                      config.train.eval_batches, config.seed)
  return splits, train_iter, val_batches


def _build(config, mesh, mesh_shape):
  """The program from one abstract trace, its sharded shapes checked, the train step compiled."""
  program = step_lib.build(config, mesh)
  config_check.raise_if(config_check.shape_errors(program.abstract_params(), mesh_shape))
  with sharding.use_mesh(mesh):
    compiled = program.train_step.lower(program.abstract_state,
                                        program.abstract_batch(config)).compile()
  return program, compiled


def _flop_cache_path(config, mesh) -> str | None:
  """Where the step's FLOP count of this config is cached: in the sweep's compilation cache
  (JAX_COMPILATION_CACHE_DIR, which launch sets per sweep), keyed by everything that shapes the
  compiled step; None outside a sweep."""
  root = os.environ.get('JAX_COMPILATION_CACHE_DIR')
  if not root:
    return None
  d = json.loads(config.to_json())
  for key in FLOP_FREE:
    section, _, field = key.rpartition('.')
    (d.get(section, {}) if section else d).pop(field, None)
  ident = json.dumps([d, dict(mesh.shape), jax.__version__, jax.default_backend(),
                      jax.devices()[0].device_kind], sort_keys=True)
  return os.path.join(root, 'chinchax_flops', hashlib.sha256(ident.encode()).hexdigest()[:24] + '.json')


def _measure_flops(config, mesh) -> dict:
  """XLA's own count of the step (scan-corrected, lowered HLO: a few seconds, nothing compiled).

  Inside a sweep the count is cached per config (`_flop_cache_path`): runs of one shape at other
  budgets, branches and reruns read it instead of lowering the 1- and 2-layer variants again.
  """
  path = _flop_cache_path(config, mesh)
  if path and os.path.isfile(path):
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError):
      pass  # Unreadable: measure again and rewrite it.
  try:
    result = cost.measure_step_flops(config, mesh, uncorrected=False)
  except ValueError as e:  # No cost model on this backend: say so, train anyway.
    return {'flops_xla': None, 'flops_xla_model': None, 'method': f'unavailable: {e}'}
  if path and jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, result)
  return result


def _restore_or_init(config, program, checkpointer, train_iter, mesh):
  """(step, state): this run's newest intact checkpoint (bad ones are moved aside); else the
  parent's checkpoint for a cooldown branch (train.init_from); else a new state."""
  with sharding.use_mesh(mesh):
    try:
      start, state = checkpointer.restore_latest(program.abstract_state, train_iter)
      if not start and config.train.init_from:
        start, state = _restore_parent(config, program, train_iter)
    except ckpt_lib.CheckpointMismatch as e:
      raise config_check.ConfigError(str(e)) from None
    return (start, state) if start else (0, step_lib.init_state(config, program))


def _restore_parent(config, program, train_iter):
  """A WSD cooldown branch starts from its parent's checkpoint at the branch step.

  The parent must be the same run up to that step: same seed, model, data and
  optimizer (a WSD schedule with the same peak is the same curve until either
  run's decay starts); only the run length may differ.
  """
  parent, step = config_check.parse_init_from(config.train.init_from)
  path = os.path.join(parent, 'config.json')
  if not os.path.isfile(path):
    raise config_check.ConfigError(f'train.init_from={config.train.init_from!r}: {parent} holds '
                                   'no run (no config.json)')
  with open(path) as f:
    old = json.load(f)
  new = json.loads(config.to_json())
  diff = [k for k in ('seed', 'model', 'data', 'optim') if _get(old, k) != _get(new, k)]
  if diff:
    keys = [f'{k}.{f}' for k in diff if isinstance(new.get(k), dict)
            for f in sorted(set(new[k]) | set(old.get(k) or {}))
            if (old.get(k) or {}).get(f) != new[k].get(f)] or diff
    raise config_check.ConfigError(f'train.init_from: the parent {parent} differs in '
                                   f'{", ".join(keys)}; a branch changes only the run length')
  warm = optim.warmup_steps(ml_collections.ConfigDict(old))
  if warm != optim.warmup_steps(config):
    raise config_check.ConfigError(
        f'train.init_from: the parent {parent} warms up for {warm} steps, this run for '
        f'{optim.warmup_steps(config)} (a warmup_fraction of different run lengths); set '
        'optim.warmup_steps so both follow one schedule up to the branch')
  if step > optim.decay_start(config):
    raise config_check.ConfigError(
        f'train.init_from step {step} is after this run\'s decay starts (step '
        f'{optim.decay_start(config)}): a branch must start in the constant phase')
  source = ckpt_lib.Checkpointer(parent, keep=None, create=False)
  try:
    if step not in source.all_steps():
      raise config_check.ConfigError(f'train.init_from: {parent} has no checkpoint of step {step} '
                                     f'(it has {sorted(source.all_steps())})')
    return step, source.restore(step, program.abstract_state, train_iter)
  except ckpt_lib.CheckpointCorrupt as e:
    raise config_check.ConfigError(f'train.init_from: {e}') from None
  finally:
    source.close()


def _report_start(r: Run, start: int, xla: dict, peak: float, peak_source: str) -> None:
  c, report, tps = r.counts, r.report, r.tokens_per_step
  active = f', {c.active:,} active per token' if c.active != c.with_head else ''
  report.console(f'{c.total:,} params ({c.with_head:,} with head, '
                 f'{c.non_embedding:,} non-embedding{active}) | mesh {r.mesh_shape} | '
                 f'{r.steps} steps x {tps:,} tokens | data {r.splits.tokenizer_name} '
                 f'({len(r.splits.train):,} train / {len(r.splits.val):,} val tokens) | '
                 f'peak {peak:.3g} FLOP/s/device ({peak_source})')
  if start:
    report.console(f'resumed from step {start} in {r.checkpointer.dir}')
  if r.program.replicas:
    report.console(f'{r.program.replicas} replicas in one vmapped program '
                   f'(train.replicas={r.config.train.replicas!r}): '
                   + ', '.join(v.workdir for v in r.views))
  for v in r.views:
    v.report.text('config', '```\n' + str(v.config) + '\n```')
    v.report.text('data', '```\n' + json.dumps(r.splits.manifest, indent=1, default=str) + '\n```')
    v.report.scalars(0, c.as_dict(), 'params')
    v.report.scalars(0, {'xla_per_step': xla['flops_xla'],
                         'xla_model_per_step': xla['flops_xla_model'],
                         'model_per_step': r.flops_per_token * tps}, 'flops')
  xla_text = (f'XLA {xla["flops_xla"]:.4g} (model {xla["flops_xla_model"]:.4g})'
              if xla['flops_xla'] else f'XLA count {xla["method"]}')
  report.console(f'FLOPs per step: {xla_text}, 6ND {6.0 * c.active * tps:.4g}, '
                 f'MFU count {r.flops_per_token * tps:.4g}')


def _fetch(pending, n_replicas: int) -> list[tuple[int, list[dict]]]:
  """(step, [metrics of each run]) of a call's steps: one fetch for all K steps of a call.

  A K-step call's metrics have a leading K axis, then (replicas) an R axis: one
  dict per replica, or [the run's]. Scalars become floats; vectors (the MoE
  per-expert load) stay numpy arrays.
  """
  steps, metrics = pending
  host = jax.device_get(metrics)
  one = lambda v: v if getattr(v, 'ndim', 0) else float(v)
  per_step = [host] if len(steps) == 1 else [{k: v[i] for k, v in host.items()}
                                              for i in range(len(steps))]
  if not n_replicas:
    return [(s, [{k: one(v) for k, v in m.items()}]) for s, m in zip(steps, per_step)]
  return [(s, [{k: one(v[i]) for k, v in m.items()} for i in range(n_replicas)])
          for s, m in zip(steps, per_step)]


def _log_calls(r: Run, pending, timer: Throughput, train_losses: list) -> list:
  """Log every step of a finished call (fetched one call late); returns each run's last train loss.

  A replica whose update turned non-finite stops being logged (its curve ends:
  `diverged_at`) while the others go on; a lone run raises NonFinite.
  """
  t = r.config.train
  for s, ms in _fetch(pending, r.program.replicas):
    tps = timer.log(s) if s % t.log_every == 0 or s == r.steps else None
    for i, (v, m) in enumerate(zip(r.views, ms)):
      if v.diverged_at is not None:
        continue
      try:
        train_losses[i] = _log_train(v, s, m, tps)
      except NonFinite as e:
        if not r.program.replicas:
          raise
        v.diverged_at = s
        r.report.console(f'{os.path.basename(v.workdir)} stops at step {s}: {e}')
    if not r.live_views():
      raise NonFinite(f'every replica stopped on a non-finite update (the last at step {s}); '
                      f'the last checkpoint (if any) is in {r.checkpointer.dir}')
  return train_losses


def _log_train(r: Run, s: int, m: dict, tps: float | None) -> float:
  """Apply the non-finite policy to step `s`'s metrics, and log them on log steps.

  `tps`: tokens/s since the previous log (None where unknown). Returns the
  step's train loss (NaN for a skipped step).
  """
  train_loss = m['loss']
  vectors = {k: v for k, v in m.items() if getattr(v, 'ndim', 0)}  # The MoE per-expert load.
  m = {k: v for k, v in m.items() if k not in vectors}
  t = r.config.train
  if not (math.isfinite(train_loss) and math.isfinite(m['grad_norm'])):
    what = f'training loss became {train_loss} (grad norm {m["grad_norm"]}) at step {s}'
    if t.nonfinite == 'skip':
      r.skipped += 1
      r.report.scalars(s, {'skipped_updates': r.skipped}, 'train')
      r.report.console(f'skipped the update of step {s} ({what}); {r.skipped} skipped so far')
      if r.skipped <= t.max_skips:
        return float('nan')
      raise NonFinite(f'{r.skipped} non-finite updates skipped, more than train.max_skips='
                      f'{t.max_skips} (last: {what}); the last good checkpoint (if any) is in '
                      f'{r.checkpointer.dir}')
    raise NonFinite(f'{what}; nothing was logged or checkpointed from it; the last good '
                    f'checkpoint (if any) is in {r.checkpointer.dir}. '
                    '--config.train.nonfinite=skip drops such updates instead.')
  if s % t.log_every == 0 or s == r.steps:
    m.update(tokens=s * r.tokens_per_step, flops_6nd=r.flops_6nd(s))
    if tps:
      m.update(tokens_per_sec=tps, mfu=tps * r.flops_per_token / r.peak_total)
    r.report.scalars(s, m, 'train')
    r.report.index_histograms(s, vectors, 'train')  # The MoE per-expert load.
    r.report.compute_axes({'train_loss': train_loss}, m['tokens'], m['flops_6nd'])
    r.report.curve_row({'step': s, 'tokens': m['tokens'], 'flops': m['flops_6nd'],
                        'train_loss': train_loss, 'eval_loss': None})
    rate = f' | {tps:,.0f} tok/s | MFU {100 * m["mfu"]:.2f}%' if tps else ''
    r.report.console(f'step {s}/{r.steps} | loss {train_loss:.4f} | lr {m["lr"]:.2e} | '
                     f'grad norm {m["grad_norm"]:.3f}{rate}')
  return train_loss


def _log_evals(r: Run, s: int, state, val_batches, train_losses: list) -> list:
  """Evaluate at step `s`; log each live run's loss. Returns each run's eval loss (NaN: stopped)."""
  losses = np.atleast_1d(evaluate(r.program, state, val_batches, r.mesh))
  out = []
  for v, loss, train_loss in zip(r.views, losses, train_losses):
    out.append(_log_eval(v, s, float(loss), train_loss) if v.diverged_at is None else float('nan'))
  return out


def _log_eval(r: Run, s: int, eval_loss: float, train_loss: float) -> float:
  b = r.bpb(eval_loss)
  r.report.scalars(s, {'loss': eval_loss, 'bpb': b}, 'eval')
  r.report.compute_axes({'eval_loss': eval_loss, 'eval_bpb': b}, s * r.tokens_per_step,
                        r.flops_6nd(s))
  r.report.curve_row({'step': s, 'tokens': s * r.tokens_per_step, 'flops': r.flops_6nd(s),
                      'train_loss': train_loss, 'eval_loss': eval_loss})
  r.report.console(f'eval step {s} | loss {eval_loss:.4f} nats/token' +
                   (f' | {b:.4f} bits/byte' if b is not None else ''))
  r.report.flush()
  return eval_loss


def _save(r: Run, s: int, state, train_iter) -> None:
  """Flush the curve and events up to step `s`, then checkpoint it (with the data iterator).

  The curve goes first: a kill between the two then leaves rows beyond the
  newest checkpoint (dropped on resume), never a checkpoint without its rows.
  """
  for v in r.views:
    v.report.flush()
  try:
    r.checkpointer.save(s, state, train_iter)
  except (ckpt_lib.CheckpointError, OSError) as e:
    raise cli.Stop(str(e), cli.STORAGE_ERROR) from e


def _next_stop(r: Run, s: int) -> int:
  """The first step after `s` that a call must end on: an eval, a checkpoint or the last step."""
  t = r.config.train
  stops = [r.steps, (s // t.eval_every + 1) * t.eval_every]
  if t.checkpoint_every:
    stops.append((s // t.checkpoint_every + 1) * t.checkpoint_every)
  return min(stops + [x for x in r.extra_checkpoints if x > s])


def _calibrate(r: Run, state, train_iter, s: int, timer: Throughput, train_losses: list):
  """train.steps_per_call=0: time 3 single steps, choose K for >= CALL_SECONDS of work per call."""
  times = []
  for _ in range(3):
    if s >= _next_stop(r, s) - 1 or s + 1 >= r.steps:
      break
    batch = r.next_batch(train_iter)
    t0 = time.perf_counter()
    state, metrics = r.train_step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
    s += 1
    _log_calls(r, ((s,), metrics), timer, train_losses)
  step_s = statistics.median(times) if times else CALL_SECONDS
  k = int(min(MAX_STEPS_PER_CALL, max(1, math.ceil(CALL_SECONDS / step_s))))
  r.report.console(f'steps per call: {k} (train.steps_per_call=0: {1e3 * step_s:.1f} ms per step)')
  return state, s, k


def _train(r: Run, state, start: int, train_iter, val_batches, timer: Throughput,
           startup: Startup, preemption: Preemption) -> tuple[list, list]:
  """Steps start+1..steps with evals and checkpoints; returns each run's (train losses, eval losses).

  Each call runs K = train.steps_per_call steps (one lax.scan) or, where the
  next eval or checkpoint is closer than K steps, single steps up to it: evals,
  checkpoints and preemption stops fall on call boundaries. A call's metrics
  are fetched while the next call runs; before an eval, a checkpoint or a
  preemption stop they are fetched first, so the curve always holds every
  logged row up to the saved step.
  """
  t = r.config.train
  k = t.steps_per_call
  pending = None  # ((steps of the call), metrics on device): fetched one call late.
  train_loss = [float('nan')] * len(r.views)  # Each run's (replica's) latest train loss.
  eval_loss = list(train_loss)
  s, first = start, True
  with sharding.use_mesh(r.mesh):
    while s < r.steps:
      if k == 0:
        startup.done('first step')
        r.report.console(startup.line())
        first = False
        state, s, k = _calibrate(r, state, train_iter, s, timer, train_loss)
        timer.pause(s)
        continue
      if k > 1 and _next_stop(r, s) - s >= k:
        state, metrics = r.multi_step(k)(state, r.next_batch(train_iter, k))
        steps = tuple(range(s + 1, s + k + 1))
      else:
        state, metrics = r.train_step(state, r.next_batch(train_iter))
        steps = (s + 1,)
      if first:
        startup.done('first step')
        r.report.console(startup.line())
        first = False
      if pending is not None:
        _log_calls(r, pending, timer, train_loss)
      pending, s = (steps, metrics), steps[-1]
      is_eval = s % t.eval_every == 0 or s == r.steps
      is_ckpt = (t.checkpoint_every and (s % t.checkpoint_every == 0 or s == r.steps)
                 or s in r.extra_checkpoints)
      stop = s < r.steps and preemption.requested(s)
      if is_eval or is_ckpt or stop:
        _log_calls(r, pending, timer, train_loss)
        pending = None
      if is_eval:
        eval_loss = _log_evals(r, s, state, val_batches, train_loss)
        timer.pause(s)
      if is_ckpt or stop:
        _save(r, s, state, train_iter)
        timer.pause(s)
      if stop:
        r.report.console(f'{preemption.signal}: stopped after step {s}/{r.steps}; checkpoint saved '
                         f'in {r.checkpointer.dir}; rerun the same command to resume')
        raise cli.Stop(f'preempted ({preemption.signal}) after step {s}; rerun to resume',
                       cli.PREEMPTED)
    if pending is not None:
      _log_calls(r, pending, timer, train_loss)
    if start >= r.steps:  # Already finished: report the final state again.
      eval_loss = [float(x) for x in np.atleast_1d(evaluate(r.program, state, val_batches, r.mesh))]
      train_loss = [next((row['train_loss'] for row in reversed(v.report.curve)), float('nan'))
                    for v in r.views]
  return train_loss, eval_loss


def _report_hparams(r: Run, summary: dict) -> None:
  """This run as one HParams trial: N, D, C, shape, LR, batch, steps -> final and eval loss."""
  m, c = r.config.model, r.config
  r.report.hparams(
      {'run': os.path.basename(os.path.abspath(r.workdir)), 'N': summary['params_active'],
       'D': summary['tokens'], 'C': summary['flops_6nd'], 'n_layers': m.n_layers,
       'd_model': m.d_model, 'n_heads': m.n_heads, 'd_ff': m.d_ff, 'lr': c.optim.lr,
       'batch_tokens': r.tokens_per_step, 'steps': r.steps, 'schedule': c.optim.schedule},
      {'hparams/final_train_loss': summary['final_train_loss'],
       'hparams/eval_loss': summary['eval_loss']})


def _replica(r: Run, tps: float | None) -> dict:
  """summary.json's record of a replica: its group, the group's size and MFU, where it stopped."""
  if not r.program.replicas:
    return {}
  n = r.program.replicas
  return {'replicas': n, 'replica_of': os.path.abspath(r.group), 'diverged_at_step': r.diverged_at,
          'mfu_all_replicas': n * tps * r.flops_per_token / r.peak_total if tps else None}


def _summary(r: Run, xla: dict, timer: Throughput, train_loss: float, eval_loss: float,
             peak: float, peak_source: str, wall: float, startup: Startup) -> dict:
  tps = timer.median()
  tokens = r.steps * r.tokens_per_step
  if r.diverged_at is not None:  # A replica that stopped: no final loss to fit.
    train_loss = eval_loss = None
  return {
      **r.counts.as_dict(),
      'tokens': tokens,
      'steps': r.steps,
      'flops_6nd': 6.0 * r.counts.active * tokens,  # params_total beside it: MoE stores more.
      'model_flops_per_token': r.flops_per_token,
      'flops_xla': xla['flops_xla'] and xla['flops_xla'] * r.steps,
      'flops_xla_model': xla['flops_xla_model'] and xla['flops_xla_model'] * r.steps,
      'flops_xla_method': xla['method'],
      'final_train_loss': train_loss,
      'eval_loss': eval_loss,
      'eval_bpb': r.bpb(eval_loss) if eval_loss is not None else None,
      'tokens_per_sec': tps,
      'mfu': tps * r.flops_per_token / r.peak_total if tps else None,
      'peak_flops_per_device': peak,
      'peak_flops_source': peak_source,
      'n_devices': jax.device_count(),
      'mesh': r.mesh_shape,
      'wall_seconds': wall,
      'skipped_updates': r.skipped,
      'timed_steps': sum(n for _, n in timer.intervals),
      'timed_seconds': sum(t for t, _ in timer.intervals),
      # Host time per step getting its batch (overlapped with the step before by async dispatch).
      'data_ms_per_step': 1e3 * r.data_seconds / r.data_steps if r.data_steps else None,
      'startup': startup.as_dict(),
      **_branch(r.config, r),
      **_replica(r, tps),
      'data': r.splits.manifest,
      'config': json.loads(r.config.to_json()),
  }


def run(config, workdir: str, t_process_start: float | None = None) -> dict:
  """Train `config` in `workdir`; returns (and writes) summary.json's contents.

  `t_process_start` (a time.perf_counter() value) is when the process started;
  the start-up report's 'imports' phase runs from it to this call. With
  train.replicas, each replica's summary.json is written in its folder
  (`train.replicas.folder_names`) and `workdir/replicas.json` lists them; the
  return value is {'replicas': [each replica's summary]}.
  """
  startup = Startup(t_process_start)
  startup.done('imports')
  mesh_shape = config_check.validate(config, jax.device_count(), jax.process_count(),
                                     check_shapes=False)
  make_workdir(workdir)
  _check_same_run(workdir, config)
  mesh = sharding.make_mesh(config.mesh)
  splits, train_iter, val_batches = _prepare_data(config)
  startup.done('data')
  program, compiled = _build(config, mesh, mesh_shape)
  startup.done('trace and compile')
  # Per run: a replica's own step (the vmapped program does R times the work).
  xla = _measure_flops(replicas_lib.replica_configs(config)[0] if replicas_lib.count(config) else config,
                       mesh)
  startup.done('FLOP measurement')
  extra = frozenset(config_check.parse_steps(config.train.checkpoint_steps))
  # Branch points must survive: a run with train.checkpoint_steps keeps every checkpoint.
  checkpointer = ckpt_lib.Checkpointer(workdir, None if extra else config.train.keep_checkpoints)
  try:
    start, state = _restore_or_init(config, program, checkpointer, train_iter, mesh)
  except BaseException:  # A refused restore: stop orbax's threads before the one-line error.
    checkpointer.close()
    raise
  startup.done('restore' if start else 'init')
  peak, peak_source = hardware.peak_flops_per_device(config.train.peak_flops)
  startup.done('peak FLOP/s')
  n_rep = program.replicas
  r = Run(config=config, workdir=workdir, mesh=mesh, mesh_shape=mesh_shape,
          steps=planned_steps(config), tokens_per_step=tokens_per_step(config),
          flops_per_token=model_flops_per_token(config.model, config.data.seq_len),
          counts=param_counts(config.model), splits=splits, program=program, train_step=compiled,
          checkpointer=checkpointer,
          report=Reporter(workdir, resume_step=start, parent=_parent_dir(config),
                          compute_limits=_compute_limits(config, start), events=not n_rep),
          peak_total=peak * jax.device_count(), extra_checkpoints=extra)
  r.views = _replica_views(r, start) if n_rep else [r]
  _report_start(r, start, xla, peak, peak_source)
  timer = Throughput(start, r.tokens_per_step)
  t0 = time.perf_counter()
  preemption = Preemption()
  try:
    train_loss, eval_loss = _train(r, state, start, train_iter, val_batches, timer, startup,
                                   preemption)
  finally:
    preemption.close()
    for v in r.views:
      v.report.flush()
    checkpointer.close()
    getattr(train_iter, 'close', lambda: None)()  # The prefetch thread or worker processes.
  wall = time.perf_counter() - t0
  summaries = []
  for v, train_v, eval_v in zip(r.views, train_loss, eval_loss):
    v.data_seconds, v.data_steps = r.data_seconds, r.data_steps  # One batch stream for all.
    summary = _summary(v, xla, timer, train_v, eval_v, peak, peak_source, wall, startup)
    if jax.process_index() == 0:
      write_json_atomic(os.path.join(v.workdir, 'summary.json'), summary)
    _report_hparams(v, summary)
    v.report.close()
    summaries.append(summary)
    loss = f'{eval_v:.4f}' if v.diverged_at is None else f'none (stopped at step {v.diverged_at})'
    v.report.console(f'done: eval loss {loss} | summary {os.path.join(v.workdir, "summary.json")}')
  r.report.console(f'TensorBoard: tensorboard --logdir {os.path.abspath(workdir)}')
  if not n_rep:
    return summaries[0]
  group = {'replicas': summaries}
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, 'replicas.json'), {
        'replicas': config.train.replicas,
        'runs': [{'folder': os.path.basename(v.workdir), 'eval_loss': s['eval_loss'],
                  'diverged_at_step': v.diverged_at} for v, s in zip(r.views, summaries)]})
  return group


def _replica_views(r: Run, start: int) -> list[Run]:
  """One Run per replica, in its folder under the group's workdir, with its own config and events.

  Each folder's config.json is the replica's config alone (train.replicas
  cleared), so it also trains as a lone run; a resume checks it as
  _check_same_run checks the group's.
  """
  views = []
  for cfg, name in zip(replicas_lib.replica_configs(r.config), replicas_lib.folder_names(r.config)):
    path = os.path.join(r.workdir, name)
    make_workdir(path)
    _check_same_run(path, cfg)
    views.append(dataclasses.replace(
        r, config=cfg, workdir=path, group=r.workdir, views=[], multi_steps=r.multi_steps,
        report=Reporter(path, resume_step=start, compute_limits=_compute_limits(cfg, start),
                        prefix=f'[{name}] ')))
  return views
