"""RLHF with a learned reward model: the reward model (post.method='rm'), RLAIF's judge, PPO.

Reward model (Ouyang et al. 2022, InstructGPT §3.5). `ScalarModel` is a
transformer (post.base's, full or adapted as post.peft says) with a scalar
head on its final hidden state: v_t = w·norm(h_t) + b, h_t the residual stream
after the last block at position t, `norm` the model's own final RMSNorm,
w (D,) and b zero at init (every score 0). The reward of an answer is v at its
last token, read from the window [eos] prompt answer (`sequence_scores`: the
hidden state that has seen the whole answer, its eos included). Trained with
the Bradley–Terry loss on preference pairs:

  L_RM = -E[ log σ( r(x, y_w) - r(x, y_l) ) ]                 (nats per pair)

post.rm_labels says who picked y_w: 'truth' (train/tasks.py's pairs: the
correct answer over a corruption) or 'judge' (RLAIF, Bai et al. 2022,
Constitutional AI: the same pairs relabelled by `judge_prefers`, which never
sees the answer key). The run's summary.json holds `reward_model`: accuracy
on held-out pairs (post.eval_prompts held-out prompts, labels from the truth),
per corruption kind, and how often the judge agrees with the truth there.

The constitution (`judge_rules`), checked from the prompt and answer text alone:
  1. answer with digits only (non-empty);
  2. give an answer of the right length: addition of n-digit numbers n or n+1
     digits, sorting and copying as many digits as the question, recall one;
  3. be consistent with the question (a cheap necessary condition, not a
     solution): addition's last digit is (a + b) mod 10, sorting's and
     copying's digits are the question's digits (any order), recall's value is
     one of the question's values.
The judge prefers the answer that keeps more rules; on a tie it flips a
seeded coin. It shows the mechanism of AI feedback, not its quality.

PPO (Schulman et al. 2017; the RLHF form of Ziegler et al. 2019). The model is
an `ActorCritic`: the policy (post.base, adapted as post.peft says) and a
critic, a ScalarModel (value v_t at every answer token) that starts as a full
copy of the policy with a zero head, or with post.ppo_critic_init =
'reward_model' as a copy of the reward model (InstructGPT's choice), adapted
as post.peft says; the two train together under one AdamW. Sampling is
train/rl.py's (`RolloutStream` is its GroupStream: post.batch_size prompts x
post.group_size answers by the KV-cache sampler, π_old's and π_ref's per-token
log-probabilities). Then, per answer token t of a row (T its last), without
gradient:

  r_t = -β·(log π_old(y_t) - log π_ref(y_t)) + [t = T]·RM(x, y)   (`token_rewards`)
  δ_t = r_t + γ·V(s_{t+1}) - V(s_t),  V(s_{T+1}) = 0                 (`gae`)
  Â_t = Σ_k (γλ)^k δ_{t+k},  R_t = Â_t + V(s_t)
  A_t = (Â_t - mean Â) / (std Â + 1e-8), over the batch's answer tokens  (`whiten`)

and the step minimises, averaged over the batch's answer tokens (ρ_t = π_θ/π_old):

  L = -mean_t min(ρ_t·A_t, clip(ρ_t, 1-ε, 1+ε)·A_t)                    (`policy_loss`)
      + c_v · ½·mean_t max((V_t - R_t)², (V_old,t + clip(V_t - V_old,t, ±ε_v) - R_t)²)
                                                                      (`value_loss`)

β = post.beta, γ = post.ppo_gamma, λ = post.ppo_lambda, ε = post.grpo_epsilon,
ε_v = post.ppo_value_clip, c_v = post.ppo_value_coef; μ = post.grpo_updates
steps per sampled batch. No entropy bonus. The reward model is frozen and held
by the stream, outside the train step; the reference is the frozen starting
policy, as GRPO's. What PPO keeps on the device that GRPO does not: the
critic (a second model and its AdamW moments) and the reward model
(`resident_memory` counts each).

An rm or ppo run's checkpoints hold the model with its head (and critic),
which train.generate and a further post.base do not load.
"""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.load import ConfigError
from model import qat, sharding
from model.transformer import Transformer
from train import generate
from train import peft
from train import prefs
from train import rl
from train import tasks

