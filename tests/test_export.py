"""scaling.export: HF and GGUF exports loaded back by real clients, logits against the JAX model.

Clients: transformers (PyTorch, CPU) reads the HF export; gguf-py's GGUFReader
reads the GGUF files, and a numpy forward with llama.cpp's conventions (rope
on adjacent pairs) runs them; llama-cpp-python, when installed (opt-in: `make
test-llamacpp`, marker llamacpp), runs the GGUF files itself.
"""

import json
import os
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip('gguf', reason="the export extra: pip install -e '.[export]'")
pytest.importorskip('safetensors', reason="the export extra: pip install -e '.[export]'")

from conftest import TEXT_FIXTURES, numpy_init, run_cli, run_cli_error
from configs import base
from model.transformer import Transformer
from scaling import export
from train import generate
from train import tokenizer as tok_lib

HF_TOL = 1e-4  # float32 in both: max |logit difference| (measured 1.5e-6 on the byte run).
# GGUF, max |logit difference| against the float32 JAX model (the byte run, through the numpy
# forward below: measured 1.5e-3 for f16 and 1.3e-2 for q8_0; without the q/k row permutation 0.16).
F16_TOL = 1e-2  # f16 weights.
Q8_TOL = 3e-2  # Q8_0 weights.
# llama.cpp itself, measured on the byte run: 1.0e-3 (f16) and 2.6e-2 (q8_0: llama.cpp quantizes
# the activations to Q8_0 as well).
LLAMA_F16_TOL = 1e-2
LLAMA_Q8_TOL = 6e-2
TEXT = ['It is a truth universally acknowledged, that a single', 'Émma café ☃, 12345 \n ok']


def _ids(tokenizer, seq_len):
  """A batch of token ids as train.generate feeds them: eos, then the text; (B, seq_len)."""
  rows = [([tokenizer.eos_id] + tokenizer.encode(t) * 4)[:seq_len] for t in TEXT]
  return np.asarray(rows, np.int64)


@pytest.fixture(scope='module')
def exported(byte_run, tmp_path_factory):
  """The byte run exported (scaling.export.export) as hf, gguf f16 and q8_0; its JAX model."""
  root = tmp_path_factory.mktemp('export')
  out = {'hf': export.export(byte_run, 'hf', str(root / 'hf')),
         'f16': export.export(byte_run, 'gguf', str(root / 'gguf'), 'f16'),
         'q8_0': export.export(byte_run, 'gguf', str(root / 'gguf'), 'q8_0')}
  config = generate.load_run_config(byte_run)
  _, model = generate.restore_model(byte_run, config)
  tokens = _ids(tok_lib.ByteTokenizer(), config.data.seq_len)
  return {'root': str(root), 'results': out, 'model': model, 'config': config, 'tokens': tokens,
          'logits': np.asarray(model(jnp.asarray(tokens)))}


def _hf_logits(folder, tokens):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  hf = transformers.LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
  with torch.no_grad():
    return hf(torch.tensor(tokens)).logits.numpy(), hf


def test_hf_export_gives_the_jax_logits_in_transformers(exported):
  folder = os.path.join(exported['root'], 'hf')
  assert sorted(os.listdir(folder)) == ['config.json', 'model.safetensors', 'tokenizer.json',
                                        'tokenizer_config.json']  # No temporary file is left.
  got, hf = _hf_logits(folder, exported['tokens'])
  ref = exported['logits']
  assert got.shape == ref.shape == (2, 32, 257)
  assert np.abs(got - ref).max() < HF_TOL
  n = sum(v.size for v in export.hf_tensors(exported['model']).values())
  assert n == exported['results']['hf']['params'] == 106_944  # Every parameter, once.
  c = hf.config
  assert (c.num_key_value_heads, c.num_attention_heads, c.vocab_size) == (2, 4, 257)
  assert not c.tie_word_embeddings and c.rms_norm_eps == 1e-6


def test_hf_byte_tokenizer_encodes_as_the_run(exported):
  transformers = pytest.importorskip('transformers')
  hf_tok = transformers.AutoTokenizer.from_pretrained(os.path.join(exported['root'], 'hf'))
  byte = tok_lib.ByteTokenizer()
  for text in TEXT + ['</s> is text here']:
    assert hf_tok.encode(text) == [byte.eos_id] + byte.encode(text)  # eos first, as generate.
    assert hf_tok.decode(byte.encode(text)) == text


