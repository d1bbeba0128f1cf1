"""Tests of train/peft.py: r·(d+k) numbers trained, a frozen base, merged = unmerged, bad input;
adapters, prefix and prompt tuning (counts, init, cached decoding); train.generate on PEFT runs."""

import os
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
from train import checkpoint as ckpt_lib
from train import config_check, generate, peft, post
from train.metrics import write_json_atomic
from train.tokenizer import ByteTokenizer

from conftest import numpy_init, run_cli

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
  eight = base.get_config().model
  eight.fp8 = True
  assert "model.fp8=True" in peft.base_errors(_post(), eight)[0]
  assert not peft.base_errors(_post(peft='adapter'), eight)

  mla = base.get_config().model
  mla.update(CFG, attention='mla', mla_kv_rank=16, mla_q_rank=0, mla_rope_dim=4)
  abstract = nnx.eval_shape(lambda: Transformer(mla, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"post.lora_targets='attn' names no layer"):
    peft.apply(abstract, _post(lora_targets='attn'), 0)
  with pytest.raises(ValueError, match=r'post.qlora_block=24 does not divide'):
    peft.apply(_model(), _post(peft='qlora', qlora_block=24), 0)


# ---- Added modules: bottleneck adapters, prefix and prompt tuning (train/peft_hooks.py).

ADDED = {'adapter': {'adapter_dim': 4}, 'prefix': {'prefix_len': 3}, 'prompt': {'prompt_len': 3}}


def _move_adapters(model, std: float, seed: int):
  """Add N(0, std) noise to every adapter number of `model` (the base is unchanged); -> model."""
  rng = np.random.default_rng(seed)
  nnx.update(model, jax.tree.map(lambda x: x + jnp.asarray(rng.normal(0, std, x.shape), x.dtype),
                                 nnx.state(model, peft.Adapter)))
  return model


def test_added_modules_train_exactly_their_closed_forms():
  # D 32, r 4, L 2: an adapter is 2·32·4 + 4 + 32 = 292 numbers, after attention and the MLP.
  model, p, sites = _adapted(peft='adapter', adapter_dim=4)
  assert [s.path for s in sites] == ['blocks/attn_adapter', 'blocks/mlp_adapter']
  assert _sizes(model, 'blocks/attn_adapter') == {'down_DR': (2, 32, 4), 'down_bias': (2, 4),
                                                  'up_RD': (2, 4, 32), 'up_bias': (2, 32)}
  assert peft.count(nnx.state(model, peft.Adapter)) == 2 * 2 * 292 == 1168
  assert [r['params'] == r['closed_form'] == 584 for r in peft.site_report(p, model, sites)] == [
      True, True]
  model, p, sites = _adapted(peft='adapter', adapter_dim=4, adapter_targets='mlp')  # Pfeiffer.
  assert peft.count(nnx.state(model, peft.Adapter)) == 584 and len(sites) == 1
  # Prefix: L·2·P·G·K = 2·2·3·2·8; prompt: P·D = 3·32.
  for kind, n, path, shapes in (
      ('prefix', 192, 'blocks/attn/prefix', {'k_PGK': (2, 3, 2, 8), 'v_PGK': (2, 3, 2, 8)}),
      ('prompt', 96, 'prompt', {'embed_PD': (3, 32)})):
    model, p, sites = _adapted(peft=kind, **ADDED[kind])
    assert _sizes(model, path) == shapes and model.n_virtual == 3
    opt = nnx.Optimizer(model, optax.adamw(1e-3), wrt=peft.Adapter)
    report = peft.trainable_report(p, model, opt, sites, total=1)
    assert report['params'] == report['params_closed_form'] == n, kind
    assert report[f'{kind}_len'] == 3 and 8 * n <= report['optimizer_state_bytes'] < 8 * n + 64


@pytest.mark.parametrize('kind', list(ADDED))
def test_added_modules_leave_the_base_without_gradient(kind):
  model, _, _ = _adapted(peft=kind, **ADDED[kind])
  adapters = {v.shape for v in jax.tree.leaves(nnx.state(model, peft.Adapter))}
  grads, state = _grad_fn(model, peft.Adapter)
  assert {g.shape for g in jax.tree.leaves(jax.eval_shape(grads, state))} == adapters
  assert not _dot_output_shapes(grads, state) & WEIGHT_GRADS


def test_added_modules_start_as_the_base(base_logits):
  """An adapter starts as the identity; a prefix and a prompt as the base reading P tokens first."""
  model, _, _ = _adapted(peft='adapter', adapter_dim=4)
  np.testing.assert_allclose(FORWARD(model, TOKENS), base_logits, atol=1e-6)
  prompt, _, _ = _adapted(peft='prompt', prompt_len=3)
  table = np.asarray(_model().embed_VD[...])
  rows = np.asarray(prompt.prompt.embed_PD[...])
  ids = [int(np.argmin(np.abs(table - row).sum(1))) for row in rows]
  np.testing.assert_array_equal(table[ids], prompt.prompt.embed_PD[...])  # Vocabulary rows.
  first = np.tile(np.asarray(ids, np.int32), (2, 1))
  read_first = FORWARD(_model(), np.concatenate([first, TOKENS], 1))[:, 3:]
  prefix, _, _ = _adapted(peft='prefix', prefix_len=3)  # The same P ids (seeded alike).
  for model in (prompt, prefix):
    np.testing.assert_allclose(FORWARD(model, TOKENS), read_first, atol=1e-5)
  assert float(jnp.max(jnp.abs(read_first - base_logits))) > 1e-2  # The P tokens do matter.


@pytest.mark.parametrize('kind', list(ADDED))
def test_cached_decode_equals_the_full_forward_with_added_modules(kind):
  model = _move_adapters(_adapted(peft=kind, **ADDED[kind])[0], 0.3, 2)
  full = FORWARD(model, TOKENS)
  P = model.n_virtual
  assert P == (0 if kind == 'adapter' else 3)

  @nnx.jit
  def in_two_calls(m, t):  # The 12 tokens as a prefill of 8 and a step of 4, after the prime.
    cache = decode.prime(m, decode.init_cache(m.cfg, 2, P + 12))
    a, cache = decode.forward_cached(m, t[:, :8], cache, jnp.zeros(2, jnp.int32))
    b, _ = decode.forward_cached(m, t[:, 8:], cache, jnp.full(2, 8, jnp.int32))
    return jnp.concatenate([a, b], axis=1)

  np.testing.assert_allclose(in_two_calls(model, TOKENS), full, atol=2e-5)
  assert float(jnp.max(jnp.abs(full - FORWARD(_model(), TOKENS)))) > 1e-2


def test_bad_added_module_settings_name_their_key():
  def errors(**kw):
    return '\n'.join(config_check.post_errors(_post(**kw)))
  for kind, key in (('adapter', 'adapter_dim'), ('prefix', 'prefix_len'), ('prompt', 'prompt_len')):
    assert errors(peft=kind) == ''
    assert f'post.{key}=0' in errors(peft=kind, **{key: 0})
    assert f'post.{key}=-3' in errors(peft=kind, **{key: -3})
  assert errors(peft='prompt', adapter_dim=0, lora_rank=0) == ''  # Another kind's keys are unused.
  assert "post.adapter_targets='ffn'" in errors(peft='adapter', adapter_targets='ffn')
  assert "post.adapter_targets=''" in errors(peft='adapter', adapter_targets='')
  mla = base.get_config().model
  mla.update(CFG, attention='mla', mla_kv_rank=16, mla_q_rank=0, mla_rope_dim=4)
  assert "post.peft='prefix'" in peft.base_errors(_post(peft='prefix'), mla)[0]
  assert not peft.base_errors(_post(peft='prompt'), mla)
  abstract = nnx.eval_shape(lambda: Transformer(mla, rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match=r"post.peft='prefix': the model has no grouped-query"):
    peft.apply(abstract, _post(peft='prefix'), 0)


def _greedy(model, prompt: list[int], n: int, eos: int) -> list[int]:
  """n greedy tokens of `model`'s full forward (no cache), one right-padded length throughout."""
  tokens = np.zeros((1, len(prompt) + n), np.int32)
  tokens[0, :len(prompt)] = prompt
  for i in range(len(prompt), len(prompt) + n):
    tokens[0, i] = int(jnp.argmax(FORWARD(model, tokens)[0, i - 1, :eos + 1]))
    if tokens[0, i] == eos:
      return tokens[0, len(prompt):i + 1].tolist()
  return tokens[0, len(prompt):].tolist()


@pytest.mark.parametrize('kind', ['lora', 'prefix'])
def test_generate_continues_a_peft_run_as_its_adapted_model(kind, tmp_path, capsys):
  """A post.peft run folder as train.post leaves it (config.json, a checkpoint of the adapted
  model and its optimizer): train.generate rebuilds, restores (LoRA: merges) and decodes it."""
  config = base.get_config()
  config.model.update(CFG, vocab_size=257)  # The byte tokenizer's 257 ids.
  config.data.source = 'files'
  config.post.update(base=str(tmp_path / 'base'), peft=kind, lora_rank=2, prefix_len=3)
  config = post.run_config(config.post, config)
  model = numpy_init(Transformer, config.model)
  plain = nnx.clone(model)
  opt, _ = peft.adapt(model, config)  # As train.post builds it.
  _move_adapters(model, 0.2, 3)
  run = str(tmp_path / kind)
  os.makedirs(run)
  write_json_atomic(os.path.join(run, 'config.json'), config.to_dict())
  checkpointer = ckpt_lib.Checkpointer(run, None)
  checkpointer.save(4, nnx.state((model, opt)), generate._NoData())
  checkpointer.close()

  argv = ['--workdir', run, '--prompt', '12+', '--max-new-tokens', '6']
  status, out, err = run_cli(generate.main, argv, capsys)
  assert status == 0 and f"post.peft='{kind}'" in err, err
  tok = ByteTokenizer()
  prompt = [tok.eos_id] + tok.encode('12+')
  new = _greedy(model, prompt, 6, tok.eos_id)  # The in-memory adapted model, unmerged, uncached.
  assert out.splitlines()[1] == '12+' + tok.decode(new[:-1] if new[-1] == tok.eos_id else new)
  assert new != _greedy(plain, prompt, 6, tok.eos_id)  # Not the base's.
