"""Verifiable tasks for post-training, built locally: addition, sorting, copying, key-value recall.

Text. An example is a prompt and an answer, in a chat-like format:

  prompt  'Q:' + question + '\\nA:'        answer  the answer text (digits only)

  task       question (difficulty n)                       answer
  addition   '{a}+{b}=', a and b of exactly n digits        str(a + b)
  sorting    'sort {d}', d a string of n random digits      d's digits in ascending order
  copying    'copy {d}', d a string of n random digits      d
  recall     'k1=v1 k2=v2 ... kn=vn kq?', n distinct        the value of kq
             lower-case keys, digit values, kq one of them

e.g. 'Q:12+34=\\nA:' -> '46', 'Q:sort 2718\\nA:' -> '1278', 'Q:b=4 a=7 a?\\nA:' -> '7'.

Tokens. An example is `encode(prompt) + encode(answer) + [eos]`: prompt and
answer are encoded separately, so the split is exact in token space for any
tokenizer (a BPE merge never spans it), and decoding the prompt ids and the
answer ids (before their eos) gives prompt + answer. A row starts with the eos id, as every pre-training document
ends with one (train.generate encodes prompts after it too); the closing eos
is part of the answer, so a model learns to stop.

Loss mask. Rows are windows of seq_len + 1 tokens: inputs w[:-1], targets
w[1:], and mask[t] = 1 exactly where targets[t] is an answer token (the
answer and its closing eos), 0 on prompts and padding (eos ids).

Packing (`pack`): whole examples, greedily, several per window:
[eos] ex_1 ex_2 ... ex_k then padding; an example that does not fit the rest
of a window starts the next one. There is no attention reset: the model is
causal with no document mask, so an example attends to the earlier examples
in its window, as pre-training's packed documents do. They are independent
draws, so they tell it nothing about its own answer, only show the format
again (training sees up to k-1 demonstrations; evaluation decodes each prompt
alone, zero-shot). `row` puts one example in a row (preference pairs, the
held-out evaluation).

Held-out split. An example is held out iff crc32(prompt) % HOLD_OUT == 0, so
the training and evaluation prompt sets are disjoint for any seed.

Scores. `exact_match(completion, answer)`; `reward` is 1 for an exact match,
else the fraction of positions i where completion[i] == answer[i], over the
longer of the two (graded partial credit: < 1 unless exact).

Preferences. `preference_pair` sets the correct answer (chosen) against a
corruption (rejected) of graded quality (its reward): 'one_wrong' (one digit
changed), 'many_wrong' (every digit changed) or 'truncated' (the last ceil(n/2)
of its n digits dropped). `kto_example` is one answer with a thumbs-up/down label:
the correct answer (desirable) or a corruption (undesirable), half each.

Batches (`TaskStream`, for train/post.py). Step s draws from numpy's generator
seeded by (post.seed, s), from the training split, so the data position is the
step alone. sft and distill pack examples into post.batch_size windows with
the answer mask; dpo, orpo and simpo take post.batch_size pairs, the chosen
rows then the rejected rows, one example per row; kto takes post.batch_size
labelled answers, then as many mismatched rows (prompt i, answer of i + 1) for
its KL reference point. (grpo samples its rows: train/rl.py.)
"""

import dataclasses
import json
import string
import zlib
from collections.abc import Iterator

import numpy as np

from configs.load import ConfigError

TASKS = ('addition', 'sorting', 'copying', 'recall')
CORRUPTIONS = ('one_wrong', 'many_wrong', 'truncated')
HOLD_OUT = 10  # One prompt in HOLD_OUT (by crc32) is held out for evaluation.
SPLITS = ('train', 'eval')
MIN_DIFFICULTY = 2  # At 2, every task has >= 100 distinct prompts, so both splits are non-empty.
MAX_DIFFICULTY = 26  # Recall's keys are the 26 lower-case letters.
_MAX_DRAWS = 10_000  # Draws to find a prompt of the wanted split before giving up.


