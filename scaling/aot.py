"""Compile a config for a TPU slice on a machine without TPUs: bytes and FLOPs PER CHIP.

  python -m scaling.aot --config configs/gpt_1b.py --topology v5p:2x2x2 [--config.mesh.fsdp=-1 ...]
      [--mfu=0.4] [--no-flops] [--json[=PATH]]

With the `libtpu` package (`pip install -e '.[tpu-aot]'`), JAX describes a TPU
slice's devices without any TPU attached (`jax.experimental.topologies`); the
real train step (`train.step.build`) is lowered over a Mesh of those devices on
abstract inputs (ShapeDtypeStructs carrying their NamedShardings: nothing is
allocated) and compiled by XLA's TPU compiler. Everything reported is PER CHIP
(one device = one chip: v4 and v5p are described as megacore chips):
  * memory: `memory_analysis()` of the compiled step: arguments (params, Adam
    m and v, step counters, batch; padded to the TPU's (8, 128) tiles), outputs
    (aliased to the donated arguments), temporaries (gradients, activations,
    workspace), generated code. total = arguments + outputs - aliased + temp +
    code, against the chip's HBM (`configs.hardware.CHIPS`). The compiler itself
    refuses a program over HBM: that is the "does not fit" verdict.
  * FLOPs: XLA's TPU cost analysis, scan-corrected (`train.cost`: unrolled
    1- and 2-layer compiles, total = outside + L * per layer), next to 6*N*D
    and the analytic counts, each divided by the chip count.
  * MoE: the same counts against 6*N_active*D (N_active: the parameters a token
    passes through), and the global count of each dispatch path (`dispatch_flops`).
  * step time: PaLM model FLOPs per chip / (peak bf16 FLOP/s * MFU).

The sweep launcher runs this command per run for `--check-fit` (a process:
launch never imports train) and reads its exit status. Nothing else in
chinchax imports libtpu.

Exit status of the command: 0 fits, 1 does not fit, 2 bad input (unknown
topology, mesh not matching the chip count, dimensions not divisible, missing
libtpu).
"""

import copy
import dataclasses
import importlib.util
import math
import os
import re
import sys
import time

if __name__ == '__main__':  # Before jax is imported: the TPU is only described, never used.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from configs import cli  # noqa: E402
from configs import hardware  # noqa: E402
from configs.load import ConfigError  # noqa: E402
from model import counts, sharding  # noqa: E402
from model.moe import DISPATCHES  # noqa: E402
from scaling import flops as flops_lib  # noqa: E402
from scaling import memory  # noqa: E402
from train import config_check  # noqa: E402
from train import cost  # noqa: E402
from train import step as step_lib  # noqa: E402

# libtpu looks for a TPU VM's metadata when its plugin starts; these make it start
# quietly on a plain machine, and let it start while another JAX process in the
# same environment holds /tmp/libtpu_lockfile (any JAX process does once libtpu is
# installed). Set (if unset) in this process only, when a slice is first described;
# on a TPU VM whose own TPUs this process will also use, run the check in a
# separate process (these values would mislead its multi-host TPU start-up).
_LIBTPU_ENV = {'ALLOW_MULTIPLE_LIBTPU_LOAD': '1', 'TPU_SKIP_MDS_QUERY': '1',
               'TPU_WORKER_HOSTNAMES': 'localhost', 'TPU_WORKER_ID': '0'}

INSTALL_HINT = ("scaling.aot needs the optional libtpu package: pip install -e '.[tpu-aot]' "
                "(or: pip install 'libtpu==0.0.42.*', the version jax 0.10.2's [tpu] extra pins)")

# Chips per slice -> chip grid, as Cloud TPU names slices (v4-N / v5p-N count
# TensorCores, 2 per chip; v5e-N / v6e-N count chips).
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)}
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
            128: (8, 16), 256: (16, 16)}
# Generation -> (grid rank, cores per chip in the slice name, libtpu chip config).
_GENERATIONS = {'v4': (3, 2, 'megacore'), 'v5p': (3, 2, 'default'),
                'v5e': (2, 1, 'default'), 'v6e': (2, 1, 'default')}


class AotError(ConfigError):
  """Bad topology, missing libtpu, or a compile failure other than running out of HBM."""


