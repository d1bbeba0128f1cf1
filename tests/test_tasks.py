"""Tests of train/tasks.py: the tasks' answers, the split, tokens, the loss mask, packing, scores."""

import glob
import os
import re

import numpy as np
import pytest

from train import corpus
from train import tasks
from train import tokenizer as tok_lib

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures', 'text')
BYTE = tok_lib.ByteTokenizer()


@pytest.fixture(scope='module')
def bpe(tmp_path_factory):
  def docs():
    texts = [open(p, encoding='utf-8').read() for p in sorted(glob.glob(f'{FIXTURES}/*.txt'))]
    return list(corpus.documents(texts))
  return tok_lib.get_tokenizer('bpe', 512, cache_dir=str(tmp_path_factory.mktemp('tok')),
                               key='tasks', train_docs=docs)


def _solve(prompt: str) -> str:
  """The answer to a prompt, worked out again from its text."""
  q = re.fullmatch(r'Q:(.*)\nA:', prompt, re.DOTALL).group(1)
  if m := re.fullmatch(r'(\d+)\+(\d+)=', q):
    return str(int(m.group(1)) + int(m.group(2)))
  if m := re.fullmatch(r'sort (\d+)', q):
    return ''.join(sorted(m.group(1)))
  if m := re.fullmatch(r'copy (\d+)', q):
    return m.group(1)
  *pairs, key = q.split(' ')
  return dict(p.split('=') for p in pairs)[key[:-1]]


@pytest.mark.parametrize('task', tasks.TASKS)
@pytest.mark.parametrize('n', [2, 5])
def test_answers_are_right_and_sized_by_difficulty(task, n):
  rng = np.random.default_rng(0)
  for _ in range(50):
    ex = tasks.draw((task,), n, rng)
    assert ex.task == task and ex.answer == _solve(ex.prompt), ex
    q = ex.prompt[2:-3]
    if task == 'addition':
      assert [len(x) for x in q[:-1].split('+')] == [n, n]
    elif task == 'recall':
      assert len(q.split(' ')) == n + 1 and len(ex.answer) == 1
    else:
      assert len(ex.answer) == n


def test_train_and_eval_prompts_are_disjoint_and_the_eval_set_fixed():
  train = {e.prompt for e in tasks.draw_many(400, tasks.TASKS, 2, seed=0, split='train')}
  held = tasks.draw_many(100, tasks.TASKS, 2, seed=0, split='eval')
  assert not train & {e.prompt for e in held}
  assert all(tasks.is_held_out(e.prompt) for e in held)
  assert tasks.draw_many(100, tasks.TASKS, 2, seed=0, split='eval') == held
  assert tasks.draw_many(100, tasks.TASKS, 2, seed=1, split='eval') != held
  assert {e.task for e in held} == set(tasks.TASKS)
  with pytest.raises(ValueError, match='difficulty 1'):
    tasks.draw(tasks.TASKS, 1, np.random.default_rng(0))


@pytest.mark.parametrize('which', ['byte', 'bpe'])
def test_examples_round_trip_through_the_tokenizers(which, bpe):
  tok = BYTE if which == 'byte' else bpe
  for ex in tasks.draw_many(40, tasks.TASKS, 4, seed=0, split='train'):
    p_ids, a_ids = tasks.encode(tok, ex.prompt, ex.answer)
    assert a_ids[-1] == tok.eos_id and tok.eos_id not in p_ids + a_ids[:-1]
    assert tok.decode(p_ids) == ex.prompt and tok.decode(a_ids[:-1]) == ex.answer
    assert tok.decode(p_ids + a_ids[:-1]) == ex.prompt + ex.answer
    assert tasks.completion_text(tok, a_ids + [5, 6]) == ex.answer  # Cut at the first eos.


