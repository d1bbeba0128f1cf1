"""Tests of train/prefs.py: each preference loss against a hand computation, and on a toy pair set."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import prefs

def A(*x):
  return jnp.asarray(x, jnp.float32)


def test_sequence_logprobs_sum_the_masked_targets():
  # Position 0: uniform over 3 ids, log p = -ln 3. Position 1: logits (ln 2, 0, 0), p = (1/2, 1/4, 1/4).
  logits = jnp.asarray([[[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]]])
  targets = jnp.asarray([[2, 0]])
  logp, n = prefs.sequence_logprobs(logits, targets, jnp.asarray([[1.0, 1.0]]))
  np.testing.assert_allclose(logp, [-math.log(3.0) + math.log(0.5)], rtol=1e-6)
  np.testing.assert_allclose(n, [2.0])
  logp, n = prefs.sequence_logprobs(logits, targets, jnp.asarray([[0.0, 1.0]]))  # The answer only.
  np.testing.assert_allclose(logp, [math.log(0.5)], rtol=1e-6)
  np.testing.assert_allclose(n, [1.0])


def test_dpo_by_hand():
  # Pair 1: β((-2 + 2.5) - (-3 + 2.5)) = 0.5 -> log(1 + e^-0.5) = 0.474077.
  # Pair 2: β((-4 + 3) - (-1 + 2)) = -1 -> log(1 + e^1) = 1.313262. Mean 0.893669.
  loss = prefs.dpo_loss(A(-2.0, -4.0), A(-3.0, -1.0), A(-2.5, -3.0), A(-2.5, -2.0), beta=0.5)
  np.testing.assert_allclose(loss, 0.8936693358491647, rtol=1e-6)
  # Policy equal to the reference: margin 0, loss log 2 whatever the log-probs.
  np.testing.assert_allclose(prefs.dpo_loss(A(-2.0), A(-7.0), A(-2.0), A(-7.0), 0.1), math.log(2),
                             rtol=1e-6)


def test_orpo_by_hand():
  # Chosen: -1 nats over 2 tokens, mean -0.5, log odds = -0.5 - ln(1 - e^-0.5) = 0.432752.
  # Rejected: -3 over 2, mean -1.5, log odds = -1.5 - ln(1 - e^-1.5) = -1.247518.
  # L_OR = log(1 + e^-(0.432752 + 1.247518)) = 0.170859; L_SFT = 0.5; λ = 0.1 -> 0.517086.
  loss = prefs.orpo_loss(A(-1.0), A(2.0), A(-3.0), A(2.0), lam=0.1)
  np.testing.assert_allclose(loss, 0.5170859217146478, rtol=1e-6)
  np.testing.assert_allclose(prefs.orpo_loss(A(-1.0), A(2.0), A(-3.0), A(2.0), lam=0.0), 0.5,
                             rtol=1e-6)


def test_simpo_by_hand():
  # β = 2, γ = 0.5: 2(-1/2 - (-3/3)) - 0.5 = 0.5 -> log(1 + e^-0.5) = 0.474077.
  loss = prefs.simpo_loss(A(-1.0), A(2.0), A(-3.0), A(3.0), beta=2.0, gamma=0.5)
  np.testing.assert_allclose(loss, 0.4740769841801067, rtol=1e-6)
  # Length-normalised: the same per-token log-probs at any length give the same loss.
  np.testing.assert_allclose(prefs.simpo_loss(A(-5.0), A(10.0), A(-3.0), A(3.0), 2.0, 0.5), loss,
                             rtol=1e-6)


def test_kto_by_hand():
  # KL rows: mean((-2 + 2.2), (-3 + 3.4)) = 0.3 = z_ref. r = (-1 + 1.5, -2 + 1) = (0.5, -1).
  # Desirable: λ_D σ(0.5 (0.5 - 0.3)) = σ(0.1) = 0.524979; undesirable: λ_U σ(0.5 (0.3 + 1)) =
  # 2 σ(0.65) = 1.314021. L = mean(1 - 0.524979, 2 - 1.314021) = 0.580500.
  z = prefs.kto_reference_point(A(-2.0, -3.0), A(-2.2, -3.4))
  np.testing.assert_allclose(z, 0.3, rtol=1e-5)
  loss = prefs.kto_loss(A(-1.0, -2.0), A(-1.5, -1.0), jnp.asarray([True, False]), z, beta=0.5,
                        lambda_d=1.0, lambda_u=2.0)
  np.testing.assert_allclose(loss, 0.5804999435870312, rtol=1e-5)
  # The reference point is clamped at 0 and carries no gradient.
  assert float(prefs.kto_reference_point(A(-3.0), A(-1.0))) == 0.0
  g = jax.grad(lambda x: prefs.kto_reference_point(x, A(-9.0, -9.0)))(A(-1.0, -2.0))
  np.testing.assert_array_equal(g, [0.0, 0.0])


# ---- A toy policy: a bigram logits table W (V, V), next-token logits W[token].
V = 8
# (prompt, chosen answer, rejected answer) token ids: the answers share W's rows, so they compete.
PAIRS = [([0], [1, 2], [1, 3]), ([4], [5, 6], [5, 7]), ([4], [2], [3, 3])]


def _rows(answers):
  """inputs, targets, mask (B, T) of prompt + answer rows, right-padded with id 0 (mask 0)."""
  T = max(len(p) + len(a) for p, a in answers) - 1
  inputs = np.zeros((len(answers), T), np.int32)
  targets = np.zeros((len(answers), T), np.int32)
  mask = np.zeros((len(answers), T), np.float32)
  for b, (p, a) in enumerate(answers):
    seq = p + a
    inputs[b, :len(seq) - 1], targets[b, :len(seq) - 1] = seq[:-1], seq[1:]
    mask[b, len(p) - 1:len(seq) - 1] = 1.0
  return jnp.asarray(inputs), jnp.asarray(targets), jnp.asarray(mask)


def _logps(W, rows):
  inputs, targets, mask = rows
  return prefs.sequence_logprobs(W[inputs], targets, mask)


CHOSEN = _rows([(p, c) for p, c, _ in PAIRS])
REJECTED = _rows([(p, r) for p, _, r in PAIRS])
MISMATCHED = _rows([(p, c) for (p, _, _), (_, c, _) in zip(PAIRS, PAIRS[1:] + PAIRS[:1])])


def _loss(method, W, W_ref):
  (w, n_w), (l, n_l) = _logps(W, CHOSEN), _logps(W, REJECTED)
  (rw, _), (rl, _) = _logps(W_ref, CHOSEN), _logps(W_ref, REJECTED)
  if method == 'dpo':
    return prefs.dpo_loss(w, l, rw, rl, beta=0.1)
  if method == 'orpo':
    return prefs.orpo_loss(w, n_w, l, n_l, lam=0.1)
  if method == 'simpo':
    return prefs.simpo_loss(w, n_w, l, n_l, beta=2.0, gamma=0.5)
  z = prefs.kto_reference_point(_logps(W, MISMATCHED)[0], _logps(W_ref, MISMATCHED)[0])
  desirable = jnp.asarray([True] * len(PAIRS) + [False] * len(PAIRS))
  return prefs.kto_loss(jnp.concatenate([w, l]), jnp.concatenate([rw, rl]), desirable, z,
                        beta=0.1, lambda_d=1.0, lambda_u=1.0)


def _margin(W):
  return float(jnp.mean(_logps(W, CHOSEN)[0] - _logps(W, REJECTED)[0]))


@pytest.mark.parametrize('method', ['dpo', 'orpo', 'simpo', 'kto'])
def test_each_loss_prefers_the_chosen_answers_after_a_few_steps(method):
  W_ref = jnp.asarray(np.random.default_rng(0).normal(0.0, 0.1, (V, V)), jnp.float32)
  tx = optax.adam(0.1)
  W, state = W_ref, tx.init(W_ref)
  grad = jax.jit(jax.value_and_grad(lambda W: _loss(method, W, W_ref)))
  first, _ = grad(W)
  for _ in range(20):
    _, g = grad(W)
    updates, state = tx.update(g, state)
    W = optax.apply_updates(W, updates)
  assert float(grad(W)[0]) < float(first)
  assert _margin(W) > _margin(W_ref) + 1.0, (method, _margin(W_ref), _margin(W))
