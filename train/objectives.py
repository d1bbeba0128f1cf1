"""What each post-training method minimises: a loss of (model, batch, reference state).

post.method -> the loss, on the batches train/post.py (and train/rl.py for
grpo) builds; every loss is in nats, a float32 scalar averaged as its
docstring says, returned with a dict of float32 scalar metrics.

  sft     the answers' NLL per answer token (packed windows, prompt masked)
  dpo, orpo, simpo, kto   train/prefs.py's losses on per-sequence log-probabilities
  grpo    train/rl.py's clipped group-relative objective, KL to the reference
  rm      train/ppo.py's Bradley–Terry loss of a reward model on preference pairs
  ppo     train/ppo.py's clipped policy loss plus the critic's clipped value loss
  distill forward KL to the teacher's distribution at temperature τ (`distill_loss`); with
          post.distill_source='text', sft on the answers the teacher wrote (train/distill.py)

The reference state is the frozen model that dpo, kto, grpo and ppo compare with
(the starting policy) or, for distill, the teacher; it carries no gradient.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from train import ppo
from train import prefs
from train import rl

WITH_REFERENCE = ('dpo', 'kto', 'grpo', 'ppo', 'distill')  # Methods that read a frozen model.


def answer_logprobs(model, batch):
  """(logp_B, n_B): each row's summed answer log-probability (nats) and answer token count."""
  logits_BTV, _ = model.forward(batch['inputs'])
  return prefs.sequence_logprobs(logits_BTV, batch['targets'], batch['mask'])


def distill_loss(student_BTV, teacher_BTV, mask_BT, tau: float):
  """Knowledge distillation (Hinton et al. 2015), forward KL at temperature τ, per masked token:

    L = τ² · Σ_t m_t·KL(p_T^τ(·|t) ‖ p_S^τ(·|t)) / Σ_t m_t,  p^τ = softmax(logits / τ),
    KL(p ‖ q) = Σ_v p_v·(log p_v - log q_v).

  τ² keeps the gradient's scale independent of τ (the soft targets' gradients
  shrink as 1/τ²). Logits (B, T, V), the teacher's without gradient; float32.
  """
  log_s = jax.nn.log_softmax(student_BTV.astype(jnp.float32) / tau, axis=-1)
  log_t = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_BTV).astype(jnp.float32) / tau,
                             axis=-1)
  kl_BT = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
  mask_BT = mask_BT.astype(jnp.float32)
  return tau ** 2 * jnp.sum(kl_BT * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1.0)


def make_loss(p, ref_graphdef):
  """The method's loss of (model, batch, ref_state); ref_state is the frozen model's (or None)."""

  def frozen(ref_state):
    return nnx.merge(ref_graphdef, jax.lax.stop_gradient(ref_state))

  def reference(ref_state, batch):
    return answer_logprobs(frozen(ref_state), batch)[0]

  def sft(model, batch, ref_state):
    logp, n = answer_logprobs(model, batch)
    return -jnp.sum(logp) / jnp.maximum(jnp.sum(n), 1.0), {}

  def paired(model, batch, ref_state):
    logp, n = answer_logprobs(model, batch)
    B = logp.shape[0] // 2
    (w, l), (n_w, n_l) = (logp[:B], logp[B:]), (n[:B], n[B:])
    if p.method == 'dpo':
      ref = reference(ref_state, batch)
      loss = prefs.dpo_loss(w, l, ref[:B], ref[B:], p.beta)
    elif p.method == 'orpo':
      loss = prefs.orpo_loss(w, n_w, l, n_l, p.orpo_lambda)
    else:
      loss = prefs.simpo_loss(w, n_w, l, n_l, p.simpo_beta, p.simpo_gamma)
    margin_B = w / n_w - l / n_l  # Nats per token, chosen minus rejected.
    return loss, {'margin': jnp.mean(margin_B), 'pref_accuracy': jnp.mean(margin_B > 0)}

  def kto(model, batch, ref_state):
    logp, _ = answer_logprobs(model, batch)
    ref = reference(ref_state, batch)
    B = logp.shape[0] // 2
    z_ref = prefs.kto_reference_point(logp[B:], ref[B:])
    loss = prefs.kto_loss(logp[:B], ref[:B], batch['desirable'], z_ref, p.beta, p.kto_lambda_d,
                          p.kto_lambda_u)
    return loss, {'kl_reference_point': z_ref}

  def grpo(model, batch, ref_state):
    logits_BTV, _ = model.forward(batch['inputs'])
    logp_BT = prefs.token_logprobs(logits_BTV, batch['targets'])
    loss, metrics = rl.grpo_loss(logp_BT, batch['old_logp'], batch['ref_logp'],
                                 batch['advantages'], batch['mask'], p.grpo_epsilon, p.beta)
    return loss, {**metrics, 'reward': jnp.mean(batch['rewards'])}  # The sampled answers'.

  def distill(model, batch, ref_state):
    student_BTV, _ = model.forward(batch['inputs'])
    teacher_BTV, _ = frozen(ref_state).forward(batch['inputs'])
    kl = distill_loss(student_BTV, teacher_BTV, batch['mask'], p.distill_temperature)
    return kl, {}

  def rm(model, batch, ref_state):
    return ppo.reward_model_loss(model, batch)

  def ppo_(model, batch, ref_state):
    return ppo.ppo_loss(model, batch, p)

  return {'sft': sft, 'kto': kto, 'grpo': grpo, 'rm': rm, 'ppo': ppo_,
          'distill': sft if p.distill_source == 'text' else distill}.get(p.method, paired)
