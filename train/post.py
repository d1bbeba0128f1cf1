"""python -m train.post --config FILE --workdir DIR --config.post.base=RUN --config.post.method=M [...]

Post-training of a pre-trained run on the verifiable tasks of train/tasks.py:
SFT (the answers' NLL) or a preference loss of train/prefs.py (DPO, ORPO,
SimPO, KTO), measured by greedy decoding of held-out prompts (exact match and
reward) before and after.

- Start and reference: post.base's newest intact checkpoint, on one device
  (train.generate.restore_state); the model is its config.json's, the
  tokenizer the one its summary.json names. DPO and KTO compare with the
  frozen base as π_ref; SFT, ORPO and SimPO use no reference. The optimizer
  state starts afresh (AdamW moments at zero).
- Only the `post` block is read from --config; the run's config is the
  base's with optim.lr = post.lr, a cosine schedule with warmup
  optim.warmup_fraction of train.steps = post.steps, data.seq_len =
  post.seq_len (0: the base's), and data.global_batch_size the rows of a step.
- Batches: step s draws from numpy's generator seeded by (post.seed, s), from
  the training split, so the data position is the step alone. sft packs
  examples into post.batch_size windows with the answer mask; dpo, orpo and
  simpo take post.batch_size pairs, the chosen rows then the rejected rows,
  one example per row; kto takes post.batch_size labelled answers, then as
  many mismatched rows (prompt i, answer of i + 1) for the KL reference point.
- Evaluation: post.eval_prompts held-out prompts (a fixed set), decoded
  greedily (model/decode.py) before training, every post.eval_every steps and
  at the end; also the answers' NLL (nats per answer token) under teacher forcing.
- Outputs in --workdir, as python -m train writes them: config.json (so
  `python -m train.generate --workdir DIR` continues prompts with the new
  model), TensorBoard events (train/: loss, lr, grad_norm and the method's
  margins; eval/: answer_nll, exact_match, reward, exact_match_<task>),
  curve.json, checkpoints/ (model and optimizer) and summary.json: method,
  base, base_step, steps, tokens (steps x rows x seq_len, padding included),
  final_train_loss, eval_answer_nll, exact_match, mean_reward,
  exact_match_by_task (each with a `_before` twin, the base's), samples,
  params_*, wall_seconds, data, config. Rerunning the same command resumes
  from the newest checkpoint (the data position is the step).

Bad input (an unknown method or task, a missing base run, a base without a
checkpoint or tokenizer, examples longer than post.seq_len, a workdir that
holds another post-training run) gets one message naming the key, exit status 2.
"""

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags, logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from configs import cli
from model import decode, sharding
from model.counts import param_counts
from train import checkpoint as ckpt_lib
from train import config_check
from train import generate
from train import optim
from train import prefs
from train import tasks
from train.config_check import ConfigError
from train.metrics import Reporter, write_json_atomic

WITH_REFERENCE = ('dpo', 'kto')  # Losses that compare with the frozen base.
RESUME_FREE = ('eval_every', 'log_every', 'checkpoint_every')  # post.* that may change on resume.
N_SAMPLES = 4  # Held-out completions kept in summary.json and shown on the console.


# ---- Config.

def task_names(p) -> tuple[str, ...]:
  return tuple(t.strip() for t in p.tasks.split(',') if t.strip())


def rows_per_step(p) -> int:
  """Rows of a step's batch: windows (sft), or twice post.batch_size (pairs; kto with KL rows)."""
  return p.batch_size if p.method == 'sft' else 2 * p.batch_size


def run_config(post, base_config) -> ml_collections.ConfigDict:
  """The base run's config with the `post` block and the overrides of the module docstring."""
  config = ml_collections.ConfigDict(base_config.to_dict())
  config.post = ml_collections.ConfigDict(post.to_dict())
  config.optim.update(lr=post.lr, schedule='cosine', warmup_steps=0)
  config.train.update(steps=post.steps, tokens=0, flops=0.0, log_every=post.log_every,
                      eval_every=post.eval_every or post.steps,
                      checkpoint_every=post.checkpoint_every or post.steps)
  config.data.update(seq_len=post.seq_len or base_config.data.seq_len,
                     global_batch_size=rows_per_step(post))
  return config


