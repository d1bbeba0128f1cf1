"""The train and eval steps as pure, jitted functions of (state, batch).

The model and its optimizer live in one `nnx.State` (`state`), split from a
`graphdef` once; the steps merge, update and split again inside `jax.jit`,
so the host does no per-step graph traversal. Shardings of the state come from
the logical-axis rules table (`model.sharding.RULES`), the same for params and
optimizer moments. `train/cost.py` lowers the same functions to measure the
compiled program.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

from model import sharding
from model.transformer import Transformer
from train import data as data_lib
from train import optim


def loss_fn(model: Transformer, batch: dict, z_loss_weight: float):
  """Mean next-token cross-entropy in nats (float32), plus optional z-loss and the MoE losses.

  Returns (total, (cross_entropy, mean (log Z)^2, moe)); `moe` is `Transformer.forward`'s
  aux dict ({} for a dense model), whose load-balancing and router z-losses enter the
  total with the weights model.moe_load_balance_weight and model.moe_router_z_weight.
  """
  logits_BTV, moe = model.forward(batch['inputs'])
  logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_BT = jnp.take_along_axis(logits_BTV, batch['targets'][..., None], axis=-1)[..., 0]
  ce = jnp.mean(logz_BT - target_BT)
  z = jnp.mean(jnp.square(logz_BT))
  total = ce + z_loss_weight * z
  if moe:
    m = model.cfg
    total += (m.moe_load_balance_weight * moe['moe_load_balance_loss'] +
              m.moe_router_z_weight * moe['moe_router_z_loss'])
  return total, (ce, z, moe)


def _create(config):
  model = Transformer(config.model, rngs=nnx.Rngs(config.seed))
  opt = nnx.Optimizer(model, optim.optimizer(config), wrt=nnx.Param)
  return model, opt


@dataclasses.dataclass
class Program:
  """Everything compiled for one config on one mesh, from one abstract trace of the model."""
  graphdef: nnx.GraphDef
  abstract_state: object  # The state as ShapeDtypeStructs carrying their shardings (nothing allocated).
  state_sharding: object  # Pytree of NamedSharding matching the state.
  batch_sharding: NamedSharding
  train_step: Callable  # (state, batch) -> (state, metrics); donates state.
  eval_step: Callable  # (state, batch) -> summed nats over the batch's tokens.
  multi_step: Callable  # (state, K stacked batches) -> (state, metrics of each step, (K,)).

  def abstract_params(self):
    """The model's parameters of `abstract_state` (for shape checks)."""
    return nnx.filter_state(self.abstract_state[0], nnx.Param)  # State of (model, optimizer).

  def abstract_batch(self, config, steps: int = 0):
    """The (B, T) batch, or with `steps` = K the (K, B, T) stack of `multi_step`."""
    d = config.data
    if steps:
      mesh = self.batch_sharding.mesh
      s = jax.ShapeDtypeStruct((steps, d.global_batch_size, d.seq_len), jnp.int32,
                               sharding=data_lib.batch_sharding(mesh, stacked=True))
    else:
      s = jax.ShapeDtypeStruct((d.global_batch_size, d.seq_len), jnp.int32,
                               sharding=self.batch_sharding)
    return {'inputs': s, 'targets': s}


def build(config, mesh) -> Program:
  """Trace the state's structure once (no allocation) and jit the steps for `mesh`."""
  with sharding.use_mesh(mesh):
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _create(config)))
    specs = sharding.spec_tree(abstract)
  state_sharding = jax.tree.map(lambda p: NamedSharding(mesh, p), specs)
  abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                abstract, state_sharding)
  batch_sharding = data_lib.batch_sharding(mesh)
  sched = optim.schedule(config)
  z_w = config.optim.z_loss

  t = config.train

  def train_step(state, batch):
    # The arrays before the update (merge shares the state's Variables, update mutates them).
    old = jax.tree.map(lambda x: x, state) if t.nonfinite == 'skip' else None
    model, opt = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (_, (ce, z, moe)), grads = grad_fn(model, batch, z_w)
    step = opt.step[...]  # Updates done so far: this is step `step + 1`.
    if t.poison_step:  # Test hook (train.poison_step): NaN gradients at one chosen step.
      grads = jax.tree.map(lambda g: jnp.where(step + 1 == t.poison_step, jnp.nan, g), grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(ce) & jnp.isfinite(grad_norm)  # Checked before anything is applied.
    lr = sched(step)
    opt.update(model, grads)
    new_state = nnx.state((model, opt))
    if t.nonfinite == 'skip':  # Drop a non-finite update: keep the old state, count the step.
      new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, old)
      model, opt = nnx.merge(graphdef, new_state)
      opt.step[...] = step + 1
      new_state = nnx.state((model, opt))
    metrics = {'loss': ce, 'z_loss': z, 'grad_norm': grad_norm, 'lr': lr,
               'skipped': (~finite).astype(jnp.float32)}
    # Scalars, plus the per-expert load (E,) (a TensorBoard histogram) and its min, max and
    # min/max ratio (1 = balanced, 0 = an idle expert); E numbers per step, fetched one step late.
    metrics.update(moe)
    if 'moe_expert_load' in moe:
      load_min, load_max = jnp.min(moe['moe_expert_load']), jnp.max(moe['moe_expert_load'])
      metrics.update(moe_load_min=load_min, moe_load_max=load_max,
                     moe_load_min_over_max=load_min / load_max)
    return new_state, metrics

  def eval_step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    _, (ce, _, _) = loss_fn(model, batch, 0.0)
    return ce * batch['targets'].size

  def multi_step(state, batches):
    """K optimizer steps in one call: a lax.scan of train_step over the stacked batches."""
    return jax.lax.scan(train_step, state, batches)

  b = {'inputs': batch_sharding, 'targets': batch_sharding}
  stacked = data_lib.batch_sharding(mesh, stacked=True)
  return Program(
      graphdef=graphdef, abstract_state=abstract_state, state_sharding=state_sharding,
      batch_sharding=batch_sharding,
      train_step=jax.jit(train_step, in_shardings=(state_sharding, b),
                         out_shardings=(state_sharding, None), donate_argnums=0),
      eval_step=jax.jit(eval_step, in_shardings=(state_sharding, b)),
      multi_step=jax.jit(multi_step, in_shardings=(state_sharding, {k: stacked for k in b}),
                         out_shardings=(state_sharding, None), donate_argnums=0))


def init_state(config, program: Program):
  """Create the params and optimizer state directly in their shardings."""
  return jax.jit(lambda: nnx.split(_create(config))[1], out_shardings=program.state_sharding)()
