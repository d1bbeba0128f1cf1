"""Tests of train/tokens.py: the token-file format and bits per byte."""

import json
import math
import os

import numpy as np
import pytest

from train import tokenizer as tok_lib
from train import tokens

DOCS = ['Hello, world.', 'A naïve café — “quoted”.', '', 'Last\ndocument\n']


def test_write_and_open_round_trip(tmp_path):
  tok = tok_lib.ByteTokenizer()
  tf = tokens.write_token_file(tmp_path / 'a.bin', DOCS, tok, desc='test')
  want = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8), 256) for d in DOCS])
  assert tf.tokens.dtype == np.uint16
  np.testing.assert_array_equal(np.asarray(tf.tokens), want)
  assert tf.n_docs == 4 and tf.vocab_size == 257
  assert tf.n_bytes == sum(len(d.encode()) for d in DOCS)
  assert len(tf) == len(want) and tf.tokenizer_name == 'byte'
  again = tokens.open_token_file(tf.path)
  np.testing.assert_array_equal(np.asarray(again.tokens[3:10]), want[3:10])
  with pytest.raises(ValueError):
    again.tokens[0] = 1  # Read-only.
  meta = json.loads((tmp_path / 'a.json').read_text())
  assert meta['n_tokens'] == len(want) and meta['dtype'] == '<u2'
  assert not [f for f in os.listdir(tmp_path) if f.endswith('.tmp')]


class _BigVocab:
  name, vocab_size, eos_id = 'big', 70_000, 69_999

  def encode(self, text):
    return [65_536 + len(text)]


def test_large_vocab_uses_uint32(tmp_path):
  tf = tokens.write_token_file(tmp_path / 'b.bin', ['abc'], _BigVocab())
  assert tf.tokens.dtype == np.uint32
  assert list(tf.tokens) == [65_539, 69_999]


class _BadIds(_BigVocab):
  vocab_size, eos_id = 100, 99


def test_out_of_range_id_is_refused(tmp_path):
  with pytest.raises(ValueError, match='out of range'):
    tokens.write_token_file(tmp_path / 'c.bin', ['abc'], _BadIds())
  assert not os.path.exists(tmp_path / 'c.bin')


def _good(tmp_path):
  return tokens.write_token_file(tmp_path / 'd.bin', DOCS, tok_lib.ByteTokenizer()).path


def test_truncated_file_names_file(tmp_path):
  path = _good(tmp_path)
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - 2)
  with pytest.raises(ValueError, match=r'd\.bin.*corrupt or incomplete.*delete'):
    tokens.open_token_file(path)


def test_corrupt_bytes_fail_the_hash(tmp_path):
  path = _good(tmp_path)
  with open(path, 'r+b') as f:
    f.seek(4)
    f.write(b'\xff\xff')
  with pytest.raises(ValueError, match=r'd\.bin.*sha256'):
    tokens.open_token_file(path)
  tokens.open_token_file(path, verify='size')  # Size-only checks cannot see it.


def test_missing_or_broken_sidecar(tmp_path):
  path = _good(tmp_path)
  side = tokens.meta_path(path)
  with open(side, 'w') as f:
    f.write('{"dtype": ')
  with pytest.raises(ValueError, match=r'd\.json.*unreadable'):
    tokens.open_token_file(path)
  os.unlink(side)
  with pytest.raises(ValueError, match=r'sidecar .*d\.json is missing'):
    tokens.open_token_file(path)


class _Interrupt:
  name, vocab_size, eos_id = 'byte', 257, 256

  def __init__(self):
    self.calls = 0

  def encode(self, text):
    self.calls += 1
    if self.calls > 100:
      raise KeyboardInterrupt
    return list(text.encode())


def test_interrupted_write_leaves_old_file_and_no_temporaries(tmp_path):
  path = _good(tmp_path)
  before = open(path, 'rb').read()
  with pytest.raises(KeyboardInterrupt):
    tokens.write_token_file(path, ['x'] * 1000, _Interrupt())
  assert open(path, 'rb').read() == before
  tokens.open_token_file(path)
  assert sorted(os.listdir(tmp_path)) == ['d.bin', 'd.json']


def test_bits_per_byte_arithmetic():
  # ln 2 nats per token, one token per byte: one bit per byte.
  assert tokens.bits_per_byte(math.log(2), 1000, 1000) == pytest.approx(1.0)
  # A uniform guess over 256 byte values costs 8 bits per byte.
  assert tokens.bits_per_byte(math.log(256), 10, 10) == pytest.approx(8.0)
  # 4 bytes per token: total nats / ln 2 / total bytes.
  assert tokens.bits_per_byte(2.0, 250, 1000) == pytest.approx(2.0 * 250 / 1000 / math.log(2))
  with pytest.raises(ValueError, match='n_bytes'):
    tokens.bits_per_byte(1.0, 10, 0)


def test_bits_per_byte_agrees_across_tokenizers(tmp_path):
  """A model that spends the same nats on the same text has the same bpb."""
  text = ['the same text, tokenized twice ' * 20]
  byte = tokens.write_token_file(tmp_path / 'byte.bin', text, tok_lib.ByteTokenizer())
  total_nats = 1234.5
  per_byte_tok = total_nats / len(byte.tokens)
  got = tokens.bits_per_byte(per_byte_tok, len(byte.tokens), byte.n_bytes)
  assert got == pytest.approx(total_nats / math.log(2) / len(text[0].encode()))