def _check_workdir(workdir: str, config) -> None:
  """Create --workdir; refuse the base itself, or one that holds another post-training run."""
  if os.path.abspath(workdir) == os.path.abspath(config.post.base):
    raise ConfigError(f'--workdir {workdir!r} is post.base: give the post-training run a folder '
                      'of its own')
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ConfigError(f'--workdir {workdir!r} cannot be created: {e.strerror}') from None
  path = os.path.join(workdir, 'config.json')
  new = json.loads(config.to_json())
  if not os.path.exists(path):
    write_json_atomic(path, new)
    return
  with open(path) as f:
    old = json.load(f)
  keys = [f'post.{k}' for k in sorted(set(new['post']) | set(old.get('post') or {}))
          if k not in RESUME_FREE and (old.get('post') or {}).get(k) != new['post'].get(k)]
  keys += ['model'] if old.get('model') != new['model'] else []
  if keys:
    raise ConfigError(f'--workdir {workdir!r} holds a run with a different config '
                      f'({", ".join(keys)} differ); use a new --workdir or the same settings')


# ---- Batches.

def _examples(rng, p):
  """Training examples drawn from `rng`, without end."""
  while True:
    yield tasks.draw(task_names(p), p.difficulty, rng)


def _take(rng, p, n: int) -> list[tasks.Example]:
  it = _examples(rng, p)
  return [next(it) for _ in range(n)]


def sft_batch(rng, p, tok, seq_len: int) -> dict:
  """post.batch_size windows packed with training examples, with the answer mask."""
  encoded = (tasks.encode(tok, ex.prompt, ex.answer) for ex in _examples(rng, p))
  batch = tasks.pack(encoded, p.batch_size, seq_len, tok.eos_id)
  del batch['examples']
  return batch


def pair_batch(rng, p, tok, seq_len: int) -> dict:
  """post.batch_size preference pairs: rows 0..B-1 the chosen answers, B..2B-1 the rejected."""
  pairs = [tasks.preference_pair(ex, rng) for ex in _take(rng, p, p.batch_size)]
  encoded = ([tasks.encode(tok, q.prompt, q.chosen) for q in pairs] +
             [tasks.encode(tok, q.prompt, q.rejected) for q in pairs])
  return tasks.rows_batch(encoded, seq_len, tok.eos_id)


def kto_batch(rng, p, tok, seq_len: int) -> dict:
  """B labelled answers (rows 0..B-1, 'desirable' (B,)), then B mismatched rows for the KL point."""
  items = [tasks.kto_example(ex, rng) for ex in _take(rng, p, p.batch_size)]
  shifted = items[1:] + items[:1]
  encoded = ([tasks.encode(tok, x.prompt, x.completion) for x in items] +
             [tasks.encode(tok, x.prompt, y.completion) for x, y in zip(items, shifted)])
  batch = tasks.rows_batch(encoded, seq_len, tok.eos_id)
  batch['desirable'] = np.array([x.desirable for x in items])
  return batch


class TaskStream:
  """The training batches; the data position is the next step (the checkpointed iterator state)."""

  def __init__(self, p, tok, seq_len: int):
    self.p, self.tok, self.seq_len, self.step = p, tok, seq_len, 0
    self.make = sft_batch if p.method == 'sft' else kto_batch if p.method == 'kto' else pair_batch

  def __next__(self) -> dict:
    rng = np.random.default_rng([self.p.seed, self.step])
    try:
      batch = self.make(rng, self.p, self.tok, self.seq_len)
    except ValueError as e:
      raise ConfigError(f'post.seq_len={self.seq_len}: {e}; raise post.seq_len or lower '
                        f'post.difficulty={self.p.difficulty}') from None
    self.step += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({'step': self.step}).encode()

  def set_state(self, state) -> None:
    self.step = json.loads(state)['step']

  def start_prefetch(self) -> None:  # Called by grain's restore; nothing runs ahead here.
    pass


