"""orbax checkpoints of (model + optimizer state, grain iterator state) that prove themselves.

Files, under WORKDIR/checkpoints/:

  <step>/state/...                       the state pytree (orbax StandardSave, OCDBT + zarr)
  <step>/data/process_<i>-of-<n>.json    each process's grain iterator state (JSON)
  <step>/manifest.json                   written last, atomically: what the step must hold
  corrupt/<step>-<reason>[-<k>]/         steps that failed their checks, moved aside, never read;
                                         reason: incomplete, manifest, iterator, unreadable, checksum

A step is complete only when its manifest exists: the manifest is written
after orbax has finished and renamed the step (saves are synchronous), so a
crash at any point leaves either a complete step or one without a manifest.

manifest.json (format 1), all hex strings lower case:

  format  1
  step    the step number (int)
  leaves  {name: {"shape": [int, ...], "dtype": numpy dtype name, "hash": 16 hex digits}}, one
          per state leaf; name is the leaf's pytree path joined by '/' (e.g.
          '0/blocks/mlp/up_DF/value': 0 = model, 1 = optimizer)
  data    {"process_<i>-of-<n>.json": sha256 of that iterator state in canonical JSON
          (json.dumps(state, sort_keys=True, separators=(',', ':')), UTF-8)}
  sha256  sha256 of the canonical JSON of the manifest without this key

A leaf's hash does not depend on how the array is sharded: it views the
array's values as 32-bit words w_i in C order (a 4-byte element is one word,
1- and 2-byte elements are zero-extended, an 8-byte element is two words),
and is the two uint32 sums, printed as 8 hex digits each (h_0 first),
  t_i = fmix32(w_i XOR fmix32(i XOR 0x9E3779B9)),
  h_0 = sum_i t_i mod 2^32,  h_1 = sum_i (2i + 1) t_i mod 2^32,
with fmix32 MurmurHash3's 32-bit finalizer and i the word's index. Any single
changed word changes both sums; integer sums are exact in any reduction order.

On restore a step is checked in this order: manifest present and intact; the
model's names, shapes and dtypes equal the manifest's (else `CheckpointMismatch`,
which stops the run: every older step would mismatch too); this process's
iterator file present with its hash; orbax reads the arrays; their hashes equal
the manifest's; then, last, the iterator is restored. Restoring targets
ShapeDtypeStructs carrying the *current* mesh's shardings, so a run can resume
on a different mesh shape.
"""

import hashlib
import inspect
import json
import logging
import os
import re
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from train.files import write_json_atomic

MANIFEST = 'manifest.json'
# Why a step is unusable, as in the names of the folders bad steps are moved to.
REASONS = ('incomplete', 'manifest', 'iterator', 'unreadable', 'checksum')
CORRUPT = 'corrupt'
FORMAT = 1
_SEED = 0x9E3779B9