@dataclasses.dataclass(frozen=True)
class Example:
  task: str
  prompt: str
  answer: str


@dataclasses.dataclass(frozen=True)
class Pair:
  """A preference pair: `quality` is the rejected answer's reward (in [0, 1))."""
  prompt: str
  chosen: str
  rejected: str
  kind: str
  quality: float


@dataclasses.dataclass(frozen=True)
class Labelled:
  """One answer with a thumbs-up (desirable) or thumbs-down label, for KTO."""
  prompt: str
  completion: str
  desirable: bool


def _digits(rng: np.random.Generator, n: int) -> str:
  return ''.join(str(d) for d in rng.integers(0, 10, n))


def _number(rng: np.random.Generator, n: int) -> int:
  """A random integer of exactly n digits."""
  return int(rng.integers(10 ** (n - 1), 10 ** n))


def _question(task: str, rng: np.random.Generator, n: int) -> tuple[str, str]:
  """(question, answer) of one `task` instance of size n."""
  if task == 'addition':
    a, b = _number(rng, n), _number(rng, n)
    return f'{a}+{b}=', str(a + b)
  if task == 'sorting':
    d = _digits(rng, n)
    return f'sort {d}', ''.join(sorted(d))
  if task == 'copying':
    d = _digits(rng, n)
    return f'copy {d}', d
  if task == 'recall':
    keys = rng.choice(list(string.ascii_lowercase), size=n, replace=False)
    values = _digits(rng, n)
    q = int(rng.integers(n))
    pairs = ' '.join(f'{k}={v}' for k, v in zip(keys, values))
    return f'{pairs} {keys[q]}?', values[q]
  raise ValueError(f'unknown task {task!r}: must be one of {", ".join(TASKS)}')


def task_names(spec: str) -> tuple[str, ...]:
  """'addition, sorting' -> ('addition', 'sorting'): the comma-separated names, blanks dropped."""
  return tuple(t.strip() for t in str(spec).split(',') if t.strip())


def prompt_text(question: str) -> str:
  """The chat-like prompt around a question: 'Q:' + question + '\\nA:'."""
  return f'Q:{question}\nA:'


def is_held_out(prompt: str) -> bool:
  return zlib.crc32(prompt.encode()) % HOLD_OUT == 0


def draw(tasks: tuple[str, ...], difficulty: int, rng: np.random.Generator,
         split: str = 'train') -> Example:
  """One example of a task drawn uniformly from `tasks`, of size `difficulty`, from `split`."""
  if not MIN_DIFFICULTY <= difficulty <= MAX_DIFFICULTY:
    raise ValueError(f'difficulty {difficulty}: must be in [{MIN_DIFFICULTY}, {MAX_DIFFICULTY}]')
  want = split == 'eval'
  for _ in range(_MAX_DRAWS):
    task = tasks[int(rng.integers(len(tasks)))]
    question, answer = _question(task, rng, difficulty)
    prompt = prompt_text(question)
    if is_held_out(prompt) == want:
      return Example(task, prompt, answer)
  raise ValueError(f'no {split} prompt in {_MAX_DRAWS} draws of {tasks}')


def draw_many(count: int, tasks, difficulty: int, seed: int, split: str) -> list[Example]:
  """`count` examples from numpy's generator seeded by (seed, split index): a fixed set."""
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  return [draw(tuple(tasks), difficulty, rng, split) for _ in range(count)]


# ---- Tokens, masks and packing.

def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
  """(prompt ids, answer ids + [eos]), each part encoded on its own."""
  return tokenizer.encode(prompt), tokenizer.encode(answer) + [tokenizer.eos_id]


def _window_fields(window: list[int], marks: list[bool], seq_len: int, pad_id: int):
  """(inputs, targets, mask) of one window of tokens whose answer tokens are marked True."""
  ids = window + [pad_id] * (seq_len + 1 - len(window))
  marks = marks + [False] * (seq_len + 1 - len(window))
  return ids[:-1], ids[1:], [float(m) for m in marks[1:]]


