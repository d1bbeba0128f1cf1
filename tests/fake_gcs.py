"""A stand-in for Google Cloud Storage in tests: fsspec's gs:// protocol on a local folder.

`install()` registers it in this process (etils epath reaches gs:// through
fsspec); gs://BUCKET/PATH is then $FAKE_GCS_ROOT/BUCKET/PATH. A Ray test
passes `fake_gcs.install` as its workers' setup hook, so the tasks on the
cluster see the same bucket. Only for tests: nothing here talks to GCS.
"""

import os

import fsspec
from fsspec.implementations.local import LocalFileSystem

ROOT_ENV = 'FAKE_GCS_ROOT'


class FakeGCS(LocalFileSystem):
  protocol = ('gs', 'gcs')

  @classmethod
  def _strip_protocol(cls, path):
    root = os.environ[ROOT_ENV]
    path = str(path)
    for prefix in ('gs://', 'gcs://'):
      if path.startswith(prefix):
        return os.path.join(root, path[len(prefix):].lstrip('/')).rstrip('/')
    return path if path.startswith(root) else os.path.join(root, path.lstrip('/')).rstrip('/')


  def __init__(self, *args, finalize_on_close=None, **kwargs):  # etils passes the first (gcsfs's).
    del finalize_on_close
    super().__init__(*args, auto_mkdir=True, **kwargs)


def install() -> None:
  for protocol in FakeGCS.protocol:  # etils asks fsspec for 'gcs'.
    fsspec.register_implementation(protocol, FakeGCS, clobber=True)
