"""python -m scaling.export --workdir RUN --format hf|gguf [--gguf-type f16|q8_0] --out DIR [--json]

Writes a run's newest intact checkpoint (train.generate's loader) in the
formats that Llama runtimes load. Only a Llama-shaped run exports: RoPE,
RMSNorm, SwiGLU, grouped-query (or multi-head) attention, i.e. this model
with model.qk_norm=False, model.moe_num_experts=0, model.attention='gqa' and
model.parameterization='sp' (tied or untied head). Any other run gets one line
`error: ...` naming each key the format cannot express, exit status 2.

Hugging Face (--format hf), what `LlamaForCausalLM.from_pretrained(DIR)` reads:
  model.safetensors   float32 tensors, torch.nn.Linear layout (out, in):
                      q_proj (H*K, D), k_proj and v_proj (G*K, D), o_proj
                      (D, H*K), gate_proj and up_proj (F, D), down_proj (D, F),
                      embed_tokens (V, D), lm_head (V, D) (absent when tied),
                      the RMSNorm weights (D,) as they are: both this model and
                      HF's LlamaRMSNorm compute w * x / sqrt(mean(x^2) + eps).
  config.json         a LlamaConfig: sizes, rms_norm_eps = model.norm_eps,
                      rope_theta = model.rope_theta (also as rope_parameters),
                      max_position_embeddings = data.seq_len, vocab_size =
                      model.vocab_size, tie_word_embeddings, bos = eos = the
                      tokenizer's eos id (train.generate starts every prompt
                      with eos, which ends each training document).
  tokenizer           data.tokenizer='bpe': the run's sentencepiece model as
                      tokenizer.model, with a tokenizer_config.json for HF's
                      LlamaTokenizer; data.tokenizer='byte': a tokenizer.json
                      whose 256 byte tokens <0x00>..<0xFF> have ids 0..255 and
                      eos </s> id 256 (a BPE with no merges and byte fallback:
                      every UTF-8 byte is its own id, as in training). Both add
                      the eos id in front of a text, as train.generate does.
No permutation is needed for HF: model/transformer.py's rope rotates the two
halves of each head (x1 cos - x2 sin, x2 cos + x1 sin; frequency i of K/2 is
theta^(-2i/K)), which is HF Llama's rotate_half convention.

GGUF (--format gguf), what llama.cpp's `llama` architecture reads, written
with gguf-py (the llama.cpp project's writer) to DIR/model-<type>.gguf:
  tensors   token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
            ffn_norm, ffn_gate, ffn_up, ffn_down}, output_norm, output (absent
            when tied: llama.cpp then reuses token_embd). Each is the HF matrix
            (out, in) (GGUF lists dims innermost first: {in, out}); attn_q and
            attn_k rows are permuted within each head from halves to
            interleaved pairs (row 2i <- i, row 2i+1 <- K/2 + i), because
            llama.cpp's llama rope rotates adjacent pairs (x[2i], x[2i+1]),
            as the llama.cpp converter does for HF checkpoints.
  types     f16: every matrix float16; q8_0: every matrix Q8_0 (blocks of 32
            weights along a row: an f16 scale amax/127 and 32 int8 codes, 8.5
            bits per weight), a matrix whose rows are not a multiple of 32
            long stays f16 (as the llama.cpp converter does). Norm weights
            (1-D) are float32 in both.
  metadata  general.architecture=llama, llama.context_length (data.seq_len),
            embedding_length, block_count, feed_forward_length,
            attention.head_count, attention.head_count_kv, rope.freq_base,
            rope.dimension_count (K), attention.layer_norm_rms_epsilon,
            vocab_size, general.file_type; tokenizer.ggml.model='llama'
            (sentencepiece-style), tokens, scores, token_type, the eos id
            (also as bos, added in front of a prompt), no space prefix. The
            BPE run's pieces, scores and types come from its sentencepiece
            model; the byte run's are the 256 byte tokens and </s> (byte 32,
            the space, is the piece U+2581, the one llama.cpp looks up for a
            space, so a literal U+2581 in a prompt reads as a space). Rows of
            the embedding beyond the tokenizer (model.vocab_size larger) are
            unused tokens [PAD<id>].

Each file is written under a hidden temporary name in DIR and renamed when
complete (train.files), so DIR never holds half a file. The run's tokenizer
must load (train.generate.run_tokenizer): a run on synthetic tokens has none.
"""

import argparse
import os
import shutil
import sys

import gguf
import jax
import numpy as np
from absl import logging
from flax import nnx
from safetensors.numpy import save_file