def have_libtpu() -> bool:
  """Whether the optional `libtpu` package is importable (without importing it)."""
  return importlib.util.find_spec('libtpu') is not None


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice: generation, chip grid and the chip's table entry (HBM bytes PER CHIP, peak)."""
  generation: str  # 'v4', 'v5e', 'v5p', 'v6e'.
  grid: tuple[int, ...]  # Chips along each ICI axis.
  chip: hardware.Chip

  @property
  def name(self) -> str:
    """The libtpu topology name, e.g. 'v5p:2x2x2'."""
    return f'{self.generation}:{"x".join(map(str, self.grid))}'

  @property
  def n_chips(self) -> int:
    return math.prod(self.grid)

  @property
  def slice_name(self) -> str:
    """Cloud TPU's name, e.g. 'v5p-16' (cores for v4/v5p, chips for v5e/v6e)."""
    return f'{self.generation}-{self.n_chips * _GENERATIONS[self.generation][1]}'


def parse_topology(name: str) -> Topology:
  """'v5p:2x2x2' (generation:chip grid) or 'v5p-16' (Cloud TPU slice name) -> Topology.

  Raises AotError naming the accepted forms.
  """
  s = str(name).strip().lower()
  known = ', '.join(_GENERATIONS)
  usage = (f'--topology={name!r}: expected GENERATION:GRID such as v5e:4x4, v5p:2x2x2, v4:2x2x1, '
           f'v6e:2x4, or a slice name such as v5e-16, v5p-16 (generations: {known})')
  m = re.fullmatch(r'(v\w+?)(?::(\d+(?:x\d+)*)|-(\d+))', s)
  if not m or m.group(1) not in _GENERATIONS:
    raise AotError(usage)
  gen = m.group(1)
  rank, cores, _ = _GENERATIONS[gen]
  if m.group(2):
    grid = tuple(int(x) for x in m.group(2).split('x'))
    if len(grid) != rank or min(grid) < 1:
      raise AotError(f'--topology={name!r}: {gen} slices have a {rank}-D chip grid '
                     f'({"x".join(["N"] * rank)}); {usage}')
  else:
    n = int(m.group(3))
    table = _GRID_3D if rank == 3 else _GRID_2D
    if n % cores or n // cores not in table:
      sizes = ', '.join(f'{gen}-{k * cores}' for k in table)
      raise AotError(f'--topology={name!r}: unknown slice size; known: {sizes}')
    grid = table[n // cores]
  return Topology(gen, grid, hardware.chip(gen))


def topology_devices(topology: Topology | str) -> list:
  """The slice's jax devices (one per chip) from libtpu's topology description; nothing runs on them."""
  topo = parse_topology(topology) if isinstance(topology, str) else topology
  if not have_libtpu():
    raise AotError(INSTALL_HINT)
  for k, v in _LIBTPU_ENV.items():
    os.environ.setdefault(k, v)
  # Read once, when the plugin starts (the first slice described in this process).
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', _accelerator_type(topo))
  from jax.experimental import topologies  # Local: describing a slice needs libtpu.
  host = tuple(min(g, b) for g, b in zip(topo.grid + (1,) * (3 - len(topo.grid)), (2, 2, 1)))
  try:
    desc = topologies.get_topology_desc(
        platform='tpu', topology_name=topo.name, chip_config_name=_GENERATIONS[topo.generation][2],
        chips_per_host_bounds=host, num_slices=1)
  except Exception as e:  # jax.errors.JaxRuntimeError from libtpu; keep its first line.
    raise AotError(f'libtpu rejected topology {topo.name!r}: {str(e).splitlines()[0]}') from e
  devices = list(desc.devices)
  if len(devices) != topo.n_chips:
    raise AotError(f'libtpu described {topo.name} with {len(devices)} devices, expected '
                   f'{topo.n_chips} (one per chip)')
  return devices


def _accelerator_type(topo: Topology) -> str:
  """Cloud TPU's accelerator type string, e.g. 'v5litepod-16', 'v5p-16'."""
  gen = {'v5e': 'v5litepod'}.get(topo.generation, topo.generation)
  return f'{gen}-{topo.slice_name.split("-")[1]}'


def tiled_bytes(shard_shape, dtype, layout=None) -> int:
  """Bytes of one shard (on one chip) stored in TPU tiles: the minor dims rounded up to the tile.

  `layout` is a jax Layout (`major_to_minor`, `tiling`) from `compiled.input_formats`;
  None gives the plain, unpadded size.
  """
  shape = list(shard_shape)
  itemsize = np.dtype(dtype).itemsize
  if layout is None:
    return math.prod(shape) * itemsize
  order = list(layout.major_to_minor)
  if not shape:  # A scalar still takes a whole (128,) tile: 512 bytes for 4-byte types.
    shape, order = [1], [0]
  dims = [shape[i] for i in order]  # Major to minor.
  tile = layout.tiling[0] if layout.tiling else ()
  for i, t in enumerate(reversed(tile)):
    j = len(dims) - 1 - i
    if j >= 0:
      dims[j] = -(-dims[j] // t) * t
  return math.prod(dims) * itemsize


def _leaf_rows(tree, formats=None) -> list[dict]:
  """Per-chip bytes of every leaf of a ShapeDtypeStruct tree (with shardings), largest first."""
  paths = jax.tree_util.tree_flatten_with_path(tree)[0]
  fmts = jax.tree.leaves(formats) if formats is not None else [None] * len(paths)
  if len(fmts) != len(paths):
    fmts = [None] * len(paths)
  rows = []
  for (path, s), f in zip(paths, fmts):
    shard = s.sharding.shard_shape(s.shape)
    parts = [str(getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k)))) for k in path]
    if parts and parts[-1] == 'value':
      parts = parts[:-1]
    if len(parts) > 1 and parts[0] in _STATE_PARTS:  # train.step's state is (model, optimizer).
      parts[0] = _STATE_PARTS[parts[0]]
    name = '/'.join(parts)
    rows.append(dict(name=name, shape=list(s.shape), dtype=str(s.dtype), spec=str(s.sharding.spec),
                     bytes=tiled_bytes(shard, s.dtype), bytes_tiled=tiled_bytes(
                         shard, s.dtype, getattr(f, 'layout', None))))
  return sorted(rows, key=lambda r: -r['bytes_tiled'])


