"""RL with verifiable rewards: GRPO (post.method = 'grpo'), without a critic.

GRPO (Shao et al. 2024, DeepSeekMath). For each prompt q, G = post.group_size
answers o_1..o_G are sampled from the policy as it was at sampling time,
π_old, and scored by train/tasks.py's reward r_i in [0, 1]. Each answer's
advantage is its reward normalised within its group (no value network):

  A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + 1e-4)      (population std; 0 if all equal)

and the policy maximises, per token t of answer i (ρ the probability ratio):

  J(θ) = E_q[ 1/G Σ_i 1/|o_i| Σ_t ( min(ρ_it·A_i, clip(ρ_it, 1-ε, 1+ε)·A_i) - β·KL_it ) ]
  ρ_it = π_θ(o_it | q, o_i,<t) / π_old(o_it | q, o_i,<t)
  KL_it = π_ref/π_θ - log(π_ref/π_θ) - 1   (Schulman's k3 estimator of KL(π_θ ‖ π_ref),
                                           unbiased, >= 0; π_ref the frozen starting policy)

`grpo_loss` is -J on one batch. ε = post.grpo_epsilon, β = post.beta. A
sampled batch serves post.grpo_updates optimizer steps (μ): π_old is the
policy of the first of them, so ρ = 1 at that step and the clip acts from the
second on.

Sampling (`GroupStream`): every μ steps, post.batch_size prompts drawn from the
training split (numpy's generator seeded by (post.seed, cycle)), each decoded
G times by model/decode.py's KV-cache sampler at post.temperature (top-p 1) for
up to post.max_new_tokens tokens (0: difficulty + 2, the longest answer and
its eos in bytes), stopping at eos. Rows are one answer each ([eos] prompt
answer, train/tasks.py's `row`: the mask covers the generated tokens,
the eos included if sampled), the G answers of a prompt adjacent. π_old's and
π_ref's per-token log-probabilities come with the batch, without gradient. A
run resumed inside a cycle samples that cycle again, from the restored policy.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.load import ConfigError
from model import decode
from train import prefs
from train import tasks

ADVANTAGE_EPS = 1e-4  # Added to the group's std: a group of equal rewards gets advantage 0.


def group_advantages(rewards_PG: np.ndarray) -> np.ndarray:
  """A_i = (r_i - mean_g) / (std_g + ADVANTAGE_EPS) within each row (a group): (P, G) -> (P, G)."""
  r = np.asarray(rewards_PG, np.float64)
  mean, std = r.mean(axis=1, keepdims=True), r.std(axis=1, keepdims=True)
  return ((r - mean) / (std + ADVANTAGE_EPS)).astype(np.float32)


def grpo_loss(logp_BT, old_logp_BT, ref_logp_BT, adv_B, mask_BT, epsilon: float, beta: float):
  """-J(θ) of the module docstring on one batch: -> (loss, metrics), nats (float32 scalars).

  logp_BT: the policy's per-token log-probabilities (with gradient); old and
  ref: π_old's and π_ref's (constants); adv_B: each row's advantage; mask_BT: 1
  on the answer's tokens. metrics: kl (mean k3 per answer token), clip_fraction
  (answer tokens whose ratio left [1-ε, 1+ε]).
  """
  mask_BT = mask_BT.astype(jnp.float32)
  ratio_BT = jnp.exp(logp_BT - old_logp_BT)
  adv_B1 = adv_B[:, None]
  surrogate_BT = jnp.minimum(ratio_BT * adv_B1,
                             jnp.clip(ratio_BT, 1 - epsilon, 1 + epsilon) * adv_B1)
  log_r_BT = ref_logp_BT - logp_BT
  kl_BT = jnp.exp(log_r_BT) - log_r_BT - 1
  n_B = jnp.maximum(jnp.sum(mask_BT, axis=-1), 1.0)
  objective_B = jnp.sum((surrogate_BT - beta * kl_BT) * mask_BT, axis=-1) / n_B
  n = jnp.maximum(jnp.sum(mask_BT), 1.0)
  clipped = (jnp.abs(ratio_BT - 1) > epsilon) * mask_BT
  return -jnp.mean(objective_B), {'kl': jnp.sum(kl_BT * mask_BT) / n,
                                  'clip_fraction': jnp.sum(clipped) / n}


def policy_of(model):
  """The language model that samples and is scored: `model` itself, or the `.lm` of a model
  that carries one (train/ppo.py's actor-critic: its policy; its reward model: its body)."""
  return getattr(model, 'lm', model)


def max_new_tokens(p) -> int:
  """Tokens sampled per answer at most: post.max_new_tokens, or difficulty + 2 when 0."""
  return p.max_new_tokens or p.difficulty + 2


class GroupStream:
  """GRPO's batches (module docstring); the data position is the next step, as TaskStream's.

  `draw(state, ref_state)` samples with the policy in the (model, optimizer)
  `state` split with `graphdef`, scores against the reference `ref_state`
  (split with `ref_graphdef`), and also times itself, per sampling cycle:
  `update_seconds` (from the previous draw's end until `state` is computed:
  the update steps, the first one's compile included) and `sample_seconds`
  (sampling, scoring and the two log-probability passes; only cycles whose
  prompt width was sampled before, so no compile is timed).
  """

  def __init__(self, p, tok, seq_len: int, graphdef, ref_graphdef):
    self.p, self.tok, self.seq_len, self.step = p, tok, seq_len, 0
    self.graphdef, self.generator, self.cached = graphdef, None, None
    self.update_seconds, self.sample_seconds, self._end, self.widths = [], [], None, set()

    def logprobs(state, ref_state, inputs, targets):
      policy = policy_of(nnx.merge(graphdef, state)[0])
      ref = nnx.merge(ref_graphdef, ref_state)
      return tuple(prefs.token_logprobs(m.forward(inputs)[0], targets) for m in (policy, ref))

    self.logprobs = jax.jit(logprobs)

  def spec(self) -> dict:
    """The batch's shapes and dtypes (ShapeDtypeStructs), without sampling."""
    B, T = self.p.batch_size * self.p.group_size, self.seq_len
    f32, i32 = jnp.float32, jnp.int32
    shapes = {'inputs': ((B, T), i32), 'targets': ((B, T), i32), 'mask': ((B, T), f32),
              'old_logp': ((B, T), f32), 'ref_logp': ((B, T), f32), 'advantages': ((B,), f32),
              'rewards': ((B,), f32)}
    return {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}

  def draw(self, state, ref_state) -> dict:
    cycle = self.step // self.p.grpo_updates
    if self.cached is None or self.cached[0] != cycle:
      self.cached = (cycle, self._sample(state, ref_state, cycle))
    self.step += 1
    return self.cached[1]

  def _sample(self, state, ref_state, cycle: int) -> dict:
    p, tok = self.p, self.tok
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    if self._end is not None:
      self.update_seconds.append(t0 - self._end)
    rng, G = np.random.default_rng([p.seed, cycle]), p.group_size
    examples = [tasks.draw(tasks.task_names(p.tasks), p.difficulty, rng)
                for _ in range(p.batch_size)]
    prompts = [tok.encode(ex.prompt) for ex in examples]
    width = max(map(len, prompts))  # The sampler compiles once per padded prompt width.
    timed, self.widths = width in self.widths, self.widths | {width}
    outs = self._generate(state, prompts, cycle)
    rewards = np.array([tasks.reward(tasks.completion_text(tok, ids), examples[i // G].answer)
                        for i, ids in enumerate(outs)], np.float32)
    try:
      rows = [tasks.row(prompts[i // G], ids, self.seq_len, tok.eos_id)
              for i, ids in enumerate(outs)]
    except ValueError as e:
      raise ConfigError(f'post.seq_len={self.seq_len}: {e}; raise post.seq_len or lower '
                        f'post.max_new_tokens (now {max_new_tokens(p)})') from None
    inputs, targets, mask = (np.asarray(x, d) for x, d in
                             zip(zip(*rows), (np.int32, np.int32, np.float32)))
    old_logp, ref_logp = map(np.asarray, self.logprobs(state, ref_state, inputs, targets))
    batch = self.complete({'inputs': inputs, 'targets': targets, 'mask': mask,
                           'old_logp': old_logp, 'ref_logp': ref_logp, 'rewards': rewards},
                          state)
    self._end = time.perf_counter()
    if timed:
      self.sample_seconds.append(self._end - t0)
    return batch

  def complete(self, batch: dict, state) -> dict:
    """The sampled batch with its advantages: GRPO's, normalised within each group
    (train/ppo.py's RolloutStream: the critic's and the reward model's, by GAE)."""
    del state
    P, G = self.p.batch_size, self.p.group_size
    return {**batch, 'advantages': group_advantages(batch['rewards'].reshape(P, G)).ravel()}

  def _generate(self, state, prompts, cycle: int) -> list[list[int]]:
    """G sampled answers (token ids, eos last if sampled) per prompt, a prompt's G adjacent."""
    model = policy_of(nnx.merge(self.graphdef, state)[0])
    if self.generator is None:
      self.generator = decode.Generator(model)
    self.generator.state = nnx.state(model)
    tok, G = self.tok, self.p.group_size
    rows = [[tok.eos_id] + q for q in prompts for _ in range(G)]
    return self.generator.generate(rows, max_new_tokens(self.p), temperature=self.p.temperature,
                                   seed=self.p.seed * 1_000_003 + cycle, eos_id=tok.eos_id,
                                   vocab_limit=tok.vocab_size)

  def timing(self) -> dict:
    """Median seconds of a sampling cycle and of an update interval (the class docstring)."""
    def median(xs):
      return float(np.median(xs)) if xs else None
    updates = self.update_seconds[1:]  # The first interval compiles the step.
    return {'sample_seconds_median': median(self.sample_seconds),
            'samples_timed': len(self.sample_seconds),
            'update_seconds_median': median(updates), 'updates_timed': len(updates),
            'updates_per_sample': self.p.grpo_updates}

  def get_state(self) -> bytes:
    return json.dumps({'step': self.step}).encode()

  def set_state(self, state) -> None:
    self.step, self.cached = json.loads(state)['step'], None

  def start_prefetch(self) -> None:  # Called by grain's restore; nothing runs ahead here.
    pass
