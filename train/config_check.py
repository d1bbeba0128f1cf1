"""Validate a whole run config once, before anything is compiled.

`validate(config, n_devices)` collects every problem it can find and raises a
single `ConfigError` whose message names each offending key. Each block has
its own check (`model_errors`, `data_errors`, `optim_errors`, `length_errors`,
`mesh_errors`, `shape_errors`, `post_errors`). Nothing here touches a device: the model is
shape-evaluated only (`nnx.eval_shape`).
"""

import math

import ml_collections
from flax import nnx

from configs.load import ConfigError  # noqa: F401  (re-exported: the error of every config check)
from model import moe, qat, sharding
from model.counts import planned_steps
from model.transformer import (Transformer, attention_errors, parameterization_errors,
                               scan_unroll_errors)
from train import peft
from train import replicas
from train import tasks
from train.optim import DECAY_SHAPES
from train.sources import VALID_SOURCES

REMATS = ('none', 'full', 'dots', 'dots_no_batch')
DTYPES = ('float32', 'bfloat16', 'float16')
TOKENIZERS = ('byte', 'bpe')
ATTENTION_IMPLS = ('xla', 'cudnn', None)
NONFINITE_POLICIES = ('stop', 'skip')
SCHEDULES = ('cosine', 'wsd')
POST_METHODS = ('sft', 'dpo', 'orpo', 'simpo', 'kto', 'grpo', 'rm', 'ppo', 'distill')  # train.post
RM_LABELS = ('truth', 'judge')  # post.rm_labels: the tasks' ground truth, or train/ppo.py's judge.
CRITIC_INITS = ('base', 'reward_model')  # post.ppo_critic_init: what PPO's critic starts as.
DISTILL_SOURCES = ('logits', 'text')  # post.distill_source: the teacher's logits, or its text.


def _positive_ints(c, section: str, keys, errors):
  for k in keys:
    v = c[section][k]
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      errors.append(f'{section}.{k}={v!r}: must be a positive integer')


def _choice(c, section: str, key: str, allowed, errors):
  v = c[section][key]
  if v not in allowed:
    errors.append(f'{section}.{key}={v!r}: must be one of {", ".join(map(repr, allowed))}')