def test_the_mask_is_one_exactly_on_the_answer_tokens():
  p_ids, a_ids = tasks.encode(BYTE, 'Q:12+34=\nA:', '46')
  inputs, targets, mask = (np.asarray(x) for x in tasks.row(p_ids, a_ids, 20, BYTE.eos_id))
  assert inputs.shape == targets.shape == mask.shape == (20,)
  assert inputs[0] == BYTE.eos_id and list(inputs[1:12]) == p_ids
  np.testing.assert_array_equal(inputs[1:], targets[:-1])  # Targets are the next tokens.
  # Targets 0..10 are the prompt's tokens after the leading eos; 11, 12, 13 are '4', '6', eos.
  np.testing.assert_array_equal(np.nonzero(mask)[0], [11, 12, 13])
  assert list(targets[mask == 1]) == a_ids == [ord('4'), ord('6'), BYTE.eos_id]
  with pytest.raises(ValueError, match='seq_len=10'):
    tasks.row(p_ids, a_ids, 10, BYTE.eos_id)


def _segments(mask_row):
  """(start, stop) of each run of ones."""
  edges = np.diff(np.concatenate([[0], mask_row, [0]]))
  return list(zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]))


@pytest.mark.parametrize('which', ['byte', 'bpe'])
def test_packing_keeps_whole_examples_and_the_mask_aligned(which, bpe):
  tok = BYTE if which == 'byte' else bpe
  examples = tasks.draw_many(60, tasks.TASKS, 3, seed=0, split='train')
  encoded = [tasks.encode(tok, e.prompt, e.answer) for e in examples]
  batch = tasks.pack(iter(encoded), rows=4, seq_len=64, eos_id=tok.eos_id)
  assert batch['inputs'].shape == batch['targets'].shape == batch['mask'].shape == (4, 64)
  n = batch['examples']
  assert n > 8  # Several examples per window.
  answers, stream = [], []
  for inputs, targets, mask in zip(batch['inputs'], batch['targets'], batch['mask']):
    assert inputs[0] == tok.eos_id
    for start, stop in _segments(mask):
      answers.append(list(targets[start:stop]))
    end = np.nonzero(mask)[0][-1] + 1  # After the last answer's eos, only padding.
    assert (targets[end:] == tok.eos_id).all()
    stream += list(targets[:end])
  assert answers == [a for _, a in encoded[:n]]  # Every answer with its eos, in order, whole.
  assert stream == [t for p, a in encoded[:n] for t in p + a]  # Nothing else is in the windows.


def test_scores():
  assert tasks.exact_match('46', '46') and not tasks.exact_match('46 ', '46')
  assert tasks.reward('46', '46') == 1.0
  assert tasks.reward('47', '46') == 0.5
  assert tasks.reward('4', '46') == 0.5
  assert tasks.reward('460', '46') == 2 / 3
  assert tasks.reward('', '46') == 0.0
  assert tasks.reward('64', '46') == 0.0


def test_corruptions_are_graded():
  rng = np.random.default_rng(0)
  answer = '10384'
  one = tasks.corrupt(answer, 'one_wrong', rng)
  assert sum(a != b for a, b in zip(one, answer)) == 1 and len(one) == 5
  many = tasks.corrupt(answer, 'many_wrong', rng)
  assert all(a != b for a, b in zip(many, answer)) and len(many) == 5
  assert tasks.corrupt(answer, 'truncated', rng) == '10'
  assert tasks.reward(one, answer) == 0.8 > tasks.reward('10', answer) == 0.4
  assert tasks.reward(many, answer) == 0.0
  ex = tasks.Example('copying', 'Q:copy 10384\nA:', answer)
  pairs = [tasks.preference_pair(ex, rng) for _ in range(60)]
  assert {p.kind for p in pairs} == set(tasks.CORRUPTIONS)
  assert all(p.chosen == answer and p.rejected != answer and
             p.quality == tasks.reward(p.rejected, answer) < 1 for p in pairs)


def test_kto_labels_are_thumbs_up_exactly_for_the_right_answer():
  rng = np.random.default_rng(0)
  ex = tasks.Example('addition', 'Q:12+34=\nA:', '46')
  labelled = [tasks.kto_example(ex, rng) for _ in range(200)]
  assert all(x.desirable == (x.completion == '46') for x in labelled)
  assert 60 < sum(x.desirable for x in labelled) < 140
