"""Distillation on teacher-written text: post.method='distill' with post.distill_source='text'.

The teacher (post.teacher's newest model) answers the training prompts and the
student is trained by SFT on those answers: the answers' NLL per answer token
(train/objectives.py's `sft`), the gold answers never seen. (The other source,
'logits', matches the teacher's softened distribution token by token on the
gold text instead: objectives.distill_loss.)

Batches (`TeacherTextStream`, for train/post.py). Step s draws training
prompts from numpy's generator seeded by (post.seed, s), as TaskStream's sft
batches do, in chunks of CHUNK x post.batch_size prompts. The teacher
continues each chunk's rows ([eos] + prompt ids) by up to
rl.max_new_tokens(post) tokens with model/decode.py's KV-cache Generator:
greedily at post.distill_text_temperature = 0, else sampled at that
temperature (top-p 1, the seed drawn from the step's generator), stopping
after eos (kept, so the student learns to stop; an answer cut at the limit
has none). Each (prompt, written answer) is one example of train/tasks.py's
`pack`: whole examples in post.batch_size windows, the mask on the written
answer's tokens. The batch is a function of the step and the teacher, so a
resumed run sees the same data. The held-out evaluation still scores the
student against the gold answers.

`stats()` counts the answers the teacher wrote in this process and the
fraction that were exactly right (what the student is shown).
"""

import numpy as np

from model import decode
from train import rl
from train import tasks

CHUNK = 4  # Prompts per teacher generation call, in units of post.batch_size.


class TeacherTextStream(tasks.TaskStream):
  """TaskStream whose sft windows hold the teacher's answers (module docstring)."""

  def __init__(self, p, tok, seq_len: int, teacher):
    super().__init__(p, tok, seq_len)
    self.generator = decode.Generator(teacher)
    self.make = self._teacher_batch
    self.written, self.correct = 0, 0

  def _written(self, rng: np.random.Generator):
    """(prompt ids, the teacher's answer ids) of training prompts, a chunk at a time, without end."""
    p, tok = self.p, self.tok
    while True:
      examples = [tasks.draw(tasks.task_names(p.tasks), p.difficulty, rng)
                  for _ in range(CHUNK * p.batch_size)]
      prompts = [tok.encode(ex.prompt) for ex in examples]
      outs = self.generator.generate([[tok.eos_id] + q for q in prompts], rl.max_new_tokens(p),
                                     temperature=p.distill_text_temperature,
                                     seed=int(rng.integers(2 ** 31)), eos_id=tok.eos_id,
                                     vocab_limit=tok.vocab_size)
      self.written += len(outs)
      self.correct += sum(tasks.exact_match(tasks.completion_text(tok, ids), ex.answer)
                          for ex, ids in zip(examples, outs))
      yield from zip(prompts, outs)

  def _teacher_batch(self, rng, p, tok, seq_len: int) -> dict:
    """post.batch_size windows packed with (prompt, teacher's answer) examples, answer-masked."""
    batch = tasks.pack(self._written(rng), p.batch_size, seq_len, tok.eos_id)
    del batch['examples']
    return batch

  def stats(self) -> dict:
    """Answers the teacher wrote in this process, and the fraction exactly right."""
    return {'answers_written': self.written,
            'teacher_text_exact_match': self.correct / self.written if self.written else None}
