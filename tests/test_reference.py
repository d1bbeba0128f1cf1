"""The plain-JAX reference step of benchmarks/bench_reference.py computes the project's math; the step-speed options keep it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import bench_reference as br
from configs import base
from model import sharding, transformer
from model.transformer import Transformer
from train import config_check
from train import step as step_lib


def tiny_config(**model):
  c = base.get_config()
  c.model.update(dict(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64))
  c.model.update(model)
  c.data.update(dict(seq_len=16, global_batch_size=2))
  c.train.steps = 100
  c.mesh.update(dict(data=1))
  return c


def _batch(c, seed=1):
  tok = jax.random.randint(jax.random.key(seed), (c.data.global_batch_size, c.data.seq_len + 1),
                           0, c.model.vocab_size)
  return {'inputs': tok[:, :-1], 'targets': tok[:, 1:]}


def _project_loss(model, batch):
  return step_lib.loss_fn(model, batch, 0.0)[1][0]


@pytest.mark.parametrize('flat', [False, True])
def test_reference_loss_equals_the_project_loss_from_the_same_weights(flat):
  c = tiny_config()
  model = Transformer(c.model, rngs=nnx.Rngs(0))
  batch = _batch(c)
  params = br.reference_params(nnx.state(model, nnx.Param))
  want = float(jax.jit(_project_loss)(model, batch))
  got = float(jax.jit(lambda p: br.reference_loss(p, batch, c.model, flat))(params))
  assert abs(got - want) < 1e-5
  assert abs(want - np.log(97)) < 0.5  # A real loss of near-uniform logits, not a zero.


def test_the_check_fails_when_the_reference_differs():
  c = tiny_config()
  model = Transformer(c.model, rngs=nnx.Rngs(0))
  batch = _batch(c)
  params = br.reference_params(nnx.state(model, nnx.Param))
  want = float(jax.jit(_project_loss)(model, batch))
  swapped = dict(params, layers=params['layers'][::-1])  # Layers in the wrong order.
  got = float(jax.jit(lambda p: br.reference_loss(p, batch, c.model))(swapped))
  assert abs(got - want) > 1e-4


def test_one_update_of_the_reference_equals_the_projects():
  c = tiny_config()
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  program = step_lib.build(c, mesh)
  with sharding.use_mesh(mesh):
    batch = jax.device_put(_batch(c), program.batch_sharding)
    state = step_lib.init_state(c, program)
    start = jax.tree.map(jnp.copy, br.reference_params(nnx.filter_state(state[0], nnx.Param)))
    fn, tx = br.reference_step(c)
    (got, _), metrics = fn((jax.tree.map(jnp.copy, start), tx.init(start)), batch)
    new_state, project_metrics = program.train_step(state, batch)
  want = br.reference_params(nnx.filter_state(new_state[0], nnx.Param))
  assert abs(float(metrics['loss']) - float(project_metrics['loss'])) < 1e-5
  moved = 0.0
  for g, w, s0 in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(start)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)  # Adam normalises round-off in g.
    moved = max(moved, float(jnp.max(jnp.abs(w - s0))))
  assert moved > 1e-4  # The update was applied (AdamW's first step moves weights by ~lr).


def test_reference_refuses_what_it_does_not_implement():
  with pytest.raises(config_check.ConfigError, match='model.tie_embeddings'):
    br.prepare(tiny_config(tie_embeddings=True))


def test_scan_loop_and_the_cpu_unroll_compute_the_same_function():
  c = tiny_config()
  batch = _batch(c)
  auto = Transformer(c.model, rngs=nnx.Rngs(0))  # scan_unroll=0: on CPU, 3 layers, no loop.
  loop = Transformer(tiny_config(scan_unroll=1).model, rngs=nnx.Rngs(0))
  grad = nnx.jit(nnx.value_and_grad(_project_loss))
  (la, ga), (lb, gb) = grad(auto, batch), grad(loop, batch)
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=1e-6)


def test_scan_unroll_choice():
  m = tiny_config().model
  assert transformer.scan_unroll(m, 3) == 0  # CPU, auto: no loop (jax's unroll=0).
  assert transformer.scan_unroll(m, transformer.CPU_UNROLL_MAX_LAYERS + 1) == 1
  assert transformer.scan_unroll(tiny_config(scan_unroll=2).model, 3) == 2
  assert transformer.scan_unroll(tiny_config(scan_unroll=8).model, 3) == 0
  assert transformer.scan_unroll(tiny_config(scan_unroll=1).model, 1) == 0  # Not a 1-trip loop.
  assert transformer.scan_unroll(tiny_config(scan_unroll=1, scan_layers=False).model, 3) == 0


@pytest.mark.parametrize('bad', [-1, -4])  # Non-integers are refused by ConfigDict's types.
def test_bad_scan_unroll_names_the_key(bad):
  errors = config_check.model_errors(tiny_config(scan_unroll=bad).model)
  assert any(e.startswith('model.scan_unroll=') for e in errors), errors


def test_dense_is_the_einsum():
  x = jax.random.normal(jax.random.key(0), (2, 5, 4, 3))
  w = jax.random.normal(jax.random.key(1), (4, 3, 6))
  np.testing.assert_allclose(transformer.dense(x, w, n_in=2), jnp.einsum('btij,ijd->btd', x, w),
                             rtol=1e-5, atol=1e-6)


def test_op_kind_strips_the_instance_number():
  assert br.op_kind('loop_fusion.12') == 'loop_fusion'
  assert br.op_kind('ynn_fusion') == 'ynn_fusion'
  assert br.op_kind('copy_bitcast_fusion.3.1') == 'copy_bitcast_fusion'
