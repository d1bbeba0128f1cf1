"""Pre-tokenized ArrayRecord input: data.source='arrayrecord'.

For corpora tokenized elsewhere (a cluster job, another tokenizer) and stored
as ArrayRecord files, local or on a bucket (`gs://...`; every path goes
through etils `epath`). data.paths names the training files and
data.val_paths the validation ones (comma-separated files or globs, in that
order); nothing is split, rebuilt or cached.

On-disk format, for each file FILE (any name; `.array_record` by convention):

  FILE             ArrayRecord, written with group_size:1. Each record holds
                   the token ids of one or more whole documents, or a piece of
                   a long one, as raw little-endian uint16 or uint32 bytes. The
                   records of the files, in path order, concatenated, are the
                   token stream; each document should end with the eos id (as
                   in train/tokens.py) so that windows see document breaks.
  FILE.meta.json   the sidecar: format ('chinchax-arrayrecord'), format_version
                   (1), dtype ('<u2' or '<u4'), vocab_size, tokenizer (name),
                   eos_id (-1 if none), max_token_id, n_records, n_tokens,
                   n_docs, n_bytes (UTF-8 bytes of the text the tokens encode,
                   eos excluded; 0 if unknown, which turns off bits per byte).
  FILE.index.npy   int64 tokens in each record: with a prefix sum, it maps a
                   token range to records without reading any. Optional: when
                   absent, each process builds it by reading every record once
                   (logged); `python -m train.arrayrecord index FILE...` writes it.

`write_arrayrecord` writes all three; the record file and index go to hidden
temporary names renamed into place, any old sidecar is removed first and the
new one is written last, so an interrupted write is never accepted.
`python -m train.arrayrecord export --from-token-file X.bin --out DIR` converts
token files (e.g. the cached built-in corpus's train.bin and val.bin) to it.

Checks when a split is opened (cheap: no record is decoded): every sidecar is
present and complete; max_token_id < its vocab_size <= model.vocab_size; the
ArrayRecord reader opens the file and counts the sidecar's n_records; the
index agrees with n_records and n_tokens; all files of both splits share one
tokenizer, vocabulary and dtype. Each record is checked again when read (its
byte length against the index, its ids against vocab_size). Every error names
the file.
"""

import argparse
import bisect
import concurrent.futures
import io
import json
import logging
import operator
import os
import sys
from typing import Iterable

import numpy as np
from array_record.python import array_record_data_source, array_record_module
from etils import epath

from train import files
from train import sources
from train import tokens as tokens_lib

log = logging.getLogger(__name__)

FORMAT = 'chinchax-arrayrecord'
FORMAT_VERSION = 1
META_SUFFIX = '.meta.json'
INDEX_SUFFIX = '.index.npy'
MAX_RECORD_TOKENS = 1 << 14  # Longer documents are cut into records of this many tokens.
_WRITER_OPTIONS = 'group_size:1'  # One record per chunk: random access reads one record.
_META_KEYS = ('format', 'format_version', 'dtype', 'vocab_size', 'tokenizer', 'eos_id',
              'max_token_id', 'n_records', 'n_tokens', 'n_docs', 'n_bytes')
_OPEN_THREADS = 16  # Files opened at once when a split is checked (bucket latency).


def _corrupt(path, why: str) -> ValueError:
  return ValueError(f'ArrayRecord file {path}: {why}. Rewrite it (and its {META_SUFFIX} sidecar) '
                    'with train.arrayrecord.write_arrayrecord or '
                    '`python -m train.arrayrecord export`.')


# ----------------------------------------------------------------- reading.


