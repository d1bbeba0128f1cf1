"""The measurement of a run's own compiled train step: XLA's FLOP count (scan-corrected) and memory.

Units: FLOPs PER TRAIN STEP (the global batch of one optimizer step, summed
over all devices) unless a key says per device; memory in bytes PER DEVICE.

FLOPs come from XLA's HloCostAnalysis of the train step
(`train.step.build(...).train_step.lower(...)`), on abstract inputs (nothing
allocated), on whatever mesh the caller passes (CPU devices, or TPU devices
from `jax.experimental.topologies`). XLA counts a `while` (scan) body once,
not trip-count times, so a scanned L-layer step is corrected by lowering the
same config unrolled with 1 and 2 layers: body = f(2) - f(1),
outside = f(1) - body, total = outside + L * body. This is exact for
homogeneous stacked layers (tests check it against a full unrolled compile).
Remat recomputation is counted by XLA: with remat on, `flops_xla` are hardware
FLOPs and `flops_xla_model` the same step with remat off. `scaling/flops.py`
reports these next to the published analytic counts.
"""

import copy
import math
import re

from model import counts, sharding
from train import step as step_lib


def _variant(config, **model_overrides):
  """A copy of `config` with some `model.*` fields changed (works on locked configs)."""
  cfg = copy.deepcopy(config)
  with cfg.unlocked():
    for k, v in model_overrides.items():
      cfg.model[k] = v
  return cfg


def lower_train_step(config, mesh, program: step_lib.Program | None = None):
  """The train step of `config` lowered for `mesh` on abstract inputs (no allocation, no compile).

  Pass the run's `program` to reuse its abstract trace; without one it is built.
  """
  program = program or step_lib.build(config, mesh)
  with sharding.use_mesh(mesh):
    return program.train_step.lower(program.abstract_state, program.abstract_batch(config))


def _cost(stage_obj) -> dict:
  ca = stage_obj.cost_analysis()
  if isinstance(ca, (list, tuple)):  # Older jax: one dict per partition.
    ca = ca[0] if ca else None
  if not ca:  # e.g. a lowered (not compiled) program for an AOT TPU topology.
    raise ValueError(f'XLA gives no cost analysis for this {type(stage_obj).__name__} program on '
                     'this backend; try stage="compiled"')
  return {'flops': float(ca.get('flops', 0.0)),
          'transcendentals': float(ca.get('transcendentals', 0.0)),
          'bytes_accessed': float(ca.get('bytes accessed', 0.0))}


_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]')
_DOT = re.compile(r'=\s*\w+\[([\d,]*)\]\S*\s+dot\(([^)]*)\)(.*)$')
_COMP = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_CALLEE = re.compile(r'(?:to_apply|calls|body|condition)=%?([\w.\-]+)')
_ATTN_CORE = re.compile(r'BNTS')  # jax.nn.dot_product_attention's score and value einsums.


