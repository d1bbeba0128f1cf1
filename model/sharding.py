"""Sharding is data: logical axis names, one rules table, the device mesh.

Parameters are created with logical axis names (`embed`, `mlp`, ...) in their
`out_sharding` metadata. `RULES` maps each logical name to mesh axes; the same
table shards parameters, optimizer state (it mirrors the parameters), batches
and activations. Changing the parallelism means editing `RULES` or the mesh
shape, never the model.
"""

import contextlib
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor', 'expert')

# Logical name -> mesh axes (None = replicated). Order of the table does not matter.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ('batch', ('data', 'fsdp', 'expert')),  # Activations and batches: every data-like axis.
    ('seq', None),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),  # FSDP shards the model dimension of every weight.
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('act_embed', None),  # The residual stream's D is not sharded between layers.
    ('act_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('norm', None),
    ('layers', None),
    ('expert', 'expert'),
)


def resolve_mesh_shape(mesh_cfg, n_devices: int) -> dict[str, int]:
  """Mesh axis sizes with a single -1 replaced by 'the rest of the devices'.

  Raises ValueError naming the `mesh.*` key when the shape cannot cover
  `n_devices` exactly.
  """
  sizes = {a: int(mesh_cfg[a]) for a in MESH_AXES}
  for a, s in sizes.items():
    if s == 0 or s < -1:
      raise ValueError(f'mesh.{a}={s}: mesh axis sizes must be positive or -1 ("the rest")')
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f'mesh: only one axis may be -1, got {", ".join("mesh." + a for a in free)}')
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if free:
    if n_devices % fixed:
      raise ValueError(
          f'mesh.{free[0]}=-1: the other axes multiply to {fixed}, which does not divide the '
          f'{n_devices} devices')
    sizes[free[0]] = n_devices // fixed
  elif fixed != n_devices:
    shape = ' x '.join(f'{a}={s}' for a, s in sizes.items())
    raise ValueError(f'mesh: {shape} has {fixed} devices but {n_devices} are available; '
                     'set one axis to -1 or make the product match')
  return sizes


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A Mesh with axes MESH_AXES (Auto axis types) over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(mesh_cfg, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_to_spec(names: Sequence[str | None]) -> P:
  """PartitionSpec for a tensor whose dimensions carry logical `names`."""
  rules = dict(RULES)
  out = []
  for n in names:
    if n is not None and n not in rules:
      raise KeyError(f'logical axis {n!r} has no rule in model.sharding.RULES')
    out.append(None if n is None else rules[n])
  return P(*out)


@contextlib.contextmanager
def use_mesh(mesh: jax.sharding.Mesh):
  """Context in which models are created and stepped: the mesh plus the rules table."""
  with jax.set_mesh(mesh), nnx.logical_axis_rules(RULES):
    yield


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside a mesh."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def spec_tree(state) -> object:
  """PartitionSpecs (mesh axes) for an nnx State of parameters or optimizer state."""
  with nnx.logical_axis_rules(RULES):
    return nnx.get_partition_spec(state)


def divisibility_errors(abstract_state, mesh_sizes: dict[str, int]) -> list[str]:
  """Messages for every parameter dimension not divisible by the mesh axes it is sharded over."""
  errors = []
  specs = spec_tree(abstract_state)
  flat_vals = nnx.to_flat_state(abstract_state)
  flat_specs = dict(nnx.to_flat_state(specs))
  for path, var in flat_vals:
    spec = flat_specs[path]
    spec = spec.get_value() if hasattr(spec, 'get_value') else spec
    shape = var.get_value().shape if hasattr(var, 'get_value') else var.shape
    for dim, axes in zip(shape, spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      k = math.prod(mesh_sizes[a] for a in axes)
      if dim % k:
        name = '/'.join(str(p) for p in path)
        errors.append(f'parameter {name} has a dimension of size {dim} sharded over mesh axes '
                      f'{"x".join(axes)} (size {k}), which does not divide it')
  return errors