from configs import cli
from configs.load import ConfigError
from model.counts import param_counts
from train import files, generate
from train import tokenizer as tok_lib

FORMATS = ('hf', 'gguf')
GGUF_TYPES = {'f16': (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
              'q8_0': (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
EOS_PIECE = '</s>'  # The eos piece of train/tokenizer.py's BPE models (and of the byte export).


def llama_errors(m) -> list[str]:
  """Why model config `m` is not Llama-shaped: one message per key; [] when it exports."""
  what = 'the Llama architecture (HF LlamaForCausalLM, GGUF llama) has'
  errors = []
  if m.qk_norm:
    errors.append(f'model.qk_norm=True: {what} no QK-norm; export needs model.qk_norm=False')
  if m.moe_num_experts:
    errors.append(f'model.moe_num_experts={m.moe_num_experts}: {what} no Mixture-of-Experts '
                  'layers; export needs a dense model (0)')
  if getattr(m, 'attention', 'gqa') != 'gqa':
    errors.append(f'model.attention={m.attention!r}: {what} no latent attention (MLA); export '
                  "needs model.attention='gqa'")
  if getattr(m, 'parameterization', 'sp') != 'sp':
    errors.append(f'model.parameterization={m.parameterization!r}: {what} no µP multipliers '
                  "(attention 1/K, logits 1/m); export needs model.parameterization='sp'")
  return errors


def _f32(param) -> np.ndarray:
  return np.asarray(param[...], np.float32)


def hf_tensors(model) -> dict[str, np.ndarray]:
  """HF Llama state dict of a Llama-shaped model: name -> float32 array, Linear layout (out, in)."""
  cfg = model.cfg
  D, H, G, L = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers
  K = D // H
  b, get = model.blocks, _f32  # The blocks' params are stacked: (L, ...).
  wq, wk, wv, wo = get(b.attn.wq_DHK), get(b.attn.wk_DGK), get(b.attn.wv_DGK), get(b.attn.wo_HKD)
  gate, up, down = get(b.mlp.gate_DF), get(b.mlp.up_DF), get(b.mlp.down_FD)
  attn_norm, mlp_norm = get(b.attn_norm.scale), get(b.mlp_norm.scale)
  out = {'model.embed_tokens.weight': get(model.embed_VD)}
  for i in range(L):
    p = f'model.layers.{i}.'
    out.update({
        p + 'input_layernorm.weight': attn_norm[i],
        p + 'self_attn.q_proj.weight': wq[i].reshape(D, H * K).T,
        p + 'self_attn.k_proj.weight': wk[i].reshape(D, G * K).T,
        p + 'self_attn.v_proj.weight': wv[i].reshape(D, G * K).T,
        p + 'self_attn.o_proj.weight': wo[i].reshape(H * K, D).T,
        p + 'post_attention_layernorm.weight': mlp_norm[i],
        p + 'mlp.gate_proj.weight': gate[i].T,
        p + 'mlp.up_proj.weight': up[i].T,
        p + 'mlp.down_proj.weight': down[i].T,
    })
  out['model.norm.weight'] = get(model.final_norm.scale)
  if model.head_DV is not None:
    out['lm_head.weight'] = get(model.head_DV).T
  n_model = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  if sum(v.size for v in out.values()) != n_model:  # A parameter this mapping does not know.
    raise ConfigError(f'the model has {n_model:,} parameters, the Llama tensors '
                      f'{sum(v.size for v in out.values()):,}: scaling.export.hf_tensors needs '
                      'a rule for the new parameter')
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_config(cfg, tokenizer) -> dict:
  """config.json of a LlamaConfig for run config `cfg` (see the module docstring)."""
  m = cfg.model
  return {
      'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
      'vocab_size': m.vocab_size, 'hidden_size': m.d_model, 'intermediate_size': m.d_ff,
      'num_hidden_layers': m.n_layers, 'num_attention_heads': m.n_heads,
      'num_key_value_heads': m.n_kv_heads, 'head_dim': m.d_model // m.n_heads,
      'hidden_act': 'silu', 'rms_norm_eps': m.norm_eps,
      'rope_theta': m.rope_theta,
      'rope_parameters': {'rope_type': 'default', 'rope_theta': m.rope_theta},
      'max_position_embeddings': cfg.data.seq_len, 'initializer_range': m.init_std,
      'tie_word_embeddings': bool(m.tie_embeddings), 'attention_bias': False,
      'mlp_bias': False, 'attention_dropout': 0.0, 'use_cache': True,
      'bos_token_id': tokenizer.eos_id, 'eos_token_id': tokenizer.eos_id,
      'torch_dtype': 'float32',
  }


def byte_tokenizer_json(tokenizer) -> dict:
  """tokenizer.json (HF tokenizers) of train.tokenizer.ByteTokenizer: byte b -> id b, eos 256."""
  vocab = {f'<0x{b:02X}>': b for b in range(256)}
  vocab[EOS_PIECE] = tokenizer.eos_id
  eos = {'SpecialToken': {'id': EOS_PIECE, 'type_id': 0}}
  seq = {name: {'Sequence': {'id': name, 'type_id': 0}} for name in 'AB'}
  return {
      'version': '1.0', 'truncation': None, 'padding': None,
      'added_tokens': [{'id': tokenizer.eos_id, 'content': EOS_PIECE, 'single_word': False,
                        'lstrip': False, 'rstrip': False, 'normalized': False, 'special': True}],
      'normalizer': None, 'pre_tokenizer': None,
      'post_processor': {'type': 'TemplateProcessing', 'single': [eos, seq['A']],
                         'pair': [eos, seq['A'], eos, seq['B']],
                         'special_tokens': {EOS_PIECE: {'id': EOS_PIECE, 'ids': [tokenizer.eos_id],
                                                        'tokens': [EOS_PIECE]}}},
      'decoder': {'type': 'Sequence', 'decoders': [{'type': 'ByteFallback'}, {'type': 'Fuse'}]},
      'model': {'type': 'BPE', 'dropout': None, 'unk_token': None,
                'continuing_subword_prefix': None, 'end_of_word_suffix': None, 'fuse_unk': False,
                'byte_fallback': True, 'ignore_merges': False, 'vocab': vocab, 'merges': []},
  }


def tokenizer_file(tokenizer, cache_dir: str) -> str | None:
  """The sentencepiece .model file of a BPE tokenizer (train.tokenizer's cache); None for bytes."""
  if tokenizer.name == 'byte':
    return None
  path = os.path.join(tok_lib.tokenizer_dir(cache_dir), tokenizer.name + '.model')
  if not os.path.isfile(path):
    raise ConfigError(f'tokenizer {tokenizer.name!r}: its sentencepiece model is not at {path}')
  return path


def _write_json(path: str, obj) -> None:
  files.write_json_atomic(path, obj, indent=1)


def _copy(src: str, dst: str) -> None:
  with open(src, 'rb') as f, files.atomic_open(dst, 'wb') as g:
    shutil.copyfileobj(f, g)


def write_hf(model, cfg, tokenizer, spm_path: str | None, out: str) -> list[str]:
  """The HF export of `model` (run config `cfg`) into folder `out`; -> the files written."""
  path = os.path.join(out, 'model.safetensors')
  tmp = files.temp_path(path)
  try:
    mode = os.stat(tmp).st_mode  # save_file recreates the file 0600; keep train.files' mode.
    save_file(hf_tensors(model), tmp, metadata={'format': 'pt'})
    os.chmod(tmp, mode)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  _write_json(os.path.join(out, 'config.json'), hf_config(cfg, tokenizer))
  common = {'add_bos_token': True, 'add_eos_token': False, 'bos_token': EOS_PIECE,
            'eos_token': EOS_PIECE, 'split_special_tokens': True,
            'model_max_length': cfg.data.seq_len}
  if spm_path is None:
    _write_json(os.path.join(out, 'tokenizer.json'), byte_tokenizer_json(tokenizer))
    _write_json(os.path.join(out, 'tokenizer_config.json'),
                {'tokenizer_class': 'PreTrainedTokenizerFast', **common})
    written = ['tokenizer.json']
  else:
    _copy(spm_path, os.path.join(out, 'tokenizer.model'))
    _write_json(os.path.join(out, 'tokenizer_config.json'),
                {'tokenizer_class': 'LlamaTokenizer', 'unk_token': '<unk>', 'legacy': False,
                 'add_prefix_space': False, **common})
    written = ['tokenizer.model']
  return ['model.safetensors', 'config.json', *written, 'tokenizer_config.json']


def halves_to_pairs(w_RD: np.ndarray, n_heads: int) -> np.ndarray:
  """Rows of q_proj/k_proj (heads x K, D) from rotate-half order to adjacent pairs, per head."""
  R, D = w_RD.shape
  K = R // n_heads
  return w_RD.reshape(n_heads, 2, K // 2, D).swapaxes(1, 2).reshape(R, D)


def gguf_tensors(model) -> dict[str, np.ndarray]:
  """GGUF llama tensors of a Llama-shaped model: name -> float32 (out, in) array (see docstring)."""
  cfg, hf = model.cfg, hf_tensors(model)
  T, N = gguf.MODEL_TENSOR, gguf.TENSOR_NAMES
  per_layer = {'input_layernorm': T.ATTN_NORM, 'self_attn.q_proj': T.ATTN_Q,
               'self_attn.k_proj': T.ATTN_K, 'self_attn.v_proj': T.ATTN_V,
               'self_attn.o_proj': T.ATTN_OUT, 'post_attention_layernorm': T.FFN_NORM,
               'mlp.gate_proj': T.FFN_GATE, 'mlp.up_proj': T.FFN_UP, 'mlp.down_proj': T.FFN_DOWN}
  out = {N[T.TOKEN_EMBD] + '.weight': hf['model.embed_tokens.weight']}
  for i in range(cfg.n_layers):
    for hf_name, t in per_layer.items():
      w = hf[f'model.layers.{i}.{hf_name}.weight']
      if t == T.ATTN_Q:
        w = halves_to_pairs(w, cfg.n_heads)
      elif t == T.ATTN_K:
        w = halves_to_pairs(w, cfg.n_kv_heads)
      out[N[t].format(bid=i) + '.weight'] = w
  out[N[T.OUTPUT_NORM] + '.weight'] = hf['model.norm.weight']
  if 'lm_head.weight' in hf:
    out[N[T.OUTPUT] + '.weight'] = hf['lm_head.weight']
  return out


def gguf_vocab(tokenizer, spm_path: str | None, vocab_size: int):
  """(tokens, scores, token types) of the run's tokenizer, padded to vocab_size rows."""
  TT = gguf.TokenType
  if spm_path is None:
    tokens = [f'<0x{b:02X}>' for b in range(256)] + [EOS_PIECE]
    scores, types = [0.0] * 257, [TT.BYTE] * 256 + [TT.CONTROL]
    # llama.cpp's sentencepiece-style tokenizer turns every space into U+2581 before the lookup
    # (and back when decoding): byte 32 must be that piece, or a space would become 3 bytes.
    tokens[32], types[32] = tok_lib.SPM_SPACE, TT.NORMAL
  else:
    import sentencepiece as spm  # Local: BPE runs only (as train/tokenizer.py).
    sp = spm.SentencePieceProcessor(model_file=spm_path)
    tokens = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    scores = [sp.get_score(i) for i in range(sp.vocab_size())]
    kinds = ((sp.is_unknown, TT.UNKNOWN), (sp.is_control, TT.CONTROL),
             (sp.is_unused, TT.UNUSED), (sp.is_byte, TT.BYTE))
    types = [next((t for is_kind, t in kinds if is_kind(i)), TT.NORMAL)
             for i in range(sp.vocab_size())]
  pad = range(len(tokens), vocab_size)
  return (tokens + [f'[PAD{i}]' for i in pad], scores + [-1000.0] * len(pad),
          types + [TT.UNUSED] * len(pad))


def _gguf_metadata(w: gguf.GGUFWriter, cfg, name: str, file_type) -> None:
  m = cfg.model
  w.add_name(name)
  w.add_context_length(cfg.data.seq_len)
  w.add_embedding_length(m.d_model)
  w.add_block_count(m.n_layers)
  w.add_feed_forward_length(m.d_ff)
  w.add_head_count(m.n_heads)
  w.add_head_count_kv(m.n_kv_heads)
  w.add_rope_freq_base(m.rope_theta)
  w.add_rope_dimension_count(m.d_model // m.n_heads)
  w.add_layer_norm_rms_eps(m.norm_eps)
  w.add_vocab_size(m.vocab_size)
  w.add_file_type(file_type)


def _gguf_tokenizer(w: gguf.GGUFWriter, tokenizer, spm_path: str | None, vocab_size: int) -> None:
  tokens, scores, types = gguf_vocab(tokenizer, spm_path, vocab_size)
  w.add_tokenizer_model('llama')
  w.add_token_list(tokens)
  w.add_token_scores(scores)
  w.add_token_types(types)
  w.add_eos_token_id(tokenizer.eos_id)
  w.add_bos_token_id(tokenizer.eos_id)  # A prompt starts a document: after eos, as in training.
  w.add_add_bos_token(True)
  w.add_add_eos_token(False)
  w.add_add_space_prefix(False)


def gguf_encode(w_RC: np.ndarray, gguf_type: str):
  """(data to store, GGML type) of one tensor: 1-D F32; matrices F16 or Q8_0 (F16 if rows % 32)."""
  if w_RC.ndim == 1:
    return w_RC.astype(np.float32), gguf.GGMLQuantizationType.F32
  qtype = GGUF_TYPES[gguf_type][0]
  block = gguf.GGML_QUANT_SIZES[qtype][0]
  if qtype == gguf.GGMLQuantizationType.F16 or w_RC.shape[-1] % block:
    return w_RC.astype(np.float16), gguf.GGMLQuantizationType.F16
  return gguf.quants.quantize(w_RC, qtype), qtype


def write_gguf(model, cfg, tokenizer, spm_path: str | None, out: str, gguf_type: str,
               name: str) -> tuple[str, dict[str, int]]:
  """DIR/model-<gguf_type>.gguf of `model`; -> (its file name, tensors per GGML type name)."""
  fname = f'model-{gguf_type}.gguf'
  path = os.path.join(out, fname)
  tmp = files.temp_path(path)
  counts = {}
  try:
    w = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _gguf_metadata(w, cfg, name, GGUF_TYPES[gguf_type][1])
    if gguf_type != 'f16':
      w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _gguf_tokenizer(w, tokenizer, spm_path, cfg.model.vocab_size)
    for tname, t in gguf_tensors(model).items():
      data, qtype = gguf_encode(t, gguf_type)
      w.add_tensor(tname, data, raw_dtype=qtype)
      counts[qtype.name] = counts.get(qtype.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return fname, counts


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m scaling.export',
                              description="Export a run's newest checkpoint for Llama runtimes.")
  p.add_argument('--workdir', required=True, help='run folder: config.json, checkpoints/')
  p.add_argument('--format', required=True, help='hf (safetensors + LlamaConfig) or gguf')
  p.add_argument('--gguf-type', help='gguf only: f16 (the default) or q8_0')
  p.add_argument('--out', required=True, help='folder to write (created if missing)')
  cli.add_json_argument(p)
  return p


def _check_args(args) -> None:
  if args.format not in FORMATS:
    raise ConfigError(f'--format {args.format!r}: must be one of {", ".join(FORMATS)}')
  if args.gguf_type is not None and args.format != 'gguf':
    raise ConfigError(f'--gguf-type {args.gguf_type}: only with --format gguf')
  if args.gguf_type is not None and args.gguf_type not in GGUF_TYPES:
    raise ConfigError(f'--gguf-type {args.gguf_type!r}: must be one of {", ".join(GGUF_TYPES)}')
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise ConfigError(f'--out {args.out!r} is a file, not a folder')


def export(workdir: str, fmt: str, out: str, gguf_type: str = 'f16') -> dict:
  """Export the run (see the module docstring); -> a summary: files and their bytes, counts."""
  config = generate.load_run_config(workdir)
  errors = llama_errors(config.model)
  if errors:
    raise ConfigError(f'{workdir} cannot be exported as Llama: ' + '; '.join(errors))
  tokenizer = generate.run_tokenizer(workdir, config)
  spm_path = tokenizer_file(tokenizer, config.data.cache_dir)
  step, model = generate.restore_model(workdir, config)
  os.makedirs(out, exist_ok=True)
  result = {'run': workdir, 'step': step, 'format': fmt, 'tokenizer': tokenizer.name,
            'params': param_counts(config.model).total}
  if fmt == 'hf':
    written = write_hf(model, config, tokenizer, spm_path, out)
  else:
    name = os.path.basename(os.path.normpath(workdir))
    fname, result['tensor_types'] = write_gguf(model, config, tokenizer, spm_path, out,
                                               gguf_type, name)
    written, result['gguf_type'] = [fname], gguf_type
  result['files'] = {f: os.path.getsize(os.path.join(out, f)) for f in written}
  return result


def format_result(r: dict) -> str:
  """The files written, with bytes and bytes per parameter of the weights file."""
  what = r['format'] + (f' {r["gguf_type"]}' if 'gguf_type' in r else '')
  rows = [(f'{r["run"]}: step {r["step"]}, {r["params"]:,} params, '
           f'tokenizer {r["tokenizer"]} -> {what}')]
  for f, n in r['files'].items():
    per = f' ({n / r["params"]:.3f} B/param)' if f.endswith(('.safetensors', '.gguf')) else ''
    rows.append(f'  {f:24} {n:>12,} bytes{per}')
  if 'tensor_types' in r:
    rows.append('  tensors: ' + ', '.join(f'{n} {t}' for t, n in r['tensor_types'].items()))
  return '\n'.join(rows)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  _check_args(args)
  result = export(args.workdir, args.format, args.out, args.gguf_type or 'f16')
  cli.emit(result, format_result(result), args.json)
  print(f'wrote {args.out}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  cli.run_argparse(main)
