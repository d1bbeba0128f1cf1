"""Two processes x 4 CPU devices (jax.distributed, gloo) train exactly like one process x 8."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

OVERRIDES = ['--config.model.vocab_size=64', '--config.model.d_model=32', '--config.model.n_layers=2',
             '--config.model.n_heads=4', '--config.model.n_kv_heads=2', '--config.model.d_ff=64',
             '--config.data.source=synthetic', '--config.data.seq_len=16',
             '--config.data.global_batch_size=8', '--config.data.synthetic_tokens=20000',
             '--config.train.steps=6', '--config.train.eval_every=6', '--config.train.log_every=2',
             '--config.train.eval_batches=2', '--config.train.checkpoint_every=3',
             '--config.train.peak_flops=1e11', '--config.mesh.data=2', '--config.mesh.fsdp=-1']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(n_devices: int) -> dict:
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={n_devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _train(workdir, n_devices, extra=(), **kw):
  cmd = [sys.executable, '-m', 'train', '--config', 'configs/tiny_cpu.py', '--workdir', workdir,
         *OVERRIDES, *extra]
  return subprocess.Popen(cmd, env=_env(n_devices), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  single = _train(str(tmp_path / 'single'), 8)
  out, _ = single.communicate(timeout=300)
  assert single.returncode == 0, out
  port = _free_port()
  procs = [_train(str(tmp_path / 'multi'), 4, ['--coordinator', f'localhost:{port}',
                                                '--num_processes=2', f'--process_id={i}'])
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o
  a = json.load(open(tmp_path / 'single' / 'summary.json'))
  b = json.load(open(tmp_path / 'multi' / 'summary.json'))
  assert a['n_devices'] == b['n_devices'] == 8
  assert b['mesh'] == {'data': 2, 'fsdp': 4, 'tensor': 1, 'expert': 1}
  np.testing.assert_allclose(b['final_train_loss'], a['final_train_loss'], rtol=1e-5)
  np.testing.assert_allclose(b['eval_loss'], a['eval_loss'], rtol=1e-5)
  # Both processes wrote their own grain iterator state into the shared checkpoint.
  data_dir = tmp_path / 'multi' / 'checkpoints' / '6' / 'data'
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(data_dir))


@pytest.mark.slow
@pytest.mark.long  # The one-process SIGTERM test (test_faults.py) and two_processes_match above stay in.
def test_sigterm_stops_both_processes_at_one_step_and_they_resume(tmp_path):
  """Preemption across hosts: JAX's preemption sync point makes every process save the same step."""
  long = ['--config.train.steps=100', '--config.train.eval_every=100', '--config.train.log_every=1',
          '--config.train.checkpoint_every=0']
  port = _free_port()
  workdir = str(tmp_path / 'multi')
  procs = [_train(workdir, 4, [*long, '--coordinator', f'localhost:{port}', '--num_processes=2',
                               f'--process_id={i}']) for i in range(2)]
  out0 = []
  for line in procs[0].stdout:  # Process 0 logs; signal both once training is under way.
    out0.append(line)
    if 'step 20/100' in line:
      for p in procs:
        p.send_signal(signal.SIGTERM)
      break
  outs = [''.join(out0) + procs[0].communicate(timeout=300)[0], procs[1].communicate(timeout=300)[0]]
  assert [p.returncode for p in procs] == [75, 75], outs
  stopped = int(outs[0].split('stopped after step ')[1].split('/')[0])
  saved = [int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit()]
  assert saved == [stopped]
  data_dir = os.path.join(workdir, 'checkpoints', str(stopped), 'data')
  assert {'process_0-of-2.json', 'process_1-of-2.json'} <= set(os.listdir(data_dir))
  port = _free_port()
  procs = [_train(workdir, 4, [*long, '--coordinator', f'localhost:{port}', '--num_processes=2',
                               f'--process_id={i}']) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert f'resumed from step {stopped}' in outs[0]
  curve = json.load(open(os.path.join(workdir, 'curve.json')))
  assert [r['step'] for r in curve if r['eval_loss'] is None] == list(range(1, 101))