def _bpe_case(tmp_path, tie):
  """A random-init Llama model (rope_theta 500, vocabulary padded past a BPE of 400) and its BPE."""
  docs = [(pathlib.Path(TEXT_FIXTURES) / n).read_text() for n in sorted(os.listdir(TEXT_FIXTURES))
          if n.endswith('.txt')]
  spm_path = str(tmp_path / 'bpe.model')
  with open(spm_path, 'wb') as f:
    f.write(tok_lib.train_bpe(docs, 400, name='bpe-test'))
  tokenizer = tok_lib.load_tokenizer(spm_path)
  c = base.get_config()
  c.model.update(dict(vocab_size=416, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, d_ff=96,
                      rope_theta=500.0, norm_eps=1e-5, tie_embeddings=tie, init_std=0.1))
  c.data.update(dict(seq_len=24, tokenizer='bpe'))
  return c, numpy_init(Transformer, c.model), tokenizer, spm_path


def test_hf_export_of_a_tied_bpe_model_with_its_sentencepiece_tokenizer(tmp_path):
  # rope_theta 500 (not HF's default), MQA (1 kv head), tied head, a padded vocabulary, eps 1e-5.
  c, model, tokenizer, spm_path = _bpe_case(tmp_path, tie=True)
  out = str(tmp_path / 'hf')
  os.makedirs(out)
  export.write_hf(model, c, tokenizer, spm_path, out)
  assert 'lm_head.weight' not in export.hf_tensors(model)
  tokens = _ids(tokenizer, 24)
  got, hf = _hf_logits(out, tokens)
  ref = np.asarray(model(jnp.asarray(tokens)))
  assert np.abs(got - ref).max() < HF_TOL
  assert hf.config.rope_parameters['rope_theta'] == 500.0 and hf.config.tie_word_embeddings
  transformers = pytest.importorskip('transformers')
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  for text in TEXT:
    assert hf_tok.encode(text) == [tokenizer.eos_id] + tokenizer.encode(text)
  with open(os.path.join(out, 'tokenizer.model'), 'rb') as f, open(spm_path, 'rb') as g:
    assert f.read() == g.read()


def _gguf_path(exported, kind):
  (name,) = exported['results'][kind]['files']  # model-<kind>.gguf
  return os.path.join(exported['root'], 'gguf', name)


def _reader(exported, kind):
  return gguf.GGUFReader(_gguf_path(exported, kind))


def _field(reader, key):
  return reader.fields[key].contents()


def test_gguf_metadata_is_what_llama_cpp_reads(exported):
  r = _reader(exported, 'f16')
  expect = {'general.architecture': 'llama', 'llama.context_length': 32,
            'llama.embedding_length': 64, 'llama.block_count': 2,
            'llama.feed_forward_length': 128, 'llama.attention.head_count': 4,
            'llama.attention.head_count_kv': 2, 'llama.rope.freq_base': 10000.0,
            'llama.rope.dimension_count': 16, 'llama.vocab_size': 257,
            'general.file_type': int(gguf.LlamaFileType.MOSTLY_F16),
            'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.eos_token_id': 256,
            'tokenizer.ggml.bos_token_id': 256, 'tokenizer.ggml.add_bos_token': True,
            'tokenizer.ggml.add_space_prefix': False}
  assert {k: _field(r, k) for k in expect} == expect
  assert _field(r, 'llama.attention.layer_norm_rms_epsilon') == pytest.approx(1e-6)
  tokens = _field(r, 'tokenizer.ggml.tokens')
  assert tokens[:2] == ['<0x00>', '<0x01>'] and tokens[255:] == ['<0xFF>', '</s>']
  types = _field(r, 'tokenizer.ggml.token_type')
  assert tokens[32] == '\u2581' and types[32] == gguf.TokenType.NORMAL  # The space, for llama.cpp.
  assert set(types[:32] + types[33:256]) == {int(gguf.TokenType.BYTE)}
  assert types[256] == gguf.TokenType.CONTROL
  assert _field(_reader(exported, 'q8_0'), 'general.file_type') == gguf.LlamaFileType.MOSTLY_Q8_0


def test_gguf_vocab_of_a_bpe_run_is_its_sentencepiece_model_padded(tmp_path):
  c, _, tokenizer, spm_path = _bpe_case(tmp_path, tie=False)
  tokens, scores, types = export.gguf_vocab(tokenizer, spm_path, c.model.vocab_size)
  assert len(tokens) == len(scores) == len(types) == 416
  assert tokens[:2] == ['<unk>', '</s>'] and tokens[2] == '<0x00>' and tokens[400] == '[PAD400]'
  TT = gguf.TokenType
  assert (types[0], types[1], types[2], types[257], types[415]) == (
      TT.UNKNOWN, TT.CONTROL, TT.BYTE, TT.BYTE, TT.UNUSED)
  assert types[258] == TT.NORMAL and scores[258] > scores[399]  # Merges in sentencepiece order.


