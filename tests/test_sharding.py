"""Meshes and sharding rules: a 2x2x2 mesh computes what one device computes, sharded as the rules say."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import base
from model import sharding
from train import data as data_lib
from train import step as step_lib


def small_config(**mesh):
  c = base.get_config()
  c.model.update(dict(vocab_size=128, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
  c.data.update(dict(seq_len=16, global_batch_size=8, synthetic_tokens=20_000))
  c.train.steps = 10
  c.mesh.update(dict(data=1, fsdp=1, tensor=1, expert=1))
  c.mesh.update(mesh)
  return c


def _one_step(config, devices):
  mesh = sharding.make_mesh(config.mesh, devices)
  program = step_lib.build(config, mesh)
  splits = data_lib.prepare_splits(config)
  batch_np = next(data_lib.train_iterator(splits.train, 16, 8, seed=0))
  with sharding.use_mesh(mesh):
    state = step_lib.init_state(config, program)
    model, _ = nnx.merge(program.graphdef, state)
    batch = data_lib.to_global(batch_np, mesh)
    grad_fn = nnx.jit(nnx.value_and_grad(step_lib.loss_fn, has_aux=True))
    (loss, _), grads = grad_fn(model, batch, 0.0)
    new_state, metrics = program.train_step(state, batch)
  return loss, grads, new_state, metrics, mesh


def test_2x2x2_mesh_matches_one_device():
  loss1, grads1, _, m1, _ = _one_step(small_config(), jax.devices()[:1])
  loss8, grads8, state8, m8, mesh = _one_step(small_config(data=2, fsdp=2, tensor=2), jax.devices())
  assert mesh.shape == {'data': 2, 'fsdp': 2, 'tensor': 2, 'expert': 1}
  np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
  np.testing.assert_allclose(m1['loss'], m8['loss'], rtol=1e-5)
  np.testing.assert_allclose(m1['grad_norm'], m8['grad_norm'], rtol=1e-4)
  flat1, flat8 = jax.tree.leaves(grads1), jax.tree.leaves(grads8)
  assert len(flat1) == len(flat8) > 10
  for g1, g8 in zip(flat1, flat8):
    np.testing.assert_allclose(g1, g8, rtol=1e-4, atol=1e-7)

  # Every parameter and optimizer moment carries the sharding its logical names map to.
  specs = sharding.spec_tree(nnx.state(nnx.eval_shape(
      lambda: step_lib._create(small_config())), ...))
  n_sharded = 0
  for (path, var), (_, spec) in zip(nnx.to_flat_state(state8), nnx.to_flat_state(specs)):
    arr, want = var.get_value(), spec.get_value()
    assert arr.sharding.spec == want, path
    if any(a is not None for a in want):
      n_sharded += 1
      # Really split: each device holds a fraction of the array.
      shard_shape = arr.addressable_shards[0].data.shape
      assert np.prod(shard_shape) < arr.size, path
  assert n_sharded >= 3 * 9  # 9 sharded weights, for params, Adam mu and nu.


def test_rules_table_maps_logical_names():
  assert sharding.logical_to_spec(('embed', 'mlp')) == jax.sharding.PartitionSpec('fsdp', 'tensor')
  assert sharding.logical_to_spec(('batch', 'seq')) == jax.sharding.PartitionSpec(
      ('data', 'fsdp', 'expert'), None)
  with pytest.raises(KeyError, match='no rule'):
    sharding.logical_to_spec(('nonsense',))


@pytest.mark.parametrize('mesh,n,expect', [
    (dict(data=-1, fsdp=2, tensor=1, expert=1), 8, dict(data=4, fsdp=2, tensor=1, expert=1)),
    (dict(data=1, fsdp=-1, tensor=2, expert=1), 8, dict(data=1, fsdp=4, tensor=2, expert=1)),
    (dict(data=2, fsdp=2, tensor=2, expert=1), 8, dict(data=2, fsdp=2, tensor=2, expert=1)),
])
def test_mesh_minus_one_means_the_rest(mesh, n, expect):
  assert sharding.resolve_mesh_shape(mesh, n) == expect
