"""Learning-rate schedules: cosine and warmup-stable-decay (WSD) values at the phase boundaries."""

import pytest

from configs import base
from train import optim


def _cfg(schedule='wsd', shape='1-sqrt', steps=100, warmup=10, fraction=0.2):
  c = base.get_config()
  c.train.steps = steps
  c.optim.update(dict(schedule=schedule, decay_shape=shape, decay_fraction=fraction,
                      warmup_steps=warmup, lr=1.0, min_lr_ratio=0.1))
  return c


def lr_at(c, step):
  """The LR of 1-based step `step` (the optimizer calls the schedule with step - 1)."""
  return float(optim.schedule(c)(step - 1))


@pytest.mark.parametrize('shape', optim.DECAY_SHAPES)
def test_wsd_phase_boundaries(shape):
  c = _cfg(shape=shape)
  assert optim.decay_start(c) == 80
  assert lr_at(c, 1) == pytest.approx(0.1)  # Warmup: step / warmup_steps of the peak.
  assert lr_at(c, 10) == pytest.approx(1.0)  # Peak at the end of warmup.
  assert lr_at(c, 11) == lr_at(c, 80) == pytest.approx(1.0)  # Stable phase.
  assert lr_at(c, 81) < 1.0  # Decay starts right after decay_start.
  assert lr_at(c, 100) == pytest.approx(0.1)  # min_lr_ratio * peak at the last step.
  mid = {'linear': 0.55, 'cosine': 0.55, '1-sqrt': 0.1 + 0.9 * (1 - 0.5 ** 0.5)}[shape]
  assert lr_at(c, 90) == pytest.approx(mid, rel=1e-5)  # Halfway through the decay.


def test_wsd_of_a_shorter_run_follows_the_longer_one_until_its_decay():
  long, short = _cfg(steps=400), _cfg(steps=100)
  for step in range(1, optim.decay_start(short) + 1):
    assert lr_at(short, step) == lr_at(long, step)


def test_cosine_is_unchanged_by_the_wsd_fields():
  c = _cfg(schedule='cosine', steps=50, warmup=5)
  assert lr_at(c, 5) == pytest.approx(1.0) and lr_at(c, 50) == pytest.approx(0.1)
  assert 0.1 < lr_at(c, 25) < 1.0
