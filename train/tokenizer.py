"""Tokenizers: UTF-8 bytes (no training) and a sentencepiece BPE, cached.

Both give `.vocab_size`, `.eos_id`, `.name`, `.encode(str) -> list[int]` and
`.decode(list[int]) -> str`, with decode(encode(x)) == x for every str x.

- Byte: ids 0..255 are the UTF-8 bytes; id 256 is the end-of-document (eos)
  separator, so the vocabulary has 257 entries. decode drops eos.
- BPE: sentencepiece, trained to exactly the requested vocabulary size with
  byte fallback (any character outside the vocabulary becomes its UTF-8
  bytes, so nothing is <unk>), identity normalisation and no added or removed
  whitespace (exact round trip), digits split. Id 0 is <unk> (never produced),
  id 1 is eos, ids 2..257 are the 256 byte pieces.
"""

import hashlib
import io
import os
import re
from typing import Iterable, Iterator

import numpy as np

from train import files

# sentencepiece skips training lines longer than this many bytes, silently.
SPM_MAX_SENTENCE_BYTES = 4192
SPM_SPACE = '\u2581'  # sentencepiece's whitespace symbol '▁'.


class ByteTokenizer:
  """UTF-8 bytes as tokens, plus an eos id 256 (vocabulary 257)."""

  name = 'byte'
  vocab_size = 257
  eos_id = 256

  def encode(self, text: str) -> list[int]:
    return list(text.encode('utf-8'))

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [np.frombuffer(t.encode('utf-8'), np.uint8) for t in texts]

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode('utf-8', errors='replace')


