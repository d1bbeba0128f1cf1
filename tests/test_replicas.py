"""Vmapped replicas (train.replicas): parsing, each replica equal to its lone run, divergence, resume."""

import json
import os

import jax
import numpy as np
import pytest

from configs import base
from scaling import points
from train import config_check
from train import cost
from train import generate
from train import loop
from train import replicas
from train.config_check import ConfigError

SPEC = 'init_seed=0,3;optim.lr=1e-2,3e-3'


def small_config(spec=SPEC, steps=8):
  c = base.get_config()
  c.model.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
  c.data.update(dict(seq_len=16, global_batch_size=8, synthetic_tokens=20_000))
  c.train.update(dict(steps=steps, eval_every=4, log_every=2, checkpoint_every=4, eval_batches=2,
                      peak_flops=1e11, replicas=spec))
  return c


def _unavailable(*args, **kwargs):
  raise ValueError('not measured in this test')


@pytest.fixture(autouse=True)
def _no_flop_count(monkeypatch):
  monkeypatch.setattr(cost, 'measure_step_flops', _unavailable)


@pytest.fixture(scope='module')
def group(tmp_path_factory):
  """Two replicas trained together, and each replica's config trained alone."""
  root = tmp_path_factory.mktemp('replicas')
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(cost, 'measure_step_flops', _unavailable)
    c = small_config()
    c.train.steps_per_call = 2  # The group runs 2 steps per call, the lone runs 1.
    together = loop.run(c, str(root / 'group'))
    alone = [loop.run(c, str(root / f'alone{i}'))
             for i, c in enumerate(replicas.replica_configs(small_config()))]
  return root, together, alone


def test_parse_and_names():
  assert replicas.parse('') == {}
  assert replicas.parse(' optim.lr=1e-3, 3e-3 ; init_seed=1,2') == {
      'optim.lr': [1e-3, 3e-3], 'init_seed': [1, 2]}
  c = small_config('optim.lr=1e-3,3e-3,1e-2;optim.b2=0.95,0.99,0.999')
  assert replicas.count(c) == 3
  assert replicas.folder_names(c) == ['r0_lr=0.001_b2=0.95', 'r1_lr=0.003_b2=0.99',
                                      'r2_lr=0.01_b2=0.999']
  cfgs = replicas.replica_configs(c)
  assert [x.optim.lr for x in cfgs] == [1e-3, 3e-3, 1e-2] and cfgs[2].optim.b2 == 0.999
  assert all(x.train.replicas == '' for x in cfgs) and c.train.replicas  # The group is untouched.
  assert replicas.init_seed(c) == c.seed == 0 and replicas.init_seed(replicas.replica_configs(
      small_config('init_seed=5,6'))[1]) == 6


@pytest.mark.parametrize('spec, words', [
    ('optim.lr=1e-3', 'at least 2'),
    ('optim.lr=1e-3,3e-3;init_seed=1,2,3', 'same number of values'),
    ('model.d_model=32,64', 'KEY one of'),
    ('optim.lr=fast,slow', 'must be floats'),
    ('optim.lr=1e-3,-1', 'must be > 0'),
    ('optim.b2=0.9,1.0', 'in [0, 1)'),
    ('optim.lr=1e-3,1e-2;optim.lr=1,2', 'given twice'),
])
def test_bad_specs_name_the_key(spec, words):
  with pytest.raises(ConfigError) as e:
    config_check.validate(small_config(spec), 1)
  line = next(x for x in str(e.value).splitlines() if 'train.replicas' in x)
  assert words in line, str(e.value)


def test_replicas_refuse_a_branch_and_alltoall():
  c = small_config()
  c.train.init_from = '/some/run:10'
  assert any('train.init_from' in e for e in replicas.errors(c))
  c = small_config()
  c.model.update(moe_num_experts=4, moe_dispatch='alltoall')
  assert any("moe_dispatch='alltoall'" in e for e in replicas.errors(c))
  with pytest.raises(ConfigError, match='init_seed=-2'):
    c = small_config()
    c.init_seed = -2
    config_check.validate(c, 1)