def read_meta(path) -> dict:
  """Reads and checks the sidecar FILE.meta.json of an ArrayRecord file."""
  mpath = str(path) + META_SUFFIX
  try:
    text = epath.Path(mpath).read_text()
  except FileNotFoundError as e:
    raise _corrupt(path, f'its sidecar {mpath} is missing (it gives the dtype, vocab_size and '
                   'tokenizer; see the format in train/arrayrecord.py)') from e
  except OSError as e:
    raise OSError(f'ArrayRecord file {path}: cannot read its sidecar {mpath}: {e}') from e
  try:
    meta = json.loads(text)
  except ValueError as e:
    raise _corrupt(path, f'its sidecar {mpath} is not JSON ({e})') from e
  missing = [k for k in _META_KEYS if k not in meta] if isinstance(meta, dict) else list(_META_KEYS)
  if missing:
    raise _corrupt(path, f'its sidecar {mpath} lacks {missing}')
  if (meta['format'], meta['format_version']) != (FORMAT, FORMAT_VERSION):
    raise _corrupt(path, f'its sidecar says format {meta["format"]!r} version '
                   f'{meta["format_version"]}, expected {FORMAT!r} version {FORMAT_VERSION}')
  if meta['dtype'] not in ('<u2', '<u4'):
    raise ValueError(f'ArrayRecord file {path}: dtype {meta["dtype"]!r} in {mpath} is not '
                     "'<u2' (little-endian uint16) or '<u4' (little-endian uint32).")
  for k in ('vocab_size', 'n_records', 'n_tokens', 'n_docs', 'n_bytes', 'max_token_id', 'eos_id'):
    if not isinstance(meta[k], int) or isinstance(meta[k], bool) or meta[k] < -1:
      raise _corrupt(path, f'{k}={meta[k]!r} in {mpath} is not a count')
  if np.dtype(meta['dtype']).itemsize == 2 and meta['vocab_size'] > 1 << 16:
    raise ValueError(f'ArrayRecord file {path}: vocab_size {meta["vocab_size"]} does not fit '
                     f'dtype {meta["dtype"]} (uint16 holds 65,536 ids); write it as <u4.')
  if not -1 <= meta['max_token_id'] < meta['vocab_size']:
    raise ValueError(f'ArrayRecord file {path}: holds token id {meta["max_token_id"]} >= its '
                     f'vocab_size {meta["vocab_size"]} (from {mpath}).')
  return meta


def _close(reader) -> None:
  try:
    reader.close()
  except RuntimeError:  # A failed reader raises its error again on close; already reported.
    pass


def _check_reader(path, n_records: int) -> None:
  """Opens the file with the native reader; raises unless it counts n_records."""
  try:
    reader = array_record_module.ArrayRecordReader(str(path), 'readahead_buffer_size:0')
  except (RuntimeError, ValueError, OSError) as e:
    raise _corrupt(path, f'cannot be opened as ArrayRecord ({e})') from e
  try:
    if not reader.ok():
      why = 'the reader rejects it: truncated, or not an ArrayRecord file'
      try:  # The reader keeps its error until the first read.
        reader.read([0])
      except (RuntimeError, ValueError, OSError) as e:
        why = str(e)
      raise _corrupt(path, f'cannot be opened as ArrayRecord ({why})')
    if reader.num_records() != n_records:
      raise _corrupt(path, f'holds {reader.num_records()} records, its sidecar says {n_records}')
  finally:
    _close(reader)


def build_index(path, meta: dict) -> np.ndarray:
  """Tokens in each record of an ArrayRecord file, by reading every record (int64)."""
  itemsize = np.dtype(meta['dtype']).itemsize
  reader = array_record_module.ArrayRecordReader(str(path))
  try:
    lengths = np.empty((meta['n_records'],), np.int64)
    for i in range(0, meta['n_records'], 4096):
      ids = list(range(i, min(i + 4096, meta['n_records'])))
      for j, rec in zip(ids, reader.read(ids)):
        if len(rec) % itemsize:
          raise _corrupt(path, f'record {j} holds {len(rec)} bytes, not a whole number of '
                         f'{meta["dtype"]} tokens')
        lengths[j] = len(rec) // itemsize
  except RuntimeError as e:
    raise _corrupt(path, f'cannot be read ({e})') from e
  finally:
    _close(reader)
  return lengths


def read_index(path, meta: dict) -> np.ndarray:
  """Tokens in each record (int64), from FILE.index.npy or else by reading the file."""
  ipath = epath.Path(str(path) + INDEX_SUFFIX)
  if ipath.exists():
    try:
      lengths = np.load(io.BytesIO(ipath.read_bytes()), allow_pickle=False)
    except (OSError, ValueError) as e:
      raise _corrupt(path, f'its index {ipath} is unreadable ({e}); delete it to rebuild it') from e
    where = f'its index {ipath}'
  else:
    log.info('ArrayRecord file %s has no index %s; reading every record to build it '
             '(`python -m train.arrayrecord index FILE` writes it once).', path, ipath)
    lengths = build_index(path, meta)
    where = 'its records'
  if lengths.ndim != 1 or lengths.dtype.kind not in 'iu' or (lengths.size and lengths.min() < 0):
    raise _corrupt(path, f'{where}: not a 1-D array of token counts')
  if lengths.size != meta['n_records'] or int(lengths.sum()) != meta['n_tokens']:
    raise _corrupt(path, f'{where} count {lengths.size} records of {int(lengths.sum())} tokens, '
                   f'its sidecar says {meta["n_records"]} records of {meta["n_tokens"]} tokens')
  return lengths.astype(np.int64)


