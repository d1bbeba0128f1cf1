"""Tiny model for CPU demos and tests: ~1M parameters, trains in about a minute on 2 cores."""

from configs import base


def get_config():
  c = base.get_config()
  c.train.steps = 300
  return c
