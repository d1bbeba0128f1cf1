"""The on-disk token file: documents tokenized once, read as a memmap.

A token file is two files side by side:

  NAME.bin   raw little-endian token ids, uint16 when the vocabulary has at
             most 65,536 entries, else uint32; the documents concatenated,
             each followed by the tokenizer's eos id.
  NAME.json  the sidecar: dtype, n_tokens, n_bytes (UTF-8 bytes of the text
             the tokens encode, eos excluded), n_docs, vocab_size, tokenizer
             name, sha256 and size of NAME.bin.

Both are written under temporary names and renamed into place (the .bin
first, the sidecar last), so an interrupted write never leaves a file that
`open_token_file` accepts, and concurrent writers of the same file cannot
corrupt each other (the last rename wins with a complete file).
"""

import dataclasses
import hashlib
import json
import math
import os
from typing import Iterable

import numpy as np
import tqdm

from train import files

FORMAT_VERSION = 1
# Files up to this size are checked against their sha256 when opened (about
# 0.5 s per GiB); larger ones are checked by size only.
_HASH_CHECK_MAX_BYTES = 1 << 30


@dataclasses.dataclass
class TokenFile:
  """A tokenized split, read-only.

  Attributes:
    path: the .bin file.
    tokens: read-only 1-D np.memmap of token ids (documents concatenated, each
      followed by the eos id).
    vocab_size: vocabulary size of the tokenizer that wrote the ids.
    n_bytes: UTF-8 bytes of the text the tokens encode (eos excluded).
    n_docs: number of documents.
    tokenizer_name: name of the tokenizer that wrote the ids.
  """
  path: str
  tokens: np.ndarray
  vocab_size: int
  n_bytes: int
  n_docs: int
  tokenizer_name: str = ''

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def bytes_per_token(self) -> float:
    """Mean UTF-8 bytes of text per token (eos tokens counted as tokens)."""
    return self.n_bytes / max(len(self.tokens), 1)


