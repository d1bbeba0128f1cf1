"""python -m scaling.quant --workdir RUN | --runs SWEEP [--method M ...] [--scale-dtype T]
                          [--calib-batches N] [--json]

Post-training, weight-only quantization of a run's newest intact checkpoint,
and what it costs in eval loss. Units:

- weight bytes: bytes of the stored arrays after quantization, counted from
  the quantized arrays themselves: each code array at its dtype's bit width
  (int8: 8 bits; int4 and NF4's uint4 codes: 4 bits, packed two per byte as a
  checkpoint holds them; JAX on CPU keeps one per byte in memory, reported
  as `resident_bytes`), plus every scale (float32 or bfloat16, --scale-dtype),
  plus the parameters left in float32 (RMSNorm scales, the MoE router) at 4 B.
  There are no zero points: every method here is symmetric.
- bytes/param: weight bytes / stored parameters (embedding and head
  included), next to the guide's 2 (bf16), 1 (int8) and 0.5 (4-bit) B/param.
- eval loss: nats/token on the run's own validation batches, through the
  train loop's eval (train.loop.evaluate of program.eval_step on
  train.data.eval_batches); the gap is quantized minus full precision, in
  nats and in % of the full-precision loss.
- bpb: bits per byte = loss / ln 2 x val tokens / val bytes
  (train.tokens.bits_per_byte; with the byte tokenizer tokens = bytes).

Methods (the numerics are qwix's: qwix.quantize / qwix.dequantize):
  int8      symmetric int8, one scale per output channel (per layer, per expert)
  int4-gG   symmetric int4, one scale per G consecutive weights along the
            contraction dimension (G = 32, 64, 128; int8-gG likewise)
  nf4-bB    NF4 (QLoRA's 16-value code book), an absmax scale per block of B
            (64) weights along the contraction dimension
  gptq-intB[-gG], awq-intB[-gG]  the intB grid above (the same bytes; AWQ adds
            its per-channel scales), each code chosen by GPTQ or AWQ calibrated
            on --calib-batches global batches of the run's training split
            (scaling/gptq.py: written here, in numpy, on qwix's grid)
Every matrix is quantized: attention, MLP and expert kernels, the embedding
table and the head, each along the dimension its matmul contracts (the
CONTRACTION table; the embedding along D, which the tied head contracts).
The eval runs the dequantized weights: the loss of a weight-only quantized
model, up to float summation order. GPTQ and AWQ calibrate grouped-query
attention, the dense MLP and the head (an untied embedding table rounds to
nearest); MLA and MoE runs are refused for them (scaling/gptq.py says why).

Outputs: --workdir RUN writes RUN/quant.json; --runs SWEEP quantizes every
finished run with a checkpoint (SWEEP/<run>/quant.json each) and writes
SWEEP/quant/quant.json, quant.txt (the table) and quant_gap.png (the gap
against N and against D per method). Bad input gets one line `error: ...`
and exit status 2: an unknown method, a group size that does not divide a
layer's contraction dimension (naming the method and the layer; in a sweep
that run is listed as skipped for that method, as is GPTQ/AWQ on an MLA or
MoE run), a checkpoint saved with another config than the run's config.json,
--calib-batches below 1.
"""

import argparse
import dataclasses
import functools
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from absl import logging
from flax import nnx

from configs import cli
from configs.load import ConfigError
from model import sharding
from model.qat import CONTRACTION, KEEP  # Which axes each weight contracts; what stays float32.
from model.counts import param_counts
from scaling import gptq
from scaling import points as points_lib
from scaling import tables
from train import data as data_lib
from train import generate, loop
from train.tokens import bits_per_byte

DEFAULT_METHODS = ('int8', 'int4-g32', 'int4-g64', 'int4-g128', 'nf4-b64', 'gptq-int4-g128',
                   'awq-int4-g128')
DEFAULT_CALIB_BATCHES = 8  # GPTQ/AWQ calibration: global batches of the training split.
GUIDE_BYTES_PER_PARAM = {'bf16': 2.0, 8: 1.0, 4: 0.5}  # The guide's rule of thumb, by bits.



