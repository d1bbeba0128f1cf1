"""The measurement of the compiled train step: XLA's FLOP count, its scan correction, memory_analysis.

Measurements lower (and where said, compile) the real train step of tiny
configs on abstract inputs; 8 forced CPU devices come from conftest.py.
"""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from configs import tiny_cpu
from model import counts, sharding
from scaling import memory
from train import cost
from train import step as step_lib


def _cfg(n_layers=2, mesh=(1, 1, 1), **model):
  c = tiny_cpu.get_config()
  c.model.n_layers = n_layers
  for k, v in model.items():
    c.model[k] = v
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
  return c


def _mesh(c):
  n = c.mesh.data * c.mesh.fsdp * c.mesh.tensor
  return sharding.make_mesh(c.mesh, jax.devices()[:n])


def test_dot_measures_exactly_2mkn():
  m, k, n = 64, 96, 80
  a = jax.ShapeDtypeStruct((m, k), jnp.float32)
  b = jax.ShapeDtypeStruct((k, n), jnp.float32)
  lowered = jax.jit(lambda x, y: x @ y).lower(a, b)
  assert cost._cost(lowered.compile())['flops'] == 2 * m * k * n
  assert cost._cost(lowered)['flops'] == 2 * m * k * n
  assert cost.hlo_dot_flops(lowered.as_text(dialect='hlo'))['dot_weights'] == 2 * m * k * n


def test_train_step_is_about_3x_forward():
  c = _cfg(n_layers=2, scan_layers=False)
  mesh = _mesh(c)
  program = step_lib.build(c, mesh)
  with sharding.use_mesh(mesh):
    state, batch = program.abstract_state, program.abstract_batch(c)
    fwd = jax.jit(lambda s, b: step_lib.loss_fn(nnx.merge(program.graphdef, s)[0],
                                                 b, 0.0)[0]).lower(state, batch)
  train = cost.lower_train_step(c, mesh)
  dots_f = cost.hlo_dot_flops(fwd.as_text(dialect='hlo', debug_info=True))
  dots_t = cost.hlo_dot_flops(train.as_text(dialect='hlo', debug_info=True))
  # Every matmul: one forward, two backward (input and weight gradients).
  assert sum(dots_t.values()) / sum(dots_f.values()) == pytest.approx(3.0, rel=1e-6)
  # All FLOPs (softmax, norms, the optimizer's elementwise update too): close to 3.
  assert cost._cost(train)['flops'] / cost._cost(fwd)['flops'] == pytest.approx(3.0, rel=0.1)


def test_scan_correction_equals_the_fully_unrolled_program():
  c = _cfg(n_layers=4)
  m = cost.measure_step_flops(c, _mesh(c), verify=True)
  assert m['verify_rel_error'] < 1e-6
  assert m['flops_xla_uncorrected'] < 0.7 * m['flops_xla']  # The scanned program counts one layer.
  assert 'f(2) - f(1)' in m['method']
  assert sum(m['breakdown'].values()) == pytest.approx(m['flops_xla'], rel=1e-9)


def test_measured_close_to_analytic_on_tiny_configs():
  # Tolerances: XLA's dots are exactly PaLM's 6N + 12 L H Q T (N with head minus the norm
  # scales, full T x T attention) to 0.1%; all FLOPs (norms, softmax, optimizer) within 5%.
  for c in (_cfg(), _cfg(n_layers=4, d_model=256, n_heads=8, n_kv_heads=8, d_ff=1024)):
    m = cost.measure_step_flops(c, _mesh(c))
    tokens = c.data.global_batch_size * c.data.seq_len
    palm = counts.model_flops_per_token(c.model, c.data.seq_len) * tokens
    b = m['breakdown']
    dots = b['layers_dot_weights'] + b['layers_dot_attention'] + b['outside_dot']
    assert dots == pytest.approx(palm, rel=1e-3)
    assert m['flops_xla'] == pytest.approx(palm, rel=0.05)


def test_remat_counts_as_hardware_not_model_flops():
  c = _cfg(n_layers=2, remat='full')
  m = cost.measure_step_flops(c, _mesh(c))
  plain = cost.measure_step_flops(_cfg(n_layers=2), _mesh(c))
  assert m['flops_xla_model'] == pytest.approx(plain['flops_xla'], rel=1e-9)
  # Full remat reruns each block's forward on the backward pass: at most a third of the layers'
  # work (forward 1 + backward 2) again. Measured: about 0.8 of it, because the recomputation
  # skips what the backward pass never reads (e.g. the down projection's output).
  extra = (m['flops_xla_hardware'] - m['flops_xla_model']) / (plain['flops_per_layer'] * 2 / 3)
  assert 0.6 < extra <= 1.0


def test_mesh_agnostic_and_compiled_agrees_with_lowered():
  one = cost.measure_step_flops(_cfg(), _mesh(_cfg()))
  c8 = _cfg(mesh=(2, 2, 2))
  eight = cost.measure_step_flops(c8, _mesh(c8))  # The global program does not depend on the mesh.
  assert eight['flops_xla'] == pytest.approx(one['flops_xla'], rel=1e-6)
  assert eight['flops_xla_per_device'] == pytest.approx(one['flops_xla'] / 8, rel=1e-6)
  compiled = cost.measure_step_flops(_cfg(), _mesh(_cfg()), stage='compiled')
  assert compiled['flops_xla'] == pytest.approx(one['flops_xla'], rel=0.01)


# ------------------------------------------------------------------ memory


@pytest.mark.parametrize('mesh', [(1, 1, 1), (2, 2, 2)], ids=['1dev', '8dev'])
def test_memory_prediction_within_factor_2_of_memory_analysis(mesh):
  c = _cfg(mesh=mesh)
  mesh_obj = _mesh(c)
  measured = cost.measure_memory(c, mesh_obj)
  pred = memory.training_memory_per_device(c.model, c.data.seq_len, c.data.global_batch_size,
                                           dict(zip(mesh_obj.axis_names, mesh_obj.devices.shape)))
  # Params + Adam state are what XLA receives as arguments (plus the int32 batch and step counters).
  assert measured['argument_size'] == pytest.approx(pred['state'], rel=0.05)
  assert 0.5 < pred['total'] / measured['peak_estimate'] < 2.0