_log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message names the path."""


class CheckpointCorrupt(CheckpointError):
  """A step failed its checks; `reason` is a short slug for the folder it is moved to."""

  def __init__(self, step: int, reason: str, detail: str):
    super().__init__(f'checkpoint step {step} is unusable ({reason}): {detail}')
    self.step, self.reason, self.detail = step, reason, detail


class CheckpointMismatch(ValueError):
  """The checkpoint's parameter names, shapes or dtypes differ from the model's."""


class Checkpointer:
  """Synchronous, checksummed saves; restores that skip (and move aside) bad steps."""

  def __init__(self, workdir: str, keep: int | None, create: bool = True):
    """`keep`: most recent steps kept (None: all); `create=False` reads another run's steps."""
    _silence_orbax_teardown()
    self.dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=create, read_only=not create,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=create))  # Own unfinished saves (<step>.orbax-checkpoint-tmp).

  def step_dir(self, step: int) -> str:
    """The folder of `step` (whether or not it exists)."""
    return os.path.join(self.dir, str(step))

  def all_steps(self) -> list[int]:
    """Every step orbax finished, newest first, complete or not."""
    return sorted(self.manager.all_steps(), reverse=True)

  def latest_step(self) -> int | None:
    """The newest complete step (one with its manifest); its contents are checked on restore."""
    return next((s for s in self.all_steps() if os.path.exists(self._manifest_path(s))), None)

  def save(self, step: int, state, data_iter) -> None:
    """Save `step` and return once it is complete on disk (manifest included).

    Refuses a state with a non-finite value (FloatingPointError, nothing is
    written). Any failure to write (disk full, permission denied) raises
    CheckpointError naming the path; the step is then left without a manifest.
    """
    names = [_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    leaves = jax.tree_util.tree_leaves(state)
    hashes, finite = _digests(leaves)
    bad = [n for n, ok in zip(names, finite) if not ok]
    if bad:
      raise FloatingPointError(f'not checkpointing step {step}: non-finite values in {bad[:3]}')
    data_hashes = _gather_data_hashes(_iterator_hash(data_iter.get_state()))
    if step in self.manager.all_steps() and not os.path.exists(self._manifest_path(step)):
      why = CheckpointCorrupt(step, 'incomplete', f'no {MANIFEST} (the save did not finish)')
      _log.warning('moved incomplete checkpoint step %d to %s before saving it again', step,
                   self._move_aside(step, why))
    quiet = _ReraisedThreadErrors()
    logging.getLogger('absl').addFilter(quiet)
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)))
      self.manager.wait_until_finished()
      if jax.process_index() == 0:
        body = {'format': FORMAT, 'step': step,
                'leaves': {n: {'shape': list(x.shape), 'dtype': str(x.dtype), 'hash': h}
                           for n, x, h in zip(names, leaves, hashes)},
                'data': data_hashes}
        write_json_atomic(self._manifest_path(step), {**body, 'sha256': _sha256_json(body)},
                          indent=1)
    except Exception as e:  # Orbax wraps OSErrors from its threads; report the root cause.
      raise CheckpointError(f'could not save checkpoint step {step} to {self.step_dir(step)}: '
                            f'{_root_cause(e)}') from e
    finally:
      logging.getLogger('absl').removeFilter(quiet)
    _sync(f'checkpoint manifest {step}')

  def restore(self, step: int, abstract_state, data_iter):
    """Restore a checked `step` into the shardings of `abstract_state`; the iterator last, in place.

    Raises CheckpointCorrupt (the step is left where it is) or CheckpointMismatch.
    """
    manifest = self._read_manifest(step)
    _check_matches(manifest, abstract_state, step, self.step_dir(step))
    _agree(step, self._check_data_file(step, manifest))
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))['state']
      problem = _hash_problem(manifest, state)
    except Exception as e:  # noqa: BLE001  Damaged files: orbax/tensorstore raise anything.
      problem = CheckpointCorrupt(step, 'unreadable', _root_cause(e))
    _agree(step, problem)
    try:
      self.manager.restore(step, args=ocp.args.Composite(
          data=grain.checkpoint.CheckpointRestore(data_iter)))
      problem = None
    except Exception as e:  # noqa: BLE001  Same: grain's restore of a damaged file.
      problem = CheckpointCorrupt(step, 'iterator', _root_cause(e))
    _agree(step, problem)
    return state

  def restore_latest(self, abstract_state, data_iter):
    """(step, state) from the newest step that passes its checks, or (0, None) if none does.

    Each bad step is skipped with one warning naming it and the reason, and
    moved to checkpoints/corrupt/. On (0, None) the iterator is back in the
    state it had on entry. CheckpointMismatch is raised, not skipped.
    """
    initial = data_iter.get_state()
    skipped = 0
    for step in self.all_steps():
      try:
        return step, self.restore(step, abstract_state, data_iter)
      except CheckpointCorrupt as e:
        dest = self._move_aside(step, e)
        _log.warning('skipping checkpoint step %d (%s): %s; moved to %s', step, e.reason,
                     e.detail, dest)
        skipped += 1
    data_iter.set_state(initial)
    if hasattr(data_iter, 'start_prefetch'):  # As grain's restore does (multiprocess iterators).
      data_iter.start_prefetch()
    if skipped:
      _log.warning('no intact checkpoint in %s (%d skipped): starting from step 0', self.dir,
                   skipped)
    return 0, None

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def _manifest_path(self, step: int) -> str:
    return os.path.join(self.step_dir(step), MANIFEST)

  def _read_manifest(self, step: int) -> dict:
    path = self._manifest_path(step)
    if not os.path.exists(path):
      raise CheckpointCorrupt(step, 'incomplete', f'no {MANIFEST} (the save did not finish)')
    try:
      with open(path) as f:
        manifest = json.load(f)
      body = {k: v for k, v in manifest.items() if k != 'sha256'}
      ok = (manifest['sha256'] == _sha256_json(body) and manifest['format'] == FORMAT
            and manifest['step'] == step)
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise CheckpointCorrupt(step, 'manifest', f'{path} unreadable: {_root_cause(e)}') from e
    if not ok:
      raise CheckpointCorrupt(step, 'manifest', f'{path} fails its own checksum, format or step')
    return manifest

  def _check_data_file(self, step: int, manifest: dict) -> CheckpointCorrupt | None:
    """This process's iterator file against the manifest (None if it is fine)."""
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    path = os.path.join(self.step_dir(step), 'data', name)
    if name not in manifest['data']:
      return CheckpointCorrupt(step, 'iterator', f'{MANIFEST} has no hash for {name} (saved by '
                               'another process count?)')
    try:
      with open(path) as f:
        text = f.read()
      got = hashlib.sha256(_canonical_json(text).encode()).hexdigest()
    except (OSError, ValueError) as e:
      return CheckpointCorrupt(step, 'iterator', f'data-iterator file: {_root_cause(e)}')
    if got != manifest['data'][name]:
      return CheckpointCorrupt(step, 'iterator', f'{path} fails its checksum')
    return None

  def _move_aside(self, step: int, why: CheckpointCorrupt) -> str:
    """Rename the step folder to corrupt/<step>-<reason>[-k]; returns where it went."""
    _sync(f'checkpoint move {step} start')  # Every process picks the name before any rename.
    base = os.path.join(self.dir, CORRUPT, f'{step}-{why.reason}')
    dest, k = base, 1
    while os.path.exists(dest):
      k += 1
      dest = f'{base}-{k}'
    if jax.process_index() == 0:
      try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.rename(self.step_dir(step), dest)
      except OSError as e:
        raise CheckpointError(f'{why}; could not move {self.step_dir(step)} aside to {dest}: '
                              f'{e}') from e
    _sync(f'checkpoint move {step} done')
    self.manager.reload()
    return dest


