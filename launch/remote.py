"""Sweep folders in a bucket (gs://BUCKET/PATH): etils epath access, and a run staged on its node.

A sweep's --workdir may be a bucket URL, gs://... (any scheme etils epath
knows; gs:// needs gcsfs, the `gcs` extra). `python -m train` writes local
files (orbax checkpoints, tensorboardX events, JSON), so a run of such a
sweep trains in a staging folder on the node that holds it, and that node's
Ray task (`launch.ray_backend.run_on_node`) copies the folder to the bucket:

  - before the process starts, the run's folder is copied down, so a resume
    finds its checkpoints (a requeued run may land on another node);
  - while it trains, every SYNC_S seconds, what changed is copied up:
    finished checkpoints (step folders, never orbax's temporary ones nor
    checkpoints/corrupt/), logs, events and JSON; a step's manifest.json goes
    after its other files, and steps the run deleted (train.keep_checkpoints)
    are deleted from the bucket too;
  - when it ends, with any status, once more before the task reports; a
    finished run's staging folder is then removed.

A node that dies loses what it wrote after its last copy: at most SYNC_S
seconds of logs, and the checkpoints written since; the run resumes from the
newest checkpoint that reached the bucket whole (a step copied without its
manifest is incomplete, and an older one is used). Runs of one sweep are
staged under one folder per sweep, which also holds their JAX compilation
cache. The driver reads and writes the
bucket directly (run states, summary.json, the status file); for the fit it
copies the runs' summary.json and curve.json into a local mirror
(`mirror_results`) and copies the fit back. Local paths go through the same
functions (epath handles both).
"""

import hashlib
import os
import shutil
import time

from etils import epath

SYNC_S = 60.0  # Seconds between copies of a training run's folder to the bucket.
STAGING_ENV = 'CHINCHAX_STAGING'  # Where runs of bucket sweeps are staged on a node.
DEFAULT_STAGING = '~/.cache/chinchax/staging'
RESULT_FILES = ('summary.json', 'curve.json', 'config.json')  # What the fit reads of each run.
_TEMPORARY = ('.orbax-checkpoint-tmp', '.tmp')  # Parts of names that are never copied.
_NEVER = ('checkpoints/corrupt',)  # Folders that are never copied (steps moved aside by a restore).
MANIFEST = 'manifest.json'  # Written last into a checkpoint step (train/checkpoint.py): copied last.