@dataclasses.dataclass(frozen=True)
class Method:
  """A method: qwix qtype, bits per code, weights per scale along the contraction (0 = all),
  and the algorithm choosing the codes: 'gptq', 'awq' or '' (round to nearest)."""
  name: str
  qtype: str
  bits: int
  group: int
  calib: str = ''


def parse_method(name: str) -> Method:
  """'int8', 'int4-g64', 'gptq-int4-g128', 'nf4-b64', ... -> Method (ConfigError naming --method)."""
  m = re.fullmatch(rf'(?:({"|".join(gptq.ALGORITHMS)})-)?int(\d+)(?:-g(\d+))?|nf4-b(\d+)', name)
  if not m:
    raise ConfigError(f'--method {name!r}: unknown; use int8 (per channel), int4-gG or int8-gG '
                      '(G weights per scale), nf4-bB (blocks of B), or gptq-/awq- before intB-gG')
  calib, bits, group, block = m.groups()
  given = group or block
  if given is not None and int(given) < 1:
    raise ConfigError(f'--method {name!r}: the group size must be >= 1')
  if block:
    return Method(name, 'nf4', 4, int(block))
  bits, group, calib = int(bits), int(group or 0), calib or ''
  if bits not in (4, 8):
    raise ConfigError(f'--method {name!r}: bit width {bits} is not supported (4 or 8: the '
                      'widths stored natively, int4 and int8)')
  if bits == 4 and not group:
    raise ConfigError(f'--method {name!r}: int4 needs a group size, e.g. int4-g64')
  return Method(name, f'int{bits}', bits, group, calib)


def _as_matrix(w, suffix: str, letters: str):
  """w as (rows, contraction) with the contracted axes last; and how to undo it."""
  lead = w.ndim - len(suffix)  # Stacked layers, periods.
  c_axes = [lead + suffix.index(ch) for ch in letters]
  perm = [a for a in range(w.ndim) if a not in c_axes] + c_axes
  moved = jnp.transpose(w, perm)
  k = math.prod(w.shape[a] for a in c_axes)
  return moved.reshape(-1, k), perm, moved.shape


def fake_quant(w, path: str, method: Method, scale_dtype) -> tuple[jax.Array, qwix.QArray]:
  """(dequantized w in its dtype, the qwix QArray stored) of the parameter at `path`."""
  name = path.rsplit('/', 1)[-1]
  suffix, letters = name.rsplit('_', 1)[-1], CONTRACTION[name]
  w_RK, perm, moved_shape = _as_matrix(w, suffix, letters)
  k = w_RK.shape[1]
  if method.group and k % method.group:
    raise ConfigError(f'--method {method.name}: group size {method.group} does not divide the '
                      f'contraction dimension of {path} ({"x".join(letters)} = {k})')
  tiles = {1: method.group} if method.group else None
  q = qwix.quantize(w_RK, method.qtype, channelwise_axes=(0,), tiled_axes=tiles,
                    scale_dtype=scale_dtype)
  back = qwix.dequantize(q).astype(w.dtype).reshape(moved_shape)
  return jnp.transpose(back, np.argsort(perm)), q


def stored_bytes(a) -> int:
  """Bytes of array `a` at its dtype's bit width (int4 and uint4 packed two per byte)."""
  return a.size * jax.dtypes.itemsize_bits(a.dtype) // 8


def qarray_bytes(q: qwix.QArray) -> tuple[int, int]:
  """(stored bytes, bytes resident in memory) of a QArray: codes, scales, zero points."""
  parts = [x for x in (q.qvalue, q.scale, q.zero_point) if x is not None]
  return sum(stored_bytes(x) for x in parts), sum(x.nbytes for x in parts)


def model_params(state) -> dict[str, jax.Array]:
  """'blocks/attn/wq_DHK' -> array for every nnx.Param of the (model, optimizer) state's model."""
  flat = nnx.to_flat_state(nnx.filter_state(state[0], nnx.Param))
  out = {}
  for path, v in flat:
    key = '/'.join(map(str, path))
    name = key.rsplit('/', 1)[-1]
    if name not in CONTRACTION and name not in KEEP:
      raise ConfigError(f'parameter {key}: no quantization rule (add its contraction letters to '
                        'model.qat.CONTRACTION, or its name to KEEP)')
    out[key] = v[...]
  return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fake_quant_all(params: dict, method: Method, scale_dtype) -> dict:
  """fake_quant of every parameter in `params`, as one program (eager ops cost seconds)."""
  return {key: fake_quant(w, key, method, scale_dtype) for key, w in params.items()}


