"""MoE: dispatch paths vs naive loops and each other, capacity drops, meshes, counts, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from conftest import numpy_init
from model import counts, moe, sharding
from model.transformer import MLP, Transformer
from train import loop
from train import step as step_lib


def tiny(**overrides):
  m = base.get_config().model
  m.update(dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                moe_num_experts=4, moe_top_k=2, moe_granularity=2))
  m.update(overrides)
  return m


def _x(B=2, T=8, D=32, seed=0):
  return jax.random.normal(jax.random.key(seed), (B, T, D), jnp.float32)


def _n_params(model) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _swiglu_np(x_D, gate_DF, up_DF, down_FD):
  a, b = x_D @ gate_DF, x_D @ up_DF
  return (a / (1 + np.exp(-a)) * b) @ down_FD


def _naive(layer, x_BTD, idx_BTK, w_BTK, kept_BTE=None):
  """Per token, per chosen expert: the weighted sum of the experts' SwiGLU outputs (numpy)."""
  g, u, d = (np.asarray(layer.gate_EDF[...]), np.asarray(layer.up_EDF[...]),
             np.asarray(layer.down_EFD[...]))
  x, idx, w = np.asarray(x_BTD), np.asarray(idx_BTK), np.asarray(w_BTK)
  y = np.zeros_like(x)
  for b in range(x.shape[0]):
    for t in range(x.shape[1]):
      for k in range(idx.shape[2]):
        e = idx[b, t, k]
        if kept_BTE is None or kept_BTE[b, t, e]:
          y[b, t] += w[b, t, k] * _swiglu_np(x[b, t], g[e], u[e], d[e])
  return y


@pytest.mark.parametrize('dispatch', moe.DISPATCHES)
def test_one_expert_top1_equals_the_dense_mlp_with_the_same_weights(dispatch):
  m = tiny(moe_num_experts=1, moe_top_k=1, moe_granularity=1, moe_dispatch=dispatch,
           moe_capacity_factor=1.0)  # One expert, C = T: nothing can be dropped.
  layer, mlp = numpy_init(moe.MoE, m, 0), numpy_init(MLP, m, 1)
  mlp.gate_DF[...], mlp.up_DF[...] = layer.gate_EDF[0], layer.up_EDF[0]
  mlp.down_FD[...] = layer.down_EFD[0]
  x = _x()
  y, aux = layer(x)
  np.testing.assert_allclose(y, mlp(x), rtol=1e-5, atol=1e-6)
  assert float(aux['moe_dropped_fraction']) == 0.0
  np.testing.assert_allclose(aux['moe_expert_load'], [1.0])


@pytest.mark.parametrize('routing', moe.ROUTINGS)
def test_dropless_equals_a_naive_per_token_loop_over_experts(routing):
  m = tiny(moe_shared_experts=1, moe_routing=routing, moe_num_experts=5, moe_top_k=3)
  layer = numpy_init(moe.MoE, m, 2)
  if routing == 'sigmoid':
    layer.bias_E[...] = jnp.linspace(-0.2, 0.2, 5)  # Changes the selection, not the weights.
  layer.eval()  # Keep the bias fixed.
  x = _x(seed=3)
  _, _, idx, w = layer.route(x)
  np.testing.assert_allclose(jnp.sum(w, -1), 1.0, rtol=1e-6)
  shared = np.stack([_swiglu_np(x_D, np.asarray(layer.shared_gate_DS[...]),
                                np.asarray(layer.shared_up_DS[...]),
                                np.asarray(layer.shared_down_SD[...]))
                     for x_D in np.asarray(x).reshape(-1, 32)]).reshape(x.shape)
  y, _ = layer(x)
  np.testing.assert_allclose(y, _naive(layer, x, idx, w) + shared, rtol=1e-4, atol=1e-6)


