"""launch.ray_backend on a real local Ray cluster (2 CPUs, started once for this file).

A 3-run micro-sweep of real `python -m train` runs on the Ray backend: one
run's Ray worker is SIGKILLed mid-run (after a checkpoint), another run gets
SIGTERM (the training loop saves and exits 75). Both are retried as
preemptions and resume from their checkpoints; a second invocation runs
nothing. Stand-in runs (a small script in place of `python -m train`) cover
exit status 75, a killed worker, a run that always fails and one that is
always preempted, against their budgets. A run of two hosts (the cluster's
one node stands in for a slice of two: it holds 'slice-head' and 2 units of
'slice-test') trains as two processes joined by jax.distributed over gloo;
stand-ins check that when one host ends badly the other is stopped.
"""

import json
import os
import signal
import sys
import textwrap
import threading
import time

import psutil
import pytest

ray = pytest.importorskip('ray')

from launch import expand as expand_lib  # noqa: E402  (after the skip: ray must be importable)
import fake_gcs  # noqa: E402
from launch import ledger  # noqa: E402
from launch import ray_backend  # noqa: E402
from launch import remote  # noqa: E402
from launch import sweep as sweep_lib  # noqa: E402
from test_sweep import write_sweep  # noqa: E402


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
  """2 CPUs, a slice of 2 hosts; gs://b/ is tests/fake_gcs.py's bucket (the fixture's value) everywhere."""
  root = tmp_path_factory.mktemp('cluster')
  here = os.path.dirname(os.path.abspath(__file__))
  env = {fake_gcs.ROOT_ENV: str(root / 'gcs'), remote.STAGING_ENV: str(root / 'staging'),
         'PYTHONPATH': os.pathsep.join([here] + [p for p in [os.environ.get('PYTHONPATH')] if p])}
  os.makedirs(root / 'gcs' / 'b')
  ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
           resources={ray_backend.SLICE_HEAD: 1, 'slice-test': 2},
           runtime_env={'env_vars': env, 'worker_process_setup_hook': 'fake_gcs.install'})
  os.environ.update({k: v for k, v in env.items() if k != 'PYTHONPATH'})  # The driver's view of it.
  fake_gcs.install()
  yield root / 'gcs' / 'b'
  ray.shutdown()
  for k in (fake_gcs.ROOT_ENV, remote.STAGING_ENV):
    os.environ.pop(k, None)


def _status(workdir) -> dict:
  status = json.load(open(os.path.join(workdir, ledger.STATUS_FILE)))
  assert status['format'] == 1 and status['backend'] == 'ray'
  return {r['name']: r for r in status['runs']}


def _kill_worker_of(proc: psutil.Process) -> int:
  """SIGSTOP the run's process (so it cannot finish meanwhile), then SIGKILL its Ray worker."""
  proc.send_signal(signal.SIGSTOP)
  worker = proc.parent()
  assert 'ray' in ' '.join(worker.cmdline()), worker.cmdline()  # The task's worker, not the driver.
  worker.send_signal(signal.SIGKILL)
  return proc.pid


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
  t_end = time.time() + timeout
  while time.time() < t_end:
    try:
      if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
        return True
    except psutil.NoSuchProcess:
      return True
    time.sleep(0.05)
  return False


# ---------------------------------------------------------------------------- real runs


class MidRunKiller(threading.Thread):
  """Interrupts one run once `past` is in its log (and, if given, its checkpoint exists).

  'worker': SIGSTOP the run, SIGKILL its Ray worker (as when a node dies);
  'sigterm': SIGTERM the run (as a preemption notice does).
  """

  def __init__(self, run_dir, past: str, how: str, checkpoint_step: int | None = None):
    super().__init__(daemon=True)
    self.run_dir, self.past, self.how, self.checkpoint_step = str(run_dir), past, how, checkpoint_step
    self.killed_pid, self.error = None, None

  def _train_process(self):
    for p in psutil.process_iter(['cmdline']):
      cmd = p.info['cmdline'] or []
      if 'train' in cmd and self.run_dir in cmd:
        return p
    return None

  def run(self):
    log = os.path.join(self.run_dir, 'train.log')
    ckpt = os.path.join(self.run_dir, 'checkpoints', str(self.checkpoint_step))
    t_end = time.time() + 120
    while time.time() < t_end:
      ready = self.checkpoint_step is None or os.path.isdir(ckpt)
      if ready and os.path.exists(log) and self.past in open(log).read():
        proc = self._train_process()
        if proc is not None:
          try:
            if self.how == 'worker':
              self.killed_pid = _kill_worker_of(proc)
            else:
              proc.send_signal(signal.SIGTERM)
              self.killed_pid = proc.pid
          except Exception as e:  # pylint: disable=broad-except  (reported by the test)
            self.error = repr(e)
          return
      time.sleep(0.02)
    self.error = f'{self.past!r} never appeared in {log}'


