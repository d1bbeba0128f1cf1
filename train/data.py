"""Input pipeline: token files -> fixed-length windows -> per-process batches (grain).

Each split is one 1-D token stream (`train.tokens.TokenFile`: a memmap).
Training windows of `seq_len + 1` tokens sit on a grid over the stream, are
shuffled with the run's seed (reshuffled every epoch) and dealt out by process
index, so each process reads only its share of the global batch. The grain
iterator's state is checkpointed with the model, so a resumed run sees exactly
the batches it would have seen.
"""

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

from model import sharding
from train import arrayrecord
from train import corpus
from train.sources import Splits
from train.tokens import TokenFile


class Windows(grain.sources.RandomAccessDataSource):
  """Non-overlapping windows of seq_len + 1 tokens over a token stream."""

  def __init__(self, tokens, seq_len: int):
    self.tokens, self.seq_len = tokens, seq_len
    self.n = (len(tokens) - 1) // seq_len

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> np.ndarray:
    start = int(i) * self.seq_len
    return np.asarray(self.tokens[start:start + self.seq_len + 1], dtype=np.int32)


def _to_example(w_T1: np.ndarray) -> dict[str, np.ndarray]:
  return {'inputs': w_T1[:-1], 'targets': w_T1[1:]}


def local_batch_size(global_batch_size: int) -> int:
  return global_batch_size // jax.process_count()


def train_iterator(split: TokenFile, seq_len: int, global_batch_size: int, seed: int,
                   worker_count: int = 0, prefetch: int = 0):
  """Endless, checkpointable iterator of this process's share of each global batch.

  `worker_count` > 0 reads in that many processes (grain's mp_prefetch); else
  `prefetch` > 0 batches are assembled ahead by a background thread (grain's
  ThreadPrefetchIterDataset), while the step runs. Either way the iterator's
  state is that of the last batch handed out, so a checkpoint resumes at the
  first batch not yet trained on.
  """
  windows = Windows(split.tokens, seq_len)
  if len(windows) < global_batch_size:
    raise ValueError(f'the training split has {len(windows)} windows of {seq_len + 1} tokens, '
                     f'fewer than data.global_batch_size={global_batch_size}')
  # A whole number of global batches per epoch: every process then has equally long epochs, and
  # the global batches are the same windows whatever the process count.
  n = len(windows) // global_batch_size * global_batch_size
  ds = grain.MapDataset.source(windows)[:n].shuffle(seed=seed)
  ds = ds[jax.process_index()::jax.process_count()].repeat()
  ds = ds.map(_to_example).batch(local_batch_size(global_batch_size), drop_remainder=True)
  it_ds = ds.to_iter_dataset()
  if worker_count > 0:
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  elif prefetch > 0:
    it_ds = grain.experimental.ThreadPrefetchIterDataset(it_ds, prefetch_buffer_size=prefetch)
  return iter(it_ds)


def eval_batches(split: TokenFile, seq_len: int, global_batch_size: int, n_batches: int,
                 seed: int) -> list[dict[str, np.ndarray]]:
  """A fixed list of this process's validation batches (the same at every evaluation)."""
  windows = Windows(split.tokens, seq_len)
  if len(windows) < global_batch_size:
    raise ValueError(f'the validation split has {len(windows)} windows of {seq_len + 1} tokens, '
                     f'fewer than one global batch ({global_batch_size}); use more data or a '
                     'larger data.val_fraction')
  n_batches = min(n_batches, len(windows) // global_batch_size)
  ds = grain.MapDataset.source(windows).shuffle(seed=seed + 1)[:n_batches * global_batch_size]
  ds = ds[jax.process_index()::jax.process_count()].map(_to_example)
  ds = ds.batch(local_batch_size(global_batch_size), drop_remainder=True)
  return [ds[i] for i in range(len(ds))]


def batch_sharding(mesh, stacked: bool = False) -> NamedSharding:
  """Sharding of a (B, T) batch, or of K stacked batches (K, B, T) for several steps per call."""
  names = ((None,) if stacked else ()) + ('batch', 'seq')
  return NamedSharding(mesh, sharding.logical_to_spec(names))


def to_global(local_batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Assemble the global batch (B, T), or K stacked ones (K, B, T), from every process's share."""
  s = batch_sharding(mesh, stacked=next(iter(local_batch.values())).ndim == 3)
  return {k: jax.make_array_from_process_local_data(s, v) for k, v in local_batch.items()}


def next_batches(iterator, k: int) -> dict[str, np.ndarray]:
  """The next k local batches stacked on a leading axis: (k, B_local, T) per key."""
  batches = [next(iterator) for _ in range(k)]
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def synthetic_stream(vocab_size: int, n_tokens: int, seed: int, branching: int = 4) -> np.ndarray:
  """Tokens from a fixed random Markov chain: each token has `branching` likely successors.

  Learnable (the loss falls from ln V towards the chain's entropy, about
  ln(branching)), deterministic for a seed, and needs no download: for tests
  and smoke runs only; scaling curves need real text.
  """
  rng = np.random.default_rng(seed)
  succ_VK = rng.integers(0, vocab_size, size=(vocab_size, branching))
  p_K = rng.dirichlet(np.ones(branching))
  n_chains = 1024
  length = -(-n_tokens // n_chains)
  out = np.empty((n_chains, length), np.int64)
  out[:, 0] = rng.integers(0, vocab_size, n_chains)
  for t in range(1, length):
    choice = rng.choice(branching, size=n_chains, p=p_K)
    out[:, t] = succ_VK[out[:, t - 1], choice]
  dtype = np.uint16 if vocab_size <= 65536 else np.uint32
  return out.reshape(-1)[:n_tokens].astype(dtype)


def prepare_splits(config) -> Splits:
  """Train and validation token files for `config.data`: the one switch over data sources.

  'synthetic' is generated here (in memory), 'builtin' and 'files' are built or
  reused by train/corpus.py, 'arrayrecord' files are opened by train/arrayrecord.py.
  """
  d = config.data
  if d.source == 'arrayrecord':  # Pre-tokenized files: nothing to build, split or cache.
    return arrayrecord.prepare_splits(d, vocab_size=config.model.vocab_size)
  if d.source == 'synthetic':
    v = config.model.vocab_size
    n_val = max(d.synthetic_tokens // 20, (d.seq_len + 1) * d.global_batch_size)
    stream = synthetic_stream(v, d.synthetic_tokens + n_val, config.seed)
    mk = lambda toks: TokenFile(path='', tokens=toks, vocab_size=v, n_bytes=0, n_docs=1,
                                tokenizer_name='synthetic')
    return Splits(mk(stream[:d.synthetic_tokens]), mk(stream[d.synthetic_tokens:]), 'synthetic',
                  {'source': 'synthetic', 'tokens': int(stream.size)})
  return corpus.prepare_splits(d, vocab_size=config.model.vocab_size, seed=config.seed)  # Or: unknown.
