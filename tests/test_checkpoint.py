"""Checkpoints that prove themselves: checksums, fallback, shape checks, resharding, save errors.

One tiny real run (train.step, a grain iterator from train.data) saves steps 1
and 2 on one device; each test damages a copy of that folder and restores.
"""

import collections
import json
import logging
import os
import resource
import shutil
import signal

import jax
import numpy as np
import pytest

from configs import base
from model import sharding
from train import data as data_lib
from train import step as step_lib
from train.checkpoint import Checkpointer, CheckpointError, CheckpointMismatch

Saved = collections.namedtuple('Saved', 'config mesh program splits workdir treedef held')


def tiny_config(**model):
  c = base.get_config()
  c.model.update({'vocab_size': 64, 'd_model': 32, 'n_layers': 2, 'n_heads': 4, 'n_kv_heads': 2,
                  'd_ff': 64})
  c.model.update(model)
  c.data.update({'seq_len': 16, 'global_batch_size': 8, 'synthetic_tokens': 40_000})
  return c


def _abstract(program, config):
  a = program.abstract_state  # An attribute of train.step.Program (a method before the re-floor).
  return a(config) if callable(a) else a


def _iterator(saved):
  d = saved.config.data
  return data_lib.train_iterator(saved.splits.train, d.seq_len, d.global_batch_size,
                                 saved.config.seed)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """Steps 1 and 2 of a tiny run saved from one device, and what each held (host copies)."""
  c = tiny_config()
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  program = step_lib.build(c, mesh)
  splits = data_lib.prepare_splits(c)
  d = c.data
  it = data_lib.train_iterator(splits.train, d.seq_len, d.global_batch_size, c.seed)
  workdir = str(tmp_path_factory.mktemp('saved'))
  ckpt = Checkpointer(workdir, keep=3)
  held = {}
  with sharding.use_mesh(mesh):
    state = step_lib.init_state(c, program)
    for s in (1, 2):
      state, _ = program.train_step(state, data_lib.to_global(next(it), mesh))  # Moments non-zero.
      ckpt.save(s, state, it)
      held[s] = ([np.array(x, copy=True) for x in jax.tree.leaves(state)], it.get_state())
  ckpt.close()
  return Saved(c, mesh, program, splits, workdir, jax.tree.structure(state), held)


def _copy(saved, where) -> Checkpointer:
  shutil.copytree(saved.workdir, where)
  return Checkpointer(str(where), keep=3)


def _restore(saved, ckpt, config=None, mesh=None):
  """restore_latest into a fresh iterator, as the loop would on a restart (other config or mesh)."""
  program = saved.program
  if config is not None or mesh is not None:
    config, mesh = config or saved.config, mesh or saved.mesh
    program = step_lib.build(config, mesh)
  config, mesh = config or saved.config, mesh or saved.mesh
  it = _iterator(saved)
  with sharding.use_mesh(mesh):
    step, state = ckpt.restore_latest(_abstract(program, config), it)
  return step, state, it


def _assert_holds(saved, step, state, it):
  leaves, iter_state = saved.held[step]
  got = jax.tree.leaves(state)
  assert len(got) == len(leaves)
  for x, want in zip(got, leaves):
    assert x.dtype == want.dtype and np.asarray(x).tobytes() == want.tobytes()  # Bit for bit.
  assert it.get_state() == iter_state


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.name == 'train.checkpoint']


def _assert_fell_back(saved, ckpt, reason, caplog):
  """Step 2 is skipped with one warning line and moved aside; step 1 (state, iterator) is used."""
  with caplog.at_level(logging.WARNING, logger='train.checkpoint'):
    step, state, it = _restore(saved, ckpt)
  assert step == 1
  _assert_holds(saved, 1, state, it)
  assert sorted(os.listdir(ckpt.dir)) == ['1', 'corrupt']
  assert os.listdir(os.path.join(ckpt.dir, 'corrupt')) == [f'2-{reason}']
  [msg] = _warnings(caplog)
  assert msg.startswith(f'skipping checkpoint step 2 ({reason}): ') and '\n' not in msg
  assert msg.endswith(os.path.join(ckpt.dir, 'corrupt', f'2-{reason}'))


def _on_device(saved, leaves):
  """A state (the saved run's structure and shardings) holding these host arrays."""
  shardings = jax.tree.leaves(saved.program.state_sharding)
  return jax.tree.unflatten(saved.treedef,
                            [jax.device_put(x, s) for x, s in zip(leaves, shardings)])


def _read(path) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _array_files(step_dir) -> list[str]:
  """The OCDBT data files of a step, largest first."""
  d = os.path.join(step_dir, 'state', 'ocdbt.process_0', 'd')
  return sorted((os.path.join(d, f) for f in os.listdir(d)), key=os.path.getsize, reverse=True)


