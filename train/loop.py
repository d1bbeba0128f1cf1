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
import json
import math
import os
import statistics
import time

import jax

from model import sharding
from model.counts import model_flops_per_token, param_counts, planned_steps, tokens_per_step
from train import checkpoint as ckpt_lib
from train import config_check
from train import cost
from train import data as data_lib
from train import hardware
from train import step as step_lib
from train.metrics import Reporter, write_json_atomic
from train.tokens import bits_per_byte

# Parts of the config that must match to resume a workdir (mesh and logging may change).
RESUME_KEYS = ('seed', 'model', 'data', 'optim', 'train.steps', 'train.tokens', 'train.flops')
# Within those, keys that may differ (where the cache lives, how many loader workers).
RESUME_FREE = ('data.cache_dir', 'data.worker_count')


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
      old = json.load(f)
    diff = [k for k in RESUME_KEYS if _get(old, k) != _get(new, k)]
    if diff:
      raise config_check.ConfigError(
          f'{workdir} holds a run with a different config ({", ".join(diff)} differ); '
          'use a new --workdir or restore the original settings')
  elif jax.process_index() == 0:
    write_json_atomic(path, new)


def evaluate(program, state, batches, mesh) -> float:
  """Mean validation loss in nats per token over the fixed validation batches."""
  total = sum(float(program.eval_step(state, data_lib.to_global(b, mesh))) for b in batches)
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

  def bpb(self, loss: float) -> float | None:
    n_bytes = self.splits.val.n_bytes
    return bits_per_byte(loss, len(self.splits.val), n_bytes) if n_bytes else None

  def flops_6nd(self, step: int) -> float:
    return 6.0 * self.counts.with_head * step * self.tokens_per_step


def _prepare_data(config):
  d = config.data
  splits = data_lib.prepare_splits(config)
  if splits.train.vocab_size > config.model.vocab_size:
    raise config_check.ConfigError(
        f'model.vocab_size={config.model.vocab_size} is smaller than the tokenizer '
        f'{splits.tokenizer_name!r} vocabulary ({splits.train.vocab_size})')
  train_iter = data_lib.train_iterator(splits.train, d.seq_len, d.global_batch_size, config.seed,
                                       d.worker_count)
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


def _measure_flops(config, mesh) -> dict:
  """XLA's own count of the step (scan-corrected, lowered HLO: a few seconds, nothing compiled)."""
  try:
    return cost.measure_step_flops(config, mesh, uncorrected=False)
  except ValueError as e:  # No cost model on this backend: say so, train anyway.
    return {'flops_xla': None, 'flops_xla_model': None, 'method': f'unavailable: {e}'}


def _restore_or_init(config, program, checkpointer, train_iter, mesh):
  with sharding.use_mesh(mesh):
    start = checkpointer.latest_step() or 0
    if start:
      return start, checkpointer.restore(start, program.abstract_state, train_iter)
    return 0, step_lib.init_state(config, program)


def _report_start(r: Run, start: int, xla: dict, peak: float, peak_source: str) -> None:
  c, report, tps = r.counts, r.report, r.tokens_per_step
  report.console(f'{c.total:,} params ({c.with_head:,} with head, '
                 f'{c.non_embedding:,} non-embedding) | mesh {r.mesh_shape} | '
                 f'{r.steps} steps x {tps:,} tokens | data {r.splits.tokenizer_name} '
                 f'({len(r.splits.train):,} train / {len(r.splits.val):,} val tokens) | '
                 f'peak {peak:.3g} FLOP/s/device ({peak_source})')
  if start:
    report.console(f'resumed from step {start} in {r.checkpointer.dir}')
  report.text('config', '```\n' + str(r.config) + '\n```')
  report.text('data', '```\n' + json.dumps(r.splits.manifest, indent=1, default=str) + '\n```')
  report.scalars(0, c.as_dict(), 'params')
  report.scalars(0, {'xla_per_step': xla['flops_xla'], 'xla_model_per_step': xla['flops_xla_model'],
                     'model_per_step': r.flops_per_token * tps}, 'flops')
  xla_text = (f'XLA {xla["flops_xla"]:.4g} (model {xla["flops_xla_model"]:.4g})'
              if xla['flops_xla'] else f'XLA count {xla["method"]}')
  report.console(f'FLOPs per step: {xla_text}, 6ND {6.0 * c.with_head * tps:.4g}, '
                 f'MFU count {r.flops_per_token * tps:.4g}')


