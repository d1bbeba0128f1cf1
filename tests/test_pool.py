"""Long-lived sweep workers: train.worker's protocol and isolation, launch.pool's handling of crashes."""

import json
import stat
import sys
import textwrap

from launch import pool
from launch import sweep as sweep_lib
from train import worker


def test_worker_parses_train_flags_in_fresh_flag_values():
  config, workdir = worker.parse(['--config', 'configs/tiny_cpu.py', '--workdir', '/tmp/x',
                                  '--config.model.d_model=64', '--config.optim.lr=0.01'])
  assert workdir == '/tmp/x' and config.model.d_model == 64 and config.optim.lr == 0.01
  again, _ = worker.parse(['--config', 'configs/tiny_cpu.py', '--workdir', '/tmp/y'])
  assert again.model.d_model == 128  # Nothing carried over from the run before.


def test_a_bad_run_gives_its_status_and_the_worker_goes_on(tmp_path):
  log = str(tmp_path / 'train.log')
  status = worker.run_one(['--config', 'configs/tiny_cpu.py', '--workdir', str(tmp_path / 'r'),
                           '--config.model.nonsense=3'], log)
  assert status == 2
  status = worker.run_one(['--config', 'configs/tiny_cpu.py', '--workdir', str(tmp_path / 'r'),
                           '--config.model.n_heads=5'], log)
  assert status == 2
  text = open(log).read()
  assert "error: unknown config key 'model.nonsense'" in text or 'nonsense' in text
  assert 'model.n_heads=5' in text and 'Traceback' not in text


def fake_worker(tmp_path):
  """An 'interpreter' whose `-m train.worker` speaks the protocol: a summary per run, or a crash.

  A workdir containing CRASH kills the process (exit 9) mid-run; one containing FAIL reports
  status 3. Each worker start is recorded in starts.txt.
  """
  path = tmp_path / 'fake_python'
  path.write_text(textwrap.dedent(f'''\
      #!{sys.executable}
      import json, os, sys
      assert sys.argv[1:] == ['-m', 'train.worker'], sys.argv
      open({str(tmp_path / 'starts.txt')!r}, 'a').write('start\\n')
      for line in sys.stdin:
        req = json.loads(line)
        args = req['argv']
        workdir = args[args.index('--workdir') + 1]
        if 'CRASH' in workdir:
          os._exit(9)
        status = 3 if 'FAIL' in workdir else 0
        if not status:
          os.makedirs(workdir, exist_ok=True)
          json.dump(dict(params_with_head=1e4, tokens=2e5, flops_6nd=1.2e10, eval_loss=3.0),
                    open(os.path.join(workdir, 'summary.json'), 'w'))
        with open(req['log'], 'a') as f:
          f.write('done: fake\\n')
        print(json.dumps(dict(status=status, seconds=0.0)), flush=True)
      '''))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def test_pool_records_failures_and_crashes_and_replaces_a_dead_worker(tmp_path):
  python = fake_worker(tmp_path)
  workdir = tmp_path / 'sweep'
  names = ['a', 'b_FAIL', 'c_CRASH', 'd', 'e']
  commands = [(n, [python, '-m', 'train', '--workdir', str(workdir / n)]) for n in names]
  lines = []
  results = sweep_lib.run_all(commands, str(workdir), parallel=1, log=lines.append,
                              poll_seconds=0.01, worker_pool=True)
  assert results == {'a': 'ok', 'b_FAIL': 'failed', 'c_CRASH': 'failed', 'd': 'ok', 'e': 'ok'}
  # One worker until the crash, then one more for the rest.
  assert open(tmp_path / 'starts.txt').read().count('start') == 2
  assert 'died with status 9' in open(workdir / 'c_CRASH' / 'train.log').read()
  status = json.load(open(workdir / 'sweep_status.json'))
  assert {r['name']: r['state'] for r in status['runs']}['c_CRASH'] == 'failed'
  assert any('a new one takes the next run' in ln for ln in lines)


def test_worker_request_needs_a_train_command():
  assert pool.worker_request(['py', '-m', 'train', '--workdir', 'x']) == ('py', ['--workdir', 'x'])
  try:
    pool.worker_request(['gcloud', 'compute', 'ssh'])
  except ValueError as e:
    assert 'not a python -m train command' in str(e)
  else:
    raise AssertionError('accepted a non-train command')
