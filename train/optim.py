"""Run length, learning-rate schedule and the optax optimizer."""

import jax
import optax

from model.counts import planned_steps


def schedule(config) -> optax.Schedule:
  """Linear warmup to optim.lr, cosine decay to min_lr_ratio * lr at the planned end.

  The optimizer calls the schedule with the update count (0 for step 1), so the
  curve is shifted by one: step 1 already has a non-zero rate and the last
  planned step gets exactly min_lr_ratio * lr.
  """
  o, steps = config.optim, planned_steps(config)
  warmup = min(o.warmup_steps or int(o.warmup_fraction * steps), steps - 1)
  base = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=warmup, decay_steps=steps,
      end_value=o.lr * o.min_lr_ratio)
  return lambda count: base(count + 1)


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