def quantize_params(params: dict, method: Method, scale_dtype, calibrated: dict | None = None):
  """(dequantized params, {'weight_bytes', 'resident_bytes', 'quantized_params', ...}).

  `calibrated`: {key: (dequantized, QArray, extra stored arrays)} of the parameters
  scaling.gptq quantized (GPTQ, AWQ); the others are rounded to nearest here.
  """
  calibrated = calibrated or {}
  kept = {k: w for k, w in params.items() if k.rsplit('/', 1)[-1] in KEEP}
  rtn = _fake_quant_all({k: w for k, w in params.items() if k not in kept and k not in calibrated},
                        method, jnp.dtype(scale_dtype))
  done = {**{k: (deq, q, ()) for k, (deq, q) in rtn.items()}, **calibrated}
  new = {**kept, **{k: deq for k, (deq, _, _) in done.items()}}
  q_bytes = sum(qarray_bytes(q)[0] + sum(map(stored_bytes, extra)) for _, q, extra in done.values())
  stored = q_bytes + sum(stored_bytes(w) for w in kept.values())
  resident = (sum(qarray_bytes(q)[1] + sum(x.nbytes for x in extra) for _, q, extra in done.values())
              + sum(w.nbytes for w in kept.values()))
  n_q = sum(params[k].size for k in done)
  n = sum(w.size for w in params.values())
  return new, {'weight_bytes': stored, 'resident_bytes': resident, 'params': n,
               'bytes_per_param': stored / n,
               'guide_bytes_per_param': GUIDE_BYTES_PER_PARAM[method.bits],
               'quantized_params': n_q, 'quantized_bytes_per_param': q_bytes / n_q}


def with_params(state, params: dict):
  """The (model, optimizer) state with the model's parameters replaced by `params`."""
  def swap(path, v):
    key = '/'.join(map(str, path[1:]))
    return v.replace(value=params[key]) if path[0] == 0 and key in params else v
  return nnx.map_state(swap, state)


@dataclasses.dataclass
class Restored:
  """A run's checkpoint, ready to evaluate: the program, its state, the val batches."""
  workdir: str
  step: int
  config: object
  program: object
  state: object
  mesh: object
  val_batches: list
  val_tokens: int
  val_bytes: int
  train_split: object = None  # GPTQ/AWQ calibrate on it.

  def model(self):
    """The model (nnx.Module) holding the checkpoint's parameters."""
    return nnx.merge(self.program.graphdef, self.state)[0]

  def eval_loss(self, state) -> float:
    """Mean validation loss (nats/token) through the train loop's eval."""
    with sharding.use_mesh(self.mesh):
      return float(loop.evaluate(self.program, state, self.val_batches, self.mesh))

  def bpb(self, loss: float) -> float | None:
    return bits_per_byte(loss, self.val_tokens, self.val_bytes) if self.val_bytes else None


def restore(workdir: str) -> Restored:
  """The run's config, newest intact checkpoint (train.generate's loader) and val split."""
  config = generate.load_run_config(workdir)
  # A QAT run (model.qat) is evaluated on its float master weights here, so each method below
  # quantizes them once (the run's own eval, fake-quantized, is its QAT number).
  config.model.qat = 'none'
  step, program, state = generate.restore_state(workdir, config)
  d = config.data
  splits = data_lib.prepare_splits(config)
  batches = data_lib.eval_batches(splits.val, d.seq_len, d.global_batch_size,
                                  config.train.eval_batches, config.seed)
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  return Restored(workdir, step, config, program, state, mesh, batches, len(splits.val),
                  splits.val.n_bytes, splits.train)