def test_capacity_drops_exactly_the_assignments_its_rule_says():
  m = tiny(moe_num_experts=3, moe_top_k=2, moe_dispatch='capacity', moe_capacity_factor=0.5)
  layer = numpy_init(moe.MoE, m, 4)
  B, T, K, E = 3, 10, 2, 3
  C = moe.capacity(T, K, E, 0.5)
  assert C == 4  # ceil(0.5 * 10 * 2 / 3)
  x = _x(B, T, seed=5)
  _, _, idx, w = layer.route(x)
  # The rule: within a sequence, expert e takes the first C tokens (in order) that chose it.
  want = np.zeros((B, T, E), bool)
  for b in range(B):
    taken = [0] * E
    for t in range(T):
      for e in np.asarray(idx[b, t]):
        if taken[e] < C:
          want[b, t, e], taken[e] = True, taken[e] + 1
  y, kept = moe.capacity_dispatch(x, idx, w, layer.gate_EDF[...], layer.up_EDF[...],
                                  layer.down_EFD[...], C)
  np.testing.assert_array_equal(kept, want)
  assert want.sum() < B * T * K  # Something was dropped.
  np.testing.assert_allclose(y, _naive(layer, x, idx, w, want), rtol=1e-4, atol=1e-6)
  _, aux = layer(x)
  np.testing.assert_allclose(aux['moe_dropped_fraction'], 1 - want.sum() / (B * T * K), rtol=1e-6)


