"""Sweep folders in a bucket (gs://BUCKET/PATH): etils epath access, and a run staged on its node.

A sweep's --workdir may be a bucket URL, gs://... (any scheme etils epath
knows; gs:// needs gcsfs, the `gcs` extra). `python -m train` writes local
files (orbax checkpoints, tensorboardX events, JSON), so a run of such a
sweep trains in a staging folder on the node that holds it, and that node's
Ray task (`launch.ray_backend.run_on_node`) copies the folder to the bucket:

  - before the process starts, the run's folder is copied down, so a resume
    finds its checkpoints (a requeued run may land on another node);
  - while it trains, every SYNC_S seconds, what changed is copied up:
    finished checkpoints (step folders, never orbax's temporary ones), logs,
    events and JSON;
  - when it ends, with any status, once more before the task reports.

A node that dies loses what it wrote after its last copy: at most SYNC_S
seconds of logs, and the checkpoints written since; the run resumes from the
newest checkpoint that reached the bucket (a half-copied one fails its
digest check and an older one is used). The driver reads and writes the
bucket directly (run states, summary.json, the status file); for the fit it
copies the runs' summary.json and curve.json into a local mirror
(`mirror_results`) and copies the fit back. Local paths go through the same
functions (epath handles both).
"""

import hashlib
import os
import time

from etils import epath

SYNC_S = 60.0  # Seconds between copies of a training run's folder to the bucket.
STAGING_ENV = 'CHINCHAX_STAGING'  # Where runs of bucket sweeps are staged on a node.
DEFAULT_STAGING = '~/.cache/chinchax/staging'
RESULT_FILES = ('summary.json', 'curve.json', 'config.json')  # What the fit reads of each run.
_TEMPORARY = ('.orbax-checkpoint-tmp', '.tmp')  # Parts of names that are never copied.


def is_remote(path: str) -> bool:
  """True for a URL (gs://..., s3://...), False for a local path."""
  return '://' in str(path)


def exists(path: str) -> bool:
  return epath.Path(path).exists()


def read_text(path: str) -> str:
  return epath.Path(path).read_text()


def makedirs(path: str) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


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
  """The node-local folder of a bucket folder: $CHINCHAX_STAGING (default DEFAULT_STAGING)/<hash>/<name>."""
  root = os.path.expanduser(os.environ.get(STAGING_ENV) or DEFAULT_STAGING)
  digest = hashlib.sha256(remote_dir.rstrip('/').encode()).hexdigest()[:16]
  return os.path.join(root, digest, os.path.basename(remote_dir.rstrip('/')))


def _wanted(rel: str) -> bool:
  return not any(t in part for part in rel.split('/') for t in _TEMPORARY)


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

  A local file is copied up when it was not copied before in this sync or
  changed since (size or modification time), so finished checkpoints go up
  once and growing logs each time.
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
    for rel in sorted(_tree(self.local)):
      try:
        stat = self._stat(rel)
      except FileNotFoundError:  # Removed meanwhile (an old checkpoint being deleted).
        continue
      if self.sent.get(rel) == stat:
        continue
      dst = self.remote / rel
      dst.parent.mkdir(parents=True, exist_ok=True)
      try:
        dst.write_bytes((self.local / rel).read_bytes())
      except FileNotFoundError:
        continue
      self.sent[rel] = stat
      n += 1
    self.t_last = time.monotonic()
    return n

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


def push_tree(local_dir: str, remote_dir: str) -> int:
  """Copy a local folder (e.g. the fit) into the bucket; returns the number of files."""
  return Sync(local_dir, remote_dir).push()