def _tensors(reader):
  """name -> (the stored tensor dequantized to float32, shape (out, in); its GGML type name)."""
  return {t.name: (gguf.quants.dequantize(t.data, t.tensor_type).reshape(
      tuple(int(n) for n in reversed(t.shape))), t.tensor_type.name) for t in reader.tensors}


def test_gguf_f16_tensors_are_the_weights_rounded_to_f16(exported):
  want = export.gguf_tensors(exported['model'])
  got = _tensors(_reader(exported, 'f16'))
  assert list(got) == list(want)
  for name, w in want.items():
    g, kind = got[name]
    assert kind == ('F32' if w.ndim == 1 else 'F16'), name
    stored = w if w.ndim == 1 else w.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(g, stored, err_msg=name)
  assert got['blk.0.attn_k.weight'][0].shape == (32, 64)  # (G*K, D): GGUF dims {64, 32}.


def test_gguf_q8_0_dequantizes_within_its_error_bound(exported):
  want = export.gguf_tensors(exported['model'])
  got = _tensors(_reader(exported, 'q8_0'))
  n_quant = 0
  for name, w in want.items():
    g, kind = got[name]
    if w.ndim == 1:
      assert kind == 'F32'
      np.testing.assert_array_equal(g, w)
      continue
    assert kind == 'Q8_0', name
    n_quant += 1
    blocks = w.reshape(-1, 32)  # Q8_0: a scale d = amax/127 per 32 weights of a row.
    d = np.abs(blocks).max(axis=1, keepdims=True) / 127
    d16 = d.astype(np.float16).astype(np.float32)  # The scale is stored as f16.
    err = np.abs(g.reshape(-1, 32) - blocks)
    bound = d / 2 + 127 * np.abs(d - d16) + 1e-7  # Rounding of the code + the f16 scale.
    assert np.all(err <= bound), name
    assert err.max() > 0.25 * d.max()  # The weights were really rounded (the bound is not vacuous).
  assert n_quant == 2 + 2 * 7


def _rope_pairs(x_THK, theta):
  """llama.cpp's llama rope (adjacent pairs (x[2i], x[2i+1]), frequency theta^(-2i/K))."""
  T, _, K = x_THK.shape
  angle_TI = np.arange(T)[:, None] * theta ** (-np.arange(0, K, 2) / K)[None, :]
  cos, sin = np.cos(angle_TI)[:, None], np.sin(angle_TI)[:, None]
  x0, x1 = x_THK[..., 0::2], x_THK[..., 1::2]
  out = np.empty_like(x_THK)
  out[..., 0::2], out[..., 1::2] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
  return out


def _rms(x_TD, w_D, eps):
  return x_TD / np.sqrt(np.mean(x_TD * x_TD, -1, keepdims=True) + eps) * w_D


