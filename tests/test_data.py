"""Input pipeline and schedule: windows, per-process shares of the global batch, the LR curve."""

import numpy as np
import pytest

from configs import base
from train import data as data_lib
from train import optim
from train.tokens import TokenFile


def _split(n_tokens):
  toks = np.arange(n_tokens, dtype=np.uint32)
  return TokenFile(path='', tokens=toks, vocab_size=n_tokens, n_bytes=0, n_docs=1)


def test_windows_are_inputs_and_shifted_targets():
  w = data_lib.Windows(np.arange(100), seq_len=8)
  assert len(w) == 12
  np.testing.assert_array_equal(w[2], np.arange(16, 25))
  ex = data_lib._to_example(w[2])
  np.testing.assert_array_equal(ex['targets'], ex['inputs'] + 1)


def _global_batches(split, n_proc, steps, monkeypatch, batch=8, seq_len=4):
  """Global batches (as sets of window starts) when `n_proc` processes each feed their share."""
  iters = []
  for p in range(n_proc):
    monkeypatch.setattr(data_lib.jax, 'process_index', lambda p=p: p)
    monkeypatch.setattr(data_lib.jax, 'process_count', lambda: n_proc)
    iters.append(data_lib.train_iterator(split, seq_len, batch, seed=3))
  out = []
  for _ in range(steps):
    rows = np.concatenate([next(it)['inputs'][:, 0] for it in iters])
    assert len(rows) == batch
    out.append(frozenset(rows.tolist()))
  return out


@pytest.mark.parametrize('n_tokens', [41 * 4 + 1, 43 * 4 + 1])  # 41, 43 windows: not a multiple of 8.
def test_processes_read_disjoint_shares_of_the_same_global_batches(n_tokens, monkeypatch):
  split = _split(n_tokens)
  one = _global_batches(split, 1, 30, monkeypatch)  # 30 steps: several epochs.
  for n_proc in (2, 4):
    assert _global_batches(split, n_proc, 30, monkeypatch) == one
  assert all(len(b) == 8 for b in one)  # No window twice in a batch.


@pytest.mark.parametrize('prefetch', [0, 3])
def test_prefetch_keeps_the_order_and_checkpoints_the_consumed_position(prefetch):
  """The background thread reads ahead, but the state is that of the last batch handed out."""
  split = _split(64 * 4 + 1)
  plain = data_lib.train_iterator(split, 4, 8, seed=1)
  expected = [next(plain)['inputs'] for _ in range(12)]
  it = data_lib.train_iterator(split, 4, 8, seed=1, prefetch=prefetch)
  for i in range(5):
    np.testing.assert_array_equal(next(it)['inputs'], expected[i])
  state = it.get_state()  # The thread has read past batch 5 by now (prefetch > 0).
  resumed = data_lib.train_iterator(split, 4, 8, seed=1, prefetch=prefetch)
  resumed.set_state(state)
  for i in range(5, 12):
    np.testing.assert_array_equal(next(resumed)['inputs'], expected[i])
    np.testing.assert_array_equal(next(it)['inputs'], expected[i])


def test_eval_batches_are_fixed_and_need_one_global_batch():
  split = _split(200)
  a = data_lib.eval_batches(split, 4, 8, n_batches=3, seed=0)
  b = data_lib.eval_batches(split, 4, 8, n_batches=3, seed=0)
  assert len(a) == 3 and all(np.array_equal(x['inputs'], y['inputs']) for x, y in zip(a, b))
  with pytest.raises(ValueError, match='fewer than one global batch'):
    data_lib.eval_batches(_split(20), 4, 8, n_batches=3, seed=0)


def test_schedule_warms_up_from_step_one_and_ends_at_min_lr_on_the_last_step():
  c = base.get_config()
  c.train.steps, c.optim.lr, c.optim.min_lr_ratio, c.optim.warmup_steps = 50, 1e-3, 0.1, 5
  sched = optim.schedule(c)
  lrs = [float(sched(count)) for count in range(50)]  # Step s uses update count s - 1.
  assert lrs[0] > 0
  assert lrs[4] == pytest.approx(1e-3)  # Peak at the end of warmup (step 5).
  assert lrs[-1] == pytest.approx(1e-4)  # min_lr_ratio * lr exactly at the last planned step.
  assert all(x >= y for x, y in zip(lrs[4:], lrs[5:]))
