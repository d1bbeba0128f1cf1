"""Shared pytest setup: 8 forced CPU devices for mesh tests, and the markers."""

import os

# Must happen before jax is imported anywhere: tests build meshes of up to 8 CPU devices.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'network: fetches from package registries (pip/npm); skipped when that is impossible.')
  config.addinivalue_line('markers', 'slow: multi-process or long training runs.')
  config.addinivalue_line('markers', "tpu_aot: compiles for TPU topologies with libtpu "
                          "(pip install -e '.[tpu-aot]'); skipped without it.")