def model_errors(m) -> list[str]:
  """Problems with the `model` block alone (no devices involved)."""
  errors = []
  c = {'model': m}
  _positive_ints(c, 'model', ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'n_kv_heads', 'd_ff'),
                 errors)
  bad = {e.split('=')[0] for e in errors}
  if not bad & {'model.d_model', 'model.n_heads'}:
    if m.d_model % m.n_heads:
      errors.append(f'model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}')
    elif (m.d_model // m.n_heads) % 2:
      errors.append(f'model.d_model // model.n_heads = {m.d_model // m.n_heads}: the head size '
                    'must be even for rotary embeddings')
  if not bad & {'model.n_heads', 'model.n_kv_heads'}:
    if m.n_heads % m.n_kv_heads:
      errors.append(f'model.n_kv_heads={m.n_kv_heads} does not divide model.n_heads={m.n_heads}')
  for k in ('rope_theta', 'init_std', 'norm_eps'):
    if not m[k] > 0:
      errors.append(f'model.{k}={m[k]!r}: must be > 0')
  _choice(c, 'model', 'compute_dtype', DTYPES, errors)
  _choice(c, 'model', 'remat', REMATS, errors)
  _choice(c, 'model', 'attention_impl', ATTENTION_IMPLS, errors)
  if not errors:
    errors += moe.moe_errors(m) + attention_errors(m) + parameterization_errors(m)
    errors += scan_unroll_errors(m) + qat.qat_errors(m) + fp8_errors(m)
  return errors


def fp8_errors(m) -> list[str]:
  """model.fp8 not with QAT (which quantizes the same weights another way)."""
  if m.get('fp8', False) and m.qat != 'none':
    return [f"model.fp8=True with model.qat={m.qat!r}: choose one (FP8 training, or QAT's fake-quantized weights)"]
  return []


def data_errors(d) -> list[str]:
  """Problems with the `data` block."""
  errors = []
  c = {'data': d}
  _positive_ints(c, 'data', ('seq_len', 'global_batch_size', 'synthetic_tokens'), errors)
  _choice(c, 'data', 'source', VALID_SOURCES, errors)
  _choice(c, 'data', 'tokenizer', TOKENIZERS, errors)
  if d.source == 'files' and not d.paths:
    errors.append("data.paths is empty but data.source='files' needs files or globs")
  if d.source == 'arrayrecord':  # Pre-tokenized ArrayRecord files (train/arrayrecord.py).
    for k in ('paths', 'val_paths'):
      if not d.get(k):
        errors.append(f"data.{k} is empty but data.source='arrayrecord' needs ArrayRecord files or globs")
  if not 0 < d.val_fraction < 1:
    errors.append(f'data.val_fraction={d.val_fraction}: must be in (0, 1)')
  for k in ('worker_count', 'prefetch'):
    if d[k] < 0:
      errors.append(f'data.{k}={d[k]}: must be >= 0')
  return errors


def optim_errors(o) -> list[str]:
  """Problems with the `optim` block."""
  errors = []
  for k in ('lr', 'b1', 'b2', 'eps'):
    if not o[k] > 0:
      errors.append(f'optim.{k}={o[k]!r}: must be > 0')
  for k in ('b1', 'b2'):
    if not o[k] < 1:
      errors.append(f'optim.{k}={o[k]!r}: must be < 1')
  for k in ('weight_decay', 'grad_clip', 'z_loss', 'warmup_steps'):
    if o[k] < 0:
      errors.append(f'optim.{k}={o[k]!r}: must be >= 0')
  if not 0 <= o.warmup_fraction < 1:
    errors.append(f'optim.warmup_fraction={o.warmup_fraction}: must be in [0, 1)')
  if not 0 <= o.min_lr_ratio <= 1:
    errors.append(f'optim.min_lr_ratio={o.min_lr_ratio}: must be in [0, 1]')
  _choice({'optim': o}, 'optim', 'schedule', SCHEDULES, errors)
  _choice({'optim': o}, 'optim', 'decay_shape', DECAY_SHAPES, errors)
  if not 0 < o.decay_fraction <= 1:
    errors.append(f'optim.decay_fraction={o.decay_fraction}: must be in (0, 1]')
  return errors


def length_errors(c, earlier_errors: list[str]) -> list[str]:
  """Problems with the run length and the `train` block (the warmup needs a valid config to plan)."""
  errors = []
  t, o = c.train, c.optim
  lengths = [k for k in ('steps', 'tokens', 'flops') if t[k] != 0]
  for k in ('steps', 'tokens', 'flops'):
    if t[k] < 0:
      errors.append(f'train.{k}={t[k]}: must be >= 0')
  if len(lengths) != 1:
    errors.append('train.steps, train.tokens, train.flops: set exactly one of them > 0 '
                  f'(got {", ".join(f"train.{k}={t[k]}" for k in ("steps", "tokens", "flops"))})')
  elif o.warmup_steps > 0 and not earlier_errors and not errors:
    steps = planned_steps(c)
    if o.warmup_steps >= steps:
      errors.append(f'optim.warmup_steps={o.warmup_steps} is not below the {steps} planned steps: '
                    'the run would end before its learning rate decays')
  _positive_ints(c, 'train', ('eval_every', 'eval_batches', 'log_every', 'keep_checkpoints'), errors)
  _choice(c, 'train', 'nonfinite', NONFINITE_POLICIES, errors)
  errors += branch_errors(t)
  errors += replicas.errors(c)
  for k in ('checkpoint_every', 'peak_flops', 'max_skips', 'poison_step', 'steps_per_call'):
    if t[k] < 0:
      errors.append(f'train.{k}={t[k]}: must be >= 0')
  return errors


def parse_steps(text: str) -> list[int]:
  """'100,200' -> [100, 200] (train.checkpoint_steps); ValueError on anything else."""
  return sorted({int(x) for x in str(text).split(',') if x.strip()})


def parse_init_from(text: str) -> tuple[str, int]:
  """'PARENT_WORKDIR:STEP' -> (workdir, step) (train.init_from); ValueError on anything else."""
  workdir, sep, step = str(text).rpartition(':')
  if not sep or not workdir or not step.isdigit() or int(step) < 1:
    raise ValueError(text)
  return workdir, int(step)


def branch_errors(t) -> list[str]:
  """Problems with train.checkpoint_steps and train.init_from."""
  errors = []
  try:
    if any(s < 1 for s in parse_steps(t.checkpoint_steps)):
      raise ValueError
  except ValueError:
    errors.append(f'train.checkpoint_steps={t.checkpoint_steps!r}: must be positive steps, '
                  'comma-separated')
  if t.init_from:
    try:
      parse_init_from(t.init_from)
    except ValueError:
      errors.append(f'train.init_from={t.init_from!r}: must be PARENT_WORKDIR:STEP (STEP >= 1)')
  return errors


def mesh_errors(c, n_devices: int, n_processes: int) -> tuple[dict[str, int] | None, list[str]]:
  """(resolved mesh shape or None, problems) of the `mesh` block against devices and processes."""
  try:
    mesh = sharding.resolve_mesh_shape(c.mesh, n_devices)
  except ValueError as e:
    return None, [str(e)]
  errors = moe.expert_mesh_errors(c.model, mesh)
  batch_shards = math.prod(mesh[a] for a in dict(sharding.RULES)['batch'])
  if c.data.global_batch_size % batch_shards:
    errors.append(f'data.global_batch_size={c.data.global_batch_size} is not divisible by the '
                  f'batch-sharding mesh axes data*fsdp*expert={batch_shards}')
  if batch_shards % n_processes:
    errors.append(f'mesh: the batch-sharding axes data*fsdp*expert={batch_shards} must be a '
                  f'multiple of the {n_processes} processes (each process feeds its own rows); '
                  'shard mesh.tensor within a host')
  return mesh, errors


def shape_errors(abstract_params, mesh_shape: dict[str, int]) -> list[str]:
  """Parameter dimensions not divisible by the mesh axes they are sharded over."""
  return [f'{e} (check model.* sizes against mesh.*)'
          for e in sharding.divisibility_errors(abstract_params, mesh_shape)]


def post_errors(p) -> list[str]:
  """Problems with the `post` block (python -m train.post; post.base is checked there)."""
  errors = []
  c = {'post': p}
  _choice(c, 'post', 'method', POST_METHODS, errors)
  _choice(c, 'post', 'rm_labels', RM_LABELS, errors)
  _choice(c, 'post', 'ppo_critic_init', CRITIC_INITS, errors)
  if p.method == 'ppo' and not p.reward_model:
    errors.append("post.reward_model is empty: post.method='ppo' needs a reward-model run, one "
                  "trained with post.method='rm' (--config.post.reward_model=DIR)")
  names = tasks.task_names(p.tasks)
  unknown = [t for t in names if t not in tasks.TASKS]
  if not names or unknown:
    errors.append(f'post.tasks={p.tasks!r}: must be comma-separated names from '
                  f'{", ".join(tasks.TASKS)}')
  if not (isinstance(p.difficulty, int) and
          tasks.MIN_DIFFICULTY <= p.difficulty <= tasks.MAX_DIFFICULTY):
    errors.append(f'post.difficulty={p.difficulty!r}: must be an integer in '
                  f'[{tasks.MIN_DIFFICULTY}, {tasks.MAX_DIFFICULTY}]')
  _positive_ints(c, 'post', ('steps', 'batch_size', 'eval_prompts', 'log_every', 'grpo_updates'),
                 errors)
  if not isinstance(p.group_size, int) or isinstance(p.group_size, bool) or p.group_size < 2:
    errors.append(f'post.group_size={p.group_size!r}: must be an integer >= 2 (GRPO normalises '
                  'rewards within a group)')
  for k in ('seq_len', 'eval_every', 'checkpoint_every', 'seed', 'max_new_tokens'):
    if not isinstance(p[k], int) or p[k] < 0:
      errors.append(f'post.{k}={p[k]!r}: must be an integer >= 0')
  for k in ('lr', 'beta', 'simpo_beta', 'kto_lambda_d', 'kto_lambda_u', 'grpo_epsilon',
            'temperature', 'distill_temperature', 'ppo_value_coef', 'ppo_value_clip'):
    if not (math.isfinite(p[k]) and p[k] > 0):
      errors.append(f'post.{k}={p[k]!r}: must be > 0')
  if not (math.isfinite(p.ppo_gamma) and 0 < p.ppo_gamma <= 1):
    errors.append(f'post.ppo_gamma={p.ppo_gamma!r}: must be in (0, 1] (the discount per token)')
  if not (math.isfinite(p.ppo_lambda) and 0 <= p.ppo_lambda <= 1):
    errors.append(f'post.ppo_lambda={p.ppo_lambda!r}: must be in [0, 1] (GAE\'s λ)')
  _choice(c, 'post', 'distill_source', DISTILL_SOURCES, errors)
  for k in ('simpo_gamma', 'orpo_lambda', 'distill_text_temperature'):
    if not (math.isfinite(p[k]) and p[k] >= 0):
      errors.append(f'post.{k}={p[k]!r}: must be >= 0')
  return errors + peft.peft_errors(p)


def raise_if(errors: list[str]) -> None:
  if errors:
    raise ConfigError('invalid config:\n  - ' + '\n  - '.join(errors))


def validate(config: ml_collections.ConfigDict, n_devices: int, n_processes: int = 1,
             check_shapes: bool = True) -> dict[str, int]:
  """Check `config` for a run on `n_devices` in `n_processes`; return the resolved mesh shape.

  Raises ConfigError listing every problem found. `check_shapes=False` skips
  the sharded-dimension check, which needs the model's abstract parameters:
  the training loop runs `shape_errors` on the one abstract trace it builds.
  """
  errors = model_errors(config.model) + data_errors(config.data) + optim_errors(config.optim)
  errors += post_errors(config.post) if 'post' in config else []
  errors += length_errors(config, errors)
  mesh, errs = mesh_errors(config, n_devices, n_processes)
  errors += errs
  if check_shapes and mesh is not None and not any(e.startswith('model.') for e in errors):
    errors += shape_errors(_abstract_params(config.model), mesh)
  raise_if(errors)
  return mesh


def _abstract_params(model_cfg):
  abstract = nnx.eval_shape(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)))
  return nnx.state(abstract, nnx.Param)