def _batch(rows) -> dict[str, np.ndarray]:
  inputs, targets, mask = zip(*rows)
  return {'inputs': np.asarray(inputs, np.int32), 'targets': np.asarray(targets, np.int32),
          'mask': np.asarray(mask, np.float32)}


def _check_fits(prompt_ids, answer_ids, seq_len: int) -> None:
  if len(prompt_ids) + len(answer_ids) > seq_len:
    raise ValueError(f'an example of {len(prompt_ids) + len(answer_ids)} tokens does not fit a '
                     f'row of seq_len={seq_len} tokens (plus the leading eos)')


def row(prompt_ids: list[int], answer_ids: list[int], seq_len: int, eos_id: int):
  """One example in one row: (inputs, targets, mask), each seq_len long."""
  _check_fits(prompt_ids, answer_ids, seq_len)
  window = [eos_id] + prompt_ids + answer_ids
  marks = [False] * (1 + len(prompt_ids)) + [True] * len(answer_ids)
  return _window_fields(window, marks, seq_len, eos_id)


def rows_batch(encoded: list[tuple[list[int], list[int]]], seq_len: int,
               eos_id: int) -> dict[str, np.ndarray]:
  """One example per row: {'inputs', 'targets', 'mask'}, (len(encoded), seq_len) each."""
  return _batch([row(p, a, seq_len, eos_id) for p, a in encoded])


def pack(encoded: Iterator[tuple[list[int], list[int]]], rows: int, seq_len: int,
         eos_id: int) -> dict[str, np.ndarray]:
  """`rows` windows packed with whole examples taken from `encoded` in order (module docstring).

  -> {'inputs', 'targets' (int32), 'mask' (float32)}, each (rows, seq_len), plus
  'examples': how many examples the windows hold. The example that no longer
  fits the last window is dropped.
  """
  out, window, marks, n = [], [eos_id], [False], 0
  for p, a in encoded:
    _check_fits(p, a, seq_len)
    if len(window) + len(p) + len(a) > seq_len + 1:
      out.append(_window_fields(window, marks, seq_len, eos_id))
      if len(out) == rows:
        break
      window, marks = [eos_id], [False]
    window += p + a
    marks += [False] * len(p) + [True] * len(a)
    n += 1
  else:
    raise ValueError('the example stream ended before the windows were full')
  batch = _batch(out)
  batch['examples'] = n
  return batch


# ---- Scores.

def completion_text(tokenizer, ids: list[int]) -> str:
  """The text of generated ids, up to (not including) the first eos."""
  ids = list(ids)
  if tokenizer.eos_id in ids:
    ids = ids[:ids.index(tokenizer.eos_id)]
  return tokenizer.decode(ids)


def exact_match(completion: str, answer: str) -> bool:
  return completion == answer


def reward(completion: str, answer: str) -> float:
  """1 for an exact match, else the fraction of matching positions over the longer string."""
  if completion == answer:
    return 1.0
  longest = max(len(completion), len(answer))
  return sum(a == b for a, b in zip(completion, answer)) / longest


# ---- Preferences.

def _other_digit(rng: np.random.Generator, d: str) -> str:
  return str((int(d) + int(rng.integers(1, 10))) % 10)