def test_the_dispatch_paths_agree_when_nothing_is_dropped():
  # C = min(T, ceil(2 * T * 2 / 4)) = T: no expert can overflow.
  layer = numpy_init(moe.MoE, tiny(moe_capacity_factor=2.0, moe_shared_experts=1), 6)
  x, r = _x(seed=7), _x(seed=8)

  @nnx.jit
  def loss_and_grads(layer, x):
    def loss(layer, x):
      y, aux = layer(x)
      return jnp.sum(y * r) + aux['moe_load_balance_loss'] + aux['moe_router_z_loss'], aux
    return nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer, x)

  results = {}
  for dispatch in moe.DISPATCHES:
    layer.set_attributes(dispatch=dispatch)  # Same weights, another path.
    results[dispatch] = loss_and_grads(layer, x)
  (ref_loss, ref_aux), ref_grads = results['dense']
  for dispatch in ('dropless', 'capacity', 'blocked', 'alltoall'):  # alltoall: no mesh, dropless.
    (loss, aux), grads = results[dispatch]
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    assert float(aux['moe_dropped_fraction']) == 0.0
    np.testing.assert_array_equal(aux['moe_expert_load'], ref_aux['moe_expert_load'])
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):  # Weights and input.
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize('sizes', [(5, 0, 9, 2), (0, 0, 16, 0), (4, 4, 4, 4)])
def test_blocked_swiglu_equals_ragged_dot_with_several_blocks_per_expert(sizes):
  """Blocks of M = 4 rows: experts spanning 3 blocks, empty experts, exact fits."""
  rng = np.random.default_rng(3)
  D, F, E = 8, 6, len(sizes)
  xs = jnp.asarray(rng.normal(size=(sum(sizes), D)), jnp.float32)
  w = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((E, D, F), (E, D, F), (E, F, D))]
  sizes_E = jnp.asarray(sizes, jnp.int32)
  want = moe.ragged_swiglu(xs, sizes_E, *w)
  np.testing.assert_allclose(moe.blocked_swiglu(xs, sizes_E, *w, M=4), want, rtol=1e-5, atol=1e-5)
  g_blocked = jax.grad(lambda *a: jnp.sum(moe.blocked_swiglu(*a, M=4) ** 2), argnums=(0, 2, 3, 4))
  g_ragged = jax.grad(lambda *a: jnp.sum(moe.ragged_swiglu(*a) ** 2), argnums=(0, 2, 3, 4))
  for a, b in zip(g_blocked(xs, sizes_E, *w), g_ragged(xs, sizes_E, *w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_interleaved_layers_scan_unroll_and_remat_compute_the_same_function():
  # 1 dense layer, one period (dense, MoE), 1 trailing dense layer.
  kw = dict(n_layers=4, moe_first_dense=1, moe_every=2)
  assert moe.moe_layers(tiny(**kw)) == (2,)
  toks = jax.random.randint(jax.random.key(7), (2, 10), 0, 61)
  outs = []
  for extra in ({}, {'scan_layers': False, 'remat': 'full'}):
    model = numpy_init(Transformer, tiny(**kw, **extra))
    assert model.blocks.mlp.gate_DF.shape == (1, 32, 64)
    assert model.moe_periods.dense.mlp.gate_DF.shape == (1, 1, 32, 64)
    assert model.moe_periods.moe.mlp.gate_EDF.shape == (1, 4, 32, 32)
    assert model.tail_blocks.mlp.gate_DF.shape == (1, 32, 64)
    outs.append(nnx.jit(nnx.value_and_grad(lambda mdl: jnp.mean(mdl(toks) ** 2)))(model))
  (la, ga), (lb, gb) = outs
  np.testing.assert_allclose(la, lb, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7)


def _mesh_config(**mesh):
  c = base.get_config()
  c.model.update(tiny(vocab_size=64, n_layers=1, moe_shared_experts=1))
  c.data.update(dict(seq_len=16, global_batch_size=8))
  c.train.steps = 10
  c.mesh.update(dict(data=1, fsdp=1, tensor=1, expert=1))
  c.mesh.update(mesh)
  return c


def _mesh_batch():
  toks = np.random.default_rng(8).integers(0, 64, (8, 17)).astype(np.int32)
  return {'inputs': toks[:, :-1], 'targets': toks[:, 1:]}


def _loss_and_grads(config, devices, state=None):
  """On a mesh over `devices`: (program, state, loss, grads, moe aux) of step.loss_fn."""
  mesh = sharding.make_mesh(config.mesh, devices)
  program = step_lib.build(config, mesh)
  with sharding.use_mesh(mesh):
    if state is None:
      state = step_lib.init_state(config, program)
    state = jax.device_put(state, program.state_sharding)
    model, _ = nnx.merge(program.graphdef, state)
    batch = {k: jax.device_put(v, program.batch_sharding) for k, v in _mesh_batch().items()}
    grad_fn = nnx.jit(nnx.value_and_grad(step_lib.loss_fn, has_aux=True))
    (loss, (_, _, aux)), grads = grad_fn(model, batch, 0.0)
  return program, mesh, state, loss, grads, aux


@pytest.fixture(scope='module')
def one_device():
  _, _, state, loss, grads, aux = _loss_and_grads(_mesh_config(), jax.devices()[:1])
  return jax.device_get((state, loss, grads, aux))


def _assert_equal_to_one_device(loss, grads, aux, one_device):
  """Loss, every gradient leaf and every MoE metric equal the one-device run's."""
  _, loss1, grads1, aux1 = one_device
  np.testing.assert_allclose(loss, loss1, rtol=1e-5)
  flat1, flat8 = jax.tree.leaves(grads1), jax.tree.leaves(grads)
  assert len(flat1) == len(flat8) > 10
  for g1, g8 in zip(flat1, flat8):
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-7)
  for k in aux1:
    np.testing.assert_allclose(aux[k], aux1[k], rtol=1e-5, err_msg=k)


@pytest.mark.parametrize('mesh', [dict(data=2, expert=4), dict(expert=2, fsdp=2, tensor=2)])
def test_loss_and_gradients_on_an_expert_mesh_equal_one_device(mesh, one_device):
  state1, aux1 = one_device[0], one_device[3]
  config = _mesh_config(**mesh)
  program, jmesh, state, loss, grads, aux = _loss_and_grads(config, jax.devices(), state1)
  gate = nnx.merge(program.graphdef, state)[0].moe_periods.moe.mlp.gate_EDF[...]
  spec = tuple(gate.sharding.spec) + (None,) * 4
  want = ('fsdp' if mesh.get('fsdp') else None, 'tensor' if mesh.get('tensor') else None)
  assert spec[:4] == (None, 'expert') + want  # (periods, E, D, F): E over the expert axis.
  assert gate.addressable_shards[0].data.shape[1] == 4 // mesh['expert']
  _assert_equal_to_one_device(loss, grads, aux, one_device)
  if 'fsdp' in mesh:  # The jitted train step logs the MoE metrics as scalars.
    with sharding.use_mesh(jmesh):
      batch = {k: jax.device_put(v, program.batch_sharding) for k, v in _mesh_batch().items()}
      _, metrics = program.train_step(state, batch)
    np.testing.assert_allclose(metrics['moe_load_balance_loss'], aux1['moe_load_balance_loss'],
                               rtol=1e-5)
    load = np.asarray(aux1['moe_expert_load'])
    np.testing.assert_allclose(metrics['moe_load_max'], np.max(load))
    np.testing.assert_allclose(metrics['moe_load_min'], np.min(load))
    np.testing.assert_allclose(metrics['moe_load_min_over_max'], np.min(load) / np.max(load),
                               rtol=1e-6)
    assert {'moe_router_z_loss', 'moe_dropped_fraction', 'moe_router_entropy'} <= set(metrics)
    np.testing.assert_allclose(metrics['moe_expert_load'], load, rtol=1e-6)  # The histogram's.


@pytest.mark.parametrize('overrides', [
    {}, {'moe_shared_experts': 2, 'tie_embeddings': True}, {'moe_d_expert': 24, 'moe_top_k': 1},
    {'n_layers': 5, 'moe_first_dense': 1, 'moe_every': 2, 'moe_routing': 'sigmoid'},
])
def test_total_and_active_counts_match_the_closed_form_and_the_built_model(overrides):
  m = tiny(**overrides)
  c = counts.param_counts(m)
  V, D, L, H, G, F = m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff
  E, k, S = m.moe_num_experts, m.moe_top_k, m.moe_shared_experts
  Fe = m.moe_d_expert or F // m.moe_granularity
  n_moe = len(moe.moe_layers(m))
  attn_norms = 2 * D * H * (D // H) + 2 * D * G * (D // H) + 2 * D
  dense_block, moe_block = attn_norms + 3 * D * F, attn_norms + D * E + 3 * D * Fe * (E + S)
  assert c.non_embedding == (L - n_moe) * dense_block + n_moe * moe_block + D
  assert c.with_head == c.non_embedding + V * D
  assert c.active == c.with_head - n_moe * 3 * D * Fe * (E - k)

  model = nnx.eval_shape(lambda: Transformer(m, rngs=nnx.Rngs(0)))
  assert c.total == _n_params(model)
  # Active from the leaves: every matmul weight, but of each routed expert weight only the
  # top_k / E share a token uses.
  active = V * D  # The output head's matmul, tied or not.
  for path, p in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if path[0] in ('embed_VD', 'head_DV'):
      continue
    routed = path[-1] in ('gate_EDF', 'up_EDF', 'down_EFD')
    active += p.size * k // E if routed else p.size
  assert c.active == active
  assert counts.model_flops_per_token(m, 16) == counts.palm_flops_per_token(
      c.active, L, H, D // H, 16)
  dense = counts.param_counts(tiny(moe_num_experts=0))
  assert dense.active == dense.with_head


@pytest.mark.parametrize('routing', moe.ROUTINGS)
def test_load_balance_loss_is_one_its_minimum_for_a_uniform_router(routing):
  layer = numpy_init(moe.MoE, tiny(moe_routing=routing), 9)
  layer.router_DE[...] = jnp.zeros_like(layer.router_DE[...])
  _, aux = layer(_x(seed=10))
  np.testing.assert_allclose(aux['moe_load_balance_loss'], 1.0, rtol=1e-6)
  np.testing.assert_allclose(aux['moe_router_entropy'], np.log(4), rtol=1e-6)
  np.testing.assert_allclose(aux['moe_router_z_loss'], np.log(4) ** 2, rtol=1e-6)  # lse(0) = ln E
  # A router that prefers expert 0 for every token is penalised.
  layer.router_DE[...] = jnp.zeros_like(layer.router_DE[...]).at[:, 0].set(1.0)
  x = jnp.abs(_x(seed=10))
  _, aux = layer(x)
  assert float(aux['moe_load_balance_loss']) > 1.2


def test_sigmoid_bias_moves_by_the_sign_of_the_load_error_only_in_training_mode():
  m = tiny(moe_routing='sigmoid', moe_bias_update_rate=0.01)
  layer = numpy_init(moe.MoE, m, 11)
  assert not isinstance(layer.bias_E, nnx.Param)
  x = _x(seed=12)
  _, aux = layer(x)
  want = 0.01 * np.sign(0.25 - np.asarray(aux['moe_expert_load']))
  np.testing.assert_allclose(layer.bias_E[...], want, rtol=1e-6)
  layer.eval()
  layer(x)
  np.testing.assert_allclose(layer.bias_E[...], want, rtol=1e-6)


def _markov_batches(V, B, T, seed):
  """Tokens of a random chain where each token has 2 likely successors (learnable)."""
  rng = np.random.default_rng(seed)
  succ = rng.integers(0, V, (V, 2))
  while True:
    toks = np.zeros((B, T + 1), np.int32)
    toks[:, 0] = rng.integers(0, V, B)
    for t in range(T):
      toks[:, t + 1] = succ[toks[:, t], rng.integers(0, 2, B)]
    yield {'inputs': toks[:, :-1], 'targets': toks[:, 1:]}


def test_a_tiny_moe_model_trains_with_falling_loss_and_no_nan():
  m = tiny(moe_shared_experts=1)
  model = numpy_init(Transformer, m)
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, batch):
    (loss, (ce, _, aux)), grads = nnx.value_and_grad(step_lib.loss_fn, has_aux=True)(
        model, batch, 0.0)
    opt.update(model, grads)
    return ce, aux

  batches = _markov_batches(61, 8, 16, seed=13)
  ces, auxes = zip(*[step(model, opt, next(batches)) for _ in range(30)])
  ces = np.asarray(ces)
  assert np.all(np.isfinite(ces)) and all(np.all(np.isfinite(v)) for a in auxes for v in a.values())
  assert ces[0] > 3.8  # About ln(61) at init.
  assert ces[-5:].mean() < ces[0] - 1.0, ces


def test_tensorboard_has_the_per_expert_load_histogram_and_the_moe_scalars(tmp_path):
  """A run on the capacity path (K = 2 steps per call): read back with tensorboard's reader."""
  ea = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
  c = base.get_config()
  c.model.update(tiny(n_layers=1, moe_dispatch='capacity', moe_capacity_factor=0.5))
  c.data.update(dict(seq_len=16, global_batch_size=8, synthetic_tokens=20_000))
  c.train.update(dict(steps=4, steps_per_call=2, log_every=2, eval_every=4, eval_batches=1,
                      checkpoint_every=0, peak_flops=1e11))
  loop.run(c, str(tmp_path))
  acc = ea.EventAccumulator(str(tmp_path), size_guidance={'scalars': 0, 'histograms': 0})
  acc.Reload()
  hists = acc.Histograms('train/moe_expert_load')
  assert [h.step for h in hists] == [2, 4]
  E = c.model.moe_num_experts
  for h in hists:  # One bucket per expert holding its share of the assignments.
    v = h.histogram_value
    assert list(v.bucket_limit) == [i + 0.5 for i in range(E)]
    assert len(v.bucket) == E and min(v.bucket) >= 0 and sum(v.bucket) == pytest.approx(1.0)
  ratio = acc.Scalars('train/moe_load_min_over_max')
  assert [e.step for e in ratio] == [2, 4]
  for e, h in zip(ratio, hists):
    b = h.histogram_value.bucket
    assert e.value == pytest.approx(min(b) / max(b), rel=1e-5) and 0 <= e.value <= 1
  # Capacity factor 0.5: the experts hold half the assignments at most, the rest are dropped.
  assert all(e.value >= 0.5 - 1e-6 for e in acc.Scalars('train/moe_dropped_fraction'))
  for tag in ('moe_router_entropy', 'moe_load_balance_loss', 'moe_router_z_loss'):
    values = [e.value for e in acc.Scalars(f'train/{tag}')]
    assert len(values) == 2 and all(np.isfinite(values)), tag
  assert 0 < acc.Scalars('train/moe_router_entropy')[0].value <= np.log(E) + 1e-6


def test_a_dense_config_has_no_moe_aux_and_forward_matches_call():
  model = numpy_init(Transformer, tiny(moe_num_experts=0))
  assert model.moe_periods is None and model.blocks.mlp.gate_DF.shape == (2, 32, 64)
  toks = jnp.zeros((1, 5), jnp.int32)
  logits, aux = model.forward(toks)
  assert aux == {}
  np.testing.assert_array_equal(logits, model(toks))


@pytest.mark.parametrize('overrides,key', [
    ({'moe_top_k': 5}, 'model.moe_top_k=5 is greater than model.moe_num_experts=4'),
    ({'moe_granularity': 3}, 'model.moe_granularity=3 does not divide model.d_ff=64'),
    ({'moe_dispatch': 'capacity', 'moe_capacity_factor': 0.0}, 'model.moe_capacity_factor=0.0'),
    ({'moe_dispatch': 'sparse'}, "model.moe_dispatch='sparse': must be one of"),
    ({'moe_routing': 'hash'}, "model.moe_routing='hash': must be one of"),
    ({'moe_first_dense': 2}, 'model.moe_first_dense=2 and model.moe_every=1 leave no MoE layer'),
    ({'moe_top_k': 0}, 'model.moe_top_k=0: must be an integer >= 1'),
    ({'moe_load_balance_weight': -1.0}, 'model.moe_load_balance_weight=-1.0: must be >= 0'),
])
def test_moe_errors_name_the_key(overrides, key):
  errors = moe.moe_errors(tiny(**overrides))
  assert len(errors) == 1 and key in errors[0], errors


def test_valid_and_dense_configs_have_no_moe_errors_and_expert_mesh_errors_name_the_axis():
  assert moe.moe_errors(tiny()) == []
  assert moe.moe_errors(base.get_config().model) == []
  assert moe.moe_errors(tiny(moe_num_experts=0, moe_top_k=9)) == []  # Dense: MoE fields unused.
  assert moe.moe_errors(tiny(moe_dispatch='capacity', moe_capacity_factor=0.0,
                             moe_granularity=3)) == [
      'model.moe_granularity=3 does not divide model.d_ff=64 (the expert width is d_ff // '
      'moe_granularity)',
      "model.moe_capacity_factor=0.0: must be > 0 on the capacity path "
      "(model.moe_dispatch='capacity')"]
  assert moe.expert_mesh_errors(tiny(), {'expert': 2}) == []
  assert moe.expert_mesh_errors(tiny(moe_num_experts=0), {'expert': 4}) == []
  errors = moe.expert_mesh_errors(tiny(moe_num_experts=6, moe_top_k=2), {'expert': 4})
  assert len(errors) == 1
  assert 'model.moe_num_experts=6 is not divisible by mesh.expert=4' in errors[0]


@pytest.mark.parametrize('mesh', [dict(data=2, expert=4), dict(expert=2, fsdp=2, tensor=2)])
def test_alltoall_loss_and_gradients_on_an_expert_mesh_equal_one_device_dropless(mesh, one_device):
  state1 = one_device[0]  # model.moe_dispatch='dropless' on one device.
  config = _mesh_config(**mesh)
  config.model.moe_dispatch = 'alltoall'
  _, _, _, loss, grads, aux = _loss_and_grads(config, jax.devices(), state1)
  _assert_equal_to_one_device(loss, grads, aux, one_device)
  assert float(aux['moe_dropped_fraction']) == 0.0


def test_alltoall_dispatch_drops_nothing_when_every_token_picks_one_devices_experts():
  """E=8 over expert=4: all 32 tokens choose experts 0 and 1 (device 0's), the worst case."""
  rng = np.random.default_rng(5)
  N, D, F, E = 32, 8, 6, 8
  x = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
  idx = jnp.asarray(np.stack([rng.permutation(2) for _ in range(N)]), jnp.int32)
  idx = idx.at[:4, 1].set(7)  # A few rows for the last device too.
  w = jnp.asarray(rng.uniform(0.1, 1.0, size=(N, 2)), jnp.float32)
  shapes = ((E, D, F), (E, D, F), (E, F, D))
  weights = [jnp.asarray(rng.normal(0.0, 0.3, size=s), jnp.float32) for s in shapes]

  def loss(path):
    return lambda x, *ws: jnp.sum(jnp.sin(path(x, idx, w, *ws)))

  want = jax.value_and_grad(loss(moe.dropless_dispatch), argnums=(0, 1, 2, 3))(x, *weights)
  mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=1, expert=4))
  with sharding.use_mesh(mesh):
    fn = jax.jit(jax.value_and_grad(loss(moe.alltoall_dispatch), argnums=(0, 1, 2, 3)))
    assert 'all-to-all' in fn.lower(x, *weights).compile().as_text()
    got = fn(x, *weights)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