def test_round_trip_is_bit_identical_and_the_manifest_is_written_last(saved, tmp_path, caplog):
  ckpt = _copy(saved, tmp_path / 'w')
  assert ckpt.latest_step() == 2
  manifest = json.loads(_read(os.path.join(ckpt.step_dir(2), 'manifest.json')))
  assert manifest['format'] == 1 and manifest['step'] == 2
  assert len(manifest['leaves']) == len(saved.held[2][0]) and list(manifest['data']) == [
      'process_0-of-1.json']
  # Written after orbax finished the step: no file in the step is newer than the manifest.
  mtimes = [os.path.getmtime(os.path.join(r, f))
            for r, _, fs in os.walk(ckpt.step_dir(2)) for f in fs]
  assert max(mtimes) == os.path.getmtime(os.path.join(ckpt.step_dir(2), 'manifest.json'))
  with caplog.at_level(logging.WARNING, logger='train.checkpoint'):
    step, state, it = _restore(saved, ckpt)
  assert step == 2
  _assert_holds(saved, 2, state, it)
  assert not _warnings(caplog) and sorted(os.listdir(ckpt.dir)) == ['1', '2']


@pytest.mark.parametrize('damage', ['array file cut in half', 'orbax metadata deleted'])
def test_unreadable_step_falls_back_to_the_previous_step(saved, tmp_path, caplog, damage):
  ckpt = _copy(saved, tmp_path / 'w')
  if damage == 'array file cut in half':
    path = _array_files(ckpt.step_dir(2))[0]
    os.truncate(path, os.path.getsize(path) // 2)
  else:
    os.remove(os.path.join(ckpt.step_dir(2), 'state', '_METADATA'))
  _assert_fell_back(saved, ckpt, 'unreadable', caplog)


def test_overwritten_bytes_that_still_decode_fail_their_checksum(saved, tmp_path, caplog):
  # Step 3 holds one leaf zstd cannot compress (random bits, top exponent bit clear: finite), so
  # its bytes lie verbatim in an array file; 4 KiB of random bytes over them still decode and
  # restore without error: only the checksum sees the damage.
  ckpt = _copy(saved, tmp_path / 'w')
  rng = np.random.default_rng(0)
  leaves = list(saved.held[2][0])
  k = max(range(len(leaves)), key=lambda i: leaves[i].size)
  bits = rng.integers(0, 2**32, leaves[k].shape, dtype=np.uint32) & np.uint32(0xBFFFFFFF)
  leaves[k] = bits.view(np.float32)
  with sharding.use_mesh(saved.mesh):
    ckpt.save(3, _on_device(saved, leaves), _iterator(saved))
  raw = leaves[k].tobytes()
  hits = [p for p in _array_files(ckpt.step_dir(3)) if raw in _read(p)]
  assert len(hits) == 1, 'the incompressible leaf should lie verbatim in one array file'
  with open(hits[0], 'r+b') as f:
    f.seek(_read(hits[0]).find(raw) + 2048)
    f.write(rng.bytes(4096))
  with caplog.at_level(logging.WARNING, logger='train.checkpoint'):
    step, state, it = _restore(saved, ckpt)
  assert step == 2
  _assert_holds(saved, 2, state, it)
  assert os.listdir(os.path.join(ckpt.dir, 'corrupt')) == ['3-checksum']
  [msg] = _warnings(caplog)
  assert msg.startswith('skipping checkpoint step 3 (checksum): 1 array(s) differ')


def test_missing_manifest_means_incomplete(saved, tmp_path, caplog):
  ckpt = _copy(saved, tmp_path / 'w')
  os.remove(os.path.join(ckpt.step_dir(2), 'manifest.json'))
  assert ckpt.latest_step() == 1
  _assert_fell_back(saved, ckpt, 'incomplete', caplog)


def test_missing_iterator_file_falls_back(saved, tmp_path, caplog):
  ckpt = _copy(saved, tmp_path / 'w')
  os.remove(os.path.join(ckpt.step_dir(2), 'data', 'process_0-of-1.json'))
  _assert_fell_back(saved, ckpt, 'iterator', caplog)


def test_no_intact_step_starts_fresh_with_the_iterator_untouched(saved, tmp_path, caplog):
  ckpt = _copy(saved, tmp_path / 'w')
  os.remove(os.path.join(ckpt.step_dir(2), 'manifest.json'))
  os.remove(os.path.join(ckpt.step_dir(1), 'data', 'process_0-of-1.json'))
  fresh = _iterator(saved).get_state()
  with caplog.at_level(logging.WARNING, logger='train.checkpoint'):
    step, state, it = _restore(saved, ckpt)
  assert (step, state) == (0, None) and it.get_state() == fresh
  assert sorted(os.listdir(os.path.join(ckpt.dir, 'corrupt'))) == ['1-iterator', '2-incomplete']
  msgs = _warnings(caplog)
  assert len(msgs) == 3 and 'starting from step 0' in msgs[-1]


def test_resaving_an_incomplete_step_moves_it_aside_first(saved, tmp_path):
  ckpt = _copy(saved, tmp_path / 'w')
  os.remove(os.path.join(ckpt.step_dir(2), 'manifest.json'))
  step, state, it = _restore(saved, ckpt)
  assert step == 1 and os.listdir(os.path.join(ckpt.dir, 'corrupt')) == ['2-incomplete']
  with sharding.use_mesh(saved.mesh):
    ckpt.save(2, state, it)  # The same step number again, as a resumed run does.
  assert ckpt.latest_step() == 2


def test_changed_shape_or_dtype_names_the_parameter_and_keeps_the_checkpoints(saved, tmp_path):
  ckpt = _copy(saved, tmp_path / 'w')
  with pytest.raises(CheckpointMismatch, match=r'parameter 0/blocks/mlp/down_FD/value is '
                     r'float32\[2,64,32\] in the checkpoint but float32\[2,128,32\] in the model'):
    _restore(saved, ckpt, config=tiny_config(d_ff=128))
  abstract = jax.tree_util.tree_map_with_path(
      lambda p, x: (jax.ShapeDtypeStruct(x.shape, np.dtype('int32'), sharding=x.sharding)
                    if jax.tree_util.keystr(p, simple=True, separator='/') == '0/head_DV/value'
                    else x), _abstract(saved.program, saved.config))
  with pytest.raises(CheckpointMismatch, match=r'0/head_DV/value is float32\[32,64\] in the '
                     r'checkpoint but int32\[32,64\]'):
    ckpt.restore_latest(abstract, _iterator(saved))
  assert sorted(os.listdir(ckpt.dir)) == ['1', '2']  # A mismatch is not damage: nothing moved.


def test_restore_onto_a_2x2x2_mesh_gives_the_same_values(saved, tmp_path):
  ckpt = _copy(saved, tmp_path / 'w')
  c = tiny_config()
  c.mesh.update({'data': 2, 'fsdp': 2, 'tensor': 2})
  mesh = sharding.make_mesh(c.mesh)
  step, state, it = _restore(saved, ckpt, config=c, mesh=mesh)
  assert step == 2
  _assert_holds(saved, 2, state, it)
  assert all(x.sharding.mesh.shape == mesh.shape for x in jax.tree.leaves(state))
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
             for x in jax.tree.leaves(state))


