"""Tests of train/rl.py: group advantages and the GRPO loss by hand, the sampler, one GRPO run."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from model.transformer import Transformer
from train import post, rl
from train.tokenizer import ByteTokenizer

from conftest import numpy_init


def test_group_advantages_are_normalised_within_each_group():
  rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.25, 0.5, 1.0]])
  adv = rl.group_advantages(rewards)
  # Group 0: mean 1/2, population std 1/2. Group 1: all equal, no signal. Group 2: mean 7/16,
  # std sqrt(35/256) (deviations -7/16, -3/16, 1/16, 9/16).
  np.testing.assert_allclose(adv[0], np.array([1, -1, -1, 1]) * 0.5 / (0.5 + 1e-4), rtol=1e-6)
  np.testing.assert_array_equal(adv[1], np.zeros(4))
  std = math.sqrt(35 / 256)
  np.testing.assert_allclose(adv[2], np.array([-7, -3, 1, 9]) / 16 / (std + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-6)


def test_grpo_loss_clips_the_ratio_and_adds_the_k3_penalty():
  old = jnp.zeros((2, 3))
  logp = jnp.full((2, 3), math.log(1.5))  # ρ = 1.5 on every token.
  ref = logp + math.log(0.5)  # π_ref / π_θ = 1/2: k3 = 1/2 - log(1/2) - 1 per token.
  mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  adv = jnp.array([1.0, -1.0])
  k3 = 0.5 - math.log(0.5) - 1
  # A > 0: min(1.5, clip 1.2) = 1.2; A < 0: min(-1.5, -1.2) = -1.5; each row averages its tokens.
  for beta, want in ((0.0, -(1.2 - 1.5) / 2), (0.3, -((1.2 - 0.3 * k3) + (-1.5 - 0.3 * k3)) / 2)):
    loss, metrics = rl.grpo_loss(logp, old, ref, adv, mask, 0.2, beta)
    assert float(loss) == pytest.approx(want, rel=1e-5)
  assert float(metrics['kl']) == pytest.approx(k3, rel=1e-5)
  assert float(metrics['clip_fraction']) == 1.0
  # At the sampling policy (ρ = 1, π_ref = π_θ) the loss is -mean(A): 0 for normalised groups.
  loss, metrics = rl.grpo_loss(old, old, old, jnp.array([0.7, -0.7]), mask, 0.2, 0.1)
  assert float(loss) == pytest.approx(0.0, abs=1e-7) and float(metrics['kl']) == 0.0


def test_the_stream_samples_a_group_per_prompt_and_scores_it():
  cfg = base.get_config().model
  cfg.update(vocab_size=257, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
  model = numpy_init(Transformer, cfg)
  graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)))
  ref_graphdef, ref_state = nnx.split(model)
  p = base.get_config().post
  p.update(method='grpo', tasks='copying', difficulty=2, batch_size=3, group_size=4,
           grpo_updates=2, max_new_tokens=3)
  stream = rl.GroupStream(p, ByteTokenizer(), 24, graphdef, ref_graphdef)
  batch = stream.draw(state, ref_state)
  assert {k: v.shape for k, v in batch.items()} == {k: v.shape for k, v in stream.spec().items()}
  prompt = len('Q:copy 12\nA:')  # Every prompt's bytes; the row starts with eos.
  for g in range(3):  # A prompt's 4 answers are adjacent rows with the same prompt.
    rows = batch['inputs'][4 * g:4 * g + 4, :1 + prompt]
    assert (rows == rows[0]).all() and ByteTokenizer().decode(rows[0, 1:]).startswith('Q:copy ')
  mask = batch['mask']
  assert (mask[:, :prompt] == 0).all() and ((1 <= mask.sum(1)) & (mask.sum(1) <= 3)).all()
  np.testing.assert_allclose(batch['advantages'],
                             rl.group_advantages(batch['rewards'].reshape(3, 4)).ravel())
  assert ((0 <= batch['rewards']) & (batch['rewards'] <= 1)).all()
  m = mask == 1  # The policy is the reference at the start.
  np.testing.assert_allclose(np.asarray(batch['old_logp'])[m], np.asarray(batch['ref_logp'])[m],
                             atol=1e-5)
  assert stream.draw(state, ref_state) is batch  # μ = 2 steps per sampled batch ...
  assert stream.draw(state, ref_state) is not batch  # ... then a new one.
  assert stream.get_state() == b'{"step": 3}'


def test_grpo_with_lora_runs_and_logs(byte_run, tmp_path):
  c = base.get_config()
  c.post.update(base=byte_run, method='grpo', peft='lora', tasks='copying', difficulty=2,
                batch_size=2, group_size=3, steps=3, eval_prompts=4, log_every=1)
  summary = post.run(c, str(tmp_path / 'grpo'))
  with open(tmp_path / 'grpo' / 'curve.json') as f:
    losses = [r['train_loss'] for r in json.load(f)]
  # Step 1 is at the sampling policy, which is the reference: the loss is -mean(A) = 0.
  assert len(losses) == 3 and losses[0] == pytest.approx(0.0, abs=1e-6)
  assert all(math.isfinite(x) for x in losses)
  timing = summary['grpo_timing']
  assert timing['updates_timed'] == 1 and timing['update_seconds_median'] > 0
  assert summary['trainable']['params'] == summary['trainable']['params_closed_form']
  assert summary['tokens'] == 3 * 2 * 3 * 32  # Steps x prompts x group x seq_len.
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(tmp_path / 'grpo'))
