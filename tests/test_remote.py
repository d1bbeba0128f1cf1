"""launch.remote: a sweep folder in a bucket (gs://, here tests/fake_gcs.py's local stand-in).

A run's node-local staging folder is copied to and from the bucket
(temporary checkpoint folders never), a run started on another node resumes
from what reached the bucket, the ledger reads run states and writes the
status file there, the fit reads a local mirror, and sweeps that cannot use
a bucket are refused with one message. The Ray backend with a bucket:
tests/test_ray_sweep.py.
"""

import json
import os
import shutil
import sys
import textwrap
from unittest import mock

import pytest

import fake_gcs
from launch import ledger as ledger_lib
from launch import ray_backend
from launch import remote
from launch import sweep as sweep_lib
from test_sweep import write_sweep


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """gs://b/... is tmp_path/gcs/b/...; runs are staged under tmp_path/staging."""
  monkeypatch.setenv(fake_gcs.ROOT_ENV, str(tmp_path / 'gcs'))
  monkeypatch.setenv(remote.STAGING_ENV, str(tmp_path / 'staging'))
  (tmp_path / 'gcs' / 'b').mkdir(parents=True)
  fake_gcs.install()
  return tmp_path / 'gcs' / 'b'


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


def test_sync_copies_what_changed_and_never_temporary_checkpoints(tmp_path, bucket):
  local = str(tmp_path / 'local')
  _write(f'{local}/train.log', 'line 1\n')
  _write(f'{local}/checkpoints/5/state/data', 'x' * 100)
  _write(f'{local}/checkpoints/10.orbax-checkpoint-tmp-3/state/data', 'half')
  _write(f'{local}/checkpoints/5/manifest.json', '{}')
  _write(f'{local}/checkpoints/corrupt/3-checksum/state/data', 'bad')
  _write(f'{local}/summary.json.tmp-7', '{')
  sync = remote.Sync(local, 'gs://b/sweep/run')
  order = []
  real = remote.epath.Path.write_bytes
  with mock.patch.object(remote.epath.Path, 'write_bytes', lambda self, b: (order.append(self.name), real(self, b))):
    assert sync.push() == 3
  assert order.index('manifest.json') > order.index('data')  # A step's manifest goes up last.
  assert sorted(remote._tree(remote.epath.Path('gs://b/sweep/run'))) == [
      'checkpoints/5/manifest.json', 'checkpoints/5/state/data', 'train.log']
  assert sync.push() == 0  # Nothing changed.
  with open(f'{local}/train.log', 'a') as f:
    f.write('line 2\n')
  assert sync.push() == 1 and (bucket / 'sweep/run/train.log').read_text() == 'line 1\nline 2\n'
  _write(f'{local}/checkpoints/9/state/data', 'y')  # keep_checkpoints=1: step 5 goes, here and there.
  shutil.rmtree(f'{local}/checkpoints/5')
  assert sync.push() == 1 and sorted(os.listdir(bucket / 'sweep/run/checkpoints')) == ['9']

  # Another node: its staging folder becomes the bucket's copy (stale files go).
  other = str(tmp_path / 'other')
  _write(f'{other}/checkpoints/99/state/data', 'stale')
  assert remote.Sync(other, 'gs://b/sweep/run').pull() == 2
  assert sorted(remote._tree(remote.epath.Path(other))) == ['checkpoints/9/state/data', 'train.log']


STAND_IN = '''
import json, os, sys
run_dir = sys.argv[sys.argv.index('--workdir') + 1]
assert '://' not in run_dir, run_dir  # The run writes its node's staging folder.
ckpts = os.path.join(run_dir, 'checkpoints')
if os.path.isdir(os.path.join(ckpts, '3')):
  print('resumed from step 3')
  json.dump({'eval_loss': 2.5}, open(os.path.join(run_dir, 'summary.json'), 'w'))
  sys.exit(0)
os.makedirs(os.path.join(ckpts, '3'))
open(os.path.join(ckpts, '3', 'state'), 'w').write('weights')
print('SIGTERM: saved step 3'); sys.exit(75)
'''


def test_a_run_in_a_bucket_trains_on_its_node_and_resumes_on_another(tmp_path, bucket, monkeypatch):
  script = tmp_path / 'stand_in.py'
  script.write_text(textwrap.dedent(STAND_IN))
  run_dir = 'gs://b/sweep/run'
  argv = [sys.executable, str(script), '--workdir', run_dir]
  out = ray_backend.run_on_node(argv, f'{run_dir}/train.log')
  assert out['exit'] == 75 and out['tail'][-1] == 'SIGTERM: saved step 3'
  assert (bucket / 'sweep/run/checkpoints/3/state').read_text() == 'weights'
  assert ledger_lib.run_state(run_dir) == 'resume'

  monkeypatch.setenv(remote.STAGING_ENV, str(tmp_path / 'another_node'))
  out = ray_backend.run_on_node(argv, f'{run_dir}/train.log')
  assert out['exit'] == 0 and 'resumed from step 3' in out['tail']
  assert ledger_lib.run_state(run_dir) == 'finished' and ledger_lib.eval_loss(run_dir) == 2.5
  log = (bucket / 'sweep/run/train.log').read_text()  # Both attempts, the first copied down first.
  assert log.count('\n=== ') == 2 and 'SIGTERM: saved step 3' in log and 'resumed from step 3' in log
  assert str(tmp_path / 'another_node') in log  # argv's --workdir became the staging folder.
  assert not os.path.exists(remote.staging_dir(run_dir))  # Finished: its staging folder is gone.
  with pytest.raises(ValueError, match="no argument 'gs://b/sweep/other'"):
    ray_backend.run_on_node(argv, 'gs://b/sweep/other/train.log')