_STATE_PARTS = {'0': 'params', '1': 'optimizer'}
_OOM = re.compile(r'RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds available HBM')


def _compile(config, mesh):
  """(compiled or None, None or the compiler's out-of-HBM message, (abstract state, batch)).

  Other compile failures raise AotError with XLA's first line.
  """
  program = step_lib.build(config, mesh)
  state, batch = program.abstract_state, program.abstract_batch(config)
  with sharding.use_mesh(mesh):
    lowered = program.train_step.lower(state, batch)
  try:
    return lowered.compile(), None, (state, batch)
  except Exception as e:
    msg = str(e)
    if _OOM.search(msg):
      return None, msg.strip(), (state, batch)
    raise AotError(f'XLA could not compile the train step for this topology: '
                   f'{msg.splitlines()[0] if msg else type(e).__name__}') from e


def _activation_rows(config, mesh_sizes) -> list[dict]:
  """The analytic activation buffers PER CHIP (scaling.memory's hand count), by kind."""
  m, d = config.model, config.data
  tp = mesh_sizes.get('tensor', 1)
  act = memory.activation_elements_per_token(m, d.seq_len, tp)
  shards = mesh_sizes.get('data', 1) * mesh_sizes.get('fsdp', 1) * mesh_sizes.get('expert', 1)
  tokens = d.global_batch_size * d.seq_len / shards
  dt = memory.DTYPE_BYTES[m.compute_dtype]
  saved = 'T x T scores kept' if m.remat in ('none', 'dots') else 'no T x T scores'
  rows = [dict(name=f'saved activations, {m.n_layers} layers (remat={m.remat}, {saved}; analytic)',
               bytes=tokens * dt * act['layers']),
          dict(name='logits, softmax and their gradient (float32; analytic)',
               bytes=tokens * 4 * act['logits'])]
  if act['one_layer_recompute']:
    rows.append(dict(name='one layer recomputed under full remat (analytic)',
                     bytes=tokens * dt * act['one_layer_recompute']))
  return rows


def global_flops(config) -> dict:
  """FLOPs PER STEP of the whole (global, unpartitioned) train step, remat recomputation included.

  The same scan-corrected count as `train.cost.measure_step_flops(stage='lowered')`, lowered
  for one host CPU device (nothing is compiled or allocated): XLA's cost analysis of the HLO
  before the TPU compiler touches it. The TPU compiler's own per-chip count undercounts under
  remat (see README), so this is the trustworthy hardware count; divide by the chip count for
  a per-chip figure when the work splits evenly.
  """
  one = copy.deepcopy(config)
  one.mesh.update({a: 1 for a in sharding.MESH_AXES})
  cpu = jax.devices('cpu')[:1]
  return cost.measure_step_flops(one, sharding.make_mesh(one.mesh, cpu), stage='lowered',
                                      uncorrected=False)


