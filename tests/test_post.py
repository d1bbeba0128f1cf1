"""Tests of train/post.py: its batches and checks, SFT then DPO and LoRA SFT on conftest's byte_run,
bad input."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import base
from train import config_check, generate, post, tasks
from train.tokenizer import ByteTokenizer

from conftest import run_cli_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BYTE = ByteTokenizer()


def _post(base_dir: str, **overrides):
  c = base.get_config()
  c.post.update({'base': base_dir, 'difficulty': 2, 'batch_size': 8, 'eval_prompts': 16,
                 'log_every': 1, **overrides})
  return c


def _answers(batch, rows):
  """The masked targets of each row, decoded."""
  return [BYTE.decode(batch['targets'][r][batch['mask'][r] == 1]) for r in rows]


def _prompts(batch, rows):
  """Each row's tokens before its answer, decoded (target t is input t + 1)."""
  return [BYTE.decode(batch['inputs'][r][:np.argmax(batch['mask'][r]) + 1]) for r in rows]


def test_pair_and_kto_batches_line_up_their_rows():
  p = _post('unused', method='dpo', batch_size=4).post
  batch = tasks.pair_batch(np.random.default_rng(0), p, BYTE, 32)
  assert batch['inputs'].shape == (8, 32)
  chosen, rejected = _answers(batch, range(4)), _answers(batch, range(4, 8))
  assert _prompts(batch, range(4)) == _prompts(batch, range(4, 8))  # Same prompt, two answers.
  assert all(c != r for c, r in zip(chosen, rejected))
  for prompt, answer in zip(_prompts(batch, range(4)), chosen):
    assert prompt.startswith('Q:') and prompt.endswith('\nA:') and answer.isdigit()

  kto = tasks.kto_batch(np.random.default_rng(0), p, BYTE, 32)
  labelled, kl = _answers(kto, range(4)), _answers(kto, range(4, 8))
  assert kl == labelled[1:] + labelled[:1]  # Row 4 + i: prompt i with the answer of i + 1.
  assert _prompts(kto, range(4)) == _prompts(kto, range(4, 8))
  assert kto['desirable'].dtype == bool and kto['desirable'].shape == (4,)


def test_the_stream_is_a_function_of_the_step_and_checkpoints_it():
  p = _post('unused').post
  stream = tasks.TaskStream(p, BYTE, 32)
  first, second = next(stream), next(stream)
  assert stream.get_state() == b'{"step": 2}'
  stream.set_state(b'{"step": 1}')
  np.testing.assert_array_equal(next(stream)['inputs'], second['inputs'])
  assert not np.array_equal(first['inputs'], second['inputs'])


def test_post_errors_name_each_bad_key():
  assert config_check.post_errors(base.get_config().post) == []
  c = _post('x', method='rlhf', tasks='addition,chess', difficulty=1, lr=0.0, seq_len=-1,
            simpo_gamma=-1.0)
  errors = '\n'.join(config_check.post_errors(c.post))
  for key in ('post.method', 'post.tasks', 'post.difficulty', 'post.lr', 'post.seq_len',
              'post.simpo_gamma'):
    assert key in errors, key


@pytest.fixture(scope='module')
def sft_run(byte_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('post') / 'sft')
  return workdir, post.run(_post(byte_run, method='sft', steps=8, lr=3e-3), workdir)


def test_sft_raises_the_answer_likelihood_and_writes_a_run(sft_run, byte_run):
  workdir, summary = sft_run
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  assert summary['method'] == 'sft' and summary['steps'] == 8 and summary['base_step'] == 30
  assert summary['eval_answer_nll'] < summary['eval_answer_nll_before'] - 0.5
  for key in ('exact_match', 'mean_reward', 'exact_match_before', 'mean_reward_before'):
    assert 0.0 <= summary[key] <= 1.0
  assert set(summary['exact_match_by_task']) == {'addition', 'sorting', 'copying', 'recall'}
  assert math.isfinite(summary['final_train_loss'])
  with open(os.path.join(workdir, 'curve.json')) as f:
    assert [r['step'] for r in json.load(f)] == list(range(1, 9))
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(workdir))
  # The folder is a run that train.generate (and a further post-training) can load.
  config = generate.load_run_config(workdir)
  assert config.post.method == 'sft' and config.train.steps == 8
  assert generate.run_tokenizer(workdir, config).name == 'byte'
  step, _ = generate.restore_model(workdir, config)
  assert step == 8


def test_dpo_after_sft_starts_at_log_2_and_runs(sft_run, tmp_path):
  sft_dir, _ = sft_run
  summary = post.run(_post(sft_dir, method='dpo', steps=3), str(tmp_path / 'dpo'))
  with open(tmp_path / 'dpo' / 'curve.json') as f:
    losses = [r['train_loss'] for r in json.load(f)]
  # The first step's policy is the reference (the frozen SFT model): margin 0, loss log 2.
  assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
  assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
  assert summary['method'] == 'dpo' and summary['base_step'] == 8