def _past(run, checkpoint: bool) -> str:
  """A log line of `run` after its first checkpoint (checkpoint=True) or after its first log."""
  every, log_every = run.overrides['train.checkpoint_every'], run.overrides['train.log_every']
  step = (every // log_every + 1) * log_every if checkpoint else 2 * log_every
  assert step < run.steps
  return f'step {step}/{run.steps} '


def test_micro_sweep_on_ray_resumes_interrupted_runs_and_a_rerun_runs_nothing(tmp_path, cluster):
  cfg = write_sweep(tmp_path, budgets=(1e9,), n_sizes=3, extra='c.checkpoints_per_run = 4')
  sweep = expand_lib.expand(expand_lib.load_config_file(cfg))
  assert len(sweep.runs) == 3
  lost, termed = sorted(sweep.runs, key=lambda r: -r.steps)[:2]  # The longest: most room mid-run.
  every = lost.overrides['train.checkpoint_every']
  workdir = tmp_path / 'sweep'
  killers = [MidRunKiller(workdir / lost.name, _past(lost, True), 'worker', every),
             MidRunKiller(workdir / termed.name, _past(termed, False), 'sigterm')]
  for k in killers:
    k.start()
  lines = []
  t0 = time.perf_counter()
  rc = sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--backend', 'ray', '--no-fit'],
                      log=lines.append)
  seconds = time.perf_counter() - t0
  text = '\n'.join(lines)
  for k in killers:
    k.join(timeout=5)
    assert k.error is None and k.killed_pid, k.error
  assert rc == 0, text
  print(f'\nmicro-sweep on Ray: {seconds:.1f} s\n{text}')

  status = _status(workdir)
  for r in sweep.runs:
    s = status[r.name]
    assert s['state'] == 'ok' and s['last_exit'] == 0 and s['failures'] == 0, s
    summary = json.load(open(workdir / r.name / 'summary.json'))
    assert summary['steps'] == r.steps and summary['params_with_head'] == r.params
    if r not in (lost, termed):
      assert s['attempts'] == 1 and s['preemptions'] == 0
  for r, first in ((lost, 'preempted (WorkerCrashedError'), (termed, 'preempted (exit 75)')):
    s = status[r.name]
    assert s['attempts'] == 2 and s['preemptions'] == 1 and s['history'][0].startswith(first), s
    assert f'resume  {r.name}' in text
  assert f'PREEMPT {lost.name} (WorkerCrashedError' in text and f'PREEMPT {termed.name} (exit 75' in text
  log = open(workdir / lost.name / 'train.log').read()
  assert log.count('\n=== ') == 2 and f'resumed from step {every}' in log
  assert _wait_gone(killers[0].killed_pid), 'the run outlived its Ray worker'
  log = open(workdir / termed.name / 'train.log').read()
  stopped = int(log.split('SIGTERM: stopped after step ')[1].split('/')[0])
  assert log.count('\n=== ') == 2 and f'resumed from step {stopped}' in log  # No step lost.

  # A second invocation finds every run finished: nothing starts, no log grows.
  logs = {r.name: (workdir / r.name / 'train.log').read_text() for r in sweep.runs}
  lines.clear()
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--backend', 'ray', '--no-fit'],
                        log=lines.append) == 0
  assert sum('skip    ' in ln for ln in lines) == 3 and not any('start  ' in ln for ln in lines)
  assert {r.name: (workdir / r.name / 'train.log').read_text() for r in sweep.runs} == logs
  assert {s['state'] for s in _status(workdir).values()} == {'skipped'}


# ---------------------------------------------------------------------------- stand-in runs

STAND_IN = '''
import json, os, sys, time
mode, run_dir = sys.argv[1], sys.argv[2]
ckpts = os.path.join(run_dir, 'checkpoints')
resumed = os.path.isdir(ckpts) and os.listdir(ckpts)

def finish():
  print('resumed from step', os.listdir(ckpts)[0])
  json.dump({'eval_loss': 1.0}, open(os.path.join(run_dir, 'summary.json'), 'w'))
  sys.exit(0)

if mode == 'broken':
  print('boom: simulated failure'); sys.exit(3)
if mode == 'spot':
  os.makedirs(os.path.join(ckpts, '1'), exist_ok=True); print('SIGTERM: saved step 1'); sys.exit(75)
if resumed:
  finish()
if mode == 'flaky':  # Preempted once: the training loop's exit after saving on SIGTERM.
  os.makedirs(os.path.join(ckpts, '5')); print('SIGTERM: saved step 5'); sys.exit(75)
if mode == 'killed':  # Runs until its Ray worker is killed.
  os.makedirs(os.path.join(ckpts, '3'))
  with open(os.path.join(run_dir, 'pid.tmp'), 'w') as f:
    f.write(str(os.getpid()))
  os.replace(os.path.join(run_dir, 'pid.tmp'), os.path.join(run_dir, 'pid'))
  time.sleep(120)
  sys.exit(4)
'''