def dispatch_flops(config) -> dict:
  """An MoE config's global FLOPs PER STEP on each dispatch path, against 6 * N_active * D.

  {path: {flops_xla, flops_xla_model, ratio_6nd_active, model_ratio_6nd_active}} from
  `global_flops` of the config with model.moe_dispatch set to each path (lowered on one
  CPU device: nothing compiled); {} for a dense model. The dense reference runs every
  expert on every token and the capacity path pads each expert to C slots and dispatches
  with one-hot einsums: both do more work than the active count. This HLO is jax's CPU
  lowering: there ragged_dot (the dropless path) is a dense dot over all E experts, E
  times the routed work; on a TPU it is XLA's grouped ragged-dot kernel (the compiled
  count of the config as-is is `compiled_ratio_6nd_active`).
  """
  if not counts.num_experts(config.model):
    return {}
  six_nd = 6.0 * counts.param_counts(config.model).active * counts.tokens_per_step(config)
  out = {}
  for path in DISPATCHES:
    variant = copy.deepcopy(config)
    variant.model.moe_dispatch = path
    g = global_flops(variant)
    out[path] = {'flops_xla': g['flops_xla'], 'flops_xla_model': g['flops_xla_model'],
                 'ratio_6nd_active': g['flops_xla'] / six_nd,
                 'model_ratio_6nd_active': g['flops_xla_model'] / six_nd}
  return out


def check(config, topology: Topology | str, *, mfu: float = 0.4, measure_flops: bool = True,
          top_k: int = 5) -> dict:
  """Compile `config`'s train step for a TPU slice; bytes and FLOPs PER CHIP and a verdict.

  Raises train.config_check.ConfigError (bad config for this many chips: mesh
  size, divisibility; the message names the keys) or AotError (topology,
  libtpu, other compile failures). A program over HBM is NOT an exception:
  `fits` is False and `largest_buffers` names where the bytes go.
  `measure_flops=False` skips the two extra compiles of the scan correction.
  Keys: topology, chip, n_chips, hbm_bytes, mesh, fits, verdict, memory
  (bytes per chip), largest_buffers, flops (per chip), step_time_s, timings_s.
  """
  topo = parse_topology(topology) if isinstance(topology, str) else topology
  if not 0 < mfu <= 1:
    raise AotError(f'--mfu={mfu}: must be in (0, 1]')
  mesh_sizes = config_check.validate(config, topo.n_chips)
  mesh = sharding.make_mesh(config.mesh, topology_devices(topo))
  t0 = time.perf_counter()
  compiled, oom, (state, batch) = _compile(config, mesh)
  timings = {'compile_as_is': time.perf_counter() - t0}
  mem, state_rows = _memory(config, topo, mesh_sizes, compiled, state, batch)
  fits = compiled is not None and mem['total'] <= topo.chip.hbm_bytes
  largest = [dict(name=f'{r["name"]} {tuple(r["shape"])} {r["dtype"]} {r["spec"]}',
                  bytes=r['bytes_tiled']) for r in state_rows[:top_k]]
  largest += _activation_rows(config, mesh_sizes)
  largest.sort(key=lambda r: -r['bytes'])
  fl = _flops(config, topo, mesh, compiled, measure_flops, timings)
  m, d = config.model, config.data
  return {
      'topology': topo.name, 'slice': topo.slice_name, 'chip': topo.chip.name,
      'n_chips': topo.n_chips, 'hbm_bytes': topo.chip.hbm_bytes, 'mesh': mesh_sizes,
      'config': {'n_layers': m.n_layers, 'd_model': m.d_model, 'seq_len': d.seq_len,
                 'global_batch_size': d.global_batch_size, 'remat': m.remat,
                 'compute_dtype': m.compute_dtype, 'moe_num_experts': counts.num_experts(m),
                 'moe_top_k': m.moe_top_k, 'moe_dispatch': m.moe_dispatch},
      'params': counts.param_counts(m).as_dict(''), 'tokens_per_step': counts.tokens_per_step(config),
      'fits': fits, 'verdict': _verdict(topo, fits, mem, oom, largest), 'compiler_message': oom,
      'memory': mem, 'largest_buffers': largest, 'largest_arguments': state_rows[:top_k],
      'flops': fl, 'step_time_s': _step_time(config, topo, mfu, fl), 'timings_s': timings,
  }