WHITEN_EPS = 1e-8  # Added to the advantages' std in `whiten`.
EVAL_PAIRS_SEED = 7  # Seeds the corruptions of the held-out pairs (with post.seed).
UNLOADABLE = ('rm', 'ppo')  # Methods whose checkpoints hold more than a language model.
ROLLOUTS_AVERAGED = 10  # summary.json's `rollouts`: means over the first and last 10 batches.


# ---- Models.

class Head(peft.Adapter):
  """A scalar head's numbers: an nnx.Param (trains in full fine-tuning) and a peft.Adapter
  (trains under post.peft, on the frozen base)."""


class ScalarModel(nnx.Module):
  """A transformer with a scalar head: tokens (B, T) int32 -> v (B, T) float32 (see above)."""

  def __init__(self, lm: Transformer):
    self.lm = lm
    self.head_D = Head(jnp.zeros((lm.cfg.d_model,), jnp.float32))
    self.bias = Head(jnp.zeros((), jnp.float32))

  def __call__(self, tokens_BT):
    lm = qat.fake_quantized(self.lm, getattr(self.lm.cfg, 'qat', 'none'))
    x_BTD, _ = lm.residual(tokens_BT)
    h_BTD = lm.final_norm(x_BTD).astype(jnp.float32)
    return h_BTD @ self.head_D[...] + self.bias[...]


class ActorCritic(nnx.Module):
  """PPO's trained pair: the policy `lm` (a Transformer) and the critic (a ScalarModel)."""

  def __init__(self, lm: Transformer, critic: ScalarModel):
    self.lm, self.critic = lm, critic


def copy_of(module):
  """`module` with its own copy of every array (the train step donates the originals)."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def wrap(p, model, reward=None):
  """What post.method trains from the restored base `model`: for rm a ScalarModel, for ppo an
  ActorCritic whose critic starts as a copy of the base with a zero head, or of the reward
  model (post.ppo_critic_init); else `model` itself."""
  if p.method == 'rm':
    return ScalarModel(model)
  if p.method == 'ppo':
    if p.ppo_critic_init == 'reward_model':
      return ActorCritic(model, copy_of(nnx.merge(reward.graphdef, reward.state)))
    return ActorCritic(model, ScalarModel(copy_of(model)))
  return model


# ---- The reward model.

def last_answer_index(mask_BT):
  """(B,) int32: each row's last answer position t (mask_BT[b, t] = 1; T - 1 for a row without)."""
  T = mask_BT.shape[1]
  return (T - 1 - jnp.argmax(mask_BT[:, ::-1] > 0, axis=1)).astype(jnp.int32)


def sequence_scores(model: ScalarModel, inputs_BT, targets_BT, mask_BT):
  """(B,) float32: the scalar model at each row's last answer token, over the window
  [inputs, last target] (T + 1 tokens: position t + 1 has read target t)."""
  window_BW = jnp.concatenate([inputs_BT, targets_BT[:, -1:]], axis=1)
  values_BW = model(window_BW)
  at_B1 = (last_answer_index(mask_BT) + 1)[:, None]
  return jnp.take_along_axis(values_BW, at_B1, axis=1)[:, 0]


def bradley_terry_loss(r_w, r_l):
  """L_RM = -mean log σ(r_w - r_l): nats per pair; r_w, r_l (B,) the chosen's and rejected's."""
  return -jnp.mean(jax.nn.log_sigmoid(r_w - r_l))


def reward_model_loss(model: ScalarModel, batch):
  """rm's loss on a pair batch (rows 0..B-1 chosen, B..2B-1 rejected): -> (loss, metrics)."""
  s_B = sequence_scores(model, batch['inputs'], batch['targets'], batch['mask'])
  B = s_B.shape[0] // 2
  margin_B = s_B[:B] - s_B[B:]
  return bradley_terry_loss(s_B[:B], s_B[B:]), {'margin': jnp.mean(margin_B),
                                                'pref_accuracy': jnp.mean(margin_B > 0)}


# ---- RLAIF: the constitution judge.

def _expected(question: str, answer: str) -> tuple[set[int], bool]:
  """(answer lengths the question allows, whether the answer is consistent with it): rules 2, 3."""
  if m := re.fullmatch(r'(\d+)\+(\d+)=', question):
    a, b = m.groups()
    n = max(len(a), len(b))
    return {n, n + 1}, answer[-1:] == str((int(a[-1]) + int(b[-1])) % 10)
  if m := re.fullmatch(r'(?:sort|copy) (\d+)', question):
    return {len(m.group(1))}, sorted(answer) == sorted(m.group(1))
  if m := re.fullmatch(r'((?:[a-z]=\d )+)[a-z]\?', question):
    return {1}, answer in re.findall(r'=(\d)', m.group(1))
  return set(), False


