"""End-to-end training on synthetic tokens: outputs, resume, refusal to resume a different run, NaN."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import base
from train import cost
from train import loop
from train.config_check import ConfigError

SUMMARY_KEYS = ('params_total', 'params_embedding', 'params_non_embedding', 'params_with_head',
                'tokens', 'steps', 'flops_6nd', 'final_train_loss', 'eval_loss', 'tokens_per_sec',
                'mfu', 'config')


def small_config(steps=20):
  c = base.get_config()
  c.model.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64))
  c.data.update(dict(seq_len=16, global_batch_size=8, synthetic_tokens=40_000))
  c.train.update(dict(steps=steps, eval_every=10, log_every=5, checkpoint_every=10,
                      eval_batches=2, peak_flops=1e11))
  c.optim.lr = 1e-2
  return c


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  return workdir, loop.run(small_config(), workdir)


def test_run_writes_summary_curve_events_and_checkpoints(finished_run):
  workdir, summary = finished_run
  on_disk = json.load(open(os.path.join(workdir, 'summary.json')))
  for k in SUMMARY_KEYS:
    assert k in on_disk and on_disk[k] is not None, k
  assert on_disk['steps'] == 20 and on_disk['tokens'] == 20 * 8 * 16
  assert on_disk['flops_6nd'] == 6 * on_disk['params_with_head'] * on_disk['tokens']
  assert 0 < on_disk['mfu'] < 1
  # XLA's scan-corrected count for the whole run sits just above 6ND (attention, norms, loss).
  assert 1.0 < on_disk['flops_xla'] / on_disk['flops_6nd'] < 1.6
  assert on_disk['final_train_loss'] == pytest.approx(summary['final_train_loss'])
  curve = json.load(open(os.path.join(workdir, 'curve.json')))
  evals = [r for r in curve if r['eval_loss'] is not None]
  assert [r['step'] for r in evals] == [10, 20]
  assert curve[-1]['flops'] == pytest.approx(on_disk['flops_6nd'])
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '20']
  # The loss visibly falls from ln(64) = 4.16 on the learnable synthetic chain.
  assert curve[0]['train_loss'] > 3.5 and on_disk['eval_loss'] < 3.0


def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(finished_run, tmp_path):
  workdir, summary = finished_run
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, 'checkpoints', '20'))  # As if killed after step 10's save.
  os.remove(os.path.join(copy, 'summary.json'))
  resumed = loop.run(small_config(), copy)
  np.testing.assert_allclose(resumed['final_train_loss'], summary['final_train_loss'], rtol=1e-5)
  np.testing.assert_allclose(resumed['eval_loss'], summary['eval_loss'], rtol=1e-5)
  curve = json.load(open(os.path.join(copy, 'curve.json')))
  assert [r['step'] for r in curve if r['eval_loss'] is not None] == [10, 20]


def test_refuses_to_resume_a_different_run(finished_run):
  workdir, _ = finished_run
  c = small_config()
  c.model.d_model = 64
  with pytest.raises(ConfigError, match='model differ'):
    loop.run(c, workdir)


def test_resume_allows_a_moved_cache(finished_run):
  workdir, summary = finished_run
  c = small_config()
  c.data.cache_dir = '/somewhere/else'  # Not part of the run's identity (synthetic data here).
  again = loop.run(c, workdir)  # Already finished: reports the final state again.
  np.testing.assert_allclose(again['eval_loss'], summary['eval_loss'], rtol=1e-6)


def test_non_finite_loss_stops_without_checkpointing_nan(tmp_path):
  c = small_config()
  c.optim.update(dict(lr=1e9, grad_clip=0.0, weight_decay=0.0, warmup_steps=1))
  with pytest.raises(FloatingPointError, match='training loss became'):
    loop.run(c, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, 'summary.json'))


def test_run_without_an_xla_cost_model_says_so_and_trains(tmp_path, monkeypatch, capsys):
  def no_cost_model(*a, **k):
    raise ValueError('XLA gives no cost analysis for this Lowered program on this backend')

  monkeypatch.setattr(cost, 'measure_step_flops', no_cost_model)
  c = small_config(steps=4)
  c.train.update(dict(eval_every=4, log_every=2, checkpoint_every=0))
  summary = loop.run(c, str(tmp_path))
  assert summary['flops_xla'] is None
  assert summary['flops_xla_method'].startswith('unavailable: XLA gives no cost analysis')
  assert 'XLA count unavailable' in capsys.readouterr().out


def test_cooldown_branch_equals_a_run_trained_to_its_length(tmp_path):
  """A WSD cooldown branched from a longer run's constant phase = the same WSD run from scratch."""
  def wsd(steps, **train):
    c = small_config(steps=steps)
    c.optim.update(dict(schedule='wsd', decay_fraction=0.25, warmup_steps=3))
    c.train.update(dict(eval_every=steps, log_every=1, checkpoint_every=0, **train))
    return c

  branch_at = 15  # decay_start of a 20-step run with decay_fraction 0.25.
  parent = loop.run(wsd(40, checkpoint_steps=str(branch_at)), str(tmp_path / 'parent'))
  assert parent['steps'] == 40
  branch = loop.run(wsd(20, init_from=f'{tmp_path / "parent"}:{branch_at}'), str(tmp_path / 'branch'))
  alone = loop.run(wsd(20), str(tmp_path / 'alone'))
  assert branch['branch_step'] == branch_at and branch['parent'] == str(tmp_path / 'parent')
  assert branch['tokens'] == alone['tokens'] == 20 * 8 * 16
  assert branch['branch_tokens'] == branch_at * 8 * 16
  assert branch['flops_6nd_own'] == pytest.approx(branch['flops_6nd'] * 5 / 20)
  np.testing.assert_allclose(branch['eval_loss'], alone['eval_loss'], rtol=1e-6)
  curve = json.load(open(tmp_path / 'branch' / 'curve.json'))
  assert [r['step'] for r in curve if r['eval_loss'] is None] == list(range(1, 21))  # Parent's rows too.
  with pytest.raises(ConfigError, match='after this run.s decay starts'):
    loop.run(wsd(20, init_from=f'{tmp_path / "parent"}:16'), str(tmp_path / 'late'))
  other = wsd(20, init_from=f'{tmp_path / "parent"}:{branch_at}')
  other.optim.lr *= 2
  with pytest.raises(ConfigError, match=r'differs in optim\.lr;'):
    loop.run(other, str(tmp_path / 'other'))
  # Warmup as a fraction of each run's own length: equal fields, different schedules.
  old = json.load(open(tmp_path / 'parent' / 'config.json'))
  old['optim'].update(warmup_steps=0, warmup_fraction=0.1)  # 4 steps of 40.
  (tmp_path / 'fraction_parent').mkdir()
  json.dump(old, open(tmp_path / 'fraction_parent' / 'config.json', 'w'))
  fraction = wsd(20, init_from=f'{tmp_path / "fraction_parent"}:{branch_at}')
  fraction.optim.update(warmup_steps=0, warmup_fraction=0.1)  # 2 steps of 20.
  with pytest.raises(ConfigError, match='warms up for 4 steps, this run for 2'):
    loop.run(fraction, str(tmp_path / 'fraction'))