def _memory(config, topo, mesh_sizes, compiled, state, batch) -> tuple[dict, list[dict]]:
  """Bytes PER CHIP: the hand count of state and batch, the analytic prediction, XLA's analysis."""
  d, m = config.data, config.model
  pred = memory.training_memory_per_device(m, d.seq_len, d.global_batch_size, mesh_sizes)
  formats = compiled.input_formats[0] if compiled is not None else None
  state_rows = _leaf_rows(state, formats[0] if formats else None)
  batch_rows = _leaf_rows(batch, formats[1] if formats else None)
  mem = {
      'state_unpadded': sum(r['bytes'] for r in state_rows),
      'state_tiled': sum(r['bytes_tiled'] for r in state_rows),
      'batch': sum(r['bytes_tiled'] for r in batch_rows),
      'analytic_16_bytes_per_param': pred['rule_16_bytes'],
      'analytic_activations': pred['activations'],
      'analytic_total': pred['total'],
  }
  if compiled is not None:
    ma = compiled.memory_analysis()
    for k in ('argument', 'output', 'alias', 'temp', 'generated_code'):
      mem[k] = float(getattr(ma, f'{k}_size_in_bytes', 0))
    mem['total'] = (mem['argument'] + mem['output'] - mem['alias'] + mem['temp']
                    + mem['generated_code'])
  mem['hbm'] = topo.chip.hbm_bytes
  return mem, state_rows


def _verdict(topo, fits: bool, mem: dict, oom: str | None, largest: list[dict]) -> str:
  """One line: FITS / DOES NOT FIT, with the largest buffers named when it does not."""
  gib, hbm = hardware.GiB, topo.chip.hbm_bytes
  if oom is None:
    verdict = (f'{"FITS" if fits else "DOES NOT FIT"}: {mem["total"] / gib:.2f} GiB of '
               f'{hbm / gib:.0f} GiB HBM per chip ({100 * mem["total"] / hbm:.0f}%) on {topo.name} '
               f'({topo.slice_name}, {topo.n_chips} chips)')
  else:
    verdict = (f'DOES NOT FIT on {topo.name} ({topo.slice_name}, {hbm / gib:.0f} GiB HBM per chip): '
               f'the TPU compiler says: {oom.splitlines()[0]}')
  if not fits:
    verdict += '; largest buffers per chip: ' + ', '.join(
        f'{r["name"].split(" (")[0]} {r["bytes"] / gib:.2f} GiB' for r in largest[:3])
  return verdict


def _flops(config, topo, mesh, compiled, measure_flops: bool, timings: dict) -> dict:
  """FLOPs PER CHIP: 6ND, the analytic counts, the compiled program's, the global HLO's."""
  d, m = config.data, config.model
  tokens = counts.tokens_per_step(config)
  n = counts.param_counts(m)
  six_nd, active = 6.0 * n.with_head * tokens, n.active / n.with_head  # active: 1 when dense.
  fl = {'six_nd_per_chip': six_nd / topo.n_chips,
        'six_n_active_d_per_chip': active * six_nd / topo.n_chips,
        'analytic_per_chip': [dict(name=r['name'], flops=r['flops_per_step'] / topo.n_chips,
                                   ratio_6nd=r['ratio_6nd'])
                              for r in flops_lib.analytic_rows(m, d.seq_len, tokens)]}
  if compiled is not None:
    fl['compiled_uncorrected_per_chip'] = cost._cost(compiled)['flops']
  if not measure_flops:
    return fl
  t0 = time.perf_counter()
  g = global_flops(config)
  fl['global_per_chip'] = g['flops_xla'] / topo.n_chips
  fl['global_ratio_6nd'] = g['flops_xla'] / six_nd
  fl['global_model_ratio_6nd'] = g['flops_xla_model'] / six_nd
  fl['global_ratio_6nd_active'] = fl['global_ratio_6nd'] / active
  fl['global_method'] = g['method']
  fl['dispatch_paths'] = dispatch_flops(config)  # {} when dense.
  timings['lower_global_variants'] = time.perf_counter() - t0
  t1 = time.perf_counter()
  try:
    meas = cost.measure_step_flops(config, mesh, stage='compiled', model_flops=False,
                                   uncorrected=False)
    fl['compiled_per_chip'] = meas['flops_xla'] / topo.n_chips
    fl['compiled_ratio_6nd'] = meas['flops_xla'] / six_nd
    fl['compiled_ratio_6nd_active'] = fl['compiled_ratio_6nd'] / active
    fl['compiled_breakdown_per_chip'] = {k: v / topo.n_chips for k, v in meas['breakdown'].items()}
    fl['method'] = meas['method']
  except Exception as e:  # E.g. the 1-layer program itself over HBM: report, do not crash.
    fl['compiled_error'] = str(e).splitlines()[0] if str(e) else type(e).__name__
  timings['compile_flops_variants'] = time.perf_counter() - t1
  return fl


