"""The preference-loss family on per-sequence log-probabilities: DPO, ORPO, SimPO, KTO.

Every loss is a pure function of per-sequence numbers (shape (B,), float32):
`logp` is log π(y|x) = Σ_t log π(y_t | x, y_<t), the summed log-probability in
nats of an answer's tokens, and `n` its token count; `sequence_logprobs` makes
both from a forward pass (`token_logprobs`: the per-token numbers). Each returns
the loss averaged over the batch (a float32 scalar, nats). Suffixes: _w the
chosen (winning) answers, _l the rejected (losing) ones, policy π_θ, reference
π_ref (fixed: its numbers carry no gradient), σ the logistic function.
"""

import jax
import jax.numpy as jnp

# Average log-probabilities are capped just below 0 so that log(1 - P) stays finite (ORPO).
_MAX_MEAN_LOGP = -1e-6


def token_logprobs(logits_BTV, targets_BT):
  """log π(targets_BT[b, t] | inputs up to t): (B, T) nats in float32, from their logits."""
  logits_BTV = logits_BTV.astype(jnp.float32)
  logz_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
  return jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0] - logz_BT


def sequence_logprobs(logits_BTV, targets_BT, mask_BT):
  """(logp_B, n_B): summed log-probabilities (nats) of the masked targets, and their count.

  logits_BTV[b, t] predicts targets_BT[b, t]; mask_BT is 1 on answer tokens, 0
  elsewhere (train/tasks.py). Computed in float32.
  """
  mask_BT = mask_BT.astype(jnp.float32)
  return (jnp.sum(token_logprobs(logits_BTV, targets_BT) * mask_BT, axis=-1),
          jnp.sum(mask_BT, axis=-1))


def dpo_loss(logp_w, logp_l, ref_logp_w, ref_logp_l, beta: float):
  """DPO (Rafailov et al. 2023), against a reference model π_ref:

    L = -E[ log σ( β·log(π_θ(y_w|x) / π_ref(y_w|x)) - β·log(π_θ(y_l|x) / π_ref(y_l|x)) ) ]
  """
  margin = beta * ((logp_w - ref_logp_w) - (logp_l - ref_logp_l))
  return -jnp.mean(jax.nn.log_sigmoid(margin))


def _log_odds(logp, n):
  """log(P / (1 - P)) with P = exp(logp / n), the length-normalised likelihood."""
  mean = jnp.minimum(logp / jnp.maximum(n, 1.0), _MAX_MEAN_LOGP)
  return mean - jnp.log(-jnp.expm1(mean))


def orpo_loss(logp_w, n_w, logp_l, n_l, lam: float):
  """ORPO (Hong et al. 2024), no reference model:

    L = E[ L_SFT + λ·L_OR ],  L_SFT = -log π_θ(y_w|x) / |y_w|  (per-token NLL of the chosen),
    L_OR = -log σ( log odds_θ(y_w|x) - log odds_θ(y_l|x) ),
    odds_θ(y|x) = P_θ(y|x) / (1 - P_θ(y|x)),  P_θ(y|x) = exp(log π_θ(y|x) / |y|).
  """
  sft = -logp_w / jnp.maximum(n_w, 1.0)
  ratio = -jax.nn.log_sigmoid(_log_odds(logp_w, n_w) - _log_odds(logp_l, n_l))
  return jnp.mean(sft + lam * ratio)


def simpo_loss(logp_w, n_w, logp_l, n_l, beta: float, gamma: float):
  """SimPO (Meng et al. 2024), no reference model, length-normalised, target margin γ:

    L = -E[ log σ( β/|y_w|·log π_θ(y_w|x) - β/|y_l|·log π_θ(y_l|x) - γ ) ]
  """
  margin = beta * (logp_w / jnp.maximum(n_w, 1.0) - logp_l / jnp.maximum(n_l, 1.0)) - gamma
  return -jnp.mean(jax.nn.log_sigmoid(margin))


def kto_reference_point(kl_logp, kl_ref_logp):
  """KTO's z_ref = max(0, mean(log π_θ(y'|x) - log π_ref(y'|x))), without gradient.

  The KL estimate of Ethayarajh et al. 2024: over mismatched pairs (x, y') of a
  batch, y' an answer to another prompt, clamped at 0.
  """
  return jax.lax.stop_gradient(jnp.maximum(jnp.mean(kl_logp - kl_ref_logp), 0.0))


def kto_loss(logp, ref_logp, desirable, z_ref, beta: float, lambda_d: float, lambda_u: float):
  """KTO (Ethayarajh et al. 2024), unpaired answers labelled desirable (True) or not:

    r_θ(x, y) = log π_θ(y|x) - log π_ref(y|x),   z_ref from `kto_reference_point`,
    v(x, y) = λ_D·σ(β·(r_θ(x, y) - z_ref))  if y is desirable,
              λ_U·σ(β·(z_ref - r_θ(x, y)))  if y is undesirable,
    L = E[ λ_y - v(x, y) ].
  """
  r = logp - ref_logp
  v = jnp.where(desirable, lambda_d * jax.nn.sigmoid(beta * (r - z_ref)),
                lambda_u * jax.nn.sigmoid(beta * (z_ref - r)))
  return jnp.mean(jnp.where(desirable, lambda_d, lambda_u) - v)