def test_each_replica_equals_its_run_alone(group):
  """Same init seed, same data order, same optimizer scalars: the same curve, to float32 round-off.

  Measured here: the vmapped and the lone step agree to about 1e-6 relative (XLA batches the
  matmuls differently), so the tolerance is rtol 1e-5 over 8 steps.
  """
  root, together, alone = group
  names = replicas.folder_names(small_config())
  assert [s['config']['optim']['lr'] for s in together['replicas']] == [1e-2, 3e-3]
  for name, lone in zip(names, alone):
    folder = root / 'group' / name
    curve = json.load(open(folder / 'curve.json'))
    lone_curve = json.load(open(root / f'alone{names.index(name)}' / 'curve.json'))
    assert [r['step'] for r in curve] == [r['step'] for r in lone_curve] == [2, 4, 4, 6, 8, 8]
    for a, b in zip(curve, lone_curve):
      for key in ('train_loss', 'eval_loss'):
        if b[key] is not None:
          assert a[key] == pytest.approx(b[key], rel=1e-5), (name, a['step'], key)
    summary = json.load(open(folder / 'summary.json'))
    assert summary['eval_loss'] == pytest.approx(lone['eval_loss'], rel=1e-5)
    assert summary['replicas'] == 2 and summary['diverged_at_step'] is None
    assert summary['replica_of'] == str(root / 'group')
    # The folder's config.json trains this replica alone.
    saved = json.load(open(folder / 'config.json'))
    keys = ('seed', 'init_seed', 'model', 'data', 'optim')
    assert saved['train']['replicas'] == ''
    assert {k: saved[k] for k in keys} == {k: lone['config'][k] for k in keys}
  # The two replicas really differ (init seed and LR), and both learned.
  a, b = (s['eval_loss'] for s in together['replicas'])
  assert a != b and max(a, b) < np.log(64)


def test_the_fit_sees_one_run_per_replica(group):
  root, _, _ = group
  p = points.load_runs(str(root / 'group'), warn=pytest.fail)
  assert p.names == replicas.folder_names(small_config())


def test_rerun_resumes_the_finished_group(group, capsys):
  root, together, _ = group
  c = small_config()
  c.train.steps_per_call = 2
  again = loop.run(c, str(root / 'group'))
  out = capsys.readouterr().out
  assert 'resumed from step 8' in out and 'step 2/' not in out
  for s, t in zip(again['replicas'], together['replicas']):
    assert s['eval_loss'] == pytest.approx(t['eval_loss'], rel=1e-6)


def test_one_diverging_replica_stops_alone_and_leaves_no_nan(tmp_path, capsys):
  c = small_config('optim.lr=1e-2,1e30', steps=4)
  c.optim.grad_clip = 0.0  # Let the 1e30 step through unclipped.
  out = loop.run(c, str(tmp_path))
  good, bad = out['replicas']
  assert good['diverged_at_step'] is None and np.isfinite(good['eval_loss'])
  assert bad['diverged_at_step'] is not None and bad['eval_loss'] is None
  assert 'stops at step' in capsys.readouterr().out
  # The dropped updates kept NaN out of the stacked checkpoint.
  step, _, state = generate.restore_state(str(tmp_path), generate.load_run_config(str(tmp_path)))
  assert step == 4
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))
  p = points.load_runs(str(tmp_path), warn=lambda line: None)
  assert p.names == ['r0_lr=0.01']  # The diverged replica is excluded, not fitted.
  assert [name for name, _ in p.excluded] == ['r1_lr=1e+30']


def test_every_replica_diverging_stops_the_run(tmp_path):
  c = small_config('optim.lr=1e30,1e31', steps=2)
  c.optim.grad_clip = 0.0
  c.train.update(eval_every=2, checkpoint_every=0)
  with pytest.raises(loop.NonFinite, match='every replica'):
    loop.run(c, str(tmp_path))
  assert os.path.isdir(tmp_path / 'r0_lr=1e+30')