class TokenStream:
  """The concatenated token ids of ArrayRecord files, sliceable like a 1-D array.

  `len(s)` is the total number of tokens and `s[i:j]` returns a read-only
  np.ndarray of dtype `s.dtype`, read from the one or few records the range
  touches (found with a prefix sum of the record lengths and a binary search).
  Picklable (for grain worker processes): readers are reopened lazily.
  """

  def __init__(self, paths: list[str], lengths: list[np.ndarray], dtype, vocab_size: int):
    self.paths, self.dtype, self.vocab_size = list(paths), np.dtype(dtype), int(vocab_size)
    self._n_records = [len(x) for x in lengths]
    self._file_starts = np.cumsum([0] + self._n_records)  # First global record of each file.
    self._lengths = np.concatenate(lengths) if lengths else np.zeros((0,), np.int64)
    self._starts = np.concatenate([[0], np.cumsum(self._lengths)]).astype(np.int64)
    self._source = self._last = None

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k not in ('_source', '_last')}

  def __setstate__(self, state):
    self.__dict__.update(state, _source=None, _last=None)

  def __len__(self) -> int:
    return int(self._starts[-1])

  @property
  def n_records(self) -> int:
    return len(self._lengths)

  def _data_source(self):
    if self._source is None:
      # 'FILE[0:N]' gives the data source the record counts, so it opens no file now; its
      # readers are tuned for random access (no readahead).
      self._source = array_record_data_source.ArrayRecordDataSource(
          [f'{p}[0:{n}]' for p, n in zip(self.paths, self._n_records)])
    return self._source

  def _where(self, r: int) -> tuple[str, int]:
    f = bisect.bisect_right(self._file_starts, r) - 1
    return self.paths[f], r - int(self._file_starts[f])

  def _check(self, r: int, data: bytes) -> np.ndarray:
    n = int(self._lengths[r])
    if len(data) != n * self.dtype.itemsize:
      path, i = self._where(r)
      raise _corrupt(path, f'record {i} holds {len(data)} bytes, its index says {n} tokens of '
                     f'{self.dtype.itemsize} bytes (a stale {INDEX_SUFFIX}? delete it to rebuild it)')
    tokens = np.frombuffer(data, self.dtype)
    if n and int(tokens.max()) >= self.vocab_size:
      path, i = self._where(r)
      raise ValueError(f'ArrayRecord file {path}: record {i} holds token id {int(tokens.max())} '
                       f'>= vocab_size {self.vocab_size} (its sidecar is wrong).')
    return tokens

  def _records(self, r0: int, r1: int) -> list[np.ndarray]:
    """Records r0..r1 (global, inclusive), decoded and checked."""
    last = self._last
    if r0 == r1 and last is not None and last[0] == r0:
      return [last[1]]
    rs = list(range(r0, r1 + 1))
    try:
      src = self._data_source()
      datas = [src[r] for r in rs] if len(rs) <= 2 else src.__getitems__(rs)
    except RuntimeError as e:
      path, i = self._where(r0)
      raise _corrupt(path, f'reading records from {i} failed ({e})') from e
    out = [self._check(r, d) for r, d in zip(rs, datas)]
    self._last = (r1, out[-1])
    return out

  def __getitem__(self, key):
    if not isinstance(key, slice):
      i = operator.index(key)
      i += len(self) if i < 0 else 0
      if not 0 <= i < len(self):
        raise IndexError(f'token {key} out of range for a stream of {len(self)} tokens')
      return self[i:i + 1][0]
    start, stop, step = key.indices(len(self))
    if step != 1:
      raise ValueError(f'TokenStream supports contiguous slices only (step 1), got step {step}.')
    if stop <= start:
      return np.zeros((0,), self.dtype)
    r0 = int(np.searchsorted(self._starts, start, 'right')) - 1
    r1 = int(np.searchsorted(self._starts, stop - 1, 'right')) - 1
    parts = self._records(r0, r1)
    tokens = parts[0] if len(parts) == 1 else np.concatenate(parts)
    offset = int(self._starts[r0])
    return tokens[start - offset:stop - offset]

  def __array__(self, dtype=None, copy=None):
    del copy
    return np.asarray(self[:], dtype=dtype)