def bits_per_byte(nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
  """Converts a mean loss to bits per UTF-8 byte.

  Args:
    nats_per_token: mean cross-entropy over the tokens, in nats per token.
    n_tokens: number of tokens the mean was taken over.
    n_bytes: UTF-8 bytes of the text those tokens encode.

  Returns:
    total nats / ln 2 / total bytes, in bits per byte; comparable across
    tokenizers.
  """
  if n_bytes <= 0:
    raise ValueError(f'bits_per_byte needs n_bytes > 0, got {n_bytes}.')
  if n_tokens < 0:
    raise ValueError(f'bits_per_byte needs n_tokens >= 0, got {n_tokens}.')
  return float(nats_per_token) * n_tokens / n_bytes / math.log(2)


def dtype_for_vocab(vocab_size: int) -> np.dtype:
  """uint16 for vocabularies of at most 65,536 ids, else uint32."""
  return np.dtype('<u2') if vocab_size <= 1 << 16 else np.dtype('<u4')


def meta_path(path: str) -> str:
  """The sidecar JSON of a token file: NAME.bin -> NAME.json."""
  root, _ = os.path.splitext(path)
  return root + '.json'


def write_token_file(path, docs: Iterable[str], tokenizer, *,
                     desc: str = '', total: int | None = None) -> TokenFile:
  """Tokenizes documents into a token file, atomically.

  Args:
    path: the .bin path to write (its sidecar is NAME.json).
    docs: the documents, as str.
    tokenizer: anything with .encode(str) -> list[int], .eos_id, .vocab_size
      and .name (see train/tokenizer.py).
    desc: label of the progress bar.
    total: number of documents, for the progress bar (optional).

  Returns:
    The TokenFile, opened from disk.
  """
  path = os.fspath(path)
  dtype = dtype_for_vocab(tokenizer.vocab_size)
  if not 0 <= tokenizer.eos_id < tokenizer.vocab_size:
    raise ValueError(f'{tokenizer.name}: eos id {tokenizer.eos_id} outside [0, {tokenizer.vocab_size}).')
  eos = np.array([tokenizer.eos_id], dtype)
  n_tokens = n_bytes = n_docs = 0
  sha = hashlib.sha256()
  with files.atomic_open(path, 'wb') as f, tqdm.tqdm(
      docs, desc=desc or os.path.basename(path), total=total, unit='doc',
      mininterval=1.0, disable=None) as bar:
    for batch in _batched(bar, 64):
      for doc, ids in zip(batch, _encode_batch(tokenizer, batch)):
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
          raise ValueError(f'{tokenizer.name}: token id out of range [0, {tokenizer.vocab_size}).')
        chunk = np.concatenate([ids.astype(dtype), eos]).tobytes()
        f.write(chunk)
        sha.update(chunk)
        n_tokens += ids.size + 1
        n_bytes += len(doc.encode('utf-8'))
        n_docs += 1
    f.flush()
    os.fsync(f.fileno())
  meta = dict(format_version=FORMAT_VERSION, dtype=dtype.str, n_tokens=n_tokens,
              n_bytes=n_bytes, n_docs=n_docs, vocab_size=int(tokenizer.vocab_size),
              eos_id=int(tokenizer.eos_id), tokenizer=tokenizer.name,
              file_bytes=n_tokens * dtype.itemsize, sha256=sha.hexdigest())
  files.write_json_atomic(meta_path(path), meta, indent=1, sort_keys=True)
  return open_token_file(path)


def _batched(it, n: int):
  """Yields lists of up to n items of it."""
  batch = []
  for x in it:
    batch.append(x)
    if len(batch) == n:
      yield batch
      batch = []
  if batch:
    yield batch


def _encode_batch(tokenizer, docs: list[str]) -> list[list[int]]:
  """Encodes a batch with the tokenizer's encode_batch when it has one (threads)."""
  if hasattr(tokenizer, 'encode_batch'):
    return tokenizer.encode_batch(docs)
  return [tokenizer.encode(d) for d in docs]


def _corrupt(path: str, why: str) -> ValueError:
  return ValueError(f'Token file {path} is corrupt or incomplete ({why}); '
                    f'delete it and its sidecar {meta_path(path)} and rerun to rebuild it.')


def read_meta(path) -> dict:
  """Reads and checks the sidecar of a token file; ValueError names the file."""
  path = os.fspath(path)
  mpath = meta_path(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'Token file {path} does not exist.')
  if not os.path.exists(mpath):
    raise _corrupt(path, f'its sidecar {mpath} is missing')
  try:
    with open(mpath) as f:
      meta = json.load(f)
  except (OSError, ValueError) as e:
    raise _corrupt(path, f'its sidecar {mpath} is unreadable: {e}') from e
  need = ('format_version', 'dtype', 'n_tokens', 'n_bytes', 'n_docs', 'vocab_size',
          'tokenizer', 'file_bytes', 'sha256')
  missing = [k for k in need if k not in meta]
  if missing:
    raise _corrupt(path, f'sidecar {mpath} lacks {missing}')
  if meta['format_version'] != FORMAT_VERSION:
    raise _corrupt(path, f'format_version {meta["format_version"]} != {FORMAT_VERSION}')
  return meta


def open_token_file(path, *, verify: str = 'auto') -> TokenFile:
  """Opens a token file as a read-only memmap after checking it.

  Args:
    path: the .bin file.
    verify: 'auto' checks the sha256 of files up to 1 GiB and the size of all;
      'hash' always checks the sha256; 'size' checks the size only.

  Raises:
    ValueError naming the file (and saying to delete it) when the file is
    truncated, corrupt, or disagrees with its sidecar.
  """
  path = os.fspath(path)
  meta = read_meta(path)
  dtype = np.dtype(meta['dtype'])
  size = os.path.getsize(path)
  if size != meta['file_bytes'] or size != meta['n_tokens'] * dtype.itemsize:
    raise _corrupt(path, f'{size} bytes on disk, sidecar says {meta["n_tokens"]} tokens '
                   f'of {dtype.itemsize} bytes = {meta["file_bytes"]} bytes')
  if verify == 'hash' or (verify == 'auto' and size <= _HASH_CHECK_MAX_BYTES):
    if _sha256_file(path) != meta['sha256']:
      raise _corrupt(path, 'sha256 differs from its sidecar')
  if size == 0:
    tokens = np.zeros((0,), dtype)
  else:
    tokens = np.memmap(path, dtype=dtype, mode='r', shape=(meta['n_tokens'],))
  return TokenFile(path=path, tokens=tokens, vocab_size=int(meta['vocab_size']),
                   n_bytes=int(meta['n_bytes']), n_docs=int(meta['n_docs']),
                   tokenizer_name=meta['tokenizer'])


def _sha256_file(path: str, chunk_bytes: int = 1 << 24) -> str:
  sha = hashlib.sha256()
  with open(path, 'rb') as f:
    while block := f.read(chunk_bytes):
      sha.update(block)
  return sha.hexdigest()
