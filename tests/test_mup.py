"""µP (model.parameterization='mup'): SP unchanged, init and LR formulas, the coordinate check, errors."""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from model import transformer
from model.transformer import Transformer
from train import optim
from train.config_check import ConfigError, validate


def run_config(param='sp', width=32, base_width=32, **model):
  """A tiny run config: 2 layers of `width`, d_ff = 4 * width, constant LR, no decay or clip."""
  c = base.get_config()
  c.model.update(dict(vocab_size=97, d_model=width, n_layers=2, n_heads=4, n_kv_heads=2,
                      d_ff=4 * width, parameterization=param, mup_base_width=base_width))
  c.model.update(model)
  c.optim.update(dict(lr=1e-2, warmup_fraction=0.0, weight_decay=0.0, grad_clip=0.0))
  c.train.steps = 1000  # Cosine over 1,000 steps: the LR is the peak for the few steps here.
  return c


def _loss(model, tokens_BT):
  """Mean next-token cross-entropy (nats) of tokens_BT[:, 1:] from tokens_BT[:, :-1]."""
  logits_BTV = model(tokens_BT[:, :-1])
  target_BT = jnp.take_along_axis(logits_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
  return jnp.mean(jax.nn.logsumexp(logits_BTV, axis=-1) - target_BT)


def _abs_sum(tree) -> jax.Array:
  return sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(tree))


def _named_params(model) -> dict[str, np.ndarray]:
  """'blocks/attn/wq_DHK' -> its array, for every parameter."""
  flat, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))
  return {'/'.join(k.key for k in path if hasattr(k, 'key')): np.asarray(v) for path, v in flat}


def _is_hidden(name: str) -> bool:
  return not set(name.split('/')) & set(transformer.BASE_LR_PARAMS)


# Computed (jitted, as below) on the code before µP existed, jax 0.10.2: sum |params| at init,
# sum |logits| at init; GQA also sum |params| after one AdamW step of the project's optimizer
# and the loss then (the optimizer is the same for MLA).
SP_CHECKSUMS = {
    'gqa': ({}, (553.9268798828125, 275.3481750488281, 557.6012573242188, 4.252573013305664)),
    'mla': ({'attention': 'mla', 'mla_kv_rank': 16, 'mla_rope_dim': 4},
            (622.5301513671875, 271.8878173828125)),
}


@pytest.mark.parametrize('kind', sorted(SP_CHECKSUMS))
def test_sp_is_unchanged_from_before_mup(kind):
  overrides, expected = SP_CHECKSUMS[kind]
  train = len(expected) == 4
  c = base.get_config()
  c.model.update(dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
  c.model.update(overrides)
  c.train.steps = 10

  @jax.jit
  def checksums(tokens_BT):
    model = Transformer(c.model, rngs=nnx.Rngs(0))
    out = [_abs_sum(nnx.state(model, nnx.Param)), _abs_sum(model(tokens_BT))]
    if not train:
      return jnp.stack(out)
    opt = nnx.Optimizer(model, optim.optimizer(c), wrt=nnx.Param)

    def loss(m):
      logits_BTV = m(tokens_BT)
      return jnp.mean(jax.nn.logsumexp(logits_BTV, -1) - logits_BTV[..., 0])

    opt.update(model, nnx.grad(loss)(model))
    return jnp.stack(out + [_abs_sum(nnx.state(model, nnx.Param)), loss(model)])

  got = checksums(jax.random.randint(jax.random.key(1), (2, 16), 0, 97))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)


def _train_step_jaxpr(c) -> str:
  """The jaxpr of building the model of `c`, its logits and one optimizer step, as text."""
  def build_and_step(tokens_BT):
    model = Transformer(c.model, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optim.optimizer(c), wrt=nnx.Param)
    opt.update(model, nnx.grad(_loss)(model, tokens_BT))
    return model(tokens_BT), nnx.state(model, nnx.Param)
  return str(jax.make_jaxpr(build_and_step)(jnp.zeros((2, 9), jnp.int32)))