class SentencePieceTokenizer:
  """A trained sentencepiece model (see module docstring)."""

  def __init__(self, model_proto: bytes, name: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.name = name
    self.vocab_size = self._sp.vocab_size()
    self.eos_id = self._sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(f'Tokenizer {name}: the sentencepiece model has no eos piece.')
    # '▁' in the text would decode as a space: encode it as its UTF-8 bytes.
    self._space_ids = [self._sp.piece_to_id(f'<0x{b:02X}>') for b in SPM_SPACE.encode()]
    self._threads = max(1, min(os.cpu_count() or 1, 8))

  def encode(self, text: str) -> list[int]:
    if SPM_SPACE not in text:
      return self._sp.encode(text)
    ids = []
    for i, part in enumerate(text.split(SPM_SPACE)):
      if i:
        ids.extend(self._space_ids)
      ids.extend(self._sp.encode(part))
    return ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    if any(SPM_SPACE in t for t in texts):
      return [self.encode(t) for t in texts]
    return self._sp.encode(texts, num_threads=self._threads)

  def decode(self, ids) -> str:
    return self._sp.decode([int(i) for i in ids])


def split_long_line(line: str, max_bytes: int = SPM_MAX_SENTENCE_BYTES) -> list[str]:
  """Cuts a line into pieces of at most max_bytes UTF-8 bytes, at spaces where possible."""
  if len(line.encode('utf-8')) <= max_bytes:
    return [line]
  pieces, cur, cur_bytes = [], [], 0
  for word in re.split(r'(?<= )', line):  # Keeps each space at the end of its word.
    for part in _hard_cut(word, max_bytes):
      n = len(part.encode('utf-8'))
      if cur and cur_bytes + n > max_bytes:
        pieces.append(''.join(cur))
        cur, cur_bytes = [], 0
      cur.append(part)
      cur_bytes += n
  if cur:
    pieces.append(''.join(cur))
  return pieces


def _hard_cut(word: str, max_bytes: int) -> list[str]:
  """Cuts a word with no spaces into pieces of at most max_bytes bytes."""
  if len(word.encode('utf-8')) <= max_bytes:
    return [word]
  out, cur, n = [], [], 0
  for ch in word:
    b = len(ch.encode('utf-8'))
    if n + b > max_bytes:
      out.append(''.join(cur))
      cur, n = [], 0
    cur.append(ch)
    n += b
  out.append(''.join(cur))
  return out


def training_sentences(docs: Iterable[str]) -> Iterator[str]:
  """The lines of the documents, long ones cut, as sentencepiece trains on them."""
  for doc in docs:
    for line in doc.split('\n'):
      if line.strip():
        yield from split_long_line(line)


def bpe_name(vocab_size: int, key: str) -> str:
  """Name of a BPE tokenizer: 'bpe-<vocab>-<hash8>' from a key of its training data."""
  return f'bpe-{vocab_size}-{hashlib.sha256(key.encode()).hexdigest()[:8]}'


def train_bpe(docs: Iterable[str], vocab_size: int, *, name: str, what: str = 'the corpus') -> bytes:
  """Trains a sentencepiece BPE model; returns the serialized model.

  Args:
    docs: training documents (str).
    vocab_size: exact vocabulary size, including <unk>, eos and 256 byte pieces.
    name: tokenizer name, for messages.
    what: description of the training text, for messages.

  Raises:
    ValueError naming model.vocab_size when the text cannot support the size.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  if vocab_size < 300:
    raise ValueError(f'model.vocab_size={vocab_size} is too small for data.tokenizer=\'bpe\': '
                     'it needs 256 byte pieces, <unk>, eos and the common characters; use '
                     '>= 300 (2048-8192 suit CPU models) or data.tokenizer=\'byte\'.')
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_sentences(docs), model_writer=writer,
        vocab_size=vocab_size, model_type='bpe', byte_fallback=True,
        normalization_rule_name='identity', add_dummy_prefix=False,
        remove_extra_whitespaces=False, split_digits=True,
        allow_whitespace_only_pieces=True, character_coverage=0.9995,
        max_sentence_length=SPM_MAX_SENTENCE_BYTES,
        unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
        num_threads=max(1, os.cpu_count() or 1), minloglevel=2)
  except RuntimeError as e:
    raise _vocab_error(e, vocab_size, name, what) from e
  return writer.getvalue()


def _vocab_error(e: Exception, vocab_size: int, name: str, what: str) -> Exception:
  msg = str(e)
  high = re.search(r'Vocabulary size too high \((\d+)\).*<= (\d+)', msg)
  if high:
    return ValueError(f'model.vocab_size={vocab_size} is larger than {what} supports for '
                      f'tokenizer {name}: at most {high.group(2)}. Lower model.vocab_size '
                      'or give more text.')
  low = re.search(r'smaller than required_chars\. (\d+) vs (\d+)', msg)
  if low:
    return ValueError(f'model.vocab_size={vocab_size} is smaller than the {low.group(2)} '
                      f'characters and special pieces that {what} needs for tokenizer {name}.')
  return RuntimeError(f'sentencepiece failed to train tokenizer {name} on {what}: {msg}')


def load_tokenizer(name_or_path: str, cache_dir: str = ''):
  """The loader for training code: 'byte', a .model path, or a cached BPE name.

  Args:
    name_or_path: 'byte'; a sentencepiece .model file; or a name such as
      'bpe-4096-1a2b3c4d' found under CACHE/tokenizers/.
    cache_dir: the data.cache_dir ('' = ~/.cache/chinchax).
  """
  if name_or_path == 'byte':
    return ByteTokenizer()
  path = name_or_path
  if not path.endswith('.model'):
    path = os.path.join(tokenizer_dir(cache_dir), name_or_path + '.model')
  if not os.path.exists(path):
    raise FileNotFoundError(f'Tokenizer {name_or_path!r}: no such file {path}.')
  return _load_spm(path)


def _load_spm(path: str) -> SentencePieceTokenizer:
  with open(path, 'rb') as f:
    proto = f.read()
  name = os.path.splitext(os.path.basename(path))[0]
  try:
    return SentencePieceTokenizer(proto, name)
  except (RuntimeError, OSError) as e:
    raise ValueError(f'Tokenizer file {path} is corrupt ({e}); delete it and rerun to retrain.') from e


def default_cache_dir(cache_dir: str = '') -> str:
  """data.cache_dir, or $XDG_CACHE_HOME/chinchax (~/.cache/chinchax) when empty."""
  if cache_dir:
    return os.path.expanduser(cache_dir)
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'chinchax')


def tokenizer_dir(cache_dir: str = '') -> str:
  return os.path.join(default_cache_dir(cache_dir), 'tokenizers')


def get_tokenizer(kind: str, vocab_size: int, *, cache_dir: str, key: str,
                  train_docs, what: str = 'the corpus'):
  """Returns the byte tokenizer, or the BPE tokenizer cached by key (trained if missing).

  Args:
    kind: data.tokenizer, 'byte' or 'bpe'.
    vocab_size: model.vocab_size (BPE trains to exactly this size).
    cache_dir: data.cache_dir.
    key: identifies the training text (manifest hash, split); with vocab_size
      and the algorithm it names the cached model.
    train_docs: zero-argument callable returning the training documents;
      called only when the model must be trained.
    what: description of the training text, for messages.
  """
  if kind == 'byte':
    return ByteTokenizer()
  if kind != 'bpe':
    raise ValueError(f"data.tokenizer={kind!r} is not one of 'byte', 'bpe'.")
  name = bpe_name(vocab_size, f'spm-bpe-v1|{vocab_size}|{key}')
  path = os.path.join(tokenizer_dir(cache_dir), name + '.model')
  if os.path.exists(path):
    return _load_spm(path)
  proto = train_bpe(train_docs(), vocab_size, name=name, what=what)
  with files.atomic_open(path, 'wb') as f:
    f.write(proto)
  return _load_spm(path)
