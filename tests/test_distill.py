"""Tests of train/distill.py: the teacher writes the answers, the student is SFT'd on them
(post.distill_source='text'), on conftest's byte_run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from model import decode
from train import config_check, distill, generate, objectives, post, rl, tasks
from train.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()


def _post(base_dir: str, **overrides):
  c = base.get_config()
  c.post.update({'base': base_dir, 'method': 'distill', 'distill_source': 'text', 'difficulty': 2,
                 'batch_size': 2, 'eval_prompts': 8, 'log_every': 1, **overrides})
  return c


def _examples(batch, r):
  """(prompt ids, answer ids) of each packed example of row r: answers are the masked targets."""
  targets, mask = batch['targets'][r].tolist(), batch['mask'][r]
  out, start, t = [], 0, 0
  while t < len(targets):
    if mask[t]:
      end = t
      while end < len(targets) and mask[end]:
        end += 1
      out.append((targets[start:t], targets[t:end]))
      start = t = end
    else:
      t += 1
  return out


@pytest.fixture(scope='module')
def teacher(byte_run):
  _, model = generate.restore_model(byte_run, generate.load_run_config(byte_run))
  return model


@pytest.fixture(scope='module')
def written(teacher, byte_run):
  """(post block, the stream train.post builds for distill_source='text', its first batch)."""
  p = _post(byte_run).post
  stream = post._stream(p, BYTE, 32, None, None, teacher=teacher)
  return p, stream, next(stream)


def test_the_windows_hold_the_teachers_greedy_answers_to_training_prompts(teacher, written):
  p, stream, batch = written
  assert isinstance(stream, distill.TeacherTextStream)
  assert batch['inputs'].shape == (2, 32) and 'examples' not in batch
  pairs = [pair for r in range(2) for pair in _examples(batch, r)]
  assert len(pairs) >= 2
  for prompt_ids, _ in pairs:
    prompt = BYTE.decode(prompt_ids)
    assert prompt.startswith('Q:') and prompt.endswith('\nA:') and not tasks.is_held_out(prompt)
  # Each masked answer is what the teacher writes for its prompt (greedy, eos kept): decoded
  # here in one batch of these prompts (a padded row decodes as it would alone).
  want = decode.Generator(teacher).generate([[BYTE.eos_id] + q for q, _ in pairs],
                                            rl.max_new_tokens(p), eos_id=BYTE.eos_id,
                                            vocab_limit=BYTE.vocab_size)
  assert [a for _, a in pairs] == want
  stats = stream.stats()
  assert stats['answers_written'] == distill.CHUNK * p.batch_size  # One chunk filled the rows.
  assert 0.0 <= stats['teacher_text_exact_match'] <= 1.0
  # A function of the step: set back to step 0, the stream gives the same batch.
  stream.set_state(b'{"step": 0}')
  np.testing.assert_array_equal(next(stream)['mask'], batch['mask'])


def test_text_distillation_is_sft_on_the_streams_batches(teacher, written, byte_run):
  p, _, batch = written
  logits = post._stream(_post(byte_run, distill_source='logits').post, BYTE, 32, None, None,
                        teacher=teacher)
  assert type(logits) is tasks.TaskStream  # The gold answers, for the teacher's logits.
  text_loss = objectives.make_loss(p, None)
  sft_loss = objectives.make_loss(_post(byte_run, method='sft').post, None)
  graphdef, state = nnx.split(teacher)

  def losses(state, batch):  # No reference state: text distillation reads none.
    model = nnx.merge(graphdef, state)
    return text_loss(model, batch, None)[0], sft_loss(model, batch, None)[0], \
        objectives.answer_logprobs(model, batch)

  loss, sft, (logp, n) = jax.jit(losses)(state, batch)
  assert float(loss) == float(sft) > 0
  assert float(loss) == pytest.approx(-float(jnp.sum(logp)) / float(jnp.sum(n)), rel=1e-6)


def test_bad_distill_sources_and_temperatures_are_named():
  p = _post('x', distill_source='soft', distill_text_temperature=-1.0).post
  errors = '\n'.join(config_check.post_errors(p))
  assert "post.distill_source='soft'" in errors and 'post.distill_text_temperature=-1.0' in errors
  assert config_check.post_errors(_post('x').post) == []