class _ReraisedThreadErrors(logging.Filter):
  """Drops orbax's logged tracebacks of errors in its save threads: `save` re-raises them."""

  def filter(self, record: logging.LogRecord) -> bool:
    return '_SignalingThread.run() raised an exception' not in str(record.msg)


def _name(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator='/')


def _check_matches(manifest: dict, abstract_state, step: int, where: str) -> None:
  """CheckpointMismatch naming the first parameter whose name, shape or dtype differs."""
  saved = manifest['leaves']
  want = {_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(abstract_state)}
  problems = []
  for n, x in want.items():
    if n not in saved:
      problems.append(f'parameter {n} {_desc(x.shape, x.dtype)} is not in the checkpoint')
    elif tuple(saved[n]['shape']) != tuple(x.shape) or saved[n]['dtype'] != str(x.dtype):
      problems.append(f'parameter {n} is {_desc(saved[n]["shape"], saved[n]["dtype"])} in the '
                      f'checkpoint but {_desc(x.shape, x.dtype)} in the model')
  problems += [f'parameter {n} is in the checkpoint but not in the model'
               for n in saved if n not in want]
  if problems:
    more = f' (and {len(problems) - 1} more differences)' if len(problems) > 1 else ''
    raise CheckpointMismatch(f'cannot restore step {step} from {where}: {problems[0]}{more}')


def _desc(shape, dtype) -> str:
  return f'{dtype}[{",".join(str(d) for d in shape)}]'


