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
  """Mean next-token cross-entropy in nats (float32), plus optional z-loss.

  Returns (total, (cross_entropy, mean (log Z)^2)).
  """
  logits_BTV = model(batch['inputs'])
  logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  target_BT = jnp.take_along_axis(logits_BTV, batch['targets'][..., None], axis=-1)[..., 0]
  ce = jnp.mean(logz_BT - target_BT)
  z = jnp.mean(jnp.square(logz_BT))
  return ce + z_loss_weight * z, (ce, z)


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

  def abstract_params(self):
    """The model's parameters of `abstract_state` (for shape checks)."""
    return nnx.filter_state(self.abstract_state[0], nnx.Param)  # State of (model, optimizer).

  def abstract_batch(self, config):
    d = config.data
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

  def train_step(state, batch):
    model, opt = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (_, (ce, z)), grads = grad_fn(model, batch, z_w)
    lr = sched(opt.step[...])
    opt.update(model, grads)
    metrics = {'loss': ce, 'z_loss': z, 'grad_norm': optax.global_norm(grads), 'lr': lr}
    return nnx.state((model, opt)), metrics

  def eval_step(state, batch):
    model, _ = nnx.merge(graphdef, state)
    _, (ce, _) = loss_fn(model, batch, 0.0)
    return ce * batch['targets'].size

  b = {'inputs': batch_sharding, 'targets': batch_sharding}
  return Program(
      graphdef=graphdef, abstract_state=abstract_state, state_sharding=state_sharding,
      batch_sharding=batch_sharding,
      train_step=jax.jit(train_step, in_shardings=(state_sharding, b),
                         out_shardings=(state_sharding, None), donate_argnums=0),
      eval_step=jax.jit(eval_step, in_shardings=(state_sharding, b)))


def init_state(config, program: Program):
  """Create the params and optimizer state directly in their shardings."""
  return jax.jit(lambda: nnx.split(_create(config))[1], out_shardings=program.state_sharding)()
