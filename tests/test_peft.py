"""Tests of train/peft.py: r·(d+k) numbers trained, a frozen base, merged = unmerged, bad input."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from model import decode
from model.transformer import Transformer
from train import config_check, peft

from conftest import numpy_init

# D 32, H 4 x K 8, G 2 kv heads (G·K = 16), F 64, L 2; 2 x 12 tokens: 24 rows, a size no kernel has.
CFG = dict(vocab_size=80, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
TOKENS = np.random.default_rng(0).integers(0, 80, (2, 12)).astype(np.int32)
BASE_MATRICES = {(32, 32), (32, 16), (32, 64), (64, 32)}  # Every kernel's (d, k).
WEIGHT_GRADS = BASE_MATRICES | {(k, d) for d, k in BASE_MATRICES}  # Either orientation.


CFG_M = base.get_config().model
CFG_M.update(CFG)


def _model():
  return numpy_init(Transformer, CFG_M)


def _post(**kw):
  p = base.get_config().post
  p.update({'peft': 'lora', 'lora_rank': 3, 'lora_alpha': 6.0, 'qlora_block': 16, **kw})
  return p


def _adapted(**kw):
  model, p = _model(), _post(**kw)
  return model, p, peft.apply(model, p, 0)


def _sizes(model, path: str) -> dict[str, tuple]:
  flat = nnx.to_flat_state(nnx.state(model, peft.Adapter))
  return {str(k[-1]): v.shape for k, v in flat if '/'.join(map(str, k)).startswith(path + '/')}


def test_lora_trains_exactly_r_times_d_plus_k_numbers_per_adapted_kernel():
  model, p, sites = _adapted()
  # By hand, r = 3, L = 2: q, o (32 x 32), k, v (32 x 16), gate, up (32 x 64), down (64 x 32).
  hand = {'wq_DHK': 3 * 64 * 2, 'wk_DGK': 3 * 48 * 2, 'wv_DGK': 3 * 48 * 2, 'wo_HKD': 3 * 64 * 2,
          'gate_DF': 3 * 96 * 2, 'up_DF': 3 * 96 * 2, 'down_FD': 3 * 96 * 2}
  report = {r['path'].rsplit('/', 1)[1]: r for r in peft.site_report(p, model, sites)}
  assert set(report) == set(hand)
  for name, n in hand.items():
    assert report[name]['params'] == report[name]['closed_form'] == n, name
  assert _sizes(model, 'blocks/attn/wk_DGK') == {'lora_a': (2, 32, 3), 'lora_b': (2, 3, 16)}
  assert peft.count(nnx.state(model, peft.Adapter)) == sum(hand.values()) == 3072

  model, p, sites = _adapted(lora_targets='q,v')
  assert [s.name for s in sites] == ['q', 'v']
  assert peft.count(nnx.state(model, peft.Adapter)) == 384 + 288

  model, p, sites = _adapted(peft='dora', lora_targets='mlp')  # + one magnitude per column.
  assert peft.count(nnx.state(model, peft.Adapter)) == (2 * (3 * 96 + 64) + 3 * 96 + 32) * 2

  model, p, sites = _adapted(peft='ia3')  # Keys (16), values (16), the MLP's hidden units (64).
  assert peft.count(nnx.state(model, peft.Adapter)) == (16 + 16 + 64) * 2
  assert sum(peft.closed_form(p, s) for s in sites) == 192


def test_qlora_stores_every_base_kernel_as_nf4_codes():
  model, p, sites = _adapted(peft='qlora', lora_targets='q')
  assert [s.adapted for s in sites] == [True] + [False] * 6  # All 7 kernels quantized, q adapted.
  codes = nnx.state(model, peft.FrozenCodes)
  adapted = [m for _, m in nnx.iter_modules(model) if isinstance(m, peft.Adapted)]
  assert len(adapted) == 7 and all(m.kernel is None for m in adapted)  # No float32 copy kept.
  assert model.blocks.attn.wq_DHK.codes[...].dtype == jnp.uint8
  assert int(jnp.max(model.blocks.attn.wq_DHK.codes[...])) <= 15
  assert model.blocks.mlp.down_FD.scales[...].shape == (2, 64 // 16, 32)  # A scale per 16 along d.
  assert peft.count(codes) > 0 and peft.count(nnx.state(model, peft.Adapter)) == 384


def _grad_fn(model, wrt):
  """(grads(state), state): the gradient of a toy loss with respect to the `wrt` Variables."""
  graphdef, state = nnx.split(model)

  def loss(m):
    return jnp.mean(m(TOKENS) ** 2)

  def grads(state):
    return nnx.grad(loss, argnums=nnx.DiffState(0, wrt))(nnx.merge(graphdef, state))

  return grads, state


def _dot_output_shapes(fn, *args) -> set[tuple[int, ...]]:
  """Shapes of every dot_general result in fn's jaxpr, scan bodies included."""
  text = str(jax.make_jaxpr(fn)(*args))
  return {tuple(int(d) for d in m.group(1).split(','))
          for m in re.finditer(r':f32\[([\d,]+)\] = dot_general', text)}