def _hash_problem(manifest: dict, state) -> CheckpointCorrupt | None:
  names = [_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
  hashes, _ = _digests(jax.tree_util.tree_leaves(state))
  bad = [n for n, h in zip(names, hashes) if manifest['leaves'][n]['hash'] != h]
  if not bad:
    return None
  return CheckpointCorrupt(manifest['step'], 'checksum',
                           f'{len(bad)} array(s) differ from their saved checksums, e.g. {bad[0]}')


def _agree(step: int, problem: CheckpointCorrupt | None) -> None:
  """Raise `problem`; with several processes, all raise the reason of the lowest failing one."""
  if jax.process_count() > 1:
    code = REASONS.index(problem.reason) + 1 if problem else 0
    codes = np.asarray(multihost_utils.process_allgather(np.int32(code))).reshape(-1)
    first = next((i for i, c in enumerate(codes) if c), None)
    if first is not None and (problem is None or first != jax.process_index()):
      detail = problem.detail if problem else 'the check failed there'
      problem = CheckpointCorrupt(step, REASONS[codes[first] - 1], f'on process {first}: {detail}')
  if problem is not None:
    raise problem


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _silence_orbax_teardown() -> None:
  """Drop the pages Python prints about orbax's other reads and writes when one of them fails.

  When one array read or write fails, orbax closes its event loop with the
  others in flight: their coroutines are freed unawaited, and TensorStore's
  completions, arriving later from its threads, find the loop closed. Both go
  to sys.unraisablehook as tracebacks with nothing to act on; the failure
  itself is raised (or reported as one line) by the Checkpointer. Installed
  once per process; every other unraisable exception still reaches the old hook.
  """
  global _old_unraisablehook
  if _old_unraisablehook is not None:
    return
  _old_unraisablehook = old = sys.unraisablehook

  def hook(u):
    loop_closed = (u.object is None and isinstance(u.exc_value, RuntimeError)
                   and str(u.exc_value) == 'Event loop is closed')
    orbax_coroutine = (inspect.iscoroutine(u.object)
                       and f'{os.sep}orbax{os.sep}' in u.object.cr_code.co_filename)
    if not (loop_closed or orbax_coroutine):
      old(u)

  sys.unraisablehook = hook


_old_unraisablehook = None


def _root_cause(e: BaseException) -> str:
  """The innermost exception's message, first line only (tensorstore's run to pages)."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  lines = str(e).strip().splitlines()
  # TensorStore appends its whole JSON spec ([tensorstore_spec='...']) after the reason: drop it.
  text = re.sub(r"\s*\[tensorstore_spec=.*$", '', lines[0]) if lines else ''
  if len(text) > 400:  # Keep the end: TensorStore puts the reason and errno there.
    text = text[:200] + ' ... ' + text[-200:]
  return f'{type(e).__name__}: {text}'


def _canonical_json(text: str) -> str:
  return json.dumps(json.loads(text), sort_keys=True, separators=(',', ':'))


def _sha256_json(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(',', ':')).encode()).hexdigest()


def _iterator_hash(state) -> str:
  """sha256 of a grain iterator state (a dict, or a DataLoader's JSON bytes), canonical JSON."""
  text = state.decode() if isinstance(state, bytes) else json.dumps(state)
  return hashlib.sha256(_canonical_json(text).encode()).hexdigest()


def _gather_data_hashes(mine: str) -> dict[str, str]:
  """{iterator file name: hash} for every process (a collective when there are several)."""
  n = jax.process_count()
  if n == 1:
    return {'process_0-of-1.json': mine}
  digests = multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(mine), np.uint8))
  return {f'process_{i}-of-{n}.json': bytes(d).hex() for i, d in enumerate(np.asarray(digests))}


def _fmix32(h):
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _words(x):
  """The array's values as uint32 words (see the module docstring)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size < 4:
    return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[size]).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)  # An 8-byte element gains an axis of 2.


def _flat_index(shape):
  """Each element's C-order index, mod 2^32."""
  i = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for d in reversed(range(len(shape))):
    i = i + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
    stride *= shape[d]
  return i


@jax.jit
def _digest_arrays(leaves):
  """uint32[n, 2] hashes and bool[n] all-finite flags, one per leaf (sharding-invariant)."""
  hashes, finite = [], []
  for x in leaves:
    w = _words(x)
    i = _flat_index(w.shape)
    t = _fmix32(w ^ _fmix32(i ^ jnp.uint32(_SEED)))
    hashes.append(jnp.stack([jnp.sum(t, dtype=jnp.uint32),
                             jnp.sum(t * (i * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)]))
    finite.append(jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                  else jnp.bool_(True))
  return jnp.stack(hashes), jnp.stack(finite)


def _digests(leaves) -> tuple[list[str], list[bool]]:
  """Per leaf: the 16-hex-digit hash and whether every value is finite (one device round trip)."""
  if not leaves:
    return [], []
  hashes, finite = jax.device_get(_digest_arrays(leaves))
  return [f'{int(a):08x}{int(b):08x}' for a, b in hashes], [bool(f) for f in finite]