# ---- Losses: (model, batch, reference state) -> (loss, metrics).

def answer_logprobs(model, batch):
  """(logp_B, n_B): each row's summed answer log-probability (nats) and answer token count."""
  logits_BTV, _ = model.forward(batch['inputs'])
  return prefs.sequence_logprobs(logits_BTV, batch['targets'], batch['mask'])


def make_loss(p, ref_graphdef):
  """The method's loss of (model, batch, ref_state); ref_state is the frozen base's (or None)."""

  def reference(ref_state, batch):
    return jax.lax.stop_gradient(answer_logprobs(nnx.merge(ref_graphdef, ref_state), batch)[0])

  def sft(model, batch, ref_state):
    logp, n = answer_logprobs(model, batch)
    return -jnp.sum(logp) / jnp.maximum(jnp.sum(n), 1.0), {}

  def paired(model, batch, ref_state):
    logp, n = answer_logprobs(model, batch)
    B = logp.shape[0] // 2
    (w, l), (n_w, n_l) = (logp[:B], logp[B:]), (n[:B], n[B:])
    if p.method == 'dpo':
      ref = reference(ref_state, batch)
      loss = prefs.dpo_loss(w, l, ref[:B], ref[B:], p.beta)
    elif p.method == 'orpo':
      loss = prefs.orpo_loss(w, n_w, l, n_l, p.orpo_lambda)
    else:
      loss = prefs.simpo_loss(w, n_w, l, n_l, p.simpo_beta, p.simpo_gamma)
    margin_B = w / n_w - l / n_l  # Nats per token, chosen minus rejected.
    return loss, {'margin': jnp.mean(margin_B), 'pref_accuracy': jnp.mean(margin_B > 0)}

  def kto(model, batch, ref_state):
    logp, _ = answer_logprobs(model, batch)
    ref = reference(ref_state, batch)
    B = logp.shape[0] // 2
    z_ref = prefs.kto_reference_point(logp[B:], ref[B:])
    loss = prefs.kto_loss(logp[:B], ref[:B], batch['desirable'], z_ref, p.beta, p.kto_lambda_d,
                          p.kto_lambda_u)
    return loss, {'kl_reference_point': z_ref}

  return {'sft': sft, 'kto': kto}.get(p.method, paired)


def make_train_step(graphdef, loss, sched, state_sharding):
  """Jitted (state, ref_state, batch) -> (state, metrics); donates state.

  The new state keeps `state_sharding`, so the step compiles once.
  """

  def train_step(state, ref_state, batch):
    model, opt = nnx.merge(graphdef, state)
    (value, metrics), grads = nnx.value_and_grad(loss, has_aux=True)(model, batch, ref_state)
    lr = sched(opt.step[...])
    grad_norm = optax.global_norm(grads)
    opt.update(model, grads)
    return nnx.state((model, opt)), {'loss': value, 'lr': lr, 'grad_norm': grad_norm, **metrics}

  return jax.jit(train_step, out_shardings=(state_sharding, None), donate_argnums=0)


# ---- Evaluation.

