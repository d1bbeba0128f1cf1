"""Tests of train/arrayrecord.py: round trip, splits for the sampler, bad input."""

import json
import os
import pickle

import ml_collections
import numpy as np
import pytest

from configs import base
from train import arrayrecord as ar
from train import config_check
from train import data as data_lib
from train import tokens as tokens_lib

VOCAB = 300
EOS = 299


def _docs(seed: int, n: int, max_len: int = 60) -> list[np.ndarray]:
  """n random documents of 1..max_len ids, each ending with EOS."""
  rng = np.random.default_rng(seed)
  return [np.append(rng.integers(0, EOS, rng.integers(0, max_len)), EOS) for _ in range(n)]


def _write(path, docs, **kw) -> tokens_lib.TokenFile:
  kw = dict(dict(vocab_size=VOCAB, tokenizer_name='test-tok', n_bytes=1000, eos_id=EOS), **kw)
  return ar.write_arrayrecord(path, docs, **kw)


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(dict(source='arrayrecord', paths='', val_paths='',
                                             tokenizer='byte', cache_dir='', val_fraction=0.02), **kw))


@pytest.fixture()
def shards(tmp_path):
  """Three train shards (one with docs cut into 7-token records) and one val file."""
  docs = [_docs(i, 40) for i in range(3)]
  for i, d in enumerate(docs):
    _write(tmp_path / f'train-{i}.array_record', d, docs_per_record=1 + i,
           max_record_tokens=7 if i == 1 else ar.MAX_RECORD_TOKENS)
  _write(tmp_path / 'val.array_record', _docs(9, 30))
  stream = np.concatenate([np.concatenate(d) for d in docs])
  return tmp_path, stream


def test_round_trip_slices_cross_records_and_files(shards):
  tmp_path, stream = shards
  f = ar.open_split(f'{tmp_path}/train-*.array_record', vocab_size=VOCAB)
  s = f.tokens
  assert len(s) == len(f) == len(stream) and s.dtype == np.uint16
  assert s.n_records > 40 + 20 + 14  # File 1's records are cut at 7 tokens.
  assert f.n_docs == 120 and f.n_bytes == 3000 and f.tokenizer_name == 'test-tok'
  np.testing.assert_array_equal(s[:], stream)
  rng = np.random.default_rng(0)
  cuts = [int(x) for x in s._starts[1:-1]]  # pylint: disable=protected-access
  for a in cuts[::5] + list(rng.integers(0, len(stream), 200)):
    for width in (1, 2, 9, 129, 400):
      lo = max(0, a - width // 2)
      np.testing.assert_array_equal(s[lo:lo + width], stream[lo:lo + width])
  n0 = int(ar.read_meta(s.paths[0])['n_tokens'])  # A slice spanning the first file boundary.
  np.testing.assert_array_equal(s[n0 - 3:n0 + 3], stream[n0 - 3:n0 + 3])
  assert s[-1] == stream[-1] and s[5] == stream[5] and len(s[10:10]) == 0
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(s))[100:300], stream[100:300])


def test_index_is_rebuilt_when_missing_and_cli_writes_it(shards):
  tmp_path, _ = shards
  path = str(tmp_path / 'train-1.array_record')
  want = np.load(path + ar.INDEX_SUFFIX)
  os.unlink(path + ar.INDEX_SUFFIX)
  f = ar.open_split(path)
  np.testing.assert_array_equal(f.tokens[:], np.concatenate(_docs(1, 40)))
  np.testing.assert_array_equal(f.tokens._lengths, want)  # pylint: disable=protected-access
  assert ar.main(['index', path]) == 0
  np.testing.assert_array_equal(np.load(path + ar.INDEX_SUFFIX), want)


