"""Tests of train/tokenizer.py: byte and sentencepiece BPE tokenizers."""

import glob
import os

import pytest

from train import corpus
from train import tokenizer as tok_lib

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'text')


def _fixture_docs():
  texts = [open(p, encoding='utf-8').read() for p in sorted(glob.glob(f'{FIXTURES}/*.txt'))]
  return list(corpus.documents(texts))


EXTRA = ['', ' ', 'two  spaces', '\ttab\n\n\nnewlines \r\n', 'sp ▁ symbol ▁▁', '🙂🚀 東京',
         'digits 1234567890', '\x00control\x1f']


@pytest.fixture(scope='module')
def bpe(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp('tok'))
  return tok_lib.get_tokenizer('bpe', 512, cache_dir=cache, key='fixtures',
                               train_docs=_fixture_docs), cache


def test_byte_round_trip_and_eos():
  tok = tok_lib.ByteTokenizer()
  assert (tok.vocab_size, tok.eos_id, tok.name) == (257, 256, 'byte')
  for text in _fixture_docs() + EXTRA:
    ids = tok.encode(text)
    assert max(ids, default=0) < 256
    assert tok.decode(ids) == text
  assert tok.decode(tok.encode('a') + [256] + tok.encode('b')) == 'ab'


def test_bpe_has_exact_vocab_and_round_trips(bpe):
  tok, _ = bpe
  assert tok.vocab_size == 512 and tok.eos_id == 1
  assert tok.name.startswith('bpe-512-')
  for text in _fixture_docs() + EXTRA:
    ids = tok.encode(text)
    assert tok.decode(ids) == text, text[:80]
    assert 0 not in ids and tok.eos_id not in ids  # Byte fallback: never <unk>.
  batch = tok.encode_batch(EXTRA)
  assert [tok.decode(ids) for ids in batch] == EXTRA


def test_bpe_compresses_english(bpe):
  tok, _ = bpe
  text = _fixture_docs()[0]
  assert len(tok.encode(text)) < 0.6 * len(text.encode())


def test_bpe_is_cached_by_key(bpe):
  tok, cache = bpe
  def fail():
    raise AssertionError('retrained although cached')
  again = tok_lib.get_tokenizer('bpe', 512, cache_dir=cache, key='fixtures', train_docs=fail)
  assert again.name == tok.name
  assert tok_lib.load_tokenizer(tok.name, cache).encode('hello there') == tok.encode('hello there')
  other = tok_lib.bpe_name(512, 'spm-bpe-v1|512|other')
  assert other != tok.name


def test_corrupt_cached_model_names_file(tmp_path):
  tok = tok_lib.get_tokenizer('bpe', 400, cache_dir=str(tmp_path), key='k',
                              train_docs=_fixture_docs)
  path = os.path.join(tok_lib.tokenizer_dir(str(tmp_path)), tok.name + '.model')
  with open(path, 'wb') as f:
    f.write(b'not a model')
  with pytest.raises(ValueError, match=r'\.model is corrupt.*delete'):
    tok_lib.get_tokenizer('bpe', 400, cache_dir=str(tmp_path), key='k', train_docs=_fixture_docs)


def test_vocab_too_large_for_corpus():
  with pytest.raises(ValueError, match=r'model\.vocab_size=20000 is larger than .* at most \d+'):
    tok_lib.train_bpe(_fixture_docs(), 20_000, name='t')


def test_vocab_too_small():
  with pytest.raises(ValueError, match=r'model\.vocab_size=100 is too small'):
    tok_lib.train_bpe(_fixture_docs(), 100, name='t')


def test_unknown_tokenizer_kind():
  with pytest.raises(ValueError, match='data.tokenizer'):
    tok_lib.get_tokenizer('wordpiece', 512, cache_dir='', key='', train_docs=list)


def test_split_long_line():
  line = ('word ' * 2000).strip()
  parts = tok_lib.split_long_line(line)
  assert ''.join(parts) == line and len(parts) > 1
  assert all(len(p.encode()) <= tok_lib.SPM_MAX_SENTENCE_BYTES for p in parts)
  wide = '東' * 3000  # 9,000 bytes, no spaces.
  parts = tok_lib.split_long_line(wide)
  assert ''.join(parts) == wide
  assert all(len(p.encode()) <= tok_lib.SPM_MAX_SENTENCE_BYTES for p in parts)
  assert tok_lib.split_long_line('short') == ['short']


def test_long_lines_reach_the_trainer():
  """washington_1790.txt is one 6.8 kB line: its words must be learned, not skipped."""
  sentences = list(tok_lib.training_sentences(_fixture_docs()))
  assert max(len(s.encode()) for s in sentences) <= tok_lib.SPM_MAX_SENTENCE_BYTES
  assert sum('Fellow-Citizens' in s for s in sentences) == 1


def test_load_tokenizer_byte_and_missing(tmp_path):
  assert tok_lib.load_tokenizer('byte').vocab_size == 257
  with pytest.raises(FileNotFoundError, match='bpe-512-deadbeef'):
    tok_lib.load_tokenizer('bpe-512-deadbeef', str(tmp_path))