def hlo_dot_flops(hlo_text: str) -> dict[str, float]:
  """Dot FLOPs by category from HLO text (2 * output elements * contraction size, XLA's convention).

  Categories: 'dot_attention' (the T x T score and probability-value products
  and their gradients, recognised by jax's 'BNTS' einsum names in the op
  metadata; needs `debug_info=True` HLO) and 'dot_weights' (every other dot:
  projections, MLP, head, and weight gradients). XLA does not expose its
  per-instruction counts, so this parses the text, following calls from the
  entry computation once per call site; like XLA, a `while` body counts once.
  """
  shapes, comps, entry, cur = {}, {}, None, None
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and '=' not in line.split('{')[0]:
      cur = comps.setdefault(m.group(2), {'dot_attention': 0.0, 'dot_weights': 0.0, 'calls': []})
      entry = m.group(2) if m.group(1) else entry
      continue
    m = _INSTR.match(line)
    if m:
      shapes[m.group(1)] = [int(x) for x in m.group(3).split(',') if x]
  for line in hlo_text.splitlines():
    m = _COMP.match(line)
    if m and '=' not in line.split('{')[0]:
      cur = comps[m.group(2)]
      continue
    if cur is None:
      continue
    cur['calls'] += _CALLEE.findall(line)
    b = re.search(r'branch_computations=\{([^}]*)\}', line)
    if b:
      cur['calls'] += [x.strip().lstrip('%') for x in b.group(1).split(',')]
    m = _DOT.search(line)
    if not m:
      continue
    out_shape = [int(x) for x in m.group(1).split(',') if x]
    lhs = m.group(2).split(',')[0].strip()
    inline = re.match(r'\w+\[([\d,]*)\]', lhs)  # Some printers give operand types inline.
    lhs_shape = ([int(x) for x in inline.group(1).split(',') if x] if inline
                 else shapes[lhs.split()[-1].lstrip('%')])
    cdims = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', m.group(3))
    contract = math.prod(lhs_shape[int(i)] for i in cdims.group(1).split(',') if i) if cdims else 1
    key = 'dot_attention' if _ATTN_CORE.search(m.group(3)) else 'dot_weights'
    cur[key] += 2.0 * math.prod(out_shape) * contract

  memo = {}

  def total(name, depth=0):
    if name not in memo:
      c = comps.get(name)
      if c is None or depth > 200:
        return {'dot_attention': 0.0, 'dot_weights': 0.0}
      acc = {'dot_attention': c['dot_attention'], 'dot_weights': c['dot_weights']}
      for callee in c['calls']:
        sub = total(callee, depth + 1)
        for k in acc:
          acc[k] += sub[k]
      memo[name] = acc
    return memo[name]

  if entry is None:
    raise ValueError('hlo_dot_flops: no ENTRY computation in the HLO text')
  return dict(total(entry))


def _measure_one(config, mesh, stage: str) -> dict:
  """Cost of one lowering (or compile) of `config`; FLOPs summed over all devices."""
  lowered = lower_train_step(config, mesh)
  n_dev = mesh.devices.size
  if stage == 'compiled':
    # The compiled (SPMD-partitioned) module is one device's program: scale to all devices.
    cost = {k: v * n_dev for k, v in _cost(lowered.compile()).items()}
  elif stage == 'lowered':
    cost = _cost(lowered)  # The global program before partitioning.
  else:
    raise ValueError(f"stage={stage!r}: must be 'lowered' or 'compiled'")
  cost.update(hlo_dot_flops(lowered.as_text(dialect='hlo', debug_info=True)))
  cost['non_dot'] = cost['flops'] - cost['dot_attention'] - cost['dot_weights']
  return cost


def _homogeneous(model_cfg) -> bool:
  """Whether every layer is the same block (dense, or MoE in every layer)."""
  moe = counts.moe_layers(model_cfg)
  return not moe or len(moe) == model_cfg.n_layers


def _extrapolate(config, mesh, stage: str) -> tuple[dict, dict, dict]:
  """(total, per layer, outside the layers) per step from unrolled 1- and 2-layer programs.

  A stack of mixed layers (dense and MoE interleaved) is measured fully
  unrolled instead; 'per layer' is then the mean over the layers.
  """
  L = config.model.n_layers
  if not _homogeneous(config.model):
    full = _measure_one(_variant(config, scan_layers=False), mesh, stage)
    return full, {k: v / L for k, v in full.items()}, {k: 0.0 for k in full}
  f1 = _measure_one(_variant(config, n_layers=1, scan_layers=False), mesh, stage)
  if L == 1:
    return f1, {k: v for k, v in f1.items()}, {k: 0.0 for k in f1}
  f2 = _measure_one(_variant(config, n_layers=2, scan_layers=False), mesh, stage)
  body = {k: f2[k] - f1[k] for k in f1}
  outside = {k: f1[k] - body[k] for k in f1}
  total = {k: outside[k] + L * body[k] for k in f1}
  return total, body, outside