def test_prepare_splits_feeds_the_window_sampler(shards):
  tmp_path, stream = shards
  cfg = _cfg(paths=f'{tmp_path}/train-0.array_record,{tmp_path}/train-[12].array_record',
             val_paths=str(tmp_path / 'val.array_record'))
  s = ar.prepare_splits(cfg, vocab_size=512)
  assert s.tokenizer_name == 'test-tok' and s.manifest['source'] == 'arrayrecord'
  assert s.manifest['splits']['train']['n_tokens'] == len(stream)
  seq_len = 16
  w = data_lib.Windows(s.train.tokens, seq_len)
  assert len(w) == (len(stream) - 1) // seq_len
  for i in (0, 1, len(w) // 2, len(w) - 1):
    np.testing.assert_array_equal(w[i], stream[i * seq_len:(i + 1) * seq_len + 1])
    assert w[i].dtype == np.int32
  assert len(data_lib.Windows(s.val.tokens, seq_len)) > 0
  batches = data_lib.eval_batches(s.val, seq_len, 4, 2, seed=0)
  assert batches[0]['inputs'].shape == (4, seq_len)


def test_export_token_file_keeps_the_stream(tmp_path):
  class Tok:
    name, vocab_size, eos_id = 'byte', 257, 256
    encode = staticmethod(lambda s: list(s.encode()))
  texts = ['first doc', 'second, longer document ' * 50, 'é']
  tf = tokens_lib.write_token_file(tmp_path / 'train.bin', texts, Tok())
  assert ar.main(['export', '--from-token-file', str(tmp_path / 'train.bin'), '--out',
                  str(tmp_path / 'out'), '--max-record-tokens', '100']) == 0
  f = ar.open_split(str(tmp_path / 'out' / 'train.array_record'), vocab_size=257)
  np.testing.assert_array_equal(f.tokens[:], np.asarray(tf.tokens))
  assert (f.n_docs, f.n_bytes, f.vocab_size, f.tokenizer_name) == (3, tf.n_bytes, 257, 'byte')
  assert f.tokens.n_records > 3


# ------------------------------------------------------------ bad input.


def test_missing_val_paths_and_missing_files(shards):
  tmp_path, _ = shards
  with pytest.raises(ValueError, match='data.val_paths'):
    ar.prepare_splits(_cfg(paths=str(tmp_path / 'train-0.array_record')), vocab_size=VOCAB)
  with pytest.raises(ValueError, match='data.paths'):
    ar.prepare_splits(_cfg(val_paths=str(tmp_path / 'val.array_record')), vocab_size=VOCAB)
  with pytest.raises(FileNotFoundError, match='nope.array_record'):
    ar.open_split(str(tmp_path / 'nope.array_record'), 'data.val_paths')
  with pytest.raises(ValueError, match='is a folder'):
    ar.open_split(str(tmp_path), 'data.paths')
  with pytest.raises(FileNotFoundError, match='matches no'):
    ar.open_split(f'{tmp_path}/zzz-*', 'data.paths')
  p = str(tmp_path / 'val.array_record')
  with pytest.raises(ValueError, match='held out'):
    ar.prepare_splits(_cfg(paths=p, val_paths=p), vocab_size=VOCAB)


def test_config_check_names_the_keys():
  c = base.get_config()
  c.data.source = 'arrayrecord'
  with pytest.raises(config_check.ConfigError, match='data.val_paths is empty') as e:
    config_check.validate(c, 1)
  assert 'data.paths is empty' in str(e.value)


def test_corrupt_or_truncated_file_names_it(shards):
  tmp_path, _ = shards
  path = tmp_path / 'train-0.array_record'
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f'{path}.*cannot be opened as ArrayRecord'):
    ar.open_split(str(path))
  path.write_bytes(b'not an array record file' * 10)
  with pytest.raises(ValueError, match=f'{path}.*cannot be opened as ArrayRecord'):
    ar.open_split(str(path))


def test_bad_sidecars_and_stale_index(shards):
  tmp_path, _ = shards
  path = str(tmp_path / 'train-2.array_record')
  meta = json.load(open(path + ar.META_SUFFIX))

  def opened_with(**change):
    json.dump(dict(meta, **change), open(path + ar.META_SUFFIX, 'w'))
    return ar.open_split(path, vocab_size=VOCAB)

  with pytest.raises(ValueError, match=f'{path}.*token id 300 >= its vocab_size 300'):
    opened_with(max_token_id=300)
  with pytest.raises(ValueError, match=f'{path}.*dtype'):
    opened_with(dtype='<f4')
  with pytest.raises(ValueError, match=f'{path}.*more than model.vocab_size=300'):
    opened_with(vocab_size=4096)
  with pytest.raises(ValueError, match=f'{path}.*records'):
    opened_with(n_records=meta['n_records'] + 1)
  with pytest.raises(ValueError, match=f'{path}.*tokenizer'):
    json.dump(dict(meta, tokenizer='other'), open(path + ar.META_SUFFIX, 'w'))
    ar.open_split(f'{tmp_path}/train-*.array_record')
  with pytest.raises(ValueError, match=f'{path}.*vocab_size 256'):  # A lying sidecar: caught on read.
    opened_with(vocab_size=256, max_token_id=255).tokens[:]
  lengths = np.load(path + ar.INDEX_SUFFIX)
  lengths[0] += 1
  lengths[1] -= 1
  np.save(path + ar.INDEX_SUFFIX, lengths)
  with pytest.raises(ValueError, match=f'{path}: record 0 holds'):
    opened_with().tokens[:5]
  os.unlink(path + ar.META_SUFFIX)
  with pytest.raises(ValueError, match=f'{path}.*sidecar .* is missing'):
    ar.open_split(path)


def test_writer_refuses_bad_ids_and_leaves_nothing(tmp_path):
  path = tmp_path / 'x.array_record'
  with pytest.raises(ValueError, match='document 1 holds token id 300 outside'):
    _write(path, [np.array([1, 2]), np.array([3, 300])])
  with pytest.raises(ValueError, match='integer ids'):
    _write(path, [np.array([1.5])])
  assert os.listdir(tmp_path) == []