def quantize_run(workdir: str, methods: list[Method], scale_dtype, skip_bad_groups=False,
                 calib_batches: int = DEFAULT_CALIB_BATCHES) -> dict:
  """One run: full-precision and per-method eval loss, bytes, gap and bpb (see the docstring)."""
  r = restore(workdir)
  params = model_params(r.state)
  bad = {}
  for m in methods:  # Shapes only: a group that does not divide stops before any eval.
    try:
      jax.eval_shape(functools.partial(quantize_params, method=m, scale_dtype=scale_dtype), params)
      errors = gptq.calibration_errors(r.config.model, m.name) if m.calib else []
      if errors:  # MLA, MoE: not calibrated.
        raise ConfigError(errors[0])
    except ConfigError as e:
      if not skip_bad_groups:
        raise
      bad[m.name] = str(e)
  n = sum(w.size for w in params.values())
  full_loss = r.eval_loss(r.state)
  d = r.config.data
  out = {'run': workdir, 'step': r.step, 'N': param_counts(r.config.model).with_head,
         'D': r.step * d.global_batch_size * d.seq_len, 'params': n,
         'scale_dtype': jnp.dtype(scale_dtype).name,
         'full': {'eval_loss': full_loss, 'eval_bpb': r.bpb(full_loss),
                  'weight_bytes': sum(stored_bytes(w) for w in params.values()),
                  'bytes_per_param': sum(stored_bytes(w) for w in params.values()) / n,
                  'guide_bytes_per_param': GUIDE_BYTES_PER_PARAM['bf16']},
         'methods': {}}
  calib_BT = None
  for m in methods:
    if m.name in bad:
      out['methods'][m.name] = {'skipped': bad[m.name]}
      continue
    calibrated, calibration = None, {}
    if m.calib:
      if calib_BT is None:
        calib_BT = gptq.calibration_tokens(r.train_split, r.config, calib_batches)
      calibrated, summary = gptq.calibrate(r.model(), calib_BT, m, scale_dtype)
      calibration = {'calibration': summary}
    new, stats = quantize_params(params, m, scale_dtype, calibrated)
    loss = r.eval_loss(with_params(r.state, new))
    out['methods'][m.name] = {**stats, 'eval_loss': loss, 'eval_bpb': r.bpb(loss),
                              'gap_nats': loss - full_loss,
                              'gap_pct': 100 * (loss - full_loss) / full_loss, **calibration}
  tables.write_json(out, workdir, 'quant.json')
  return out


def _f(x, fmt):
  return '-' if x is None else format(x, fmt)


def format_table(results: list[dict]) -> str:
  """One row per run and method: B/param (guide), eval loss, gap in nats and %, bits per byte."""
  w = max([10] + [len(m) for r in results for m in r['methods']])  # The method column.
  head = (f'{"run":24} {"method":{w}} {"B/param":>8} {"guide":>6} {"eval loss":>10} '
          f'{"gap nats":>9} {"gap %":>7} {"bpb":>7}')
  rows = [head]
  for r in results:
    name = os.path.basename(os.path.normpath(r['run']))[:24]
    f = r['full']
    rows.append(f'{name:24} {"float32":{w}} {f["bytes_per_param"]:8.4f} {2.0:6.2f} '
                f'{f["eval_loss"]:10.4f} {"":>9} {"":>7} {_f(f["eval_bpb"], "7.4f")}')
    for m, s in r['methods'].items():
      if 'skipped' in s:
        rows.append(f'{name:24} {m:{w}} skipped: {s["skipped"]}')
        continue
      rows.append(f'{name:24} {m:{w}} {s["bytes_per_param"]:8.4f} '
                  f'{s["guide_bytes_per_param"]:6.2f} {s["eval_loss"]:10.4f} '
                  f'{s["gap_nats"]:+9.4f} {s["gap_pct"]:+7.2f} {_f(s["eval_bpb"], "7.4f")}')
  return '\n'.join(rows)


def _series(results: list[dict], method: str, x: str, other: str) -> dict[str, list]:
  """{'D 1e+06': [(x, gap), ...]}: the method's gaps against x, one series per value of `other`."""
  out = {}
  for r in results:
    s = r['methods'].get(method, {})
    if 'gap_nats' in s:
      out.setdefault(f'{other} {r[other]:.2g}', []).append((r[x], s['gap_nats']))
  return {k: sorted(v) for k, v in sorted(out.items(), key=lambda kv: float(kv[0].split()[1]))}


