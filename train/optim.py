"""Learning-rate schedules (cosine, warmup-stable-decay) and the optax optimizer (µP LR multipliers)."""

import functools

import jax
import jax.numpy as jnp
import optax

from model.counts import decay_start, planned_steps, warmup_steps  # The run's phases (JAX-free).
from model.transformer import is_mup, lr_multiplier
from train.replicas import OPTIMIZER_SCALARS


DECAY_SHAPES = ('linear', 'cosine', '1-sqrt')


def schedule(config, peak=None) -> optax.Schedule:
  """The LR at each update: warmup to optim.lr, then cosine or warmup-stable-decay to min_lr_ratio * lr.

  `peak` (a traced per-replica value under train.replicas) replaces optim.lr:
  the schedule is then peak times the schedule of a unit peak.

  'cosine': cosine decay from the end of warmup to the planned end (Chinchilla).
  'wsd' (Hägele et al. 2024): constant at the peak until `decay_start`, then
  decay over the last optim.decay_fraction of the steps with shape
  optim.decay_shape: 'linear', 'cosine' or '1-sqrt' (1 - sqrt(progress)). A
  WSD run to D steps follows exactly the trajectory of any longer WSD run
  with the same peak until its own decay starts: cooldowns branch from it.

  The optimizer calls the schedule with the update count (0 for step 1), so the
  curve is shifted by one: step 1 already has a non-zero rate and the last
  planned step gets exactly min_lr_ratio * lr.
  """
  if peak is not None:
    unit = _schedule(config, 1.0)
    return lambda count: peak * unit(count)
  return _schedule(config, config.optim.lr)


def _schedule(config, peak: float) -> optax.Schedule:
  o, steps, warmup = config.optim, planned_steps(config), warmup_steps(config)
  lo = peak * o.min_lr_ratio
  if o.schedule == 'cosine':
    base = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=steps, end_value=lo)
    return lambda count: base(count + 1)
  start = decay_start(config)
  shape = {'linear': lambda p: 1.0 - p, 'cosine': lambda p: 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
           '1-sqrt': lambda p: 1.0 - jnp.sqrt(p)}[o.decay_shape]

  def wsd(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    warm = peak * step / max(warmup, 1)
    progress = jnp.clip((step - start) / max(steps - start, 1), 0.0, 1.0)
    decayed = lo + (peak - lo) * shape(progress)
    return jnp.where(step <= warmup, warm, jnp.where(step <= start, peak, decayed))

  return wsd


def _decay_mask(params):
  """Weight decay on matrices only: not on norm scales (their path ends in 'scale')."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(k, 'key', None) == 'scale' for k in path), params)


def lr_multipliers(config, params):
  """Each parameter's LR multiplier, a tree like `params`: µP's 1/m on hidden kernels, else 1."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: lr_multiplier(config.model, [getattr(k, 'key', None) for k in path]), params)


def scale_by_lr_multipliers(config) -> optax.GradientTransformation:
  """Multiply each parameter's whole AdamW step by its LR multiplier (`lr_multipliers`).

  The step includes the decoupled weight decay, so a µP hidden kernel moves by
  -(lr / m) * (adam_update + weight_decay * w): its decay uses its scaled LR, as
  PyTorch AdamW with one param group per LR does (microsoft/mup's MuAdamW
  instead multiplies weight_decay by m, keeping lr * weight_decay fixed).
  """
  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, k: u * k, updates, lr_multipliers(config, updates)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer(config, injected: bool = False) -> optax.GradientTransformation:
  """Global-norm clip, then AdamW on `schedule`; under µP each step times its LR multiplier.

  `injected` (train.replicas): the same chain with optim.lr, b1, b2, eps and
  weight_decay kept in the optimizer state (`optax.inject_hyperparams`), so a
  vmapped stack of states carries one set of values per replica.
  """
  o = config.optim
  if injected:
    return optax.inject_hyperparams(functools.partial(_chain, config))(
        **{k: o[k] for k in OPTIMIZER_SCALARS})
  return _chain(config, o.lr, o.b1, o.b2, o.eps, o.weight_decay)


def _chain(config, lr, b1, b2, eps, weight_decay) -> optax.GradientTransformation:
  traced = not isinstance(lr, (int, float))
  adamw = optax.adamw(schedule(config, peak=lr if traced else None), b1=b1, b2=b2, eps=eps,
                      weight_decay=weight_decay, mask=_decay_mask)
  if is_mup(config.model):
    adamw = optax.chain(adamw, scale_by_lr_multipliers(config))
  if config.optim.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(config.optim.grad_clip), adamw)
  return adamw


def current_lr(config, opt, count):
  """The LR of update `count` (0-based) of nnx.Optimizer `opt`: its own peak where injected."""
  hyper = getattr(opt.opt_state, 'hyperparams', None)
  return schedule(config, peak=hyper['lr'][...] if hyper is not None else None)(count)
