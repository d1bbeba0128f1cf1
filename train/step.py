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
from jax.sharding import PartitionSpec as P

from model import sharding
from model.transformer import Transformer
from train import data as data_lib
from train import optim
from train import replicas


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


def _create(config, seed=None):
  """(model, optimizer) of `config`; `seed` (a traced per-replica value) replaces its init seed."""
  key = replicas.init_seed(config) if seed is None else jax.random.key(seed)
  model = Transformer(config.model, rngs=nnx.Rngs(key))
  opt = nnx.Optimizer(model, optim.optimizer(config, injected=replicas.count(config) > 0),
                      wrt=nnx.Param)
  return model, opt


def _stacked(tree, n: int):
  """Abstract arrays with a leading replica axis of size n."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype), tree)


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
  replicas: int = 0  # R > 0 (train.replicas): every state leaf and metric has a leading (R,) axis.

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
  """Trace the state's structure once (no allocation) and jit the steps for `mesh`.

  With train.replicas (R copies), the steps are vmapped over a state stacked
  on a new leading axis, which no mesh axis shards; the batch is shared.
  """
  n_rep = replicas.count(config)
  with sharding.use_mesh(mesh):
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: _create(config)))
    specs = sharding.spec_tree(abstract)
  if n_rep:
    abstract = _stacked(abstract, n_rep)
    specs = jax.tree.map(lambda p: P(None, *p), specs)
  state_sharding = jax.tree.map(lambda p: NamedSharding(mesh, p), specs)
  abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                abstract, state_sharding)
  batch_sharding = data_lib.batch_sharding(mesh)
  z_w = config.optim.z_loss

  t = config.train

  # Replicas always drop a non-finite update: one diverging replica must not put NaN in the
  # stacked state (the loop ends its curve under nonfinite='stop').
  skip = t.nonfinite == 'skip' or n_rep > 0

  def train_step(state, batch):
    # The arrays before the update (merge shares the state's Variables, update mutates them).
    old = jax.tree.map(lambda x: x, state) if skip else None
    model, opt = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (_, (ce, z, moe)), grads = grad_fn(model, batch, z_w)
    step = opt.step[...]  # Updates done so far: this is step `step + 1`.
    if t.poison_step:  # Test hook (train.poison_step): NaN gradients at one chosen step.
      grads = jax.tree.map(lambda g: jnp.where(step + 1 == t.poison_step, jnp.nan, g), grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(ce) & jnp.isfinite(grad_norm)  # Checked before anything is applied.
    lr = optim.current_lr(config, opt, step)
    opt.update(model, grads)
    new_state = nnx.state((model, opt))
    if skip:  # Drop a non-finite update: keep the old state, count the step.
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

  if n_rep:  # One batch for every replica; metrics and eval totals get an (R,) axis.
    train_step = jax.vmap(train_step, in_axes=(0, None))
    eval_step = jax.vmap(eval_step, in_axes=(0, None))

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
                         out_shardings=(state_sharding, None), donate_argnums=0),
      replicas=n_rep)


def init_state(config, program: Program):
  """Create the params and optimizer state directly in their shardings.

  Replicas: each replica's init from its own init seed (vmapped), and its own
  optimizer scalars written into its slice of the injected hyper-parameters.
  """
  if not program.replicas:
    return jax.jit(lambda: nnx.split(_create(config))[1], out_shardings=program.state_sharding)()
  seeds = jnp.asarray([replicas.init_seed(c) for c in replicas.replica_configs(config)], jnp.int32)
  values = {k: jnp.asarray(v, jnp.float32) for k, v in replicas.optimizer_values(config).items()}

  def one(seed, h):
    model, opt = _create(config, seed)
    for k, v in h.items():
      opt.opt_state.hyperparams[k][...] = v
    return nnx.split((model, opt))[1]

  return jax.jit(jax.vmap(one), out_shardings=program.state_sharding)(seeds, values)