def _per_call_config(steps_per_call):
  c = small_config(steps=22)
  c.train.update(dict(steps_per_call=steps_per_call, log_every=1, eval_every=10, checkpoint_every=7))
  return c


@pytest.fixture(scope='module')
def one_step_per_call(tmp_path_factory):
  """(summary, curve rows) of the K = 1 run that both K cases compare with."""
  workdir = str(tmp_path_factory.mktemp('one_per_call'))
  summary = loop.run(_per_call_config(1), workdir)
  return summary, json.load(open(os.path.join(workdir, 'curve.json')))


@pytest.mark.parametrize('k', [4, 0])
def test_several_steps_per_call_equal_one_step_per_call(tmp_path, k, one_step_per_call):
  """K steps in one lax.scan call (or K chosen automatically) train exactly like K = 1."""
  one, want = one_step_per_call
  many = loop.run(_per_call_config(k), str(tmp_path / 'many'))
  got = json.load(open(os.path.join(tmp_path / 'many', 'curve.json')))
  assert [r['step'] for r in got] == [r['step'] for r in want]  # Every row, none twice.
  # On CPU the scanned step is the same program per step: equal to float32 round-off.
  np.testing.assert_allclose([r['train_loss'] for r in got], [r['train_loss'] for r in want],
                             rtol=1e-6)
  np.testing.assert_allclose(many['eval_loss'], one['eval_loss'], rtol=1e-6)
  assert sorted(int(n) for n in os.listdir(tmp_path / 'many' / 'checkpoints') if n.isdigit()) == [
      21, 22]  # keep_checkpoints=2 of 7, 14, 21, 22: checkpoints fall on their steps.


def test_tensorboard_has_compute_axes_and_one_hparams_trial_per_run(finished_run):
  """Read with tensorboard's own event reader: curves against tokens and FLOPs, an HParams trial."""
  event_accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
  workdir, summary = finished_run
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={'scalars': 0})
  acc.Reload()
  tags = acc.Tags()['scalars']
  for tag in ('vs_tokens/eval_loss', 'vs_MFLOPs/eval_loss', 'vs_tokens/train_loss', 'eval/loss'):
    assert tag in tags, tags
  by_tokens = acc.Scalars('vs_tokens/eval_loss')
  assert [e.step for e in by_tokens] == [10 * 8 * 16, 20 * 8 * 16]
  assert by_tokens[-1].value == pytest.approx(summary['eval_loss'], rel=1e-6)
  mflops = [e.step for e in acc.Scalars('vs_MFLOPs/eval_loss')]
  assert mflops[-1] == round(summary['flops_6nd'] / 1e6)
  plugins = acc.PluginTagToContent('hparams')
  assert '_hparams_/session_start_info' in plugins and '_hparams_/experiment' in plugins
  assert not [d for d in os.listdir(workdir) if os.path.isdir(os.path.join(workdir, d))
              and d not in ('checkpoints',)]  # No HParams sub-runs.


def test_flop_count_is_cached_per_step_shape_inside_a_sweep(tmp_path, monkeypatch):
  """launch sets JAX_COMPILATION_CACHE_DIR per sweep: runs of one shape measure their FLOPs once."""
  calls = []

  def measure(config, mesh, uncorrected=True):
    calls.append(config.model.d_model)
    return {'flops_xla': 1e9 * config.model.d_model, 'flops_xla_model': 1.0, 'method': 'fake'}

  monkeypatch.setattr(cost, 'measure_step_flops', measure)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',))
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  loop._measure_flops(small_config(), mesh)
  loop._measure_flops(small_config(), mesh)
  assert calls == [32, 32]  # Outside a sweep: no cache.
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path))
  longer, wider = small_config(steps=40), small_config()
  wider.model.d_model = 64
  first = loop._measure_flops(small_config(), mesh)
  assert loop._measure_flops(longer, mesh) == first  # Another length: the same step.
  assert loop._measure_flops(wider, mesh)['flops_xla'] == 64e9
  assert calls == [32, 32, 32, 64]