def test_preemptions_and_failures_have_their_own_budgets(tmp_path, cluster):
  script = tmp_path / 'stand_in.py'
  script.write_text(textwrap.dedent(STAND_IN))
  workdir = tmp_path / 'sweep'
  modes = ('flaky', 'killed', 'broken', 'spot')
  commands = [(m, [sys.executable, str(script), m, str(workdir / m)]) for m in modes]
  pid_file = workdir / 'killed' / 'pid'
  state = {}

  def kill_when_started():
    t_end = time.time() + 60
    while not pid_file.exists() and time.time() < t_end:
      time.sleep(0.02)
    state['pid'] = _kill_worker_of(psutil.Process(int(pid_file.read_text())))

  killer = threading.Thread(target=kill_when_started, daemon=True)
  killer.start()
  lines = []

  def log(line):  # The status file is whole JSON at every event.
    lines.append(line)
    json.load(open(workdir / ledger.STATUS_FILE))

  results = ray_backend.run_all_ray(commands, str(workdir), max_preemptions=2, max_failures=1, log=log)
  killer.join(timeout=5)
  text = '\n'.join(lines)
  assert results == {'flaky': 'ok', 'killed': 'ok', 'broken': 'failed', 'spot': 'preempted-out'}, text
  s = _status(workdir)
  assert (s['flaky']['attempts'], s['flaky']['preemptions'], s['flaky']['history']) == (
      2, 1, ['preempted (exit 75)', 'finished'])
  assert (s['killed']['attempts'], s['killed']['preemptions'], s['killed']['failures']) == (2, 1, 0)
  assert s['killed']['history'][0].startswith('preempted (WorkerCrashedError')
  assert _wait_gone(state['pid']), 'the stand-in outlived its Ray worker'
  assert (s['broken']['attempts'], s['broken']['failures'], s['broken']['preemptions']) == (2, 2, 0)
  assert s['broken']['last_exit'] == 3 and s['broken']['log_tail'] == ['boom: simulated failure']
  assert (s['spot']['attempts'], s['spot']['preemptions'], s['spot']['last_exit']) == (3, 3, 75)
  assert 'FAILED  broken (exit 3' in text and 'retry 1 of 1' in text
  assert 'PREEMPT killed (WorkerCrashedError' in text
  assert 'preempted 3 times, more than --max-preemptions 2; rerun the sweep to resume it' in text
  for m in ('flaky', 'killed'):  # The retry resumed from the checkpoint of the attempt before.
    assert 'resumed from step' in open(workdir / m / 'train.log').read()
    assert f'resume  {m}' in text
  assert lines[-1].startswith('2 ran, 0 skipped (finished), 1 failed, 1 preempted out in ')


# ---------------------------------------------------------------------------- runs of several hosts

TWO_HOSTS = ['--config.model.vocab_size=64', '--config.model.d_model=32', '--config.model.n_layers=2',
             '--config.model.n_heads=4', '--config.model.n_kv_heads=2', '--config.model.d_ff=64',
             '--config.data.source=synthetic', '--config.data.seq_len=16',
             '--config.data.global_batch_size=16', '--config.data.synthetic_tokens=20000',
             '--config.train.steps=4', '--config.train.eval_every=4', '--config.train.log_every=2',
             '--config.train.eval_batches=1', '--config.train.peak_flops=1e11',
             '--config.mesh.data=2', '--config.mesh.fsdp=-1']


@pytest.mark.long  # The stand-in slice test below runs run_on_slice in `make test`.
def test_a_run_of_two_hosts_trains_as_two_joined_processes(tmp_path, cluster):
  workdir = tmp_path / 'sweep'
  argv = ['env', 'XLA_FLAGS=--xla_force_host_platform_device_count=2',  # 2 CPU devices per "host".
          sys.executable, '-m', 'train', '--config', 'configs/tiny_cpu.py', '--workdir',
          str(workdir / 'pair'), *TWO_HOSTS]
  lines = []
  results = ray_backend.run_all_ray([('pair', argv)], str(workdir), log=lines.append, hosts_per_run=2)
  text = '\n'.join(lines)
  assert results == {'pair': 'ok'}, text + open(workdir / 'pair' / 'train.log').read()
  print(f'\na run of two hosts on Ray:\n{text}')
  assert 'each run holds 2 hosts of a slice (slice-head)' in text
  summary = json.load(open(workdir / 'pair' / 'summary.json'))
  assert summary['n_devices'] == 4 and summary['mesh']['data'] == 2  # 2 processes x 2 CPU devices.
  assert summary['steps'] == 4 and summary['eval_loss'] > 0
  for log in ('train.log', 'train.host1.log'):
    head = open(workdir / 'pair' / log).read().split('\n')[1]
    assert '--num_processes=2' in head and '--coordinator' in head, head
  assert '--process_id=1' in open(workdir / 'pair' / 'train.host1.log').read()


