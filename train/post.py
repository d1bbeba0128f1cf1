"""python -m train.post --config FILE --workdir DIR --config.post.base=RUN --config.post.method=M [...]

Post-training of a pre-trained run on the verifiable tasks of train/tasks.py:
SFT (the answers' NLL), a preference loss of train/prefs.py (DPO, ORPO, SimPO,
KTO), GRPO (train/rl.py), a reward model or PPO with one (train/ppo.py) or
distillation from post.teacher's logits or from the answers it writes
(post.distill_source; train/distill.py), each the loss of train/objectives.py,
on every parameter or on adapters of a frozen
base (post.peft: LoRA, QLoRA, DoRA, (IA)³, bottleneck adapters, prefix or prompt
tuning; train/peft.py); measured by greedy
decoding of held-out prompts (exact match and reward) before and after.

- Start and reference: post.base's newest intact checkpoint, on one device
  (train.generate.restore_state); the model is its config.json's, the
  tokenizer the one its summary.json names. DPO, KTO and GRPO compare with
  the starting policy, frozen, as π_ref (under post.peft the adapted model at
  init, which is the base, NF4-rounded under qlora); SFT, ORPO and SimPO use
  no reference; distill reads post.teacher's newest checkpoint (the same
  tokenizer and vocabulary). The optimizer state starts afresh (AdamW moments
  at zero) and covers only what trains: every nnx.Param, or the adapters.
- Only the `post` block is read from --config; the run's config is the
  base's with optim.lr = post.lr, a cosine schedule with warmup
  optim.warmup_fraction of train.steps = post.steps, data.seq_len =
  post.seq_len (0: the base's), and data.global_batch_size the rows of a step.
- Batches: train/tasks.py's TaskStream (the data position is the step), for rm
  train/ppo.py's PairStream (post.rm_labels), or for grpo train/rl.py's
  GroupStream and for ppo train/ppo.py's RolloutStream, which sample each
  batch from the policy (ppo: scored by post.reward_model's frozen reward model).
- Evaluation: post.eval_prompts held-out prompts (a fixed set), decoded
  greedily (model/decode.py) before training, every post.eval_every steps and
  at the end; also the answers' NLL (nats per answer token) under teacher forcing.
- Outputs in --workdir, as python -m train writes them: config.json (so
  `python -m train.generate --workdir DIR` continues prompts with the new
  model), TensorBoard events (train/: loss, lr, grad_norm and the method's
  metrics: margins, KTO's reference point, GRPO's sampled reward, kl and
  clip_fraction; eval/: answer_nll, exact_match, reward, exact_match_<task>),
  curve.json, checkpoints/ (model and optimizer) and summary.json: method,
  base, base_step, steps, tokens (steps x rows x seq_len, padding included),
  final_train_loss, eval_answer_nll, exact_match, mean_reward,
  exact_match_by_task (each with a `_before` twin, the base's), samples,
  params_*, `trainable` (what trains, measured and by closed form; optimizer
  state bytes; the compiled step's memory_analysis() against the guide's 16
  B/param of full fine-tuning), for grpo `grpo_timing`, for rm
  `reward_model` (held-out pair accuracy), for ppo `ppo_timing`,
  `reward_model`, `rollouts` and `resident_memory`, for distill
  `teacher` (its held-out scores, the source; for text, the answers it wrote
  and the fraction exactly right), wall_seconds, data, config. Rerunning the
  same command resumes from the newest checkpoint (the data position is the
  step). A post.peft run's checkpoints hold the adapted model, which
  train.generate rebuilds and loads (peft.abstract_run) and a further
  post-training refuses.

Bad input (an unknown method, task or PEFT kind, a missing base or teacher run,
one without a checkpoint or tokenizer, a teacher of another tokenizer,
examples longer than post.seq_len, a LoRA target that names no layer, rank 0
or negative, a workdir that holds another post-training run; for ppo no
post.reward_model, or one that is no rm run: train/ppo.py) gets one
message naming the key, exit status 2.
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
from train import cost
from train import distill
from train import generate
from train import loop
from train import objectives
from train import optim
from train import peft
from train import ppo
from train import rl
from train import tasks
from train.config_check import ConfigError
from train.metrics import Reporter, write_json_atomic

GUIDE_FULL_FT_BYTES_PER_PARAM = 16  # The guide's full fine-tuning bytes (scaling/memory.py's sum).
RESUME_FREE = ('eval_every', 'log_every', 'checkpoint_every')  # post.* that may change on resume.
N_SAMPLES = 4  # Held-out completions kept in summary.json and shown on the console.
LOGGED = ('margin', 'pref_accuracy', 'kl_reference_point', 'reward', 'score', 'kl',
          'clip_fraction', 'value_loss')


# ---- Config.

def rows_per_step(p) -> int:
  """Rows of a step: windows (sft, distill), prompts x group (grpo, ppo), else 2 x batch_size."""
  if p.method in ('sft', 'distill'):
    return p.batch_size
  return p.batch_size * p.group_size if p.method in ('grpo', 'ppo') else 2 * p.batch_size


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
  loop.make_workdir(workdir)
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


def make_train_step(graphdef, loss, sched, state_sharding, wrt=nnx.Param):
  """Jitted (state, ref_state, batch) -> (state, metrics); donates state.

  Gradients are taken with respect to the `wrt` Variables only (every Param,
  or peft.Adapter: the frozen rest is a constant of the program). The new
  state keeps `state_sharding`, so the step compiles once.
  """

  def train_step(state, ref_state, batch):
    model, opt = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, wrt), has_aux=True)
    (value, metrics), grads = grad_fn(model, batch, ref_state)
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
    self.examples = tasks.draw_many(p.eval_prompts, tasks.task_names(p.tasks), p.difficulty,
                                    p.seed, 'eval')
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
    return self.score(rl.policy_of(nnx.merge(graphdef, state)[0]))

  def score(self, model) -> dict:
    """Scores of `model` (of one structure at every call: the first one's is compiled)."""
    if self.generator is None:  # Compiled once, then pointed at each state.
      self.generator = decode.Generator(model)
      gd = self.generator.graphdef
      self.nll = jax.jit(lambda s, b: objectives.answer_logprobs(nnx.merge(gd, s), b))
    self.generator.state = nnx.state(model)
    logp_B, n_B = self.nll(self.generator.state, self.batch)
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

def _load_run(key: str, folder: str):
  """(config, tokenizer) of the run in `folder`; a ConfigError naming `key` if it is none."""
  if not os.path.isfile(os.path.join(folder, 'config.json')):
    what = 'has no config.json: not a training run' if os.path.isdir(folder) else 'no such folder'
    raise ConfigError(f'{key}={folder!r}: {what}')
  try:
    config = generate.load_run_config(folder)
    tok = generate.run_tokenizer(folder, config)
  except ConfigError as e:
    raise ConfigError(f'{key}: {e}') from None
  if config.post.method in ppo.UNLOADABLE:
    raise ConfigError(f'{key}={folder!r} is a post.method={config.post.method!r} run: its '
                      'checkpoints hold a scalar head (and a critic), not a language model alone')
  if config.post.peft != 'none':
    raise ConfigError(f'{key}={folder!r} is a post.peft={config.post.peft!r} run: its checkpoints '
                      'hold adapters on a frozen base, which train.post does not load; give a run '
                      'trained without post.peft')
  return config, tok


def _restore_run(key: str, folder: str, config):
  """(step, model, one-device mesh) of the run's newest intact checkpoint."""
  try:
    step, program, state = generate.restore_state(folder, config)
  except ConfigError as e:
    raise ConfigError(f'{key}: {e}') from None
  model, _ = nnx.merge(program.graphdef, state)
  return step, model, program.batch_sharding.mesh


def _teacher(p, tok, base_config):
  """The distillation teacher: post.teacher's newest model (same tokenizer and vocabulary)."""
  if not p.teacher:
    raise ConfigError("post.teacher is empty: post.method='distill' needs the teacher run folder "
                      '(--config.post.teacher=DIR)')
  config, teacher_tok = _load_run('post.teacher', p.teacher)
  mine = (tok.name, base_config.model.vocab_size)
  theirs = (teacher_tok.name, config.model.vocab_size)
  if mine != theirs:
    raise ConfigError(f'post.teacher={p.teacher!r}: tokenizer {theirs[0]!r} and vocab_size '
                      f'{theirs[1]}, but post.base has {mine[0]!r} and {mine[1]}; distillation '
                      'matches logits token by token, so both need the same')
  return _restore_run('post.teacher', p.teacher, config)[1]


def _log_train(report: Reporter, config, step: int, m: dict, rows_tokens: int) -> float:
  """Log step `step`'s fetched metrics; a non-finite loss stops the run before any checkpoint."""
  m = {k: float(v) for k, v in m.items()}
  if not (math.isfinite(m['loss']) and math.isfinite(m['grad_norm'])):
    raise cli.Stop(f'post-training loss became {m["loss"]} (grad norm {m["grad_norm"]}) at step '
                   f'{step}; nothing was checkpointed from it', cli.NONFINITE)
  report.scalars(step, m, 'train')
  report.curve_row({'step': step, 'tokens': step * rows_tokens, 'train_loss': m['loss'],
                    'eval_loss': None})
  extra = ''.join(f' | {k} {m[k]:.4f}' for k in LOGGED if k in m)
  report.console(f'step {step}/{config.train.steps} | {config.post.method} loss {m["loss"]:.4f}'
                 f'{extra} | lr {m["lr"]:.2e} | grad norm {m["grad_norm"]:.3f}')
  return m['loss']


def _train(config, state, ref_state, start, stream, step_fn, evaluate, report, checkpointer):
  """Steps start+1..train.steps, with logs, evals and checkpoints; -> (state, last train loss)."""
  t, rows_tokens = config.train, config.data.global_batch_size * config.data.seq_len
  pending, loss = None, float('nan')  # (step, metrics on device): fetched one step late.
  for s in range(start + 1, t.steps + 1):
    state, metrics = step_fn(state, ref_state, stream.draw(state, ref_state))
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


def _summary(config, base_step, before, after, loss, wall, tok, extra: dict) -> dict:
  p = config.post
  rows_tokens = config.data.global_batch_size * config.data.seq_len
  out = {'method': p.method, 'base': os.path.abspath(p.base), 'base_step': base_step,
         'steps': p.steps, 'tokens': p.steps * rows_tokens, 'final_train_loss': loss}
  for key in ('answer_nll', 'exact_match', 'mean_reward', 'exact_match_by_task'):
    name = 'eval_answer_nll' if key == 'answer_nll' else key
    out[name], out[f'{name}_before'] = after[key], before[key]
  out.update(samples=after['samples'], eval_prompts=p.eval_prompts,
             **param_counts(config.model).as_dict(), **extra, wall_seconds=wall,
             data={'tokenizer': tok.name, 'tasks': list(tasks.task_names(p.tasks)),
                   'difficulty': p.difficulty,
                   'held_out': f'crc32(prompt) % {tasks.HOLD_OUT} == 0'},
             config=json.loads(config.to_json()))
  return out


def _configure(p):
  """(run config, base config, tokenizer) after every check that needs no device."""
  errors = config_check.post_errors(p)
  if not p.base:
    errors.insert(0, 'post.base is empty: give the pre-trained run folder (--config.post.base=DIR)')
  config_check.raise_if(errors)
  base_config, tok = _load_run('post.base', p.base)
  config = run_config(p, base_config)
  config_check.raise_if(peft.base_errors(p, config.model))
  config_check.validate(config, 1, check_shapes=False)
  return config, base_config, tok


def _start_state(config, model, replicated, teacher=None):
  """(graphdef, state, ref_graphdef, ref_state, sites): the policy, adapted as post.peft says,
  with a fresh optimizer over what trains; the frozen reference (the starting policy, or the
  teacher; None when the method reads none); the PEFT sites.

  Every array is placed with the one sharding `replicated` (the restored ones
  carry the base's logical specs, the new ones none), so each jitted function
  sees the same input shardings at every call and compiles once.
  """
  p = config.post
  try:
    opt, sites = peft.adapt(model, config)  # As train.generate rebuilds it (peft.abstract_run).
  except ValueError as e:
    raise ConfigError(str(e)) from None
  graphdef, state = nnx.split((model, opt))
  ref_graphdef, ref_state = nnx.split(rl.policy_of(model) if teacher is None else teacher)
  # A copy of the policy: the train step donates its arrays, the reference keeps them.
  if teacher is None:
    ref_state = jax.tree.map(jnp.copy, ref_state) if p.method in objectives.WITH_REFERENCE else None
  state, ref_state = jax.device_put((state, ref_state), replicated)
  return graphdef, state, ref_graphdef, ref_state, sites


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


def _memory(step_fn, state, ref_state, batch_spec) -> dict:
  """The jitted step's memory_analysis(), bytes on the one device (its compile is reused by the
  step's first call: jax caches the executable).

  peak_estimate = arguments + outputs - aliased (the donated state) + temporaries
  (train.cost.memory_of).
  """
  return cost.memory_of(step_fn.lower(state, ref_state, batch_spec).compile())


def _trainable(config, step_fn, graphdef, state, ref_state, stream, sites) -> dict:
  """summary.json's `trainable`: peft.trainable_report, the step's memory, the guide's number."""
  total = param_counts(config.model).total
  return {**peft.trainable_report(config.post, *nnx.merge(graphdef, state), sites, total),
          'train_step_memory': _memory(step_fn, state, ref_state, stream.spec()),
          'guide_full_ft_bytes': GUIDE_FULL_FT_BYTES_PER_PARAM * total}


def _report_start(report, config, tok, base_step: int, start: int, before: dict, trainable) -> None:
  p, d = config.post, config.data
  report.console(f'{p.method} from {p.base} step {base_step} | {param_counts(config.model).total:,}'
                 f' params, {trainable["params"]:,} trained (post.peft={p.peft!r}) | {p.steps} '
                 f'steps x {d.global_batch_size} rows of {d.seq_len} tokens | tasks {p.tasks} '
                 f'(difficulty {p.difficulty}) | tokenizer {tok.name}' +
                 (f' | resumed from step {start}' if start else ''))
  mem = trainable['train_step_memory']['peak_estimate']
  report.console(f'trainable {trainable["params"]:,} (closed form '
                 f'{trainable["params_closed_form"]:,}) | optimizer state '
                 f'{trainable["optimizer_state_bytes"]:,} B | step peak {mem:,.0f} B (memory '
                 f'analysis) vs {trainable["guide_full_ft_bytes"]:,} B (16 B/param, full FT)')
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


def _method_extras(p, stream, teacher_scores, state, ref_state) -> dict:
  """summary.json's method-specific parts: grpo's timing, rm's and ppo's (train/ppo.py),
  distill's teacher scores."""
  if p.method in ('rm', 'ppo'):
    return stream.summary(state, ref_state)
  if p.method == 'grpo':
    return {'grpo_timing': stream.timing()}
  if p.method == 'distill':
    written = stream.stats() if p.distill_source == 'text' else {}
    return {'teacher': {'run': os.path.abspath(p.teacher), 'source': p.distill_source, **written,
                        **{k: teacher_scores[k] for k in ('answer_nll', 'exact_match',
                                                          'mean_reward', 'exact_match_by_task')}}}
  return {}


def _stream(p, tok, seq_len: int, graphdef, ref_graphdef, reward=None, teacher=None):
  if p.method == 'distill' and p.distill_source == 'text':
    return distill.TeacherTextStream(p, tok, seq_len, teacher)
  if p.method == 'grpo':
    return rl.GroupStream(p, tok, seq_len, graphdef, ref_graphdef)
  if p.method == 'rm':
    return ppo.PairStream(p, tok, seq_len, graphdef)
  if p.method == 'ppo':
    return ppo.RolloutStream(p, tok, seq_len, graphdef, ref_graphdef, reward)
  return tasks.TaskStream(p, tok, seq_len)


def run(cli_config, workdir: str) -> dict:
  """Post-train as `cli_config.post` says, in `workdir`; -> (and writes) summary.json's contents.

  Check, restore the base (and teacher), adapt, score, resume or start,
  compile, train, score again, report.
  """
  config, base_config, tok = _configure(cli_config.post)
  p, steps = config.post, config.train.steps
  evaluate = Evaluator(p, tok, config.data.seq_len)
  teacher = _teacher(p, tok, base_config) if p.method == 'distill' else None
  base_step, model, mesh = _restore_run('post.base', p.base, base_config)
  replicated = NamedSharding(mesh, PartitionSpec())  # One device.
  reward = ppo.load_reward_model(p, tok, base_config, replicated) if p.method == 'ppo' else None
  graphdef, state, ref_graphdef, ref_state, sites = _start_state(
      config, ppo.wrap(p, model, reward), replicated, teacher)
  _check_workdir(workdir, config)  # After the checks that need the model (PEFT targets).
  stream = _stream(p, tok, config.data.seq_len, graphdef, ref_graphdef, reward, teacher)
  with sharding.use_mesh(mesh):
    before = evaluate(graphdef, state)
    teacher_scores = (Evaluator(p, tok, config.data.seq_len).score(teacher)
                      if teacher is not None else None)
    step_fn = make_train_step(graphdef, objectives.make_loss(p, ref_graphdef),
                              optim.schedule(config), replicated, peft.trainable(p.peft))
    trainable = _trainable(config, step_fn, graphdef, state, ref_state, stream, sites)
    checkpointer = ckpt_lib.Checkpointer(workdir, config.train.keep_checkpoints)
    start, state = _resume(checkpointer, state, stream, workdir)
    report = Reporter(workdir, resume_step=start)
    _report_start(report, config, tok, base_step, start, before, trainable)
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
  extra = {'trainable': trainable,
           **_method_extras(p, stream, teacher_scores, state, ref_state)}
  summary = _summary(config, base_step, before, after, loss, time.perf_counter() - t0, tok, extra)
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