def _log_train(r: Run, s: int, metrics, timer: Throughput) -> float:
  """Fetch step `s`'s metrics (one step late), stop on a non-finite loss, log on log steps."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  train_loss = m['loss']
  if not math.isfinite(train_loss):
    raise FloatingPointError(f'training loss became {train_loss} at step {s}; the last good '
                             f'checkpoint (if any) is in {r.checkpointer.dir}')
  if s % r.config.train.log_every == 0 or s == r.steps:
    tps = timer.log(s)
    m.update(tokens=s * r.tokens_per_step, flops_6nd=r.flops_6nd(s))
    if tps:
      m.update(tokens_per_sec=tps, mfu=tps * r.flops_per_token / r.peak_total)
    r.report.scalars(s, m, 'train')
    r.report.curve_row({'step': s, 'tokens': m['tokens'], 'flops': m['flops_6nd'],
                        'train_loss': train_loss, 'eval_loss': None})
    rate = f' | {tps:,.0f} tok/s | MFU {100 * m["mfu"]:.2f}%' if tps else ''
    r.report.console(f'step {s}/{r.steps} | loss {train_loss:.4f} | lr {m["lr"]:.2e} | '
                     f'grad norm {m["grad_norm"]:.3f}{rate}')
  return train_loss


def _log_eval(r: Run, s: int, state, val_batches, train_loss: float) -> float:
  eval_loss = evaluate(r.program, state, val_batches, r.mesh)
  b = r.bpb(eval_loss)
  r.report.scalars(s, {'loss': eval_loss, 'bpb': b}, 'eval')
  r.report.curve_row({'step': s, 'tokens': s * r.tokens_per_step, 'flops': r.flops_6nd(s),
                      'train_loss': train_loss, 'eval_loss': eval_loss})
  r.report.console(f'eval step {s} | loss {eval_loss:.4f} nats/token' +
                   (f' | {b:.4f} bits/byte' if b is not None else ''))
  r.report.flush()
  return eval_loss


def _train(r: Run, state, start: int, train_iter, val_batches, timer: Throughput,
           startup: Startup) -> tuple[float, float]:
  """Steps start+1..steps with evals and checkpoints; returns (final train loss, eval loss)."""
  t = r.config.train
  pending = None  # (step, metrics on device): fetched one step late.
  train_loss = eval_loss = float('nan')
  with sharding.use_mesh(r.mesh):
    for s in range(start + 1, r.steps + 1):
      batch = data_lib.to_global(next(train_iter), r.mesh)
      state, metrics = r.train_step(state, batch)
      if s == start + 1:
        startup.done('first step')
        r.report.console(startup.line())
      if pending is not None:
        train_loss = _log_train(r, *pending, timer)
      pending = (s, metrics)
      if s % t.eval_every == 0 or s == r.steps:
        train_loss = _log_train(r, *pending, timer)
        pending = None
        eval_loss = _log_eval(r, s, state, val_batches, train_loss)
        timer.pause(s)
      if t.checkpoint_every and (s % t.checkpoint_every == 0 or s == r.steps):
        r.checkpointer.save(s, state, train_iter)
        r.report.flush()  # The curve up to a checkpoint survives a crash after it.
        timer.pause(s)
    if pending is not None:
      train_loss = _log_train(r, *pending, timer)
    if start >= r.steps:  # Already finished: report the final state again.
      eval_loss = evaluate(r.program, state, val_batches, r.mesh)
      train_loss = next((row['train_loss'] for row in reversed(r.report.curve)), train_loss)
  return train_loss, eval_loss


def _summary(r: Run, xla: dict, timer: Throughput, train_loss: float, eval_loss: float,
             peak: float, peak_source: str, wall: float, startup: Startup) -> dict:
  tps = timer.median()
  tokens = r.steps * r.tokens_per_step
  return {
      **r.counts.as_dict(),
      'tokens': tokens,
      'steps': r.steps,
      'flops_6nd': 6.0 * r.counts.with_head * tokens,
      'model_flops_per_token': r.flops_per_token,
      'flops_xla': xla['flops_xla'] and xla['flops_xla'] * r.steps,
      'flops_xla_model': xla['flops_xla_model'] and xla['flops_xla_model'] * r.steps,
      'flops_xla_method': xla['method'],
      'final_train_loss': train_loss,
      'eval_loss': eval_loss,
      'eval_bpb': r.bpb(eval_loss),
      'tokens_per_sec': tps,
      'mfu': tps * r.flops_per_token / r.peak_total if tps else None,
      'peak_flops_per_device': peak,
      'peak_flops_source': peak_source,
      'n_devices': jax.device_count(),
      'mesh': r.mesh_shape,
      'wall_seconds': wall,
      'timed_steps': sum(n for _, n in timer.intervals),
      'timed_seconds': sum(t for t, _ in timer.intervals),
      'startup': startup.as_dict(),
      'data': r.splits.manifest,
      'config': json.loads(r.config.to_json()),
  }


def run(config, workdir: str, t_process_start: float | None = None) -> dict:
  """Train `config` in `workdir`; returns (and writes) summary.json's contents.

  `t_process_start` (a time.perf_counter() value) is when the process started;
  the start-up report's 'imports' phase runs from it to this call.
  """
  startup = Startup(t_process_start)
  startup.done('imports')
  mesh_shape = config_check.validate(config, jax.device_count(), jax.process_count(),
                                     check_shapes=False)
  os.makedirs(workdir, exist_ok=True)
  _check_same_run(workdir, config)
  mesh = sharding.make_mesh(config.mesh)
  splits, train_iter, val_batches = _prepare_data(config)
  startup.done('data')
  program, compiled = _build(config, mesh, mesh_shape)
  startup.done('trace and compile')
  xla = _measure_flops(config, mesh)
  startup.done('FLOP measurement')
  checkpointer = ckpt_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  start, state = _restore_or_init(config, program, checkpointer, train_iter, mesh)
  startup.done('restore' if start else 'init')
  peak, peak_source = hardware.peak_flops_per_device(config.train.peak_flops)
  startup.done('peak FLOP/s')
  r = Run(config=config, workdir=workdir, mesh=mesh, mesh_shape=mesh_shape,
          steps=planned_steps(config), tokens_per_step=tokens_per_step(config),
          flops_per_token=model_flops_per_token(config.model, config.data.seq_len),
          counts=param_counts(config.model), splits=splits, program=program, train_step=compiled,
          checkpointer=checkpointer, report=Reporter(workdir, resume_step=start),
          peak_total=peak * jax.device_count())
  _report_start(r, start, xla, peak, peak_source)
  timer = Throughput(start, r.tokens_per_step)
  t0 = time.perf_counter()
  try:
    train_loss, eval_loss = _train(r, state, start, train_iter, val_batches, timer, startup)
  finally:
    checkpointer.close()  # Finish an in-flight save even when the run stops with an error.
  summary = _summary(r, xla, timer, train_loss, eval_loss, peak, peak_source,
                     time.perf_counter() - t0, startup)
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, 'summary.json'), summary)
  r.report.close()
  r.report.console(f'done: eval loss {eval_loss:.4f} | summary {os.path.join(workdir, "summary.json")}'
                   f' | TensorBoard: tensorboard --logdir {os.path.abspath(workdir)}')
  return summary