def judge_rules(prompt: str, answer: str) -> tuple[bool, bool, bool]:
  """The constitution's three rules (module docstring) for `answer` to `prompt`, from the text."""
  question = prompt.removeprefix('Q:').removesuffix('\nA:')
  lengths, consistent = _expected(question, answer)
  return answer.isdigit(), len(answer) in lengths, consistent


def judge_score(prompt: str, answer: str) -> int:
  """How many of the constitution's rules `answer` keeps: 0..3."""
  return sum(judge_rules(prompt, answer))


def judge_prefers(prompt: str, a: str, b: str, rng: np.random.Generator) -> bool:
  """Whether the judge prefers answer `a` to `b`: more rules kept; on a tie a coin from `rng`."""
  sa, sb = judge_score(prompt, a), judge_score(prompt, b)
  return sa > sb if sa != sb else bool(rng.random() < 0.5)


def judged_pair(ex: tasks.Example, rng: np.random.Generator) -> tasks.Pair:
  """train/tasks.py's pair for `ex`, chosen and rejected as the judge orders them."""
  pair = tasks.preference_pair(ex, rng)
  if judge_prefers(pair.prompt, pair.chosen, pair.rejected, rng):
    return pair
  return dataclasses.replace(pair, chosen=pair.rejected, rejected=pair.chosen,
                             quality=tasks.reward(pair.chosen, ex.answer))


def judged_pair_batch(rng, p, tok, seq_len: int) -> dict:
  """tasks.pair_batch with the judge's labels: rows 0..B-1 the judge's chosen, B..2B-1 the other."""
  names = tasks.task_names(p.tasks)
  pairs = [judged_pair(tasks.draw(names, p.difficulty, rng), rng) for _ in range(p.batch_size)]
  encoded = ([tasks.encode(tok, q.prompt, q.chosen) for q in pairs] +
             [tasks.encode(tok, q.prompt, q.rejected) for q in pairs])
  return tasks.rows_batch(encoded, seq_len, tok.eos_id)


def _half_credit(a, b) -> np.ndarray:
  """1 where a > b, 1/2 where equal, 0 where below (elementwise)."""
  a, b = np.asarray(a), np.asarray(b)
  return (a > b) + 0.5 * (a == b)