def _causal_attention(q_THK, k_TGK, v_TGK):
  """Causal softmax(q k / sqrt(K)) v; query head h reads kv head h // (H/G), as GQA does."""
  T, H, K = q_THK.shape
  k_THK, v_THK = (np.repeat(a, H // a.shape[1], axis=1) for a in (k_TGK, v_TGK))
  s_HST = np.einsum('shk,thk->hst', q_THK, k_THK) / np.sqrt(K)
  s_HST = np.where(np.tril(np.ones((T, T), bool))[None], s_HST, -np.inf)
  p_HST = np.exp(s_HST - s_HST.max(-1, keepdims=True))
  return np.einsum('hst,thk->shk', p_HST / p_HST.sum(-1, keepdims=True), v_THK).reshape(T, H * K)


def _gguf_forward(reader, tokens_T):
  """Logits (T, V) of one sequence through the GGUF tensors, in float64, as llama.cpp's graph."""
  t = {k: v.astype(np.float64) for k, (v, _) in _tensors(reader).items()}
  H, G, L, eps, theta = (_field(reader, f'llama.{k}') for k in (
      'attention.head_count', 'attention.head_count_kv', 'block_count',
      'attention.layer_norm_rms_epsilon', 'rope.freq_base'))
  x_TD = t['token_embd.weight'][tokens_T]
  T, D = x_TD.shape
  for i in range(L):
    w = {k.split('.')[2]: v for k, v in t.items() if k.startswith(f'blk.{i}.')}
    h_TD = _rms(x_TD, w['attn_norm'], eps)
    q_THK = _rope_pairs((h_TD @ w['attn_q'].T).reshape(T, H, D // H), theta)
    k_TGK = _rope_pairs((h_TD @ w['attn_k'].T).reshape(T, G, D // H), theta)
    v_TGK = (h_TD @ w['attn_v'].T).reshape(T, G, D // H)
    x_TD = x_TD + _causal_attention(q_THK, k_TGK, v_TGK) @ w['attn_output'].T
    h_TD = _rms(x_TD, w['ffn_norm'], eps)
    g_TF = h_TD @ w['ffn_gate'].T
    x_TD = x_TD + (g_TF / (1 + np.exp(-g_TF)) * (h_TD @ w['ffn_up'].T)) @ w['ffn_down'].T
  head_VD = t.get('output.weight', t['token_embd.weight'])  # llama.cpp: tied when output is absent.
  return _rms(x_TD, t['output_norm.weight'], eps) @ head_VD.T


@pytest.mark.parametrize('kind, tol', [('f16', F16_TOL), ('q8_0', Q8_TOL)])
def test_gguf_runs_with_llama_cpp_conventions_to_the_jax_logits(exported, kind, tol):
  # The rope on adjacent pairs only gives these logits if attn_q/attn_k rows were permuted.
  r = _reader(exported, kind)
  for row, tokens in enumerate(exported['tokens']):
    diff = np.abs(_gguf_forward(r, tokens) - exported['logits'][row]).max()
    assert diff < tol, (kind, diff)


def test_gguf_of_a_tied_bpe_model_runs_to_the_jax_logits(tmp_path):
  # rope_theta 500, one kv head, no output tensor (llama.cpp then uses token_embd), padded vocab.
  c, model, tokenizer, spm_path = _bpe_case(tmp_path, tie=True)
  fname, counts = export.write_gguf(model, c, tokenizer, spm_path, str(tmp_path), 'f16', 'bpe')
  assert counts == {'F32': 5, 'F16': 15}  # No output.weight.
  r = gguf.GGUFReader(os.path.join(tmp_path, fname))
  assert _field(r, 'llama.rope.freq_base') == 500.0 and _field(r, 'llama.vocab_size') == 416
  tokens = _ids(tokenizer, 24)
  ref = np.asarray(model(jnp.asarray(tokens)))
  for row, ids in enumerate(tokens):
    assert np.abs(_gguf_forward(r, ids) - ref[row]).max() < F16_TOL


def test_halves_to_pairs_moves_each_heads_second_half_next_to_its_first():
  w = np.arange(2 * 8)[:, None] * np.ones((1, 3))  # 2 heads of K = 8, row r holds r.
  assert export.halves_to_pairs(w, 2)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7,
                                                         8, 12, 9, 13, 10, 14, 11, 15]


def test_cli_prints_the_files_and_writes_no_temporary_file(byte_run, tmp_path, capsys):
  out = str(tmp_path / 'q8')
  status, stdout, _ = run_cli(export.main, ['--workdir', byte_run, '--format', 'gguf',
                                            '--gguf-type', 'q8_0', '--out', out], capsys)
  assert status == 0
  assert 'model-q8_0.gguf' in stdout and '16 Q8_0, 5 F32' in stdout
  assert os.listdir(out) == ['model-q8_0.gguf']


def _run_with(byte_run, tmp_path, **model):
  """A copy of the run's config.json (no checkpoint) with these model fields."""
  run = tmp_path / 'run'
  run.mkdir()
  with open(os.path.join(byte_run, 'config.json')) as f:
    config = json.load(f)
  config['model'].update(model)
  (run / 'config.json').write_text(json.dumps(config))
  return str(run)


@pytest.mark.parametrize('fields, key', [
    (dict(qk_norm=True), 'model.qk_norm=True'),
    (dict(moe_num_experts=4, moe_top_k=1), 'model.moe_num_experts=4'),
    (dict(attention='mla'), "model.attention='mla'"),
    (dict(parameterization='mup'), "model.parameterization='mup'"),
])
def test_a_model_the_formats_cannot_express_gets_one_error_naming_the_key(
    byte_run, tmp_path, capsys, fields, key):
  run = _run_with(byte_run, tmp_path, **fields)
  for fmt in ('hf', 'gguf'):
    err = run_cli_error(export.main, ['--workdir', run, '--format', fmt,
                                      '--out', str(tmp_path / 'o')], capsys)
    assert key in err and 'Llama' in err
  assert not os.path.exists(tmp_path / 'o')


def test_a_checkpoint_from_another_config_is_refused(byte_run, tmp_path, capsys):
  run = tmp_path / 'other'
  shutil.copytree(byte_run, run, ignore=shutil.ignore_patterns('events*'))
  config = json.loads((run / 'config.json').read_text())
  config['model']['d_ff'] = 96
  (run / 'config.json').write_text(json.dumps(config))
  err = run_cli_error(export.main, ['--workdir', str(run), '--format', 'hf',
                                    '--out', str(tmp_path / 'o')], capsys)
  assert 'another config' in err


@pytest.mark.parametrize('argv, match', [
    (['--format', 'onnx'], "--format 'onnx': must be one of hf, gguf"),
    (['--format', 'hf', '--gguf-type', 'q8_0'], '--gguf-type q8_0: only with --format gguf'),
    (['--format', 'gguf', '--gguf-type', 'q4_0'], "--gguf-type 'q4_0': must be one of f16, q8_0"),
])
def test_bad_arguments_get_one_line(byte_run, tmp_path, capsys, argv, match):
  err = run_cli_error(export.main, ['--workdir', byte_run, '--out', str(tmp_path), *argv], capsys)
  assert match in err


def test_out_that_is_a_file_is_refused(byte_run, tmp_path, capsys):
  path = tmp_path / 'f'
  path.write_text('x')
  err = run_cli_error(export.main, ['--workdir', byte_run, '--format', 'hf', '--out', str(path)],
                      capsys)
  assert 'is a file, not a folder' in err


@pytest.fixture
def llama(monkeypatch):
  """GGUF path -> llama_cpp.Llama on llama.cpp's plain CPU kernels; skips without llama_cpp."""
  llama_cpp = pytest.importorskip('llama_cpp', reason='llama-cpp-python: make test-llamacpp')
  # Off: llama.cpp's extra CPU weight buffers (AMX, repacked). On an AMX CPU, llama-cpp-python
  # 0.3.36's AMX Q8_0 matmul crashed (SIGSEGV in ggml_backend_amx_mul_mat); the Python API has
  # no switch for them, so the default model params are patched.
  default = llama_cpp.llama_cpp.llama_model_default_params

  def params():
    p = default()
    p.use_extra_bufts = False
    return p

  monkeypatch.setattr(llama_cpp.llama_cpp, 'llama_model_default_params', params)
  opened = []

  def load(path):
    opened.append(llama_cpp.Llama(model_path=path, logits_all=True, vocab_only=False, n_ctx=32,
                                  n_threads=1, verbose=False))
    return opened[-1]

  yield load
  for llm in opened:
    llm.close()


@pytest.mark.llamacpp
@pytest.mark.parametrize('kind, tol', [('f16', LLAMA_F16_TOL), ('q8_0', LLAMA_Q8_TOL)])
def test_llama_cpp_runs_the_gguf_to_the_jax_logits(exported, llama, kind, tol):
  llm = llama(_gguf_path(exported, kind))
  for row, tokens in enumerate(exported['tokens']):
    llm.reset()
    llm.eval(tokens.tolist())
    got = np.asarray(llm.scores[:len(tokens)], np.float32)
    diff = np.abs(got - exported['logits'][row]).max()
    print(f'llama.cpp {kind}: max |logit diff| {diff:.3g}')
    assert diff < tol, (kind, diff)


@pytest.mark.llamacpp
def test_llama_cpp_tokenizes_bytes_as_the_run(exported, llama):
  llm = llama(_gguf_path(exported, 'f16'))
  byte = tok_lib.ByteTokenizer()
  for text in TEXT:
    assert llm.tokenize(text.encode(), add_bos=True) == [byte.eos_id] + byte.encode(text)
    assert llm.detokenize(byte.encode(text)).decode() == text


@pytest.mark.llamacpp
def test_llama_cpp_tokenizes_a_bpe_run_as_its_sentencepiece_model(tmp_path, llama):
  c, model, tokenizer, spm_path = _bpe_case(tmp_path, tie=True)
  fname, _ = export.write_gguf(model, c, tokenizer, spm_path, str(tmp_path), 'f16', 'bpe')
  llm = llama(os.path.join(tmp_path, fname))
  for text in TEXT:
    assert llm.tokenize(text.encode(), add_bos=True) == [tokenizer.eos_id] + tokenizer.encode(text)