def test_sp_default_explicit_sp_and_a_config_without_the_fields_trace_the_same_program():
  default = run_config()
  default.model.mup_base_width = 7  # Unused under SP.
  old = run_config()
  del old.model['parameterization'], old.model['mup_base_width']  # A config from before µP.
  assert _train_step_jaxpr(default) == _train_step_jaxpr(old)
  assert transformer.width_multiplier(old.model) == 1.0
  assert _train_step_jaxpr(run_config('mup', base_width=32)) != _train_step_jaxpr(old)


@functools.cache
def _mup_model(width: int, tie: bool = False):
  """(config, µP model) at `width` over base width 32; built once, for tests that only read it."""
  c = run_config('mup', width=width, base_width=32, tie_embeddings=tie)
  return c, Transformer(c.model, rngs=nnx.Rngs(0))


@pytest.mark.parametrize('width,tie', [(64, False), (128, True)])
def test_init_stds_and_lr_multipliers_follow_the_mup_formulas(width, tie):
  c, model = _mup_model(width, tie)
  m = width / 32
  params = _named_params(model)
  mults = dict(zip(params, jax.tree.leaves(optim.lr_multipliers(c, nnx.state(model, nnx.Param)))))
  assert ('head_DV' in params) == (not tie)
  for name, w in params.items():
    if name.endswith('scale'):  # Norms: ones, base LR.
      np.testing.assert_array_equal(w, 1.0)
      assert mults[name] == 1.0
    elif _is_hidden(name):  # Hidden kernels: std init_std / sqrt(m), LR / m.
      assert np.std(w) == pytest.approx(0.02 / np.sqrt(m), rel=0.05), name
      assert mults[name] == pytest.approx(1 / m), name
    else:  # Embedding table and output head: the base model's std and LR.
      assert np.std(w) == pytest.approx(0.02, rel=0.05), name
      assert mults[name] == 1.0, name
  assert model.blocks.attn.scale == pytest.approx(1 / (width // 4))  # 1/K, not 1/sqrt(K).
  assert model.readout_mult == pytest.approx(1 / m)


def test_each_adam_step_and_its_decay_are_scaled_by_the_lr_multiplier():
  c, model = _mup_model(64)  # m = 2.
  c = copy.deepcopy(c)
  c.optim.update(dict(weight_decay=0.1, eps=1e-12))  # eps << |g|: Adam's first step is +-lr.
  params = nnx.state(model, nnx.Param)
  tx = optim.optimizer(c)
  lr = float(optim.schedule(c)(0))
  tokens_BT = jax.random.randint(jax.random.key(1), (4, 17), 0, 97)

  @jax.jit
  def first_steps(params, grads):
    """The first AdamW step with these gradients, and with none (the decay alone)."""
    zero = jax.tree.map(jnp.zeros_like, grads)
    return tx.update(grads, tx.init(params), params)[0], tx.update(zero, tx.init(params), params)[0]

  # Adam's first step moves each weight by lr * g / (|g| + eps) (~ +-lr) plus lr * decay * w.
  updates, decay = first_steps(params, nnx.jit(nnx.grad(_loss))(model, tokens_BT))
  names = _named_params(model)
  for name, u, d, w in zip(names, jax.tree.leaves(updates), jax.tree.leaves(decay),
                           jax.tree.leaves(params)):
    k = 0.5 if _is_hidden(name) else 1.0
    if name.endswith('scale'):  # Norms: no decay.
      np.testing.assert_array_equal(d, 0.0)
    else:
      np.testing.assert_allclose(d, -lr * k * 0.1 * w, rtol=1e-5, atol=1e-12)
    assert np.max(np.abs(u - d)) == pytest.approx(lr * k, rel=1e-3), name


def test_mup_logits_are_the_head_over_m_and_mla_scores_over_j():
  _, model = _mup_model(64)  # m = 2.
  tokens_BT = jax.random.randint(jax.random.key(1), (2, 8), 0, 97)
  x_BTD, logits_BTV = nnx.jit(lambda m, t: (m.residual(t)[0], m(t)))(model, tokens_BT)
  manual_BTV = model.final_norm(x_BTD) @ model.head_DV[...] / 2.0
  np.testing.assert_allclose(logits_BTV, manual_BTV, rtol=1e-5, atol=1e-7)
  mla = run_config('mup', width=64, base_width=32, attention='mla', mla_kv_rank=16, mla_rope_dim=4)
  abstract = nnx.eval_shape(lambda: Transformer(mla.model, rngs=nnx.Rngs(0)))
  assert abstract.blocks.attn.scale == pytest.approx(1 / (16 + 4))  # 1/J, J = K + R.


def test_mup_attention_is_sp_attention_with_queries_over_sqrt_k():
  """At m = 1 µP has SP's init; its 1/K logit scale equals SP with wq multiplied by 1/sqrt(K)."""
  tokens_BT = jax.random.randint(jax.random.key(1), (2, 12), 0, 97)
  mup = Transformer(run_config('mup', width=32, base_width=32).model, rngs=nnx.Rngs(0))
  sp = Transformer(run_config('sp', width=32).model, rngs=nnx.Rngs(0))
  K = 32 // 4
  sp.blocks.attn.wq_DHK[...] = sp.blocks.attn.wq_DHK[...] / np.sqrt(K)
  mup_BTV, sp_BTV = nnx.jit(lambda a, b, t: (a(t), b(t)))(mup, sp, tokens_BT)
  np.testing.assert_allclose(mup_BTV, sp_BTV, rtol=1e-5, atol=1e-6)


COORD_WIDTHS = (32, 128, 512)


def _coordinates(param: str, width: int, steps: int = 5) -> tuple[float, float]:
  """(mean |x|, mean |x - x at init|) of the last residual stream after `steps` AdamW steps.

  One layer of `width` (base width 32), LR 3e-3, batches of 8 x 16 random tokens.
  """
  c = run_config(param, width=width, n_layers=1, n_kv_heads=4)
  c.optim.lr = 3e-3
  model = Transformer(c.model, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optim.optimizer(c), wrt=nnx.Param)
  graphdef, state = nnx.split((model, opt))
  tokens_SBT = jax.random.randint(jax.random.key(1), (steps, 8, 17), 0, c.model.vocab_size)

  def residual_BTD(state):
    return nnx.merge(graphdef, state)[0].residual(tokens_SBT[0, :, :-1])[0]

  def step(state, tokens_BT):
    m, o = nnx.merge(graphdef, state)
    o.update(m, nnx.grad(_loss)(m, tokens_BT))
    return nnx.state((m, o)), None

  @jax.jit
  def train_and_measure(state):
    x0_BTD = residual_BTD(state)
    x_BTD = residual_BTD(jax.lax.scan(step, state, tokens_SBT)[0])
    return jnp.mean(jnp.abs(x_BTD)), jnp.mean(jnp.abs(x_BTD - x0_BTD))

  return tuple(float(v) for v in train_and_measure(state))


def test_coordinate_check_activations_flat_in_width_under_mup_and_growing_under_sp():
  """Yang et al.'s coordinate check: the residual stream after 5 Adam steps, widths 32..512."""
  got = {p: np.array([_coordinates(p, w) for w in COORD_WIDTHS]) for p in ('sp', 'mup')}
  for j in (0, 1):  # The activations, and their change since init.
    sp, mup = got['sp'][:, j], got['mup'][:, j]
    assert np.all(np.diff(sp) > 0), got  # SP: every 4x of width grows them.
    assert sp[-1] / sp[0] > 10, got
    assert np.max(mup) / np.min(mup) < 1.3, got  # µP: flat in width.


@pytest.mark.parametrize('overrides,message', [
    (dict(parameterization='foo'), "model.parameterization='foo': must be one of 'sp', 'mup'"),
    (dict(parameterization='mup', mup_base_width=0), 'model.mup_base_width=0: must be a positive'),
    (dict(parameterization='mup', mup_base_width=-64), 'model.mup_base_width=-64'),
    (dict(parameterization='mup', moe_num_experts=4), "model.moe_num_experts=4: not available"),
])
def test_bad_parameterization_is_a_config_error_naming_the_key(overrides, message):
  c = base.get_config()
  c.model.update(overrides)
  with pytest.raises(ConfigError) as e:
    validate(c, n_devices=8)
  assert message in str(e.value)


def test_mup_config_with_tied_embeddings_validates():
  c = base.get_config()
  c.model.update(dict(parameterization='mup', mup_base_width=64, tie_embeddings=True))
  validate(c, n_devices=8)