def rm_report(model: ScalarModel, p, tok, seq_len: int) -> dict:
  """Held-out pair accuracy (labels from the truth; a tie counts 1/2), per corruption kind, the
  mean margin r_w - r_l, and the judge's agreement with the truth on the same pairs."""
  rng = np.random.default_rng([p.seed, EVAL_PAIRS_SEED])
  examples = tasks.draw_many(p.eval_prompts, tasks.task_names(p.tasks), p.difficulty, p.seed,
                             'eval')
  pairs = [tasks.preference_pair(ex, rng) for ex in examples]
  encoded = ([tasks.encode(tok, q.prompt, q.chosen) for q in pairs] +
             [tasks.encode(tok, q.prompt, q.rejected) for q in pairs])
  batch = tasks.rows_batch(encoded, seq_len, tok.eos_id)
  graphdef, state = nnx.split(model)
  score = jax.jit(lambda s, b: sequence_scores(nnx.merge(graphdef, s), b['inputs'], b['targets'],
                                               b['mask']))
  s_B = np.asarray(score(state, batch))
  n = len(pairs)
  right = _half_credit(s_B[:n], s_B[n:])
  judge = _half_credit([judge_score(q.prompt, q.chosen) for q in pairs],
                       [judge_score(q.prompt, q.rejected) for q in pairs])
  by_kind = {k: [r for r, q in zip(right, pairs) if q.kind == k] for k in {q.kind for q in pairs}}
  return {'rm_labels': p.rm_labels, 'held_out_pairs': n, 'pair_accuracy': float(right.mean()),
          'pair_accuracy_by_kind': {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
          'mean_margin': float(np.mean(s_B[:n] - s_B[n:])),
          'judge_agreement': float(judge.mean())}


class PairStream(tasks.TaskStream):
  """rm's batches: post.batch_size pairs a step, labelled as post.rm_labels says (TaskStream's
  data position and checkpointing); `summary` scores the held-out pairs."""

  def __init__(self, p, tok, seq_len: int, graphdef):
    super().__init__(p, tok, seq_len)
    self.make = judged_pair_batch if p.rm_labels == 'judge' else tasks.pair_batch
    self.graphdef = graphdef

  def summary(self, state, ref_state) -> dict:
    """summary.json's `reward_model` (rm_report) for the (model, optimizer) `state`."""
    del ref_state
    return {'reward_model': rm_report(nnx.merge(self.graphdef, state)[0], self.p, self.tok,
                                      self.seq_len)}


@dataclasses.dataclass
class Reward:
  """A frozen reward model on the device, and what summary.json says about it."""
  graphdef: nnx.GraphDef
  state: nnx.State
  info: dict


def _reward_config(key: str, folder: str, tok, base_config):
  """The reward-model run's config, after the checks that need no device."""
  try:
    config = generate.load_run_config(folder)
    rm_tok = generate.run_tokenizer(folder, config)
  except ConfigError as e:
    raise ConfigError(f'{key}={folder!r}: {e}') from None
  if config.post.method != 'rm':
    raise ConfigError(f'{key}={folder!r} is not a reward model: it was trained with post.method='
                      f'{config.post.method!r}; train one with post.method=\'rm\'')
  mine, theirs = (tok.name, base_config.model.vocab_size), (rm_tok.name, config.model.vocab_size)
  if mine != theirs:
    raise ConfigError(f'{key}={folder!r}: tokenizer {theirs[0]!r} and vocab_size {theirs[1]}, but '
                      f'post.base has {mine[0]!r} and {mine[1]}; the reward model reads the '
                      'policy\'s tokens, so both need the same')
  return config


def _abstract_reward_run(config, replicated):
  """(graphdef, abstract state) of an rm run's (model, optimizer), as train/post.py built it."""
  def build():
    model = ScalarModel(Transformer(config.model, rngs=nnx.Rngs(0)))
    return model, peft.adapt(model, config)[0]

  with sharding.use_mesh(replicated.mesh):
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
  return graphdef, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)


def load_reward_model(p, tok, base_config, replicated) -> Reward:
  """ppo's reward model: post.reward_model's newest intact checkpoint, placed with `replicated`.

  ConfigError naming post.reward_model for a folder that is no run, no rm run
  (post.method='rm'), one of another tokenizer or vocabulary, or one without
  an intact checkpoint. The optimizer state is restored with it and dropped.
  """
  key, folder = 'post.reward_model', p.reward_model
  config = _reward_config(key, folder, tok, base_config)
  if p.ppo_critic_init == 'reward_model' and config.post.peft != 'none':
    raise ConfigError(f"post.ppo_critic_init='reward_model' needs a reward model trained without "
                      f"post.peft; {key}={folder!r} has post.peft={config.post.peft!r}")
  graphdef, abstract = _abstract_reward_run(config, replicated)
  step, state = generate.restore_latest(folder, abstract, name=f'{key}={folder!r}')
  rm_graphdef, rm_state = nnx.split(nnx.merge(graphdef, state)[0])
  summary = os.path.join(folder, 'summary.json')
  held_out = {}
  if os.path.isfile(summary):
    with open(summary) as f:
      held_out = json.load(f).get('reward_model') or {}
  info = {'run': os.path.abspath(folder), 'step': step, 'rm_labels': config.post.rm_labels,
          'peft': config.post.peft, 'pair_accuracy': held_out.get('pair_accuracy')}
  return Reward(rm_graphdef, rm_state, info)


# ---- PPO: one function per equation of the module docstring.

def token_rewards(scores_B, old_logp_BT, ref_logp_BT, mask_BT, beta: float):
  """r_t = -β·(log π_old - log π_ref) on answer tokens, plus the reward model's score at the
  last one: (B, T) float32, 0 off the answer."""
  mask_BT = mask_BT.astype(jnp.float32)
  last_BT = jax.nn.one_hot(last_answer_index(mask_BT), mask_BT.shape[1]) * mask_BT
  return -beta * (old_logp_BT - ref_logp_BT) * mask_BT + scores_B[:, None] * last_BT