def open_split(paths: str, key: str = 'data.paths', *,
               vocab_size: int | None = None) -> tokens_lib.TokenFile:
  """Opens ArrayRecord files as one TokenFile whose .tokens is a TokenStream.

  Args:
    paths: comma-separated files or globs, local or gs://.
    key: the config key they came from (named in errors).
    vocab_size: model.vocab_size; files written for a larger vocabulary are
      refused. None skips that check.

  Returns:
    TokenFile: path = `paths`, n_docs summed over files, n_bytes summed (0 if
    any file does not know its bytes), the files' vocab_size and tokenizer.
  """
  paths_found = [str(p) for p in sources.expand_paths(paths, key, 'arrayrecord', 'ArrayRecord file',
                                                         (META_SUFFIX, INDEX_SUFFIX))]
  metas = [read_meta(p) for p in paths_found]
  first = metas[0]
  for p, m in zip(paths_found, metas):
    for k in ('tokenizer', 'vocab_size', 'dtype'):
      if m[k] != first[k]:
        raise ValueError(f'{key}: ArrayRecord file {p} has {k}={m[k]!r} but {paths_found[0]} has '
                         f'{first[k]!r}; the files of a split must share one tokenizer.')
    if vocab_size is not None and m['vocab_size'] > vocab_size:
      raise ValueError(f'{key}: ArrayRecord file {p} was written for a vocabulary of '
                       f'{m["vocab_size"]} ids (tokenizer {m["tokenizer"]!r}), more than '
                       f'model.vocab_size={vocab_size}; raise model.vocab_size.')
  with concurrent.futures.ThreadPoolExecutor(min(_OPEN_THREADS, len(paths_found))) as pool:
    list(pool.map(lambda pm: _check_reader(pm[0], pm[1]['n_records']), zip(paths_found, metas)))
    lengths = list(pool.map(lambda pm: read_index(*pm), zip(paths_found, metas)))
  unknown = [p for p, m in zip(paths_found, metas) if m['n_bytes'] == 0 and m['n_tokens']]
  if unknown:
    log.warning('%s: %d file(s) do not record their UTF-8 bytes (n_bytes=0), e.g. %s; bits '
                'per byte is off for this split.', key, len(unknown), unknown[0])
  stream = TokenStream(paths_found, lengths, first['dtype'], first['vocab_size'])
  return tokens_lib.TokenFile(
      path=paths, tokens=stream, vocab_size=int(first['vocab_size']),
      n_bytes=0 if unknown else sum(m['n_bytes'] for m in metas),
      n_docs=sum(m['n_docs'] for m in metas), tokenizer_name=first['tokenizer'])


def prepare_splits(data_cfg, *, vocab_size: int) -> sources.Splits:
  """The train (data.paths) and validation (data.val_paths) splits of ArrayRecord files."""
  paths, val_paths = data_cfg.get('paths', ''), data_cfg.get('val_paths', '')
  if not paths.strip():
    raise ValueError("data.source='arrayrecord' needs data.paths: the training ArrayRecord files "
                     '(comma-separated files or globs, local or gs://).')
  if not val_paths.strip():
    raise ValueError("data.source='arrayrecord' needs data.val_paths: the validation ArrayRecord "
                     'files (comma-separated files or globs); they are not split off data.paths '
                     '(`python -m train.arrayrecord export --from-token-file train.bin val.bin '
                     '--out DIR` writes both from token files).')
  train = open_split(paths, 'data.paths', vocab_size=vocab_size)
  val = open_split(val_paths, 'data.val_paths', vocab_size=vocab_size)
  shared = sorted(set(train.tokens.paths) & set(val.tokens.paths))
  if shared:
    raise ValueError(f'data.paths and data.val_paths both name {shared}; validation data must be '
                     'held out.')
  if (train.tokenizer_name, train.vocab_size) != (val.tokenizer_name, val.vocab_size):
    raise ValueError(f'data.paths use tokenizer {train.tokenizer_name!r} ({train.vocab_size} ids) '
                     f'but data.val_paths use {val.tokenizer_name!r} ({val.vocab_size} ids).')
  summary = lambda f: dict(files=f.tokens.paths, n_records=f.tokens.n_records, n_docs=f.n_docs,
                           n_bytes=f.n_bytes, n_tokens=len(f.tokens))
  manifest = dict(source='arrayrecord', tokenizer=train.tokenizer_name,
                  splits=dict(train=summary(train), val=summary(val)))
  for s, f in (('train', train), ('val', val)):
    log.info('%s split: %d ArrayRecord files, %d records, %d documents, %d tokens (%s)', s,
             len(f.tokens.paths), f.tokens.n_records, f.n_docs, len(f.tokens), f.tokenizer_name)
  return sources.Splits(train, val, train.tokenizer_name, manifest)