class Evaluator:
  """The held-out set, scored by greedy decoding and by the answers' NLL under teacher forcing."""

  def __init__(self, p, tok, seq_len: int):
    self.tok, self.generator, self.nll = tok, None, None
    self.examples = tasks.draw_many(p.eval_prompts, task_names(p), p.difficulty, p.seed, 'eval')
    encoded = [tasks.encode(tok, ex.prompt, ex.answer) for ex in self.examples]
    try:
      self.batch = tasks.rows_batch(encoded, seq_len, tok.eos_id)
    except ValueError as e:
      raise ConfigError(f'post.seq_len={seq_len}: {e}; raise post.seq_len or lower '
                        f'post.difficulty={p.difficulty}') from None
    self.prompts = [[tok.eos_id] + p_ids for p_ids, _ in encoded]
    self.max_new = max(len(a_ids) for _, a_ids in encoded)  # Answers end with eos.

  def __call__(self, graphdef, state) -> dict:
    """Scores of the (model, optimizer) state split with `graphdef` (the same at every call)."""
    model = nnx.merge(graphdef, state)[0]
    if self.generator is None:  # Compiled once, then pointed at each state.
      self.generator = decode.Generator(model)
      self.nll = jax.jit(lambda s, b: answer_logprobs(nnx.merge(graphdef, s)[0], b))
    logp_B, n_B = self.nll(state, self.batch)
    self.generator.state = nnx.state(model)
    outs = self.generator.generate(self.prompts, self.max_new, eos_id=self.tok.eos_id,
                                   vocab_limit=self.tok.vocab_size)
    texts = [tasks.completion_text(self.tok, ids) for ids in outs]
    exact = [tasks.exact_match(t, ex.answer) for t, ex in zip(texts, self.examples)]
    by_task = {}
    for ex, e in zip(self.examples, exact):
      by_task.setdefault(ex.task, []).append(e)
    return {
        'answer_nll': -float(jnp.sum(logp_B)) / float(jnp.sum(n_B)),
        'exact_match': float(np.mean(exact)),
        'mean_reward': float(np.mean([tasks.reward(t, ex.answer)
                                      for t, ex in zip(texts, self.examples)])),
        'exact_match_by_task': {k: float(np.mean(v)) for k, v in sorted(by_task.items())},
        'samples': [{'prompt': ex.prompt, 'completion': t, 'answer': ex.answer}
                    for ex, t in zip(self.examples[:N_SAMPLES], texts)],
    }


def _log_eval(report: Reporter, step: int, ev: dict) -> None:
  per_task = {f'exact_match_{k}': v for k, v in ev['exact_match_by_task'].items()}
  report.scalars(step, {'answer_nll': ev['answer_nll'], 'exact_match': ev['exact_match'],
                        'reward': ev['mean_reward'], **per_task}, 'eval')
  report.console(f'eval step {step} | answer NLL {ev["answer_nll"]:.4f} nats/token | exact match '
                 f'{ev["exact_match"]:.3f} | reward {ev["mean_reward"]:.3f} | ' +
                 ', '.join(f'{k} {v:.2f}' for k, v in ev['exact_match_by_task'].items()))


# ---- The run.

def _load_base(base: str):
  """(config, tokenizer) of the run in post.base; a ConfigError naming post.base if it is none."""
  if not os.path.isfile(os.path.join(base, 'config.json')):
    what = 'has no config.json: not a training run' if os.path.isdir(base) else 'no such folder'
    raise ConfigError(f'post.base={base!r}: {what}')
  try:
    config = generate.load_run_config(base)
    return config, generate.run_tokenizer(base, config)
  except ConfigError as e:
    raise ConfigError(f'post.base: {e}') from None


def _restore_base(base: str, base_config):
  """(step, model, one-device mesh) of the base run's newest intact checkpoint."""
  try:
    step, program, state = generate.restore_state(base, base_config)
  except ConfigError as e:
    raise ConfigError(f'post.base: {e}') from None
  model, _ = nnx.merge(program.graphdef, state)
  return step, model, program.batch_sharding.mesh


def _log_train(report: Reporter, config, step: int, m: dict, rows_tokens: int) -> float:
  """Log step `step`'s fetched metrics; a non-finite loss stops the run before any checkpoint."""
  m = {k: float(v) for k, v in m.items()}
  if not (math.isfinite(m['loss']) and math.isfinite(m['grad_norm'])):
    raise cli.Stop(f'post-training loss became {m["loss"]} (grad norm {m["grad_norm"]}) at step '
                   f'{step}; nothing was checkpointed from it', cli.NONFINITE)
  report.scalars(step, m, 'train')
  report.curve_row({'step': step, 'tokens': step * rows_tokens, 'train_loss': m['loss'],
                    'eval_loss': None})
  extra = ''.join(f' | {k} {m[k]:.4f}' for k in ('margin', 'pref_accuracy', 'kl_reference_point')
                  if k in m)
  report.console(f'step {step}/{config.train.steps} | {config.post.method} loss {m["loss"]:.4f}'
                 f'{extra} | lr {m["lr"]:.2e} | grad norm {m["grad_norm"]:.3f}')
  return m['loss']


