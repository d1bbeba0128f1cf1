"""Runs that survive faults: SIGTERM saves and exits 75, kill -9 loses no curve row, NaN policies, clean errors.

Each case runs `python -m train` as a process on a tiny synthetic config and
compares with one uninterrupted run: final parameters (via summary.json's
losses and the last checkpoint) and every curve row.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60
FLAGS = ['--config', 'configs/base.py', '--config.model.vocab_size=64', '--config.model.d_model=32',
         '--config.model.n_layers=2', '--config.model.n_heads=4', '--config.model.n_kv_heads=2',
         '--config.model.d_ff=64', '--config.data.seq_len=16', '--config.data.global_batch_size=8',
         '--config.data.synthetic_tokens=40000', f'--config.train.steps={STEPS}',
         '--config.train.eval_every=20', '--config.train.log_every=1',
         '--config.train.checkpoint_every=7', '--config.train.eval_batches=2',
         '--config.train.peak_flops=1e11', '--config.optim.lr=1e-2']


def _env():
  return dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')


def train(workdir, *extra, timeout=240):
  return subprocess.run([sys.executable, '-m', 'train', *FLAGS, '--workdir', str(workdir), *extra],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def curve(workdir):
  with open(os.path.join(workdir, 'curve.json')) as f:
    return json.load(f)


def summary(workdir):
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  wd = tmp_path_factory.mktemp('uninterrupted')
  p = train(wd)
  assert p.returncode == 0, p.stderr[-2000:]
  return wd


def _start_and_signal(workdir, sig, after_step):
  """Start a run, send `sig` once it has logged step `after_step`; return (status, stdout)."""
  proc = subprocess.Popen([sys.executable, '-m', 'train', *FLAGS, '--workdir', str(workdir)],
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  out = []
  for line in proc.stdout:
    out.append(line)
    if f'step {after_step}/{STEPS}' in line:
      proc.send_signal(sig)
      break
  rest, _ = proc.communicate(timeout=120)
  return proc.returncode, ''.join(out) + rest


def _events(workdir):
  """{tag: [steps]} of a run's TensorBoard scalars, read with tensorboard's own reader."""
  ea = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
  acc = ea.EventAccumulator(str(workdir), size_guidance={'scalars': 0})
  acc.Reload()
  return {t: [e.step for e in acc.Scalars(t)] for t in acc.Tags()['scalars']}


def _rows_equal(got, want):
  assert [r['step'] for r in got] == [r['step'] for r in want]  # No row missing or repeated.
  for a, b in zip(got, want):
    assert a['train_loss'] == b['train_loss'], (a, b)
    assert a['eval_loss'] == b['eval_loss'], (a, b)


def test_sigterm_saves_exits_75_and_the_resume_loses_nothing(reference, tmp_path):
  status, out = _start_and_signal(tmp_path, signal.SIGTERM, after_step=10)
  assert status == 75, out[-2000:]
  assert 'SIGTERM: stopped after step' in out and 'Traceback' not in out
  stopped = int(out.split('SIGTERM: stopped after step ')[1].split('/')[0])
  saved = sorted(int(n) for n in os.listdir(tmp_path / 'checkpoints') if n.isdigit())
  assert saved[-1] == stopped  # The checkpoint is of the step it stopped at: 0 steps lost.
  assert curve(tmp_path)[-1]['step'] == stopped
  p = train(tmp_path)
  assert p.returncode == 0, p.stderr[-2000:]
  assert f'resumed from step {stopped}' in p.stdout
  _rows_equal(curve(tmp_path), curve(reference))
  assert summary(tmp_path)['final_train_loss'] == summary(reference)['final_train_loss']
  assert summary(tmp_path)['eval_loss'] == summary(reference)['eval_loss']


def test_kill_9_between_checkpoints_keeps_every_curve_row(reference, tmp_path):
  # Checkpoints every 7 steps, evals every 20: the checkpoint steps' train rows must survive.
  status, _ = _start_and_signal(tmp_path, signal.SIGKILL, after_step=16)
  assert status == -9
  p = train(tmp_path)
  assert p.returncode == 0, p.stderr[-2000:]
  _rows_equal(curve(tmp_path), curve(reference))
  assert summary(tmp_path)['eval_loss'] == summary(reference)['eval_loss']
  got, want = _events(tmp_path), _events(reference)
  for tag in ('train/loss', 'eval/loss', 'vs_tokens/train_loss', 'vs_MFLOPs/eval_loss'):
    assert got[tag] == want[tag], tag  # TensorBoard too: no row missing or repeated.


def test_nan_stop_policy_is_one_message_exit_3_and_no_nan_checkpoint(tmp_path):
  p = train(tmp_path, '--config.train.poison_step=9')
  assert p.returncode == 3, p.stderr[-2000:]
  assert 'training loss became' in p.stderr and 'at step 9' in p.stderr
  assert 'Traceback' not in p.stderr
  saved = sorted(int(n) for n in os.listdir(tmp_path / 'checkpoints') if n.isdigit())
  assert saved == [7]  # Step 9 and later never reached a checkpoint.
  assert all(r['step'] < 9 for r in curve(tmp_path))


def test_nan_skip_policy_drops_the_update_and_counts_it(tmp_path):
  p = train(tmp_path, '--config.train.poison_step=9', '--config.train.nonfinite=skip')
  assert p.returncode == 0, p.stderr[-2000:]
  assert 'skipped the update of step 9' in p.stdout
  s = summary(tmp_path)
  assert s['skipped_updates'] == 1 and s['eval_loss'] == s['eval_loss']  # Finite.
  assert 9 not in [r['step'] for r in curve(tmp_path)]
  p = train(tmp_path.parent / 'max', '--config.train.poison_step=9', '--config.train.nonfinite=skip',
            '--config.train.max_skips=0')
  assert p.returncode == 3 and 'more than train.max_skips=0' in p.stderr


@pytest.mark.parametrize('case', ['workdir_is_file', 'parent_is_file', 'missing_config',
                                  'unknown_key'])
def test_bad_input_is_one_message_exit_2(tmp_path, case):
  f = tmp_path / 'a_file'
  f.write_text('x')
  argv = [sys.executable, '-m', 'train', *FLAGS]
  if case == 'workdir_is_file':
    argv += ['--workdir', str(f)]
    want = 'is a file, not a folder'
  elif case == 'parent_is_file':
    argv += ['--workdir', str(f / 'run')]
    want = 'cannot be created'
  elif case == 'missing_config':
    argv = [sys.executable, '-m', 'train', '--config', 'configs/nope.py', '--workdir', str(tmp_path)]
    want = 'cannot load the config file'
  else:
    argv += ['--workdir', str(tmp_path / 'w'), '--config.train.stepz=5']
    want = 'unknown config key in --config.train.stepz'
  p = subprocess.run(argv, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
  assert p.returncode == 2, p.stderr[-2000:]
  assert want in p.stderr and 'Traceback' not in p.stderr
  assert len(p.stderr.strip().splitlines()) == 1, p.stderr
  if case == 'unknown_key':
    assert 'model.d_model' not in p.stderr  # Only the key at fault is named.