def gae(rewards_BT, values_BT, mask_BT, gamma: float, lam: float):
  """(Â_BT, R_BT): generalised advantage estimation (Schulman et al. 2016) over each row's
  answer tokens, which end its episode (V = 0 after the last); both 0 off the answer.

    δ_t = r_t + γ·V_{t+1} - V_t,   Â_t = δ_t + γλ·Â_{t+1},   R_t = Â_t + V_t
  """
  m_BT = mask_BT.astype(jnp.float32)
  v_BT = values_BT * m_BT
  next_BT = jnp.concatenate([v_BT[:, 1:], jnp.zeros_like(v_BT[:, :1])], axis=1)
  delta_BT = (rewards_BT + gamma * next_BT - v_BT) * m_BT

  def back(adv_next_B, x):
    delta_B, m_B = x
    adv_B = (delta_B + gamma * lam * adv_next_B) * m_B
    return adv_B, adv_B

  _, adv_TB = jax.lax.scan(back, jnp.zeros_like(v_BT[:, 0]), (delta_BT.T, m_BT.T), reverse=True)
  return adv_TB.T, (adv_TB.T + v_BT) * m_BT


def whiten(adv_BT, mask_BT):
  """(Â - mean) / (std + WHITEN_EPS) over the masked tokens of the batch; 0 off the mask."""
  m_BT = mask_BT.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(m_BT), 1.0)
  mean = jnp.sum(adv_BT * m_BT) / n
  std = jnp.sqrt(jnp.sum(jnp.square(adv_BT - mean) * m_BT) / n)
  return (adv_BT - mean) / (std + WHITEN_EPS) * m_BT


def _token_mean(x_BT, m_BT):
  return jnp.sum(x_BT * m_BT) / jnp.maximum(jnp.sum(m_BT), 1.0)


def policy_loss(logp_BT, old_logp_BT, adv_BT, mask_BT, epsilon: float):
  """(-mean_t min(ρ_t·A_t, clip(ρ_t, 1-ε, 1+ε)·A_t), the fraction of tokens whose ρ left
  [1-ε, 1+ε]), over the answer tokens."""
  m_BT = mask_BT.astype(jnp.float32)
  ratio_BT = jnp.exp(logp_BT - old_logp_BT)
  surrogate_BT = jnp.minimum(ratio_BT * adv_BT,
                             jnp.clip(ratio_BT, 1 - epsilon, 1 + epsilon) * adv_BT)
  return -_token_mean(surrogate_BT, m_BT), _token_mean(jnp.abs(ratio_BT - 1) > epsilon, m_BT)


def value_loss(values_BT, old_values_BT, returns_BT, mask_BT, clip: float):
  """½·mean_t max((V - R)², (V_old + clip(V - V_old, -ε_v, ε_v) - R)²) over the answer tokens."""
  m_BT = mask_BT.astype(jnp.float32)
  clipped_BT = old_values_BT + jnp.clip(values_BT - old_values_BT, -clip, clip)
  worst_BT = jnp.maximum(jnp.square(values_BT - returns_BT), jnp.square(clipped_BT - returns_BT))
  return 0.5 * _token_mean(worst_BT, m_BT)


def ppo_loss(model: ActorCritic, batch, p):
  """L of the module docstring on one rollout batch: -> (loss, metrics: value_loss,
  clip_fraction, kl (mean log π_θ - log π_ref per answer token), reward (the sampled answers'
  task reward, not trained on), score (their reward-model score))."""
  logits_BTV, _ = model.lm.forward(batch['inputs'])
  logp_BT = prefs.token_logprobs(logits_BTV, batch['targets'])
  values_BT = model.critic(batch['inputs'])
  mask_BT = batch['mask'].astype(jnp.float32)
  pl, clip_fraction = policy_loss(logp_BT, batch['old_logp'], batch['advantages'], mask_BT,
                                  p.grpo_epsilon)
  vl = value_loss(values_BT, batch['old_values'], batch['returns'], mask_BT, p.ppo_value_clip)
  return pl + p.ppo_value_coef * vl, {
      'value_loss': vl, 'clip_fraction': clip_fraction,
      'kl': _token_mean(logp_BT - batch['ref_logp'], mask_BT),
      'reward': jnp.mean(batch['rewards']), 'score': jnp.mean(batch['scores'])}


