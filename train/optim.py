"""Learning-rate schedules (cosine, warmup-stable-decay) and the optax optimizer."""

import jax
import jax.numpy as jnp
import optax

from model.counts import decay_start, planned_steps, warmup_steps  # The run's phases (JAX-free).


DECAY_SHAPES = ('linear', 'cosine', '1-sqrt')


def schedule(config) -> optax.Schedule:
  """The LR at each update: warmup to optim.lr, then cosine or warmup-stable-decay to min_lr_ratio * lr.

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
  o, steps, warmup = config.optim, planned_steps(config), warmup_steps(config)
  lo = o.lr * o.min_lr_ratio
  if o.schedule == 'cosine':
    base = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=warmup, decay_steps=steps, end_value=lo)
    return lambda count: base(count + 1)
  start = decay_start(config)
  shape = {'linear': lambda p: 1.0 - p, 'cosine': lambda p: 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
           '1-sqrt': lambda p: 1.0 - jnp.sqrt(p)}[o.decay_shape]

  def wsd(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    warm = o.lr * step / max(warmup, 1)
    progress = jnp.clip((step - start) / max(steps - start, 1), 0.0, 1.0)
    decayed = lo + (o.lr - lo) * shape(progress)
    return jnp.where(step <= warmup, warm, jnp.where(step <= start, o.lr, decayed))

  return wsd


def _decay_mask(params):
  """Weight decay on matrices only: not on norm scales (their path ends in 'scale')."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(k, 'key', None) == 'scale' for k in path), params)


def optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  adamw = optax.adamw(schedule(config), b1=o.b1, b2=o.b2, eps=o.eps,
                      weight_decay=o.weight_decay, mask=_decay_mask)
  if o.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(o.grad_clip), adamw)
  return adamw
