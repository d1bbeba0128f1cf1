"""KV-cache generation: cached logits equal the full forward; sampling; cache bytes; the CLI."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from conftest import numpy_init, run_cli, run_cli_error
from model import counts, decode
from model.transformer import Transformer, attention_errors
from scaling import memory
from train import generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# float32: cached and full logits differ only in summation order; measured <= 1e-5 on logits of
# magnitude ~6 (weights of std 0.3 make attention sharp, so a wrong mask or position shows).
ATOL = 5e-5

MLA = dict(attention='mla', mla_kv_rank=16, mla_rope_dim=4)
LAYOUTS = {
    'gqa': {},
    'mha': {'n_kv_heads': 4},
    'mla': MLA,
    'mla_q_latent': {**MLA, 'mla_q_rank': 12},
    # 1 dense block, 1 period (dense + MoE), 1 dense tail: all three stacks, sigmoid routing.
    'moe': dict(n_layers=4, moe_num_experts=4, moe_top_k=2, moe_granularity=2, moe_every=2,
                moe_first_dense=1, moe_routing='sigmoid'),
    'moe_every_layer': dict(n_layers=2, moe_num_experts=4, moe_top_k=2, moe_granularity=2),
}


def tiny(**overrides):
  m = base.get_config().model
  m.update(dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=64,
                init_std=0.3))
  m.update(overrides)
  return m


def _build(cfg, seed=0):
  """Transformer(cfg) in eval mode with numpy-drawn weights (conftest.numpy_init)."""
  model = numpy_init(Transformer, cfg, seed)
  model.eval()
  return model


def _full_and_cached(model, tokens_BT, lengths_B, shifts=(0,)):
  """The full forward's logits_BTV, then per shift the same from the cache and the final cache.

  Row b: prefill of its first lengths_B[b] tokens (right-padded), then its later tokens one per
  step at positions lengths_B[b] + i + shift (shift != 0 puts them at wrong positions).
  One compiled program: the shift is traced.
  """
  graphdef, state = nnx.split(model)
  B, T = tokens_BT.shape

  @jax.jit
  def run(state, tokens_BT, lengths_B, shift):
    def cached(state, *args):
      return decode.forward_cached(nnx.merge(graphdef, state), *args)

    full_BTV = nnx.merge(graphdef, state)(tokens_BT)
    t_T = jnp.arange(T)
    prompt_BT = jnp.where(t_T < lengths_B[:, None], tokens_BT, 0)
    cache = decode.init_cache(model.cfg, B, 2 * T + 1)
    pre_BTV, cache = cached(state, prompt_BT, cache, jnp.zeros((B,), jnp.int32))

    def step(carry, i):
      state, cache = carry
      pos_B = lengths_B + i
      tok_B = jnp.take_along_axis(tokens_BT, jnp.minimum(pos_B, T - 1)[:, None], axis=1)
      logits_B1V, cache = cached(state, tok_B, cache, pos_B + shift)
      return (state, cache), logits_B1V[:, 0]

    (_, cache), steps_NBV = jax.lax.scan(step, (state, cache), t_T)
    i_BT = jnp.clip(t_T[None] - lengths_B[:, None], 0, T - 1)
    stepped_BTV = jnp.take_along_axis(steps_NBV.transpose(1, 0, 2), i_BT[..., None], axis=1)
    in_prompt_BT1 = (t_T[None] < lengths_B[:, None])[..., None]
    return full_BTV, jnp.where(in_prompt_BT1, pre_BTV, stepped_BTV), cache

  runs = [run(state, tokens_BT, lengths_B, jnp.int32(s)) for s in shifts]
  return runs[0][0], [(cached, cache) for _, cached, cache in runs]


@pytest.mark.parametrize('layout', sorted(LAYOUTS))
def test_cached_decode_gives_the_full_forward_logits_at_every_position(layout):
  cfg = tiny(**LAYOUTS[layout])
  model = _build(cfg)
  tokens_BT = jax.random.randint(jax.random.key(1), (3, 12), 0, cfg.vocab_size)
  lengths_B = jnp.array([5, 12, 1], jnp.int32)  # Prompts of different lengths in one batch.
  # For GQA also one position off: the check can fail (the same tokens there do not match).
  full, [(cached, cache), *off] = _full_and_cached(model, tokens_BT, lengths_B,
                                                   shifts=(0, 1) if layout == 'gqa' else (0,))
  assert np.abs(full).max() > 2  # Large enough for a wrong mask or position to show.
  np.testing.assert_allclose(cached, full, atol=ATOL, rtol=0)
  assert decode.cache_bytes_per_token(cache) == counts.kv_cache_elements_per_token(cfg) * 4
  for shifted, _ in off:
    assert np.abs(np.asarray(shifted) - np.asarray(full)).max() > 100 * ATOL


@pytest.fixture(scope='module')
def generator():
  model = _build(tiny())
  return model, decode.Generator(model)


PROMPTS = [[3, 1, 4, 1, 5], [9], [2, 6, 5]]


def test_greedy_decode_is_deterministic_and_the_argmax_of_the_full_forward(generator):
  model, gen = generator
  new = gen.generate(PROMPTS, 8)
  assert new == gen.generate(PROMPTS, 8) and all(len(n) == 8 for n in new)
  # Each new token is the argmax of the full forward over the prompt and the tokens before it.
  seqs = [p + n for p, n in zip(PROMPTS, new)]
  padded = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
  for b, s in enumerate(seqs):
    padded[b, :len(s)] = s
  argmax_BT = np.asarray(jnp.argmax(nnx.jit(lambda m, t: m(t))(model, padded), axis=-1))
  for b, (p, n) in enumerate(zip(PROMPTS, new)):
    assert argmax_BT[b, len(p) - 1:len(p) + 7].tolist() == n


def test_top_p_to_zero_is_greedy_and_sampling_depends_on_the_seed(generator):
  _, gen = generator
  greedy = gen.generate(PROMPTS, 8)
  for seed in (0, 1):
    assert gen.generate(PROMPTS, 8, temperature=1.0, top_p=1e-6, seed=seed) == greedy
  hot = [gen.generate(PROMPTS, 8, temperature=2.0, seed=s) for s in (0, 0, 1)]
  assert hot[0] == hot[1] and hot[0] != hot[2]
  # eos stops a row (kept as its last token) and the later tokens are not returned.
  eos = greedy[0][2]
  stopped = gen.generate(PROMPTS, 8, eos_id=eos)
  assert stopped[0] == greedy[0][:3]


def test_top_p_samples_only_the_nucleus_in_proportion():
  logits_BV = jnp.tile(jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05])), (4000, 1))
  draw = jax.jit(decode.sample, static_argnames='greedy')
  key = jax.random.key(0)
  # p = 0.7: the smallest set of most likely tokens with mass >= 0.7 is {0, 1}.
  got = np.asarray(draw(logits_BV, key, 1.0, 0.7))
  assert set(got.tolist()) == {0, 1}
  assert abs(np.mean(got == 0) - 0.5 / 0.8) < 0.03  # 4 standard errors.
  assert set(np.asarray(draw(logits_BV, key, 1.0, 1.0)).tolist()) == {0, 1, 2, 3}
  assert set(np.asarray(draw(logits_BV, key, 1.0, 0.5)).tolist()) == {0}


def test_kv_cache_bytes_per_token_as_allocated_match_the_formulas():
  L, D, H, C, R = 4, 256, 8, 64, 16
  K = D // H
  shape = dict(n_layers=L, d_model=D, n_heads=H, d_ff=512)
  cases = {  # name: (model overrides, formula in elements per token)
      'MHA': ({'n_kv_heads': H}, 2 * L * H * K),
      'GQA': ({'n_kv_heads': 2}, 2 * L * 2 * K),
      'MLA': ({**MLA, 'mla_kv_rank': C, 'mla_rope_dim': R}, L * (C + R)),
  }
  rows = []
  for name, (overrides, elements) in cases.items():
    for dtype, nbytes in (('float32', 4), ('bfloat16', 2)):
      cfg = tiny(**shape, **overrides, compute_dtype=dtype)
      measured = decode.cache_bytes_per_token(decode.init_cache(cfg, batch=2, max_len=16))
      assert measured == elements * nbytes == counts.kv_cache_elements_per_token(cfg) * nbytes
      assert memory.kv_cache_bytes_per_token(cfg, nbytes) == measured
      rows.append(f'{name} {dtype}: {measured:g} B/token (formula {elements * nbytes})')
  print('\n'.join(rows))
  assert memory.kv_cache_bytes_per_token(memory.ModelShape.from_config(tiny(**shape)), 2) == (
      2 * L * 2 * K * 2)


def test_attention_errors_name_each_bad_key():
  assert attention_errors(tiny()) == [] and attention_errors(tiny(**MLA)) == []
  assert attention_errors(tiny(attention='mqa')) == [
      "model.attention='mqa': must be one of 'gqa', 'mla'"]
  bad = attention_errors(tiny(**{**MLA, 'mla_kv_rank': 0, 'mla_q_rank': -1, 'mla_rope_dim': 5,
                                 'qk_norm': True}))
  assert [e.split('=')[0] for e in bad] == ['model.mla_kv_rank', 'model.mla_q_rank',
                                            'model.mla_rope_dim', 'model.qk_norm']
  assert 'must be even' in bad[2]
  assert attention_errors(tiny(mla_kv_rank=0)) == []  # Unused under 'gqa'.


# ------------------------------------------------------------ python -m train.generate


def _cli(argv, capsys):
  """(exit status, stdout, stderr) of `python -m train.generate ARGV`, in this process."""
  return run_cli(generate.main, argv, capsys)


def test_generate_prints_a_completion_per_prompt(byte_run, capsys):
  prompts = ['Alice was beginning', 'It is a truth']
  status, out, err = _cli(['--workdir', byte_run, '--prompt', prompts[0], '--prompt', prompts[1],
                           '--max-new-tokens', '12', '--temperature', '0.8', '--top-p', '0.9',
                           '--seed', '3'], capsys)
  assert status == 0, err
  assert 'step 30' in err and 'tokenizer byte' in err
  lines = out.splitlines()
  heads = [i for i, line in enumerate(lines) if line.startswith('--- ')]
  assert [lines[i].split(':')[0] for i in heads] == ['--- 1/2', '--- 2/2']
  for i, p in zip(heads, prompts):
    n = int(lines[i].split(': ')[1].split()[0])
    assert 1 <= n <= 12 and lines[i + 1].startswith(p)


def _error_line(argv, capsys) -> str:
  """The one line that `python -m train.generate ARGV` prints before exiting with status 2."""
  return run_cli_error(generate.main, argv, capsys)


def test_generate_refuses_bad_input_with_one_line(byte_run, tmp_path, capsys):
  no_ckpt = tmp_path / 'no_ckpt'
  no_ckpt.mkdir()
  shutil.copy(os.path.join(byte_run, 'config.json'), no_ckpt)
  other = tmp_path / 'other'
  shutil.copytree(byte_run, other)
  with open(other / 'config.json') as f:
    config = json.load(f)
  config['model']['d_model'] = 96  # The run has 64.
  with open(other / 'config.json', 'w') as f:
    json.dump(config, f)
  cases = [
      (str(no_ckpt), 'x', 'has no checkpoints/ folder'),
      (str(other), 'x', 'cannot restore step 30 .* saved with another config'),
      (byte_run, '', '--prompt number 1 is empty'),
      (str(tmp_path / 'nowhere'), 'x', 'no such folder'),
  ]
  for workdir, prompt, match in cases:
    err = _error_line(['--workdir', workdir, '--prompt', prompt], capsys)
    assert re.search(match, err), err
  config['model']['d_model'] = 64
  config['data']['source'] = 'synthetic'
  with open(other / 'config.json', 'w') as f:
    json.dump(config, f)
  assert 'synthetic tokens' in _error_line(['--workdir', str(other), '--prompt', 'x'], capsys)
  err = _error_line(['--workdir', byte_run, '--prompt', 'x', '--top-p', '0'], capsys)
  assert '--top-p=0.0: must be in (0, 1]' in err


def test_generate_command_line_exits_2_without_traceback(byte_run):
  p = subprocess.run([sys.executable, '-m', 'train.generate', '--workdir', byte_run, '--prompt', ''],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == (
      'error: --prompt number 1 is empty: give text to continue')
  assert 'Traceback' not in p.stderr
