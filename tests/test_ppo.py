"""Tests of train/ppo.py: GAE and the PPO losses by hand, the reward model's Bradley–Terry loss and
a few steps of it, the constitution judge, a tiny rm then ppo run, bad input."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import base
from model.transformer import Transformer
from train import checkpoint, config_check, generate, peft, post, ppo, tasks
from train.tokenizer import ByteTokenizer

from conftest import numpy_init, run_cli_error

BYTE = ByteTokenizer()


def test_gae_matches_a_hand_computation():
  # One row: a prompt token, then 3 answer tokens, then padding.
  mask = jnp.array([[0.0, 1.0, 1.0, 1.0, 0.0]])
  r = jnp.array([[5.0, 0.1, -0.2, 1.0, 7.0]])  # Off-answer rewards and values must not count.
  v = jnp.array([[3.0, 0.5, 0.4, 0.3, 9.0]])
  g, lam = 0.9, 0.8
  d3 = 1.0 - 0.3  # The last answer token: V after it is 0.
  d2 = -0.2 + g * 0.3 - 0.4
  d1 = 0.1 + g * 0.4 - 0.5
  a3 = d3
  a2 = d2 + g * lam * a3
  a1 = d1 + g * lam * a2
  adv, ret = ppo.gae(r, v, mask, g, lam)
  np.testing.assert_allclose(adv[0], [0, a1, a2, a3, 0], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ret[0], [0, a1 + 0.5, a2 + 0.4, a3 + 0.3, 0], rtol=1e-6, atol=1e-7)
  # λ = 1, γ = 1: the return of every answer token is the sum of the rewards from it on.
  _, ret = ppo.gae(r, v, mask, 1.0, 1.0)
  np.testing.assert_allclose(ret[0, 1:4], [0.9, 0.8, 1.0], rtol=1e-6)


def test_token_rewards_put_the_score_on_the_last_answer_token():
  mask = jnp.array([[0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
  old = jnp.full((2, 4), -1.0)
  ref = jnp.full((2, 4), -1.5)  # log π_old - log π_ref = 0.5 on every token.
  r = ppo.token_rewards(jnp.array([2.0, -1.0]), old, ref, mask, 0.1)
  np.testing.assert_allclose(r, [[0, -0.05, 1.95, 0], [0, -0.05, -0.05, -1.05]], rtol=1e-6)
  np.testing.assert_array_equal(ppo.last_answer_index(mask), [2, 3])


def test_whiten_and_the_clipped_losses_against_hand_values():
  mask = jnp.array([[1.0, 1.0, 0.0]])
  w = ppo.whiten(jnp.array([[1.0, 3.0, 100.0]]), mask)
  np.testing.assert_allclose(w, [[-1.0, 1.0, 0.0]], atol=1e-6)  # Mean 2, std 1 over the mask.

  old = jnp.zeros((1, 3))
  logp = jnp.array([[math.log(1.5), math.log(0.5), 0.0]])  # ρ = 1.5, 0.5 (then masked).
  adv = jnp.array([[1.0, 1.0, 5.0]])
  loss, clipped = ppo.policy_loss(logp, old, adv, mask, 0.2)
  # min(1.5·1, 1.2·1) = 1.2; min(0.5·1, 0.8·1) = 0.5: the mean is 0.85.
  assert float(loss) == pytest.approx(-0.85, rel=1e-6) and float(clipped) == 1.0
  loss, _ = ppo.policy_loss(logp, old, -adv, mask, 0.2)  # A < 0: min(-1.5, -1.2), min(-0.5, -0.8).
  assert float(loss) == pytest.approx((1.5 + 0.8) / 2, rel=1e-6)

  values, old_v, ret = jnp.array([[1.0, 0.0, 9.0]]), jnp.array([[0.5, 0.0, 0.0]]), jnp.array(
      [[0.0, 1.0, 0.0]])
  # Token 1: V moved 0.5 from 0.5, clipped to 0.7: max(1², 0.7²) = 1. Token 2: max(1, 1) = 1.
  assert float(ppo.value_loss(values, old_v, ret, mask, 0.2)) == pytest.approx(0.5, rel=1e-6)
  ret = jnp.array([[2.0, 1.0, 0.0]])  # Token 1: max(1², (0.7-2)²=1.69): the clipped one counts.
  assert float(ppo.value_loss(values, old_v, ret, mask, 0.2)) == pytest.approx(
      0.5 * (1.69 + 1.0) / 2, rel=1e-6)


def test_the_rollout_report_separates_prompts_from_answers(monkeypatch):
  monkeypatch.setattr(ppo, 'ROLLOUTS_AVERAGED', 1)  # First and last: one batch each.
  # Two batches of two prompts x two answers: the score follows the task reward inside each
  # prompt, but the second prompt scores lower whatever its answers get.
  scores, rewards = np.array([3.0, 2.0, 0.5, -0.5]), np.array([1.0, 0.0, 1.0, 0.0])
  report = ppo.rollout_report([(scores, rewards), (scores + 1, rewards)], 2)
  assert report['score_first'] == pytest.approx(1.25) and report['score_last'] == pytest.approx(
      2.25)
  assert report['reward_first'] == report['reward_last'] == 0.5
  assert report['score_reward_correlation_within_prompts'] == pytest.approx(1.0)
  assert report['score_reward_correlation'] < 0.5
  assert ppo.rollout_report([], 2) == {'batches': 0}


def _scalar_model():
  cfg = base.get_config().model
  cfg.update(vocab_size=257, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, d_ff=64)
  return ppo.ScalarModel(numpy_init(Transformer, cfg))


def test_bradley_terry_loss_and_a_few_steps_widen_the_margin():
  loss = ppo.bradley_terry_loss(jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0]))
  want = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(2.0)))) / 2
  assert float(loss) == pytest.approx(want, rel=1e-6)

  model = _scalar_model()
  p = base.get_config().post
  p.update(method='rm', tasks='copying', difficulty=2, batch_size=8)
  batch = tasks.pair_batch(np.random.default_rng(0), p, BYTE, 16)
  graphdef, state = nnx.split(model)
  opt = optax.adam(3e-3)

  def step(state, opt_state):
    def f(s):
      return ppo.reward_model_loss(nnx.merge(graphdef, s), batch)
    (value, metrics), grads = jax.value_and_grad(f, has_aux=True)(state)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(state, updates), opt_state, value, metrics['margin']

  step = jax.jit(step)
  opt_state = opt.init(state)
  out = []
  for _ in range(8):
    state, opt_state, value, margin = step(state, opt_state)
    out.append((float(value), float(margin)))
  assert out[0] == pytest.approx((math.log(2), 0.0), abs=1e-6)  # The head starts at zero.
  assert out[-1][1] > 0.1 and out[-1][0] < math.log(2) - 0.05


def test_the_score_is_read_at_the_last_answer_token():
  model = _scalar_model()
  model.head_D[...] = jnp.ones((32,))
  graphdef, state = nnx.split(model)
  jitted = jax.jit(lambda s, b: ppo.sequence_scores(nnx.merge(graphdef, s), b['inputs'],
                                                    b['targets'], b['mask'])[0])

  def score(batch):
    return jitted(state, batch)
  p_ids, a_ids = tasks.encode(BYTE, 'Q:copy 12\nA:', '12')
  batch = tasks.rows_batch([(p_ids, a_ids)], 20, BYTE.eos_id)
  s = float(score(batch))
  after = {k: v.copy() for k, v in batch.items()}
  last = int(ppo.last_answer_index(jnp.asarray(batch['mask']))[0])
  after['inputs'][0, last + 2:] = 65  # Tokens after the answer's eos: causal, so not read.
  assert float(score(after)) == pytest.approx(s, rel=1e-6)
  without_eos = tasks.rows_batch([(p_ids, a_ids[:-1] + [ord('7')])], 20, BYTE.eos_id)
  assert float(score(without_eos)) != pytest.approx(s, rel=1e-3)  # The last token is read.


def test_the_critic_starts_as_the_base_or_the_reward_model():
  rm = _scalar_model()
  rm.head_D[...] = jnp.full((32,), 0.5)
  reward = ppo.Reward(*nnx.split(rm), {})
  policy = numpy_init(Transformer, rm.lm.cfg, seed=1)
  p = base.get_config().post
  p.update(method='ppo')
  model = ppo.wrap(p, policy, reward)
  assert model.lm is policy and float(jnp.sum(jnp.abs(model.critic.head_D[...]))) == 0.0
  np.testing.assert_array_equal(model.critic.lm.embed_VD[...], policy.embed_VD[...])
  assert model.critic.lm.embed_VD[...] is not policy.embed_VD[...]  # A copy: the step donates.
  p.update(ppo_critic_init='reward_model')
  critic = ppo.wrap(p, policy, reward).critic
  np.testing.assert_array_equal(critic.head_D[...], rm.head_D[...])
  np.testing.assert_array_equal(critic.lm.embed_VD[...], rm.lm.embed_VD[...])


def test_the_judge_keeps_its_three_rules():
  add, srt, rec = 'Q:47+38=\nA:', 'Q:sort 2718\nA:', 'Q:b=4 a=7 a?\nA:'
  assert ppo.judge_rules(add, '85') == (True, True, True)  # 7 + 8 = 15: last digit 5.
  assert ppo.judge_rules(add, '84') == (True, True, False)
  assert ppo.judge_rules(add, '8') == (True, False, False)
  assert ppo.judge_rules(add, '8x') == (False, True, False)
  assert ppo.judge_rules(srt, '1278') == (True, True, True)
  assert ppo.judge_rules(srt, '2178') == (True, True, True)  # Order is not checked: cheap.
  assert ppo.judge_rules(srt, '1279') == (True, True, False)
  assert ppo.judge_rules('Q:copy 90\nA:', '9') == (True, False, False)
  assert ppo.judge_rules(rec, '7') == (True, True, True)
  assert ppo.judge_rules(rec, '4') == (True, True, True)  # One of the question's values.
  assert ppo.judge_rules(rec, '') == (False, False, False)
  rng = np.random.default_rng(0)
  assert ppo.judge_prefers(add, '85', '84', rng) and not ppo.judge_prefers(add, '8', '85', rng)
  ties = [ppo.judge_prefers(srt, '2178', '1278', rng) for _ in range(200)]
  assert 60 < sum(ties) < 140  # A coin flip on a tie.

  p = base.get_config().post
  p.update(tasks='addition,sorting,copying,recall', difficulty=3, batch_size=32)
  batch = ppo.judged_pair_batch(np.random.default_rng(1), p, BYTE, 32)
  prompts = [BYTE.decode(r[:np.argmax(m) + 1]) for r, m in zip(batch['inputs'], batch['mask'])]
  answers = [BYTE.decode(t[m == 1][:-1]) for t, m in zip(batch['targets'], batch['mask'])]
  for i in range(32):  # Row i is never below row 32 + i by the judge's rules.
    assert prompts[i] == prompts[32 + i]
    assert ppo.judge_score(prompts[i], answers[i]) >= ppo.judge_score(prompts[i], answers[32 + i])


def _post(base_dir, **kw):
  c = base.get_config()
  c.post.update({'base': base_dir, 'tasks': 'copying', 'difficulty': 2, 'batch_size': 2,
                 'group_size': 2, 'eval_prompts': 2, 'log_every': 1, 'seq_len': 24, **kw})
  return c


def _reward_run(base_dir: str, folder: str) -> None:
  """An rm run's folder as train.post leaves it (config.json, summary.json, a checkpoint), its
  state built as post.run builds it (the base under a scalar head, and the optimizer), not
  trained: the head is set to 0.1s. (Training one costs a whole post.run; the README has one.)"""
  c = _post(base_dir, method='rm', steps=1)
  base_config = generate.load_run_config(base_dir)
  config = post.run_config(c.post, base_config)
  scorer = ppo.wrap(c.post, generate.restore_model(base_dir, base_config)[1])
  opt, _ = peft.adapt(scorer, config)
  scorer.head_D[...] = jnp.full(scorer.head_D.shape, 0.1)
  os.makedirs(folder)
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    f.write(config.to_json())
  with open(os.path.join(folder, 'summary.json'), 'w') as f:
    json.dump({'data': {'tokenizer': 'byte'}, 'reward_model': {'pair_accuracy': 0.5}}, f)
  checkpointer = checkpoint.Checkpointer(folder, None)
  checkpointer.save(1, nnx.state((scorer, opt)), tasks.TaskStream(c.post, BYTE, 24))
  checkpointer.close()


def test_a_ppo_run_writes_finite_summaries(byte_run, tmp_path, capsys):
  rm_dir = str(tmp_path / 'rm')
  _reward_run(byte_run, rm_dir)
  summary = post.run(_post(byte_run, method='ppo', steps=2, reward_model=rm_dir),
                     str(tmp_path / 'ppo'))
  with open(tmp_path / 'ppo' / 'summary.json') as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  with open(tmp_path / 'ppo' / 'curve.json') as f:
    assert all(math.isfinite(r['train_loss']) for r in json.load(f))
  memory = summary['resident_memory']
  assert memory['critic_bytes'] > memory['policy_bytes'] > 0  # The critic: a copy plus its head.
  assert memory['reward_model_bytes'] > memory['policy_bytes'] and memory['reference_bytes'] > 0
  assert summary['reward_model'] == {'run': os.path.abspath(rm_dir), 'step': 1,
                                     'rm_labels': 'truth', 'peft': 'none', 'pair_accuracy': 0.5}
  rollouts = summary['rollouts']
  assert rollouts['batches'] == 2 and math.isfinite(rollouts['score_last'])
  assert summary['trainable']['train_step_memory']['peak_estimate'] > 0
  assert summary['tokens'] == 2 * 2 * 2 * 24

  def err(**kw):
    return run_cli_error(lambda argv: post.run(_post(byte_run, method='ppo', **kw),
                                               str(tmp_path / 'bad')) and 0, [], capsys)
  not_rm = err(reward_model=byte_run)
  assert "post.reward_model=" in not_rm and 'not a reward model' in not_rm
  assert 'post.reward_model' in err(reward_model=str(tmp_path / 'none'))
  assert 'post.method=\'rm\' run' in run_cli_error(
      lambda argv: post.run(_post(rm_dir, method='sft'), str(tmp_path / 'b2')) and 0, [], capsys)


def test_the_pair_stream_follows_rm_labels_and_scores_held_out_pairs():
  model = _scalar_model()
  p = base.get_config().post
  p.update(method='rm', rm_labels='judge', tasks='copying,addition', difficulty=2, batch_size=4,
           eval_prompts=6)
  graphdef, state = nnx.split((model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)))
  stream = ppo.PairStream(p, BYTE, 16, graphdef)
  assert stream.make is ppo.judged_pair_batch and next(stream)['inputs'].shape == (8, 16)
  report = stream.summary(state, None)['reward_model']
  # The head is zero: every score is 0, every pair a tie worth 1/2.
  assert report['pair_accuracy'] == 0.5 and report['mean_margin'] == 0.0
  assert report['held_out_pairs'] == 6 and report['rm_labels'] == 'judge'
  assert 0.5 <= report['judge_agreement'] <= 1.0
  p.update(rm_labels='truth')
  assert ppo.PairStream(p, BYTE, 16, graphdef).make is tasks.pair_batch


def test_bad_ppo_keys_are_named():
  c = _post('x', method='ppo', rm_labels='crowd', ppo_gamma=0.0, ppo_lambda=1.5,
            ppo_value_coef=-1.0, ppo_critic_init='policy')
  errors = '\n'.join(config_check.post_errors(c.post))
  for key in ('post.reward_model is empty', 'post.rm_labels', 'post.ppo_gamma', 'post.ppo_lambda',
              'post.ppo_value_coef', 'post.ppo_critic_init'):
    assert key in errors, key
  assert config_check.post_errors(_post('x', method='ppo', reward_model='r').post) == []