def resident_memory(model, opt, ref_state, reward_state=None) -> dict:
  """Bytes held on the device between steps, by part: the policy, the critic (0 without one),
  the optimizer state, the frozen reference and the reward model (0 without), and their total."""
  critic = getattr(model, 'critic', None)
  out = {'policy_bytes': peft.nbytes(nnx.state(rl.policy_of(model))),
         'critic_bytes': peft.nbytes(nnx.state(critic)) if critic is not None else 0,
         'optimizer_state_bytes': peft.nbytes(nnx.state(opt)),
         'reference_bytes': peft.nbytes(ref_state) if ref_state is not None else 0,
         'reward_model_bytes': peft.nbytes(reward_state) if reward_state is not None else 0}
  out['total_bytes'] = sum(out.values())
  return out


def _correlation(x, y) -> float | None:
  """Pearson's r of two equal-length arrays; None where either is constant."""
  x, y = np.ravel(x), np.ravel(y)
  return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else None


def rollout_report(history, group_size: int) -> dict:
  """The sampled answers' mean reward-model score and task reward over the first and the last
  ROLLOUTS_AVERAGED batches of `history` ((scores (B,), task rewards (B,)) per batch), and how
  well the score tracks the task reward: Pearson's r over every answer, and within prompts
  (each group's mean removed: what a per-prompt baseline leaves)."""
  if not history:
    return {'batches': 0}
  n = ROLLOUTS_AVERAGED
  s, r = (np.stack([h[i] for h in history]) for i in (0, 1))  # (batches, B)

  def centred(x):
    g = x.reshape(len(x), -1, group_size)
    return g - g.mean(axis=-1, keepdims=True)

  return {'batches': len(history), 'averaged': min(n, len(history)),
          'score_first': float(s[:n].mean()), 'score_last': float(s[-n:].mean()),
          'reward_first': float(r[:n].mean()), 'reward_last': float(r[-n:].mean()),
          'score_reward_correlation': _correlation(s, r),
          'score_reward_correlation_within_prompts': _correlation(centred(s), centred(r))}


class RolloutStream(rl.GroupStream):
  """PPO's batches: GroupStream's samples, then the critic's values, the reward model's scores,
  the per-token rewards, GAE and the whitened advantages (module docstring), in one jitted call."""

  def __init__(self, p, tok, seq_len: int, graphdef, ref_graphdef, reward: Reward):
    super().__init__(p, tok, seq_len, graphdef, ref_graphdef)
    self.reward, self.history = reward, []  # history: (scores, task rewards) (B,) per batch.

    def advantages(state, reward_state, batch):
      model = nnx.merge(graphdef, state)[0]
      mask_BT = batch['mask']
      values_BT = model.critic(batch['inputs']) * mask_BT
      scores_B = sequence_scores(nnx.merge(reward.graphdef, reward_state), batch['inputs'],
                                 batch['targets'], mask_BT)
      rewards_BT = token_rewards(scores_B, batch['old_logp'], batch['ref_logp'], mask_BT, p.beta)
      adv_BT, returns_BT = gae(rewards_BT, values_BT, mask_BT, p.ppo_gamma, p.ppo_lambda)
      return {'old_values': values_BT, 'returns': returns_BT,
              'advantages': whiten(adv_BT, mask_BT), 'scores': scores_B}

    self.advantages = jax.jit(advantages)

  def complete(self, batch: dict, state) -> dict:
    keys = ('inputs', 'targets', 'mask', 'old_logp', 'ref_logp')
    out = jax.device_get(self.advantages(state, self.reward.state, {k: batch[k] for k in keys}))
    self.history.append((out['scores'], batch['rewards']))
    return {**batch, **out}

  def spec(self) -> dict:
    spec = super().spec()
    BT = spec['mask']
    return {**spec, 'advantages': BT, 'old_values': BT, 'returns': BT,
            'scores': jax.ShapeDtypeStruct(spec['rewards'].shape, jnp.float32)}

  def summary(self, state, ref_state) -> dict:
    """summary.json's ppo parts: timing, the reward model, the rollouts (`rollout_report`) and
    the resident memory by part."""
    model, opt = nnx.merge(self.graphdef, state)
    return {'ppo_timing': self.timing(), 'reward_model': self.reward.info,
            'rollouts': rollout_report(self.history, self.p.group_size),
            'resident_memory': resident_memory(model, opt, ref_state, self.reward.state)}