def _step_time(config, topo, mfu: float, fl: dict) -> dict:
  """Predicted step time: PaLM model FLOPs per chip / (peak bf16 FLOP/s * MFU)."""
  tokens = counts.tokens_per_step(config)
  model_flops_chip = counts.model_flops_per_token(config.model, config.data.seq_len) * tokens / topo.n_chips
  peak = topo.chip.peak_flops
  step = {'mfu': mfu, 'peak_flops': peak, 'model_flops_per_chip': model_flops_chip,
          'at_mfu': model_flops_chip / (peak * mfu)}
  if 'compiled_per_chip' in fl:
    step['compiled_at_peak'] = fl['compiled_per_chip'] / peak  # Lower bound: every FLOP at peak.
  return step


def format_report(r: dict) -> str:
  """The plain-text report of `check(...)`: everything per chip."""
  gib, mem, fl = hardware.GiB, r['memory'], r['flops']
  cfg, p = r['config'], r['params']
  mesh = ' x '.join(f'{k}={v}' for k, v in r['mesh'].items() if v > 1) or '1 chip'
  lines = [f"{r['topology']} ({r['slice']}): {r['n_chips']} x {r['chip']} chips, "
           f"{r['hbm_bytes'] / gib:.0f} GiB HBM each | mesh {mesh}",
           f"L={cfg['n_layers']} d={cfg['d_model']} T={cfg['seq_len']} B={cfg['global_batch_size']} "
           f"remat={cfg['remat']} {cfg['compute_dtype']} | N with head {p['with_head']:,}, "
           f"total {p['total']:,}" + (f", active {p['active']:,} (MoE: {cfg['moe_num_experts']} "
                                      f"experts, top-{cfg['moe_top_k']}, {cfg['moe_dispatch']})"
                                      if cfg['moe_num_experts'] else ''),
           f"{'memory per chip':<60} {'GiB':>9}"]
  rows = [('params + Adam m, v as sharded, unpadded (by hand)', mem['state_unpadded']),
          ('  the same in TPU tiles (by hand, compiled layouts)', mem['state_tiled']),
          ('batch (inputs + targets)', mem['batch'])]
  if 'argument' in mem:
    rows += [('XLA arguments', mem['argument']), ('XLA outputs', mem['output']),
             ('XLA aliased (donated state)', mem['alias']), ('XLA temporaries', mem['temp']),
             ('XLA generated code', mem['generated_code']),
             ('XLA total (args + out - alias + temp + code)', mem['total'])]
  rows += [('analytic: 16 B/param / (fsdp x tensor)', mem['analytic_16_bytes_per_param']),
           ('analytic: activations', mem['analytic_activations']),
           ('analytic: 16 B/param rule + activations',
            mem['analytic_16_bytes_per_param'] + mem['analytic_activations']),
           ('chip HBM', mem['hbm'])]
  lines += [f'{n:<60} {b / gib:>9.4g}' for n, b in rows]
  if r['compiler_message']:
    lines.append('compiler: ' + r['compiler_message'].splitlines()[0][:400])
  lines.append(f"{'largest buffers per chip':<60} {'GiB':>9}")
  lines += [f"  {b['name'][:100]:<58} {b['bytes'] / gib:>9.4g}" for b in r['largest_buffers'][:6]]
  lines.append(f"{'training FLOPs per chip per step':<60} {'FLOPs':>9} {'/6ND':>6}")
  lines.append(f"{'6 N D / chips':<60} {fl['six_nd_per_chip']:>9.3g} {1:>6.3f}")
  if 'global_per_chip' in fl:
    lines.append(f"{'XLA global HLO, scan-corrected, remat included (/ chips)':<60} "
                 f"{fl['global_per_chip']:>9.3g} {fl['global_ratio_6nd']:>6.3f}")
    lines.append(f"{'  the same without remat (model FLOPs)':<60} "
                 f"{fl['global_per_chip'] * fl['global_model_ratio_6nd'] / fl['global_ratio_6nd']:>9.3g} "
                 f"{fl['global_model_ratio_6nd']:>6.3f}")
  if 'compiled_per_chip' in fl:
    lines.append(f"{'XLA TPU compiled, scan-corrected (remat included)':<60} "
                 f"{fl['compiled_per_chip']:>9.3g} {fl['compiled_ratio_6nd']:>6.3f}")
  elif 'compiled_error' in fl:
    lines.append(f"XLA TPU compiled FLOPs unavailable: {fl['compiled_error'][:200]}")
  if 'compiled_uncorrected_per_chip' in fl:
    lines.append(f"{'XLA TPU compiled, uncorrected (scan body once)':<60} "
                 f"{fl['compiled_uncorrected_per_chip']:>9.3g} "
                 f"{fl['compiled_uncorrected_per_chip'] / fl['six_nd_per_chip']:>6.3f}")
  if p['active'] != p['with_head']:
    lines += _moe_flop_lines(fl)
  for a in fl['analytic_per_chip']:
    lines.append(f"  {a['name']:<58} {a['flops']:>9.3g} {a['ratio_6nd']:>6.3f}")
  st = r['step_time_s']
  line = (f"predicted step time: {st['at_mfu'] * 1e3:.4g} ms at {100 * st['mfu']:.0f}% MFU "
          f"({st['peak_flops'] / 1e12:.0f} TFLOP/s peak, model FLOPs 6N + 12LHQT)")
  if 'compiled_at_peak' in st:
    line += f"; compiled FLOPs at 100% of peak: {st['compiled_at_peak'] * 1e3:.4g} ms"
  lines.append(line)
  lines.append('compile time: ' + ', '.join(f'{k} {v:.0f} s' for k, v in r['timings_s'].items()))
  lines.append(r['verdict'])
  return '\n'.join(lines)