def _train(config, state, ref_state, start, stream, step_fn, evaluate, report, checkpointer):
  """Steps start+1..train.steps, with logs, evals and checkpoints; -> (state, last train loss)."""
  t, rows_tokens = config.train, config.data.global_batch_size * config.data.seq_len
  pending, loss = None, float('nan')  # (step, metrics on device): fetched one step late.
  for s in range(start + 1, t.steps + 1):
    state, metrics = step_fn(state, ref_state, next(stream))
    if pending is not None:
      loss = _log_train(report, config, *pending, rows_tokens)
      pending = None
    if s % t.log_every == 0 or s == t.steps:
      pending = (s, metrics)
    if s % t.eval_every == 0 or s % t.checkpoint_every == 0 or s == t.steps:
      if pending is not None:
        loss = _log_train(report, config, *pending, rows_tokens)
        pending = None
      if s % t.eval_every == 0 and s != t.steps:
        _log_eval(report, s, evaluate(state))
      if s % t.checkpoint_every == 0 or s == t.steps:
        report.flush()
        try:
          checkpointer.save(s, state, stream)
        except (ckpt_lib.CheckpointError, OSError) as e:
          raise cli.Stop(str(e), cli.STORAGE_ERROR) from e
  return state, loss


def _summary(config, base_step, before, after, loss, wall, tok) -> dict:
  p = config.post
  rows_tokens = config.data.global_batch_size * config.data.seq_len
  out = {'method': p.method, 'base': os.path.abspath(p.base), 'base_step': base_step,
         'steps': p.steps, 'tokens': p.steps * rows_tokens, 'final_train_loss': loss}
  for key in ('answer_nll', 'exact_match', 'mean_reward', 'exact_match_by_task'):
    name = 'eval_answer_nll' if key == 'answer_nll' else key
    out[name], out[f'{name}_before'] = after[key], before[key]
  out.update(samples=after['samples'], eval_prompts=p.eval_prompts,
             **param_counts(config.model).as_dict(), wall_seconds=wall,
             data={'tokenizer': tok.name, 'tasks': list(task_names(p)), 'difficulty': p.difficulty,
                   'held_out': f'crc32(prompt) % {tasks.HOLD_OUT} == 0'},
             config=json.loads(config.to_json()))
  return out


def _configure(p):
  """(run config, base config, tokenizer) after every check that needs no device."""
  errors = config_check.post_errors(p)
  if not p.base:
    errors.insert(0, 'post.base is empty: give the pre-trained run folder (--config.post.base=DIR)')
  config_check.raise_if(errors)
  base_config, tok = _load_base(p.base)
  config = run_config(p, base_config)
  config_check.validate(config, 1, check_shapes=False)
  return config, base_config, tok


def _start_state(config, model, replicated):
  """(graphdef, state) of the policy and a fresh optimizer; (graphdef, state) of the reference.

  Every array is placed with the one sharding `replicated` (the restored ones
  carry the base's logical specs, the new ones none), so each jitted function
  sees the same input shardings at every call and compiles once.
  """
  opt = nnx.Optimizer(model, optim.optimizer(config), wrt=nnx.Param)
  graphdef, state = nnx.split((model, opt))
  ref_graphdef, ref_state = nnx.split(model)
  # A copy: the train step donates the policy's arrays, the reference keeps the base's.
  ref_state = jax.tree.map(jnp.copy, ref_state) if config.post.method in WITH_REFERENCE else None
  state, ref_state = jax.device_put((state, ref_state), replicated)
  return graphdef, state, ref_graphdef, ref_state


