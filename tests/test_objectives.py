"""Tests of train/objectives.py: the distillation loss by hand (the others: test_prefs, test_rl)."""

import math

import jax.numpy as jnp
import pytest

from train import objectives


def test_distill_loss_is_tau_squared_forward_kl_on_masked_tokens():
  teacher = jnp.log(jnp.array([[[0.75, 0.25], [0.5, 0.5]]]))  # (1, 2, 2): two tokens.
  student = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))
  mask = jnp.array([[1.0, 0.0]])  # Only the first token counts.
  kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(teacher || student).
  assert float(objectives.distill_loss(student, teacher, mask, 1.0)) == pytest.approx(kl, rel=1e-5)
  # At τ = 2 both distributions soften (p^(1/2), renormalised) and the KL is scaled by τ² = 4.
  t, s = jnp.sqrt(jnp.array([0.75, 0.25])), jnp.sqrt(jnp.array([0.5, 0.5]))
  t, s = t / t.sum(), s / s.sum()
  want = 4 * float(jnp.sum(t * jnp.log(t / s)))
  got = float(objectives.distill_loss(student, teacher, mask, 2.0))
  assert got == pytest.approx(want, rel=1e-5)
  assert float(objectives.distill_loss(teacher, teacher, jnp.ones((1, 2)), 2.0)) == pytest.approx(
      0.0, abs=1e-7)
