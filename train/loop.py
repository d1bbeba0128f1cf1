"""The training run: validate, prepare data, build, resume, step, evaluate, report.

`run(config, workdir)` is what `python -m train` calls. Rerunning it with the
same workdir resumes from the latest checkpoint there.
"""

import json
import math
import os
import statistics
import time

import jax

from model import sharding
from model.counts import model_flops_per_token, param_counts
from train import checkpoint as ckpt_lib
from train import config_check
from train import data as data_lib
from train import hardware
from train import optim
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


def run(config, workdir: str) -> dict:
  """Train `config` in `workdir`; returns (and writes) summary.json's contents."""
  mesh_shape = config_check.validate(config, jax.device_count(), jax.process_count())
  os.makedirs(workdir, exist_ok=True)
  _check_same_run(workdir, config)
  mesh = sharding.make_mesh(config.mesh)
  counts = param_counts(config.model)
  d = config.data
  steps = optim.planned_steps(config)
  tokens_per_step = d.global_batch_size * d.seq_len
  flops_per_token = model_flops_per_token(config.model, d.seq_len)

  splits = data_lib.prepare_splits(config)
  if splits.train.vocab_size > config.model.vocab_size:
    raise config_check.ConfigError(
        f'model.vocab_size={config.model.vocab_size} is smaller than the tokenizer '
        f'{splits.tokenizer_name!r} vocabulary ({splits.train.vocab_size})')
  train_iter = data_lib.train_iterator(splits.train, d.seq_len, d.global_batch_size, config.seed,
                                       d.worker_count)
  val_batches = data_lib.eval_batches(splits.val, d.seq_len, d.global_batch_size,
                                      config.train.eval_batches, config.seed)

  program = step_lib.build(config, mesh)
  # XLA's own count of the step (scan-corrected, lowered HLO: a few seconds, nothing compiled).
  from scaling import flops as flops_lib  # Local: scaling.flops itself builds on train.step.
  try:
    xla = flops_lib.measure_step_flops(config, mesh, uncorrected=False)
  except ValueError as e:  # No cost model on this backend: say so, train anyway.
    xla = {'flops_xla': None, 'flops_xla_model': None, 'method': f'unavailable: {e}'}
  checkpointer = ckpt_lib.Checkpointer(workdir, config.train.keep_checkpoints)
  with sharding.use_mesh(mesh):
    start = checkpointer.latest_step() or 0
    if start:
      state = checkpointer.restore(start, program.abstract_state(config), train_iter)
    else:
      state = step_lib.init_state(config, program)

  peak, peak_source = hardware.peak_flops_per_device(config.train.peak_flops)
  peak_total = peak * jax.device_count()
  report = Reporter(workdir, resume_step=start)
  report.console(f'{counts.total:,} params ({counts.with_head:,} with head, '
                 f'{counts.non_embedding:,} non-embedding) | mesh {mesh_shape} | '
                 f'{steps} steps x {tokens_per_step:,} tokens | data {splits.tokenizer_name} '
                 f'({len(splits.train):,} train / {len(splits.val):,} val tokens) | '
                 f'peak {peak:.3g} FLOP/s/device ({peak_source})')
  if start:
    report.console(f'resumed from step {start} in {checkpointer.dir}')
  report.text('config', '```\n' + str(config) + '\n```')
  report.text('data', '```\n' + json.dumps(splits.manifest, indent=1, default=str) + '\n```')
  report.scalars(0, counts.as_dict(), 'params')
  report.scalars(0, {'xla_per_step': xla['flops_xla'], 'xla_model_per_step': xla['flops_xla_model'],
                     'model_per_step': flops_per_token * tokens_per_step}, 'flops')
  xla_text = (f'XLA {xla["flops_xla"]:.4g} (model {xla["flops_xla_model"]:.4g})'
              if xla['flops_xla'] else f'XLA count {xla["method"]}')
  report.console(f'FLOPs per step: {xla_text}, 6ND {6.0 * counts.with_head * tokens_per_step:.4g}, '
                 f'MFU count {flops_per_token * tokens_per_step:.4g}')

  def bpb(loss):
    n_bytes = splits.val.n_bytes
    return bits_per_byte(loss, len(splits.val), n_bytes) if n_bytes else None

  intervals = []  # (seconds, steps) between logs, compile excluded.
  last_log_time, last_log_step = None, start
  pending = None  # (step, metrics on device): fetched one step late.
  train_loss = eval_loss = float('nan')

  def flush_pending():
    nonlocal train_loss, last_log_time, last_log_step
    s, m = pending
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    train_loss = m['loss']
    if not math.isfinite(train_loss):
      raise FloatingPointError(f'training loss became {train_loss} at step {s}; the last good '
                               f'checkpoint (if any) is in {checkpointer.dir}')
    if s % config.train.log_every == 0 or s == steps:
      now = time.perf_counter()
      tps = None
      if last_log_time is not None:
        intervals.append((now - last_log_time, s - last_log_step))
        tps = (s - last_log_step) * tokens_per_step / (now - last_log_time)
      last_log_time, last_log_step = now, s
      m.update(tokens=s * tokens_per_step, flops_6nd=6.0 * counts.with_head * s * tokens_per_step)
      if tps:
        m.update(tokens_per_sec=tps, mfu=tps * flops_per_token / peak_total)
      report.scalars(s, m, 'train')
      report.curve_row({'step': s, 'tokens': m['tokens'], 'flops': m['flops_6nd'],
                        'train_loss': train_loss, 'eval_loss': None})
      rate = f' | {tps:,.0f} tok/s | MFU {100 * m["mfu"]:.2f}%' if tps else ''
      report.console(f'step {s}/{steps} | loss {train_loss:.4f} | lr {m["lr"]:.2e} | '
                     f'grad norm {m["grad_norm"]:.3f}{rate}')

  def pause_timing(s):
    """Evals and checkpoints are not training: restart the throughput clock after them."""
    nonlocal last_log_time, last_log_step
    if last_log_time is not None:
      last_log_time, last_log_step = time.perf_counter(), s

  t0 = time.perf_counter()
  try:
    with sharding.use_mesh(mesh):
      for s in range(start + 1, steps + 1):
        batch = data_lib.to_global(next(train_iter), mesh)
        state, metrics = program.train_step(state, batch)
        if pending is not None:
          flush_pending()
        pending = (s, metrics)
        if s % config.train.eval_every == 0 or s == steps:
          flush_pending()
          pending = None
          eval_loss = evaluate(program, state, val_batches, mesh)
          tokens = s * tokens_per_step
          report.scalars(s, {'loss': eval_loss, 'bpb': bpb(eval_loss)}, 'eval')
          report.curve_row({'step': s, 'tokens': tokens, 'flops': 6.0 * counts.with_head * tokens,
                            'train_loss': train_loss, 'eval_loss': eval_loss})
          b = bpb(eval_loss)
          report.console(f'eval step {s} | loss {eval_loss:.4f} nats/token' +
                         (f' | {b:.4f} bits/byte' if b is not None else ''))
          report.flush()
          pause_timing(s)
        if config.train.checkpoint_every and (s % config.train.checkpoint_every == 0 or s == steps):
          checkpointer.save(s, state, train_iter)
          report.flush()  # The curve up to a checkpoint survives a crash after it.
          pause_timing(s)
      if pending is not None:
        flush_pending()
      if start >= steps:  # Already finished: report the final state again.
        eval_loss = evaluate(program, state, val_batches, mesh)
        train_loss = next((r['train_loss'] for r in reversed(report.curve)), train_loss)
  finally:
    checkpointer.close()  # Finish an in-flight save even when the run stops with an error.

  secs = sum(t for t, _ in intervals)
  n_steps = sum(n for _, n in intervals)
  # Median over log intervals (the first, which includes compilation, is never one).
  tps = statistics.median(n * tokens_per_step / t for t, n in intervals) if intervals else None
  tokens = steps * tokens_per_step
  summary = {
      **counts.as_dict(),
      'tokens': tokens,
      'steps': steps,
      'flops_6nd': 6.0 * counts.with_head * tokens,
      'model_flops_per_token': flops_per_token,
      'flops_xla': xla['flops_xla'] and xla['flops_xla'] * steps,
      'flops_xla_model': xla['flops_xla_model'] and xla['flops_xla_model'] * steps,
      'flops_xla_method': xla['method'],
      'final_train_loss': train_loss,
      'eval_loss': eval_loss,
      'eval_bpb': bpb(eval_loss),
      'tokens_per_sec': tps,
      'mfu': tps * flops_per_token / peak_total if tps else None,
      'peak_flops_per_device': peak,
      'peak_flops_source': peak_source,
      'n_devices': jax.device_count(),
      'mesh': mesh_shape,
      'wall_seconds': time.perf_counter() - t0,
      'timed_steps': n_steps,
      'timed_seconds': secs,
      'data': splits.manifest,
      'config': json.loads(config.to_json()),
  }
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, 'summary.json'), summary)
  report.close()
  report.console(f'done: eval loss {eval_loss:.4f} | summary {os.path.join(workdir, "summary.json")}'
                 f' | TensorBoard: tensorboard --logdir {os.path.abspath(workdir)}')
  return summary