# ----------------------------------------------------------------- writing.


def _write_meta(path: str, meta: dict) -> None:
  files.write_json_atomic(path + META_SUFFIX, meta, indent=1, sort_keys=True)


def _save_index(path: str, lengths: np.ndarray) -> None:
  with files.atomic_open(path + INDEX_SUFFIX, 'wb') as f:
    np.save(f, np.asarray(lengths, np.int64))


def write_arrayrecord(path, docs: Iterable, *, vocab_size: int, tokenizer_name: str,
                      n_bytes: int, eos_id: int = -1, docs_per_record: int = 1,
                      max_record_tokens: int = MAX_RECORD_TOKENS) -> tokens_lib.TokenFile:
  """Writes token-id documents to a local ArrayRecord file, its index and sidecar, atomically.

  Args:
    path: the local file to write (for a bucket, write locally and copy the
      file with its .meta.json and .index.npy).
    docs: 1-D integer arrays (or lists), one per document, each normally
      ending with eos_id; written in order.
    vocab_size: vocabulary size of the tokenizer; every id must be below it.
      Ids are stored as uint16 when it is at most 65,536, else uint32.
    tokenizer_name: recorded in the sidecar and checked across files.
    n_bytes: UTF-8 bytes of the text the documents encode, eos excluded (for
      bits per byte); 0 if unknown.
    eos_id: the end-of-document id (recorded only); -1 if none.
    docs_per_record: documents concatenated into each record.
    max_record_tokens: records longer than this many tokens are cut (so a
      window never decodes a whole book); 0 = never cut.

  Returns:
    The written file, opened with open_split.
  """
  path = os.fspath(path)
  if '://' in path:
    raise ValueError(f'write_arrayrecord writes local files only, got {path}; write locally and '
                     f'copy the file, its {META_SUFFIX} and {INDEX_SUFFIX} (e.g. gcloud storage cp).')
  if docs_per_record < 1 or max_record_tokens < 0 or vocab_size < 1 or n_bytes < 0:
    raise ValueError(f'write_arrayrecord: needs docs_per_record >= 1, max_record_tokens >= 0, '
                     f'vocab_size >= 1, n_bytes >= 0; got {docs_per_record}, {max_record_tokens}, '
                     f'{vocab_size}, {n_bytes}.')
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  dtype = tokens_lib.dtype_for_vocab(vocab_size)
  lengths, pending = [], []
  n_docs, max_id = 0, -1
  tmp = files.temp_path(path)
  writer = array_record_module.ArrayRecordWriter(tmp, _WRITER_OPTIONS)

  def flush():
    if not pending:
      return
    tokens = np.concatenate(pending)
    pending.clear()
    step = max_record_tokens or max(len(tokens), 1)
    for i in range(0, len(tokens), step):
      writer.write(tokens[i:i + step].tobytes())
      lengths.append(len(tokens[i:i + step]))

  try:
    for doc in docs:
      ids = np.asarray(doc)
      if ids.size and (ids.ndim != 1 or ids.dtype.kind not in 'iu'):
        raise ValueError(f'{path}: document {n_docs} is not a 1-D array of integer ids '
                         f'(shape {ids.shape}, dtype {ids.dtype}).')
      if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
          raise ValueError(f'{path}: document {n_docs} holds token id {lo if lo < 0 else hi} '
                           f'outside [0, {vocab_size}).')
        max_id = max(max_id, hi)
      pending.append(ids.reshape(-1).astype(dtype))
      n_docs += 1
      if len(pending) == docs_per_record:
        flush()
    flush()
    if not writer.ok():
      raise OSError(f'{path}: the ArrayRecord writer failed (disk full?); nothing was written.')
    writer.close()
    if os.path.exists(path + META_SUFFIX):  # The old sidecar must not vouch for the new file.
      os.unlink(path + META_SUFFIX)
    os.replace(tmp, path)
  except BaseException:
    writer.close()
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  _save_index(path, np.asarray(lengths, np.int64))
  meta = dict(format=FORMAT, format_version=FORMAT_VERSION, dtype=dtype.str,
              vocab_size=int(vocab_size), tokenizer=tokenizer_name, eos_id=int(eos_id),
              max_token_id=max_id, n_records=len(lengths), n_tokens=int(sum(lengths)),
              n_docs=n_docs, n_bytes=int(n_bytes))
  _write_meta(path, meta)
  return open_split(path, 'path')