def plot_gap(results: list[dict], path: str) -> None:
  """PNG: the eval-loss gap (nats) against N (a line per D) and against D (a line per N)."""
  from scaling import plot  # Local: matplotlib, only when plotting.
  fig, axes = plot.plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  methods = sorted({m for r in results for m, s in r['methods'].items() if 'skipped' not in s})
  styles = ('-', '--', ':', '-.')
  for ax, x, other, label in ((axes[0], 'N', 'D', 'N (parameters with head)'),
                              (axes[1], 'D', 'N', 'D (tokens trained)')):
    for i, m in enumerate(methods):
      for j, (key, xy) in enumerate(_series(results, m, x, other).items()):
        ax.plot([a for a, _ in xy], [g for _, g in xy], 'o', ls=styles[j % len(styles)],
                color=f'C{i}', label=f'{m}, {key}')
    ax.set_xscale('log')
    ax.set_xlabel(label)
    ax.axhline(0.0, color='0.6', lw=0.8)
    ax.legend(fontsize=6, ncol=2)
  axes[0].set_ylabel('eval loss gap to float32 (nats/token)')
  fig.suptitle('post-training quantization: loss gap against N (a line per D) and D (a line per N)')
  fig.tight_layout()
  plot.save(fig, path)


def sweep_runs(root: str) -> tuple[list[str], list[str]]:
  """(finished runs with a checkpoints/ folder, messages for the finished runs without one)."""
  try:
    pts = points_lib.load_runs(root, warn=lambda msg: print(msg, file=sys.stderr))
  except ValueError as e:
    raise ConfigError(f'--runs {root!r}: {e}') from None
  runs, skipped = [], []
  for name in pts.names:
    run = os.path.join(root, name)
    if os.path.isdir(os.path.join(run, 'checkpoints')):
      runs.append(run)
    else:
      skipped.append(f'warning: run {name!r} skipped: no checkpoints/ (train.checkpoint_every=0)')
  if not runs:
    raise ConfigError(f'--runs {root!r}: no finished run has a checkpoint (sweep with '
                      'checkpoints_per_run >= 1)')
  return runs, skipped


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m scaling.quant',
                              description='Post-training quantization of runs\' checkpoints.')
  g = p.add_mutually_exclusive_group(required=True)
  g.add_argument('--workdir', help='one run folder: config.json, checkpoints/')
  g.add_argument('--runs', help='a sweep folder: every finished run with a checkpoint')
  p.add_argument('--method', action='append',
                 help=f'repeat for several; default: {" ".join(DEFAULT_METHODS)}')
  p.add_argument('--scale-dtype', default='float32', help='dtype of the scales: float32, bfloat16')
  p.add_argument('--calib-batches', type=int, default=DEFAULT_CALIB_BATCHES,
                 help='GPTQ/AWQ calibration: global batches of the run\'s training split '
                      f'(default {DEFAULT_CALIB_BATCHES})')
  cli.add_json_argument(p)
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  methods = [parse_method(m) for m in (args.method or DEFAULT_METHODS)]
  if args.scale_dtype not in ('float32', 'bfloat16'):
    raise ConfigError(f'--scale-dtype {args.scale_dtype!r}: must be float32 or bfloat16')
  scale_dtype = jnp.dtype(args.scale_dtype)
  if args.calib_batches < 1:
    raise ConfigError(f'--calib-batches {args.calib_batches}: must be >= 1')
  run = functools.partial(quantize_run, methods=methods, scale_dtype=scale_dtype,
                          calib_batches=args.calib_batches)
  if args.workdir:
    results = [run(args.workdir)]
    result = results[0]
  else:
    runs, skipped = sweep_runs(args.runs)
    for msg in skipped:
      print(msg, file=sys.stderr)
    results = [run(r, skip_bad_groups=True) for r in runs]
    out = os.path.join(args.runs, 'quant')
    result = {'runs': results, 'skipped': skipped}
    tables.write_json(result, out, 'quant.json')
    with open(os.path.join(out, 'quant.txt'), 'w') as f:
      f.write(format_table(results) + '\n')
    plot_gap(results, os.path.join(out, 'quant_gap.png'))
  cli.emit(tables.public(result), format_table(results), args.json)
  return 0


if __name__ == '__main__':
  cli.run_argparse(main)