def corrupt(answer: str, kind: str, rng: np.random.Generator) -> str:
  """A wrong answer: 'one_wrong', 'many_wrong' or 'truncated' (see the module docstring)."""
  if kind == 'one_wrong':
    i = int(rng.integers(len(answer)))
    return answer[:i] + _other_digit(rng, answer[i]) + answer[i + 1:]
  if kind == 'many_wrong':
    return ''.join(_other_digit(rng, d) for d in answer)
  if kind == 'truncated':
    return answer[:len(answer) // 2]
  raise ValueError(f'unknown corruption {kind!r}: must be one of {", ".join(CORRUPTIONS)}')


def preference_pair(ex: Example, rng: np.random.Generator) -> Pair:
  """The correct answer against a corruption of a kind drawn uniformly."""
  kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
  rejected = corrupt(ex.answer, kind, rng)
  return Pair(ex.prompt, ex.answer, rejected, kind, reward(rejected, ex.answer))


def kto_example(ex: Example, rng: np.random.Generator) -> Labelled:
  """The correct answer (thumbs up) or, with probability 1/2, a corruption (thumbs down)."""
  if rng.random() < 0.5:
    return Labelled(ex.prompt, ex.answer, True)
  return Labelled(ex.prompt, preference_pair(ex, rng).rejected, False)


# ---- Post-training batches (train/post.py): one step's rows per method.

def _examples(rng, p):
  """Training examples drawn from `rng`, without end."""
  while True:
    yield draw(task_names(p.tasks), p.difficulty, rng)


def _take(rng, p, n: int) -> list[Example]:
  it = _examples(rng, p)
  return [next(it) for _ in range(n)]


def sft_batch(rng, p, tok, seq_len: int) -> dict:
  """post.batch_size windows packed with training examples, with the answer mask."""
  encoded = (encode(tok, ex.prompt, ex.answer) for ex in _examples(rng, p))
  batch = pack(encoded, p.batch_size, seq_len, tok.eos_id)
  del batch['examples']
  return batch


def pair_batch(rng, p, tok, seq_len: int) -> dict:
  """post.batch_size preference pairs: rows 0..B-1 the chosen answers, B..2B-1 the rejected."""
  pairs = [preference_pair(ex, rng) for ex in _take(rng, p, p.batch_size)]
  encoded = ([encode(tok, q.prompt, q.chosen) for q in pairs] +
             [encode(tok, q.prompt, q.rejected) for q in pairs])
  return rows_batch(encoded, seq_len, tok.eos_id)


def kto_batch(rng, p, tok, seq_len: int) -> dict:
  """B labelled answers (rows 0..B-1, 'desirable' (B,)), then B mismatched rows for the KL point."""
  items = [kto_example(ex, rng) for ex in _take(rng, p, p.batch_size)]
  shifted = items[1:] + items[:1]
  encoded = ([encode(tok, x.prompt, x.completion) for x in items] +
             [encode(tok, x.prompt, y.completion) for x, y in zip(items, shifted)])
  batch = rows_batch(encoded, seq_len, tok.eos_id)
  batch['desirable'] = np.array([x.desirable for x in items])
  return batch


class TaskStream:
  """Post-training batches of `post` block p; the data position is the next step (checkpointed).

  Step s's batch comes from numpy's generator seeded by (p.seed, s): packed
  windows (sft, distill), preference pairs (dpo, orpo, simpo) or labelled
  answers with their mismatched rows (kto). A ConfigError names post.seq_len
  when an example does not fit a row.
  """

  def __init__(self, p, tok, seq_len: int):
    self.p, self.tok, self.seq_len, self.step = p, tok, seq_len, 0
    self.make = {'sft': sft_batch, 'distill': sft_batch, 'kto': kto_batch}.get(p.method, pair_batch)

  def __next__(self) -> dict:
    batch = self._batch(self.step)
    self.step += 1
    return batch

  def draw(self, state=None, ref_state=None) -> dict:
    """The next batch (the policy's state is not needed: the data does not depend on it)."""
    del state, ref_state
    return next(self)

  def spec(self) -> dict:
    """A batch of the step's shapes and dtypes (the next one), without advancing."""
    return self._batch(self.step)

  def _batch(self, step: int) -> dict:
    try:
      return self.make(np.random.default_rng([self.p.seed, step]), self.p, self.tok, self.seq_len)
    except ValueError as e:
      raise ConfigError(f'post.seq_len={self.seq_len}: {e}; raise post.seq_len or lower '
                        f'post.difficulty={self.p.difficulty}') from None

  def get_state(self) -> bytes:
    return json.dumps({'step': self.step}).encode()

  def set_state(self, state) -> None:
    self.step = json.loads(state)['step']

  def start_prefetch(self) -> None:  # Called by grain's restore; nothing runs ahead here.
    pass