def test_lora_sft_raises_the_answer_likelihood_and_reports_what_trains(sft_run, byte_run, tmp_path):
  summary = post.run(_post(byte_run, method='sft', steps=8, lr=3e-3, peft='lora'),
                     str(tmp_path / 'lora'))
  assert summary['eval_answer_nll'] < summary['eval_answer_nll_before'] - 0.5
  lora, full = summary['trainable'], sft_run[1]['trainable']
  # r = 8 and L = 2 on D 64, H·K 64, G·K 32, F 128: r·(d+k) for q, o (64+64), k, v (64+32),
  # gate, up, down (64+128).
  assert lora['params'] == lora['params_closed_form'] == 2 * 8 * (2 * 128 + 2 * 96 + 3 * 192)
  assert [s['params'] == s['closed_form'] for s in lora['sites']] == [True] * 7
  total = summary['params_total']
  assert full['params'] == full['params_closed_form'] == total and lora['params'] < total / 6
  # Adam's two moments (float32) of what trains, plus a few step counters; the base has none.
  for t in (lora, full):
    assert 8 * t['params'] <= t['optimizer_state_bytes'] < 8 * t['params'] + 64
  assert lora['frozen_bytes'] == 4 * total and full['frozen_bytes'] == 0
  assert full['guide_full_ft_bytes'] == 16 * total
  lora_mem, full_mem = lora['train_step_memory'], full['train_step_memory']
  assert 0 < lora_mem['argument_size'] < full_mem['argument_size']
  assert 0 < lora_mem['peak_estimate'] < full_mem['peak_estimate']


def test_distill_moves_the_student_towards_the_teacher(sft_run, byte_run, tmp_path, capsys):
  teacher, _ = sft_run  # SFT'd 8 steps from byte_run; the student is byte_run itself.
  summary = post.run(_post(byte_run, method='distill', teacher=teacher, steps=6, lr=3e-3),
                     str(tmp_path / 'distill'))
  with open(tmp_path / 'distill' / 'curve.json') as f:
    losses = [r['train_loss'] for r in json.load(f)]
  assert losses[-1] < losses[0] - 0.5  # τ² x forward KL to the teacher, nats per answer token.
  assert summary['eval_answer_nll'] < summary['eval_answer_nll_before'] - 0.5
  assert summary['teacher']['run'] == os.path.abspath(teacher)
  assert summary['teacher']['answer_nll'] < summary['eval_answer_nll_before']

  def err(**kw):
    return run_cli_error(lambda argv: post.run(_post(byte_run, method='distill', **kw),
                                               str(tmp_path / 'bad')) and 0, [], capsys)
  assert 'post.teacher is empty' in err()
  assert "post.teacher='" in err(teacher=str(tmp_path / 'none')) and 'no such folder' in err(
      teacher=str(tmp_path / 'none'))


def test_a_peft_run_is_refused_as_a_base(byte_run, tmp_path, capsys):
  os.makedirs(tmp_path / 'lora')
  config = generate.load_run_config(byte_run)
  config.post.update(base=byte_run, peft='lora')
  with open(tmp_path / 'lora' / 'config.json', 'w') as f:
    f.write(config.to_json())
  err = run_cli_error(lambda argv: post.run(_post(str(tmp_path / 'lora')), str(tmp_path / 'w'))
                      and 0, [], capsys)
  assert "post.peft='lora' run" in err and 'post.base=' in err


def test_bad_base_runs_get_one_line(byte_run, tmp_path, capsys):
  def run(**kw):
    return run_cli_error(lambda argv: post.run(_post(**kw), str(tmp_path / 'w')) and 0, [], capsys)
  assert 'post.base=' in run(base_dir=str(tmp_path / 'missing')) and 'no such folder' in run(
      base_dir=str(tmp_path / 'missing'))
  assert 'not a training run' in run(base_dir=str(tmp_path))
  assert 'post.seq_len=8' in run(base_dir=byte_run, seq_len=8)


def test_a_workdir_of_another_post_training_run_is_refused(sft_run, byte_run, capsys):
  sft_dir, _ = sft_run
  err = run_cli_error(lambda argv: post.run(_post(byte_run, method='orpo', steps=8, lr=3e-3),
                                            sft_dir) and 0, [], capsys)
  assert 'post.method' in err and 'different config' in err


def test_command_line_bad_method_exits_2_without_traceback(byte_run, tmp_path):
  p = subprocess.run([sys.executable, '-m', 'train.post', '--config', 'configs/base.py',
                      '--workdir', str(tmp_path / 'w'), f'--config.post.base={byte_run}',
                      '--config.post.method=rlhf'], cwd=REPO, capture_output=True, text=True,
                     timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert p.returncode == 2, p.stderr
  assert "post.method='rlhf'" in p.stderr and 'Traceback' not in p.stderr
  assert p.stderr.startswith('error: ')