GANG = """
import json, os, sys, time
args = sys.argv[1:]
mode, run_dir = args[0], args[1]
host = int(next(a for a in args if a.startswith('--process_id=')).split('=')[1])
attempt = os.path.join(run_dir, f'attempt{host}')
n = int(open(attempt).read()) + 1 if os.path.exists(attempt) else 1
open(attempt, 'w').write(str(n))
if host == 0:
  with open(os.path.join(run_dir, f'pid{n}.tmp'), 'w') as f:
    f.write(str(os.getpid()))
  os.replace(os.path.join(run_dir, f'pid{n}.tmp'), os.path.join(run_dir, f'pid{n}'))
  if mode == 'spot' and n > 1:
    json.dump({'eval_loss': 1.0}, open(os.path.join(run_dir, 'summary.json'), 'w')); sys.exit(0)
  time.sleep(120); sys.exit(4)
time.sleep(0.5)
if mode == 'broken':
  print('host 1 broke'); sys.exit(3)
if n == 1:
  print('SIGTERM: saved'); sys.exit(75)
"""


def test_when_one_host_ends_badly_its_peers_are_stopped(tmp_path, cluster):
  script = tmp_path / 'gang.py'
  script.write_text(textwrap.dedent(GANG))
  workdir = tmp_path / 'sweep'
  commands = [(m, [sys.executable, str(script), m, str(workdir / m)]) for m in ('broken', 'spot')]
  for m, _ in commands:
    os.makedirs(workdir / m)
  lines = []
  results = ray_backend.run_all_ray(commands, str(workdir), max_preemptions=1, max_failures=0,
                                    log=lines.append, hosts_per_run=2)
  text = '\n'.join(lines)
  assert results == {'broken': 'failed', 'spot': 'ok'}, text
  s = _status(workdir)
  assert s['broken']['last_exit'] == 3 and s['broken']['log_tail'][:2] == ['host 1 of 2: exit 3', 'host 1 broke']
  assert s['spot']['history'] == ['preempted (exit 75)', 'finished'] and s['spot']['attempts'] == 2
  for m, first in (('broken', 1), ('spot', 1)):  # Host 0 of the bad attempt was stopped, not left running.
    assert _wait_gone(int((workdir / m / f'pid{first}').read_text())), f'{m}: host 0 outlived its peer'
  assert 'FAILED  broken (exit 3' in text and 'PREEMPT spot (exit 75' in text


def test_a_sweep_in_a_bucket_trains_on_the_nodes_and_a_rerun_runs_nothing(tmp_path, cluster):
  """A real run with a gs:// workdir: staged on its node, its outputs copied to the bucket."""
  workdir = 'gs://b/sweep'
  argv = [sys.executable, '-m', 'train', '--config', 'configs/tiny_cpu.py', '--workdir', f'{workdir}/one',
          *TWO_HOSTS[:-2], '--config.train.checkpoint_every=2']
  lines = []
  assert ray_backend.run_all_ray([('one', argv)], workdir, log=lines.append) == {'one': 'ok'}, lines
  print('\na run in a bucket on Ray:\n' + '\n'.join(lines))
  run = cluster / 'sweep' / 'one'
  summary = json.loads((run / 'summary.json').read_text())
  assert summary['steps'] == 4 and summary['eval_loss'] > 0
  assert sorted(os.listdir(run / 'checkpoints')) == ['2', '4'] and any(
      n.startswith('events.out.tfevents') for n in os.listdir(run))
  assert not any('orbax-checkpoint-tmp' in n for _, dirs, _ in os.walk(run) for n in dirs)
  status = json.loads((cluster / 'sweep' / ledger.STATUS_FILE).read_text())
  assert status['runs'][0]['state'] == 'ok' and status['runs'][0]['log'] == f'{workdir}/one/train.log'
  lines.clear()
  assert ray_backend.run_all_ray([('one', argv)], workdir, log=lines.append) == {'one': 'skipped'}
  assert 'skip    one: finished' in lines[0]