def test_the_base_gets_no_gradient_and_no_optimizer_state():
  model, _, _ = _adapted()
  adapters = {v.shape for v in jax.tree.leaves(nnx.state(model, peft.Adapter))}
  grads, state = _grad_fn(model, peft.Adapter)
  assert {g.shape for g in jax.tree.leaves(jax.eval_shape(grads, state))} == adapters
  # No d x k weight gradient anywhere in the program (the forward multiplies unmerged) ...
  assert not _dot_output_shapes(grads, state) & WEIGHT_GRADS
  # ... where full fine-tuning computes one per kernel (the check can fail).
  full = _dot_output_shapes(*_grad_fn(_model(), nnx.Param))
  assert all((d, k) in full or (k, d) in full for d, k in BASE_MATRICES)

  opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=peft.Adapter)
  moments = [x for x in jax.tree.leaves(nnx.state(opt)) if x.ndim]
  assert {x.shape for x in moments} == adapters
  assert sum(x.size for x in moments) == 2 * 3072  # Adam's m and v, nothing for the base.


FORWARD = nnx.jit(lambda m, t: m(t))  # One cache: the plain models share a structure.


@pytest.fixture(scope='module')
def base_logits():
  return FORWARD(_model(), TOKENS)


@pytest.mark.parametrize('kind', ['lora', 'qlora', 'dora', 'ia3'])
def test_merged_adapters_give_the_unmerged_logits(kind, base_logits):
  model, p, _ = _adapted(peft=kind)
  start = FORWARD(model, TOKENS)
  if kind != 'qlora':  # B = 0, m = ‖W‖_c, l = 1: the adapted model starts as its base.
    np.testing.assert_allclose(start, base_logits, atol=1e-5)
  rng = np.random.default_rng(1)
  nnx.update(model, jax.tree.map(lambda x: x + jnp.asarray(rng.normal(0, 0.3, x.shape), x.dtype),
                                 nnx.state(model, peft.Adapter)))
  unmerged, merged = FORWARD(model, TOKENS), FORWARD(peft.merge(model), TOKENS)
  assert float(jnp.max(jnp.abs(unmerged - start))) > 1e-2  # The adapters do change the output.
  np.testing.assert_allclose(unmerged, merged, atol=2e-5)
  if kind == 'lora':  # The KV-cache path (generation) multiplies the same adapted kernels.
    cache = decode.init_cache(model.cfg, *TOKENS.shape)
    prefill = nnx.jit(lambda m, t: decode.forward_cached(m, t, cache, jnp.zeros(2, jnp.int32))[0])
    np.testing.assert_allclose(prefill(model, TOKENS), merged, atol=2e-5)


def test_bad_peft_settings_name_their_key():
  def errors(**kw):
    return '\n'.join(config_check.post_errors(_post(**kw)))
  assert config_check.post_errors(_post()) == []
  assert 'post.lora_rank=0' in errors(lora_rank=0) and 'post.lora_rank=-2' in errors(lora_rank=-2)
  assert "post.lora_targets='attn,ffn'" in errors(lora_targets='attn,ffn')
  assert "post.lora_targets=''" in errors(lora_targets='')
  assert "post.peft='lokr'" in errors(peft='lokr')
  assert 'post.lora_alpha' in errors(lora_alpha=0.0)
  assert 'post.qlora_block' in errors(peft='qlora', qlora_block=0)
  assert errors(peft='ia3', lora_rank=0) == ''  # (IA)³ has no rank.
  qat = base.get_config().model
  qat.qat = 'int8'
  assert 'model.qat' in peft.base_errors(_post(), qat)[0] and not peft.base_errors(_post(), CFG_M)

  mla = base.get_config().model
  mla.update(CFG, attention='mla', mla_kv_rank=16, mla_q_rank=0, mla_rope_dim=4)
  abstract = nnx.eval_shape(lambda: Transformer(mla, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"post.lora_targets='attn' names no layer"):
    peft.apply(abstract, _post(lora_targets='attn'), 0)
  with pytest.raises(ValueError, match=r'post.qlora_block=24 does not divide'):
    peft.apply(_model(), _post(peft='qlora', qlora_block=24), 0)