def _unwritable(ckpt):
  os.chmod(ckpt.dir, 0o555)


def _parent_is_a_file(ckpt):
  shutil.rmtree(ckpt.dir)
  open(ckpt.dir, 'w').close()


@pytest.mark.parametrize('fault', ['unwritable', 'parent is a file', 'disk full'])
def test_save_errors_raise_checkpoint_error_naming_the_path_at_once(saved, tmp_path, fault):
  if fault == 'unwritable' and os.geteuid() == 0:
    pytest.skip('root ignores directory permissions')
  ckpt = _copy(saved, tmp_path / 'w')
  _, state, it = _restore(saved, ckpt)
  limit = resource.getrlimit(resource.RLIMIT_FSIZE)
  sigxfsz = signal.getsignal(signal.SIGXFSZ)
  try:
    if fault == 'unwritable':
      _unwritable(ckpt)
    elif fault == 'parent is a file':
      _parent_is_a_file(ckpt)
    else:  # Files may not grow past 16 KiB: writes fail with EFBIG, as with ENOSPC on a full disk.
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE, (16384, limit[1]))
    with sharding.use_mesh(saved.mesh), pytest.raises(CheckpointError) as e:
      ckpt.save(3, state, it)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    signal.signal(signal.SIGXFSZ, sigxfsz)
    if os.path.isdir(ckpt.dir):
      os.chmod(ckpt.dir, 0o755)
  msg = str(e.value)
  assert msg.startswith(f'could not save checkpoint step 3 to {ckpt.step_dir(3)}: ')
  assert '\n' not in msg
  if fault == 'disk full':  # The earlier steps are untouched; orbax's unfinished folder is no step.
    assert 'File too large' in msg
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [2, 1]


def test_non_finite_state_is_refused_and_nothing_written(saved, tmp_path):
  ckpt = _copy(saved, tmp_path / 'w')
  leaves = list(saved.held[2][0])
  leaves[-3] = np.full_like(leaves[-3], np.inf)
  with sharding.use_mesh(saved.mesh), pytest.raises(
      FloatingPointError, match=r"not checkpointing step 3: non-finite values in \['1/opt_state"):
    ckpt.save(3, _on_device(saved, leaves), _iterator(saved))
  assert sorted(os.listdir(ckpt.dir)) == ['1', '2']