def _moe_flop_lines(fl: dict) -> list[str]:
  """The MoE rows of the FLOP table: measured counts against 6 * N_active * D, per dispatch path."""
  lines = [f"{'6 N_active D / chips (MoE: the FLOPs a token needs)':<60} "
           f"{fl['six_n_active_d_per_chip']:>9.3g} {'/6NaD':>6}"]
  for key, name in (('global_ratio_6nd_active', 'XLA global HLO (remat included) / 6 N_active D'),
                    ('compiled_ratio_6nd_active', 'XLA TPU compiled / 6 N_active D')):
    if key in fl:
      lines.append(f"  {name:<58} {'':>9} {fl[key]:>6.3f}")
  for path, d in fl.get('dispatch_paths', {}).items():
    per_chip = d['model_ratio_6nd_active'] * fl['six_n_active_d_per_chip']
    lines.append(f"  {'dispatch ' + path + ': XLA global (CPU lowering), remat off':<58} "
                 f"{per_chip:>9.3g} {d['model_ratio_6nd_active']:>6.3f}")
  return lines


def main(argv):
  del argv
  F = flags.FLAGS
  r = check(F.config, F.topology, mfu=F.mfu, measure_flops=F.flops)
  cli.emit(r, format_report(r), F.json)
  sys.exit(0 if r['fits'] else 1)


def _define_flags():
  cli.define_config_flag()
  flags.DEFINE_string('topology', None, 'TPU slice: GENERATION:GRID (v5e:4x4, v5p:2x2x2, v4:2x2x1, '
                      'v6e:4x4) or a slice name (v5e-16, v5p-16).')
  flags.DEFINE_float('mfu', 0.4, 'Model FLOPs utilisation for the predicted step time.')
  flags.DEFINE_bool('flops', True, 'Measure scan-corrected compiled FLOPs (two more compiles).')
  cli.define_json_flag()
  flags.mark_flags_as_required(['config', 'topology'])


if __name__ == '__main__':
  _define_flags()
  cli.run_absl(main)