def is_remote(path: str) -> bool:
  """True for a URL (gs://..., s3://...), False for a local path."""
  return '://' in str(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def bucket_of(url: str) -> str:
  """'gs://b/x/y' -> 'gs://b'."""
  scheme, _, rest = url.partition('://')
  return f'{scheme}://{rest.split("/", 1)[0]}'


def makedirs(path: str) -> None:
  """A local folder and its parents; for a URL, only a check that its bucket exists (object stores
  have no folders, and gcsfs would create a missing bucket: a typo must not make one)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
  elif not epath.Path(bucket_of(path)).exists():
    raise FileNotFoundError(f'bucket {bucket_of(path)} does not exist (or is not readable)')


def listdir(path: str) -> list[str]:
  """Names in a folder ([] when it does not exist)."""
  p = epath.Path(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def write_text_atomic(path: str, text: str) -> None:
  """A reader sees the old file or the new one: a temporary file then os.replace here; in a
  bucket, one object upload (which is atomic)."""
  if is_remote(path):
    epath.Path(path).write_text(text)
    return
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def staging_dir(remote_dir: str) -> str:
  """The node-local folder of a bucket folder DIR/NAME: $CHINCHAX_STAGING (default
  DEFAULT_STAGING)/<hash of DIR>/NAME, so the runs of one sweep share a parent (and its
  .jax_cache)."""
  root = os.path.expanduser(os.environ.get(STAGING_ENV) or DEFAULT_STAGING)
  parent, name = os.path.split(remote_dir.rstrip('/'))
  digest = hashlib.sha256(parent.encode()).hexdigest()[:16]
  return os.path.join(root, digest, name)


def _wanted(rel: str) -> bool:
  return (not any(t in part for part in rel.split('/') for t in _TEMPORARY)
          and not any(rel == n or rel.startswith(n + '/') for n in _NEVER))


def _push_order(rel: str):
  """Sort key: a checkpoint step's manifest after the step's other files."""
  return (os.path.basename(rel) == MANIFEST, rel)


def _step_of(rel: str) -> str | None:
  """'checkpoints/40/state/x' -> '40'; None for files outside a checkpoint step."""
  parts = rel.split('/')
  return parts[1] if len(parts) > 2 and parts[0] == 'checkpoints' and parts[1].isdigit() else None


def _tree(root: epath.Path, rel: str = ''):
  """Relative paths of the files under root (skipping temporary names)."""
  here = root / rel if rel else root
  if not here.is_dir():
    return
  for child in here.iterdir():
    sub = f'{rel}/{child.name}' if rel else child.name
    if not _wanted(sub):
      continue
    if child.is_dir():
      yield from _tree(root, sub)
    else:
      yield sub


class Sync:
  """A run's staging folder and its bucket folder: `pull` once, then `push` what changed.

  push: a local file is copied up when it was not copied before in this
  sync or changed since (size or modification time), so finished
  checkpoints go up once and growing logs each time. pull: a bucket file is
  copied down when the staging folder lacks it or holds it in another size.
  """

  def __init__(self, local_dir: str, remote_dir: str):
    self.local, self.remote = epath.Path(local_dir), epath.Path(remote_dir)
    self.sent = {}  # rel -> (size, mtime_ns) of the local file when it was copied up (or down).
    self.t_last = 0.0

  def _stat(self, rel: str):
    st = os.stat(os.path.join(str(self.local), rel))
    return st.st_size, st.st_mtime_ns

  def pull(self) -> int:
    """Make the staging folder the bucket folder's copy: copy down the files it lacks or holds in
    another size, delete those the bucket lacks (the bucket is the run's truth)."""
    n, there = 0, set(_tree(self.remote))
    for rel in set(_tree(self.local)) - there:
      os.remove(os.path.join(str(self.local), rel))
    for rel in sorted(there):
      src, dst = self.remote / rel, self.local / rel
      if not dst.exists() or os.path.getsize(str(dst)) != src.stat().length:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        n += 1
      self.sent[rel] = self._stat(rel)
    return n

  def push(self) -> int:
    """Copy up what changed since the last copy; returns the number of files copied."""
    n = 0
    here = sorted(_tree(self.local), key=_push_order)
    for rel in here:
      try:
        stat = self._stat(rel)
      except FileNotFoundError:  # Removed meanwhile (an old checkpoint being deleted).
        continue
      if self.sent.get(rel) == stat:
        continue
      try:
        (self.remote / rel).write_bytes((self.local / rel).read_bytes())
      except FileNotFoundError:
        continue
      self.sent[rel] = stat
      n += 1
    self._drop_deleted_steps({_step_of(r) for r in here} - {None})
    self.t_last = time.monotonic()
    return n

  def _drop_deleted_steps(self, kept: set) -> None:
    """Delete the bucket's checkpoint steps that the run deleted here (train.keep_checkpoints)."""
    for name in listdir(str(self.remote / 'checkpoints')):
      if name.isdigit() and name not in kept and any(_step_of(r) == name for r in self.sent):
        (self.remote / 'checkpoints' / name).rmtree()
        self.sent = {r: v for r, v in self.sent.items() if _step_of(r) != name}

  def maybe_push(self, every_s: float = SYNC_S) -> None:
    """push() when `every_s` seconds have passed since the last one."""
    if time.monotonic() - self.t_last >= every_s:
      self.push()


def mirror_results(remote_dir: str, names: list) -> str:
  """Copy each run's RESULT_FILES from the bucket into a local mirror of the sweep; returns its path."""
  local = staging_dir(remote_dir)
  for name in names:
    for f in RESULT_FILES:
      src = epath.Path(remote_dir) / name / f
      if src.exists():
        dst = epath.Path(local) / name / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
  return local


def remove_staging(local_dir: str) -> None:
  """Delete a finished run's staging folder (its files are in the bucket)."""
  shutil.rmtree(local_dir, ignore_errors=True)


def push_tree(local_dir: str, remote_dir: str) -> int:
  """Copy a local folder (e.g. the fit) into the bucket; returns the number of files."""
  return Sync(local_dir, remote_dir).push()