def test_the_ledger_keeps_its_status_file_in_the_bucket_and_the_fit_reads_a_mirror(tmp_path, bucket):
  remote.makedirs('gs://b/sweep/done')
  remote.write_text_atomic('gs://b/sweep/done/summary.json', json.dumps({'eval_loss': 3.0}))
  remote.write_text_atomic('gs://b/sweep/done/curve.json', '[]')
  lines = []
  ledger = ledger_lib.Ledger([('done', ['x']), ('new', ['y'])], 'gs://b/sweep', 'ray', 1, 0, lines.append)
  assert ledger.queue[0].name == 'new' and 'skip    done: finished (eval loss 3.0000)' in lines[0]
  status = json.loads((bucket / 'sweep' / ledger_lib.STATUS_FILE).read_text())
  assert status['counts'] == {'skipped': 1, 'queued': 1} and status['workdir'] == 'gs://b/sweep'

  here, _ = sweep_lib._local_results('gs://b/sweep', sweep_lib.expand(
      sweep_lib.load_config_file(write_sweep(tmp_path, budgets=(1e9,)))), None, lines.append)
  assert not remote.is_remote(here) and here.startswith(str(tmp_path / 'staging'))
  mirror_of = remote.mirror_results('gs://b/sweep', ['done', 'new'])
  assert mirror_of == here and sorted(os.listdir(os.path.join(here, 'done'))) == ['curve.json', 'summary.json']
  assert remote.push_tree(os.path.join(here, 'done'), 'gs://b/sweep/fit') == 2


def test_a_slice_attempt_counts_a_lost_host_first_then_exit_75_then_the_first_failure():
  ok, bad, spot = ({'exit': s} for s in (0, 1, 75))
  rank = ray_backend._slice_outcome
  assert rank([(1, bad, '', ''), (0, None, 'NodeDiedError: gone', '')], 2) == (
      0, None, 'host 0 of 2: NodeDiedError: gone', '')
  assert rank([(0, bad, '', ''), (1, spot, '', '')], 2)[:2] == (1, 75)
  assert rank([(1, None, '', 'OSError: no NFS'), (0, None, '', 'cancelled')], 2) == (1, None, '', 'OSError: no NFS')
  assert rank([(1, bad, '', ''), (0, None, '', 'cancelled')], 2) == (1, 1, '', '')
  assert rank([(0, ok, '', ''), (1, ok, '', '')], 2) == (0, 0, '', '')


def test_a_missing_bucket_is_refused_not_created(tmp_path, bucket, capsys):
  with pytest.raises(FileNotFoundError, match='bucket gs://nope does not exist'):
    remote.makedirs('gs://nope/sweep')
  assert not (bucket.parent / 'nope').exists()
  assert sweep_lib.main(['--config', write_sweep(tmp_path), '--workdir', 'gs://nope/sweep',
                         '--backend', 'ray', '--no-fit']) == 2
  assert 'bucket gs://nope does not exist' in capsys.readouterr().err


def test_sweeps_that_cannot_use_a_bucket_are_refused(tmp_path, capsys):
  cfg = write_sweep(tmp_path)
  assert sweep_lib.main(['--config', cfg, '--workdir', 'gs://b/sweep']) == 2
  assert 'a bucket workdir needs --backend ray' in capsys.readouterr().err
  assert sweep_lib.main(['--config', cfg, '--workdir', 'gs://b/sweep', '--backend', 'ray',
                         '--hosts-per-run', '2']) == 2
  assert 'with 2 hosts per run' in capsys.readouterr().err


def test_the_ray_dry_run_of_a_bucket_sweep_copies_results_with_gcloud(tmp_path, capsys):
  cfg = write_sweep(tmp_path)
  assert sweep_lib.main(['--config', cfg, '--workdir', 'gs://b/sweep', '--backend', 'ray', '--dry-run']) == 0
  out = capsys.readouterr().out
  assert '--workdir gs://b/sweep --backend ray' in out and 'gcloud storage cp -r gs://b/sweep .' in out
  assert 'ray.nfs is empty' not in out and "pip install -e '.[ray,gcs,tpu-aot]'" in out