def _resume(checkpointer, state, stream, workdir: str):
  """(step, state) of this run's newest intact checkpoint, or (0, state) to start afresh."""
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  try:
    start, restored = checkpointer.restore_latest(abstract, stream)
  except ckpt_lib.CheckpointMismatch as e:
    checkpointer.close()
    raise ConfigError(f'{e}: {workdir} was post-trained from another base') from None
  return (start, restored) if start else (0, state)


def _report_start(report, config, tok, base_step: int, start: int, before: dict) -> None:
  p, d = config.post, config.data
  report.console(f'{p.method} from {p.base} step {base_step} | {param_counts(config.model).total:,}'
                 f' params | {p.steps} steps x {d.global_batch_size} rows of {d.seq_len} tokens | '
                 f'tasks {p.tasks} (difficulty {p.difficulty}) | tokenizer {tok.name}' +
                 (f' | resumed from step {start}' if start else ''))
  report.text('config', '```\n' + str(config) + '\n```')
  if not start:
    _log_eval(report, 0, before)


def _finish(report, summary: dict, workdir: str) -> None:
  """Write summary.json, show the samples, close the events."""
  write_json_atomic(os.path.join(workdir, 'summary.json'), summary)
  for s in summary['samples']:
    report.console(f'sample {s["prompt"]!r} -> {s["completion"]!r} (answer {s["answer"]!r})')
  report.close()
  report.console(f'done: exact match {summary["exact_match_before"]:.3f} -> '
                 f'{summary["exact_match"]:.3f}, reward {summary["mean_reward_before"]:.3f} -> '
                 f'{summary["mean_reward"]:.3f} | summary {os.path.join(workdir, "summary.json")}')


def run(cli_config, workdir: str) -> dict:
  """Post-train as `cli_config.post` says, in `workdir`; -> (and writes) summary.json's contents.

  Check, restore the base, score it, resume or start, train, score again, report.
  """
  config, base_config, tok = _configure(cli_config.post)
  p, steps = config.post, config.train.steps
  evaluate = Evaluator(p, tok, config.data.seq_len)
  _check_workdir(workdir, config)
  base_step, model, mesh = _restore_base(p.base, base_config)
  replicated = NamedSharding(mesh, PartitionSpec())  # One device.
  graphdef, state, ref_graphdef, ref_state = _start_state(config, model, replicated)
  stream = TaskStream(p, tok, config.data.seq_len)
  with sharding.use_mesh(mesh):
    before = evaluate(graphdef, state)
    checkpointer = ckpt_lib.Checkpointer(workdir, config.train.keep_checkpoints)
    start, state = _resume(checkpointer, state, stream, workdir)
    report = Reporter(workdir, resume_step=start)
    _report_start(report, config, tok, base_step, start, before)
    step_fn = make_train_step(graphdef, make_loss(p, ref_graphdef), optim.schedule(config),
                              replicated)
    t0 = time.perf_counter()
    try:
      state, loss = _train(config, state, ref_state, start, stream, step_fn,
                           lambda st: evaluate(graphdef, st), report, checkpointer)
    finally:
      report.flush()
      checkpointer.close()
    if start >= steps:  # Already finished: report the final state again.
      loss = next((r['train_loss'] for r in reversed(report.curve)), loss)
    after = evaluate(graphdef, state)
  _log_eval(report, steps, after)
  if report.curve and report.curve[-1]['step'] == steps:
    report.curve[-1]['eval_loss'] = after['answer_nll']
  summary = _summary(config, base_step, before, after, loss, time.perf_counter() - t0, tok)
  _finish(report, summary, workdir)
  return summary


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO.
  run(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  cli.define_config_flag()
  flags.DEFINE_string('workdir', None, 'Post-training run directory: TensorBoard events, '
                      'checkpoints, summary.json.')
  flags.mark_flags_as_required(['config', 'workdir'])
  cli.run_absl(main)