def measure_step_flops(config, mesh, stage: str = 'lowered', verify: bool = False,
                       model_flops: bool = True, uncorrected: bool = True) -> dict:
  """Measured FLOPs PER TRAIN STEP (global batch, summed over devices), scan-corrected.

  stage='lowered' (default, cheap: no XLA compile) runs XLA's cost analysis on
  the unoptimised global HLO; 'compiled' on the optimised SPMD program (one
  device's, times the device count: includes work replicated across devices).
  The two agree within about 1% on the tiny config (tests/test_flops.py).
  `verify=True` also measures the fully unrolled L-layer program (slow for
  deep models) and reports the relative error of the correction.

  Keys: flops_xla (hardware FLOPs per step, remat recomputation included),
  flops_xla_model (same with remat off), flops_xla_per_device, flops_xla_uncorrected
  (the config scanned with model.scan_unroll=1: the loop's body counts one layer), flops_per_layer,
  flops_outside_layers, breakdown (per-step FLOPs by op category), transcendentals,
  method, stage, n_devices, remat, and verify_* when asked.
  `model_flops=False` skips the remat-off programs (flops_xla_model then equals
  flops_xla) and `uncorrected=False` skips compiling the config as-is (no
  flops_xla_uncorrected key): each is a full compile, minutes for big configs
  on a TPU topology (scaling/aot.py measures the as-is program itself).
  """
  n_dev = mesh.devices.size
  total, body, outside = _extrapolate(config, mesh, stage)
  out = {
      'flops_xla': total['flops'],
      'flops_xla_hardware': total['flops'],
      'flops_xla_model': total['flops'],
      'flops_xla_per_device': total['flops'] / n_dev,
      'flops_per_layer': body['flops'],
      'flops_outside_layers': outside['flops'],
      'transcendentals': total['transcendentals'],
      'breakdown': {
          'layers_dot_weights': config.model.n_layers * body['dot_weights'],
          'layers_dot_attention': config.model.n_layers * body['dot_attention'],
          'layers_non_dot': config.model.n_layers * body['non_dot'],
          'outside_dot': outside['dot_weights'] + outside['dot_attention'],
          'outside_non_dot': outside['non_dot'],
      },
      'stage': stage,
      'n_devices': n_dev,
      'remat': config.model.remat,
      'method': (f'XLA cost analysis ({stage} HLO) of the train step unrolled with 1 and 2 layers: '
                 f'per layer = f(2) - f(1), outside = f(1) - per layer, '
                 f'total = outside + {config.model.n_layers} x per layer'
                 if _homogeneous(config.model) else
                 f'XLA cost analysis ({stage} HLO) of the train step fully unrolled (mixed layers)'),
  }
  if model_flops and config.model.remat != 'none':
    model_total, _, _ = _extrapolate(_variant(config, remat='none'), mesh, stage)
    out['flops_xla_model'] = model_total['flops']
    out['method'] += '; model FLOPs: the same with model.remat=none'
  if uncorrected:
    # One loop iteration per layer (CPU's auto scan_unroll would unroll it): XLA counts one layer.
    out['flops_xla_uncorrected'] = (_measure_one(_variant(config, scan_unroll=1), mesh, stage)['flops']
                                    if config.model.scan_layers or verify else total['flops'])
  if verify:
    full = _measure_one(_variant(config, scan_layers=False), mesh, stage)['flops']
    out['verify_unrolled_flops'] = full
    out['verify_rel_error'] = abs(total['flops'] - full) / full
  return out


def measure_memory(config, mesh, program: step_lib.Program | None = None) -> dict:
  """The compiled train step's `memory_analysis()`, in bytes PER DEVICE (the config as-is).

  peak_estimate = arguments + outputs - aliased (donated state) + temporaries.
  """
  return memory_of(lower_train_step(config, mesh, program).compile(), ('generated_code_size',))


def memory_of(compiled, extra: tuple = ()) -> dict:
  """A compiled program's memory_analysis() in bytes per device (0 where XLA gives none), with
  peak_estimate = arguments + outputs - aliased (donated inputs) + temporaries; `extra`: more
  of its `*_in_bytes` fields."""
  m = compiled.memory_analysis()
  get = (lambda k: getattr(m, k + '_in_bytes', 0)) if m is not None else (lambda k: 0)
  out = {k: float(get(k)) for k in ('argument_size', 'output_size', 'alias_size', 'temp_size',
                                     *extra)}
  out['peak_estimate'] = (out['argument_size'] + out['output_size'] - out['alias_size']
                          + out['temp_size'])
  return out
