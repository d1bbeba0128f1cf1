"""What every data source hands the loop, and the input paths of the file-based ones.

`Splits` is the result of preparing any `data.source` (train/data.py holds the
switch over sources); `expand_paths` turns a `data.paths`-style value into
files for the sources that read them (train/corpus.py for your own text,
train/arrayrecord.py for pre-tokenized records).
"""

import collections
import dataclasses
import glob as globlib
import os

from etils import epath

from train import tokens as tokens_lib

# 'synthetic': train/data.py; 'builtin', 'files': train/corpus.py; 'arrayrecord': train/arrayrecord.py.
VALID_SOURCES = ('synthetic', 'builtin', 'files', 'arrayrecord')


class FolderGiven(IsADirectoryError, ValueError):
  """A folder where files were expected (an OSError for readers, a ValueError for config checks)."""


@dataclasses.dataclass
class Splits:
  """Tokenized train and validation splits.

  Attributes:
    train, val: the token files.
    tokenizer_name: 'byte' or 'bpe-VOCAB-HASH8' (see tokenizer.load_tokenizer).
    manifest: sources, licences, document/byte/token counts (for the run log).
  """
  train: tokens_lib.TokenFile
  val: tokens_lib.TokenFile
  tokenizer_name: str
  manifest: dict


def glob(pattern: str) -> list[epath.Path]:
  """Sorted matches of a glob, local (with ~) or on an object store (gs://bucket/dir/*.txt)."""
  if '://' not in pattern:
    return [epath.Path(p) for p in sorted(globlib.glob(os.path.expanduser(pattern)))]
  head, _, rest = pattern.partition('://')
  parts = rest.split('/')
  i = next(i for i, s in enumerate(parts) if any(c in s for c in '*?['))
  base = epath.Path(f'{head}://' + '/'.join(parts[:i]))
  return sorted(base.glob('/'.join(parts[i:])))


def expand_paths(paths: str, key: str, source: str, what: str = 'file',
                 skip_suffixes: tuple[str, ...] = ()) -> list[epath.Path]:
  """Comma-separated files or globs (local or gs://) -> paths, in the order given.

  Globs skip names ending in `skip_suffixes` (sidecars). A pattern matching
  nothing, a missing file, a folder, a file named twice or an empty value
  raises an error naming `key` (FileNotFoundError for missing files,
  FolderGiven for a folder, else ValueError); `what` names the kind of file in the messages.
  """
  out = []
  for p in (p.strip() for p in paths.split(',')):
    if not p:
      continue
    if any(c in p for c in '*?['):
      matches = [m for m in glob(p) if not str(m).endswith(skip_suffixes or ('\0',))]
      if not matches:
        raise FileNotFoundError(f'{key}: pattern {p!r} matches no {what}.')
      out.extend(matches)
      continue
    path = epath.Path(os.path.expanduser(p))
    if not path.exists():
      raise FileNotFoundError(f'{key}: {what} {p} does not exist.')
    if path.is_dir():
      raise FolderGiven(f"{key}: cannot read {p}: it is a folder; name its files, e.g. '{p}/*'.")
    out.append(path)
  if not out:
    raise ValueError(f'{key} is empty: data.source={source!r} needs {key} (comma-separated files '
                     'or globs).')
  twice = sorted(str(p) for p, n in collections.Counter(map(str, out)).items() if n > 1)
  if twice:
    raise ValueError(f'{key}: files named more than once: {twice}.')
  return out