def write_index(path) -> np.ndarray:
  """Builds FILE.index.npy of an ArrayRecord file that has a sidecar (local files)."""
  meta = read_meta(path)
  _check_reader(path, meta['n_records'])
  lengths = build_index(path, meta)
  if int(lengths.sum()) != meta['n_tokens']:
    raise _corrupt(path, f'its records hold {int(lengths.sum())} tokens, its sidecar says '
                   f'{meta["n_tokens"]}')
  _save_index(os.fspath(path), lengths)
  return lengths


def export_token_file(bin_path, out_path, *, docs_per_record: int = 1,
                      max_record_tokens: int = MAX_RECORD_TOKENS) -> tokens_lib.TokenFile:
  """Converts a token file (train/tokens.py) to an ArrayRecord file, one document per record.

  Documents are cut after each eos id, so the token stream is unchanged.
  """
  tf = tokens_lib.open_token_file(bin_path)
  eos = int(tokens_lib.read_meta(bin_path).get('eos_id', -1))
  tokens = np.asarray(tf.tokens)
  ends = (np.flatnonzero(tokens == eos) + 1).tolist() if eos >= 0 else []
  if not ends or ends[-1] != len(tokens):
    ends.append(len(tokens))
  starts = [0] + ends[:-1]
  docs = (tokens[a:b] for a, b in zip(starts, ends) if b > a)
  return write_arrayrecord(out_path, docs, vocab_size=tf.vocab_size,
                           tokenizer_name=tf.tokenizer_name, n_bytes=tf.n_bytes, eos_id=eos,
                           docs_per_record=docs_per_record, max_record_tokens=max_record_tokens)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog='python -m train.arrayrecord', description=__doc__.split('\n')[0])
  sub = p.add_subparsers(dest='cmd', required=True)
  e = sub.add_parser('export', help='convert token files (NAME.bin) to DIR/NAME.array_record')
  e.add_argument('--from-token-file', nargs='+', required=True, metavar='X.bin')
  e.add_argument('--out', required=True, metavar='DIR')
  e.add_argument('--docs-per-record', type=int, default=1)
  e.add_argument('--max-record-tokens', type=int, default=MAX_RECORD_TOKENS)
  i = sub.add_parser('index', help='write FILE.index.npy for ArrayRecord files that lack it')
  i.add_argument('files', nargs='+')
  args = p.parse_args(argv)
  if args.cmd == 'export':
    for src in args.from_token_file:
      name = os.path.splitext(os.path.basename(src))[0] + '.array_record'
      f = export_token_file(src, os.path.join(args.out, name), docs_per_record=args.docs_per_record,
                            max_record_tokens=args.max_record_tokens)
      print(f'{f.path}: {f.tokens.n_records} records, {f.n_docs} documents, {len(f.tokens)} tokens '
            f'({f.tokenizer_name}, vocab {f.vocab_size})')
  else:
    for path in args.files:
      lengths = write_index(path)
      print(f'{path}{INDEX_SUFFIX}: {len(lengths)} records, {int(lengths.sum())} tokens')
  return 0


if __name__ == '__main__':
  sys.exit(main())
