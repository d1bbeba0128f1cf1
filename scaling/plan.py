"""The compute planner: FLOPs, compute-optimal size, time, cost and memory per stage.

  python -m scaling.plan --params 70B --tokens 1.4T --sustained-flops-per-sec 5e14 \
      --devices 1000 --price-per-device-hour 3
  python -m scaling.plan --flops 1e21 --law chinchilla --hardware h100 --mfu 0.4
  python -m scaling.plan --flops 1e21 --law runs/fit/fit.json --config configs/base.py --json

Conventions (units are where planning goes wrong):
  * C = 6 N D training FLOPs in total (all devices, whole run); N parameters,
    D training tokens. 6 = 2 (multiply-add) x 3 (forward + 2x backward).
  * FLOP/s and memory are per device; the run uses `devices` of them.
  * A device-year is 365.25 days of one device.
  * Memory is in bytes (tables: GB = 1e9 B); see scaling/memory.py.

Laws (compute-optimal N_opt, D_opt for a budget C):
  * chinchilla: Hoffmann et al. 2022 eq. 10, unrounded, through the efficient
    frontier N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A/(beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta).
  * epoch: Besiroglu et al. 2024's maximum-likelihood fit, same frontier.
  * 20x: D = 20 N, so N = sqrt(C / 120).
  * a fit.json from scaling.fit with an "approach3" block (E, A, B, alpha, beta).
`isoflop_plan` is the public entry point for sweep tooling.
"""

import argparse
import math
import sys

from configs import cli
from configs import hardware
from configs.load import load_config_file
from scaling import memory
from scaling.law import FIT_KEYS, FLOPS_PER_PARAM_TOKEN, LAWS, Law, get_law

SECONDS_PER_DAY = 86_400.0
SECONDS_PER_YEAR = 365.25 * SECONDS_PER_DAY
CONSISTENCY_RTOL = 0.05  # N, D, C all given: 6 N D may differ from C by this fraction (rounded inputs).
DEFAULT_MFU = 0.4  # Assumed when a peak is known but neither --mfu nor a sustained rate is given.


# ---------------------------------------------------------------------------- sweeps


def isoflop_plan(flops: float, law: 'str | Law', n_sizes: int = 5, span: float = 4.0) -> dict:
  """Model sizes for an IsoFLOP sweep at `flops`, centred on the law's N_opt.

  Sizes are spread evenly in log N from N_opt/span to N_opt*span (`span` is
  the factor either side; an odd `n_sizes` includes N_opt itself). Each size's
  tokens are flops / (6 N), so every run costs `flops` FLOPs in total.
  Returns dict(flops, law, n_opt, d_opt, sizes, tokens, tokens_per_param).
  """
  law = get_law(law)
  if not isinstance(n_sizes, int) or n_sizes < 1:
    raise ValueError(f'n_sizes must be a positive integer, got {n_sizes!r}')
  if not span >= 1.0:
    raise ValueError(f'span must be >= 1 (the factor either side of N_opt), got {span!r}')
  n_opt, d_opt = law.optimum(flops)
  steps = [0.0] if n_sizes == 1 else [-1.0 + 2.0 * i / (n_sizes - 1) for i in range(n_sizes)]
  sizes = [n_opt * span**s for s in steps]
  tokens = [flops / (FLOPS_PER_PARAM_TOKEN * n) for n in sizes]
  return dict(flops=flops, law=law.name, n_opt=n_opt, d_opt=d_opt, sizes=sizes, tokens=tokens,
              tokens_per_param=[d / n for n, d in zip(sizes, tokens)])


# ---------------------------------------------------------------------------- arithmetic


def _positive(flag: str, value):
  if value is not None and (not math.isfinite(value) or value <= 0):
    raise ValueError(f'{flag} must be > 0, got {value:g}')


def resolve_budget(params: float | None = None, tokens: float | None = None,
                   flops: float | None = None, law: Law | None = None) -> dict:
  """N, D, C from any two of them (C = 6 N D), or from one of them and a law.

  Returns dict(params, tokens, flops, how) where `how` names the source of
  each. All three given: they must agree within CONSISTENCY_RTOL.
  """
  for flag, v in (('--params', params), ('--tokens', tokens), ('--flops', flops)):
    _positive(flag, v)
  k = FLOPS_PER_PARAM_TOKEN
  given = sum(v is not None for v in (params, tokens, flops))
  how = dict(params='given', tokens='given', flops='given')
  if given == 3:
    implied = k * params * tokens
    if abs(implied - flops) > CONSISTENCY_RTOL * flops:
      raise ValueError(f'inconsistent --params, --tokens, --flops: 6*N*D = {implied:.4g} but '
                       f'--flops = {flops:.4g} (more than {CONSISTENCY_RTOL:.0%} apart); give any two')
  elif given == 2:
    if flops is None:
      flops, how['flops'] = k * params * tokens, 'C = 6 N D'
    elif tokens is None:
      tokens, how['tokens'] = flops / (k * params), 'D = C / (6 N)'
    else:
      params, how['params'] = flops / (k * tokens), 'N = C / (6 D)'
  elif given == 1:
    if law is None:
      raise ValueError('give two of --params, --tokens, --flops, or one of them with --law '
                       f'({", ".join(LAWS)} or a fit.json)')
    if flops is not None:
      params, tokens = law.optimum(flops)
      how['params'] = how['tokens'] = f'compute-optimal under law {law.name}'
    elif params is not None:
      tokens, how['tokens'] = law.tokens_for_params(params), f'compute-optimal D for N under law {law.name}'
      flops, how['flops'] = k * params * tokens, 'C = 6 N D'
    else:
      params, how['params'] = law.params_for_tokens(tokens), f'compute-optimal N for D under law {law.name}'
      flops, how['flops'] = k * params * tokens, 'C = 6 N D'
  else:
    raise ValueError('give two of --params, --tokens, --flops, or --flops with --law')
  return dict(params=params, tokens=tokens, flops=flops, how=how)


def run_time(flops: float, sustained_per_device: float, n_devices: int) -> dict:
  """Time for `flops` total FLOPs at `sustained_per_device` FLOP/s on each of `n_devices`.

  Returns device_seconds (summed over devices), device_hours, device_years,
  wall_seconds and wall_days (elapsed, all devices working in parallel).
  """
  _positive('--sustained-flops-per-sec', sustained_per_device)
  _positive('--devices', n_devices)
  device_seconds = flops / sustained_per_device
  wall = device_seconds / n_devices
  return dict(device_seconds=device_seconds, device_hours=device_seconds / 3600.0,
              device_years=device_seconds / SECONDS_PER_YEAR, wall_seconds=wall,
              wall_days=wall / SECONDS_PER_DAY)


# ---------------------------------------------------------------------------- model shape


SHAPE_FLAGS = ('n_layers', 'd_model', 'n_heads', 'n_kv_heads', 'd_ff', 'vocab_size')


def load_config(path: str):
  """The ConfigDict of an ml_collections config file (calls its get_config())."""
  cfg = load_config_file(path, '--config')
  if 'model' not in cfg:
    raise ValueError(f'--config {path!r}: has no "model" block')
  return cfg


def model_shape(config_path: str | None = None, **flags) -> tuple[memory.ModelShape | None, int | None]:
  """(shape, seq_len) from a config file and/or explicit shape flags (flags win).

  Returns (None, None) when neither is given. seq_len is the config's
  data.seq_len (a default KV context), or None.
  """
  fields, seq_len = {}, None
  if config_path:
    cfg = load_config(config_path)
    m = cfg.model
    missing = [k for k in ('vocab_size', 'd_model', 'n_layers', 'n_heads', 'd_ff') if k not in m]
    if missing:
      raise ValueError(f'--config {config_path!r}: model block lacks {", ".join(missing)}')
    fields = {k: m[k] for k in SHAPE_FLAGS if k in m}
    fields['tie_embeddings'] = bool(m.get('tie_embeddings', False))
    fields['qk_norm'] = bool(m.get('qk_norm', False))
    if 'data' in cfg and 'seq_len' in cfg.data:
      seq_len = int(cfg.data.seq_len)
  fields.update({k: v for k, v in flags.items() if v is not None})
  if not fields or set(fields) <= {'tie_embeddings', 'qk_norm'}:
    return None, seq_len
  fields.setdefault('n_kv_heads', fields.get('n_heads'))
  missing = [k for k in ('n_layers', 'd_model', 'n_heads', 'd_ff') if fields.get(k) is None]
  if missing:
    raise ValueError('a model shape needs ' + ', '.join('--' + k.replace('_', '-') for k in missing)
                     + ' (or --config)')
  return memory.ModelShape(**fields), seq_len


# ---------------------------------------------------------------------------- the plan


def _row(label, value, unit='', how=''):
  return dict(label=label, value=value, unit=unit, how=how)


def make_plan(params=None, tokens=None, flops=None, law=None, hardware_name=None,
              flops_per_sec=None, mfu=None, sustained_flops_per_sec=None, devices=1,
              price_per_device_hour=None, device_memory_gb=None, shape=None, shape_source='',
              context=None, batch=1, lora_rank=16, lora_targets=memory.LORA_TARGETS_ALL,
              kv_bytes=2.0) -> dict:
  """The whole plan as a dict of sections; each scalar row has label, value, unit and how.

  Sections: compute, law (if any), time (if a rate is known), cost (if a
  price), shape (if any), memory (rows from scaling.memory.memory_stages), notes.
  `params` may be None with a `shape` that has a vocab: then N is the shape's count.
  """
  law = get_law(law) if law is not None else None
  for flag, v in (('--devices', devices), ('--price-per-device-hour', price_per_device_hour),
                  ('--flops-per-sec', flops_per_sec), ('--mfu', mfu),
                  ('--sustained-flops-per-sec', sustained_flops_per_sec),
                  ('--device-memory-gb', device_memory_gb), ('--context', context),
                  ('--batch', batch), ('--lora-rank', lora_rank), ('--kv-bytes', kv_bytes)):
    _positive(flag, v)
  if mfu is not None and mfu > 1:
    raise ValueError(f'--mfu is a fraction of peak in (0, 1], got {mfu:g}')
  if mfu is not None and sustained_flops_per_sec is not None:
    raise ValueError('give --mfu or --sustained-flops-per-sec, not both')
  notes = []
  plan = {'compute': _compute_section(params, tokens, flops, law, shape, shape_source, notes)}
  n, d, c = (plan['compute'][k]['value'] for k in ('params', 'tokens', 'flops'))
  if law is not None:
    plan['law'] = _law_section(law, n, d, c)
  plan['hardware'], sustained, device_bytes = _hardware_section(
      hardware_name, flops_per_sec, mfu, sustained_flops_per_sec, devices, device_memory_gb)
  plan.update(_time_and_cost_sections(c, sustained, devices, price_per_device_hour, notes))
  if shape is not None:
    plan['shape'] = _shape_section(shape, shape_source)
  if shape is None:
    notes.append('LoRA, QLoRA and KV-cache rows need a model shape: --config FILE or --n-layers '
                 '--d-model --n-heads [--n-kv-heads] --d-ff')
  elif context is None:
    notes.append('KV-cache rows need --context (or a --config with data.seq_len)')
  plan['memory'] = memory.memory_stages(
      n, devices, device_bytes, shape=shape, lora_rank=lora_rank, lora_targets=tuple(lora_targets),
      context=context, batch=batch, kv_bytes_per_element=kv_bytes)
  notes.append('memory: parameters and optimizer state only (plus the KV cache where named); '
               'activations, workspace and fragmentation are extra')
  plan['notes'] = notes
  return plan


def _compute_section(params, tokens, flops, law, shape, shape_source, notes) -> dict:
  """N, D, C and D/N: two given (or one and a law), or N counted from the shape."""
  shape_n = memory.shape_param_count(shape) if shape is not None and shape.vocab_size is not None else None
  n_given = sum(v is not None for v in (params, tokens, flops))
  n_from_shape = (params is None and shape_n is not None and n_given < 2
                  and not (flops is not None and law is not None))
  budget = resolve_budget(shape_n if n_from_shape else params, tokens, flops, law)
  if n_from_shape:
    budget['how']['params'] = f'counted from the model shape ({shape_source or "flags"})'
  n, d, c = budget['params'], budget['tokens'], budget['flops']
  if shape_n is not None and not n_from_shape and abs(shape_n - n) > 0.1 * n:
    notes.append(f'the model shape has {shape_n:.4g} parameters but N = {n:.4g}; the memory rows use N, '
                 'LoRA/KV use the shape')
  return {
      'params': _row('N, parameters', n, '', budget['how']['params']),
      'tokens': _row('D, training tokens', d, '', budget['how']['tokens']),
      'flops': _row('C, training FLOPs (total)', c, 'FLOP', budget['how']['flops']),
      'tokens_per_param': _row('D / N', d / n, 'tokens/param', 'D / N'),
  }


def _law_section(law: Law, n: float, d: float, c: float) -> dict:
  """The law's parameters, its N_opt and D_opt at C, and (loss laws) the predicted losses."""
  n_opt, d_opt = law.optimum(c)
  sec = {'name': _row('law', law.name, '', law.source)}
  if law.is_loss_law:
    g, a, b = law.frontier()
    for key in FIT_KEYS:
      sec[key] = _row(key, getattr(law, key))
    sec['G'] = _row('G', g, '', '(alpha A / (beta B))^(1/(alpha+beta))')
    sec['a'] = _row('a (N_opt ~ C^a)', a, '', 'beta / (alpha+beta)')
    sec['b'] = _row('b (D_opt ~ C^b)', b, '', 'alpha / (alpha+beta)')
    how_opt = 'G (C/6)^a', 'G^-1 (C/6)^b'
  else:
    how_opt = f'sqrt(C / (6*{law.tokens_per_param:g}))', f'{law.tokens_per_param:g} N_opt'
  sec['n_opt'] = _row('N_opt at this C', n_opt, '', how_opt[0])
  sec['d_opt'] = _row('D_opt at this C', d_opt, '', how_opt[1])
  if law.is_loss_law:
    sec['loss_plan'] = _row('predicted loss L(N, D)', law.loss(n, d), 'nats/token', 'E + A/N^alpha + B/D^beta')
    sec['loss_opt'] = _row('predicted loss L(N_opt, D_opt)', law.loss(n_opt, d_opt), 'nats/token',
                           'E + A/N^alpha + B/D^beta')
  return sec


def _hardware_section(hardware_name, flops_per_sec, mfu, sustained_flops_per_sec, devices,
                      device_memory_gb) -> tuple[dict, float | None, float | None]:
  """(rows, sustained FLOP/s per device or None, memory per device or None)."""
  try:
    chip = hardware.chip(hardware_name) if hardware_name else None
  except ValueError as e:
    raise ValueError(f'--hardware: {e}') from None
  peak, peak_how = None, ''
  if flops_per_sec is not None:
    peak, peak_how = flops_per_sec, 'given (--flops-per-sec)'
  elif chip is not None:
    peak, peak_how = chip.peak_flops, f'dense bf16 peak of {chip.name} (configs/hardware.py)'
  hw = {}
  if chip is not None:
    hw['hardware'] = _row('hardware', chip.name, '', 'configs/hardware.py')
  if peak is not None:
    hw['peak'] = _row('peak FLOP/s per device', peak, 'FLOP/s', peak_how)
  sustained = None
  if sustained_flops_per_sec is not None:
    sustained = sustained_flops_per_sec
    hw['sustained'] = _row('sustained FLOP/s per device', sustained, 'FLOP/s', 'given')
    if peak is not None:
      if sustained > peak:
        raise ValueError(f'--sustained-flops-per-sec {sustained:g} exceeds the peak {peak:g}')
      hw['mfu'] = _row('implied MFU', sustained / peak, '', 'sustained / peak')
  elif peak is not None:
    used = DEFAULT_MFU if mfu is None else mfu
    hw['mfu'] = _row('MFU', used, '', 'given (--mfu)' if mfu is not None else
                     f'assumed default {DEFAULT_MFU:g} (set --mfu)')
    sustained = used * peak
    hw['sustained'] = _row('sustained FLOP/s per device', sustained, 'FLOP/s', 'MFU x peak')
  elif mfu is not None:
    raise ValueError('--mfu needs a peak: give --hardware or --flops-per-sec')
  hw['devices'] = _row('devices', devices, '', 'given (--devices)' if devices != 1 else 'default 1')
  device_bytes = None
  if device_memory_gb is not None:
    device_bytes = device_memory_gb * memory.GB
    hw['device_memory'] = _row('memory per device', device_bytes, 'B', 'given (--device-memory-gb)')
  elif chip is not None:
    device_bytes = chip.hbm_bytes
    hw['device_memory'] = _row('memory per device', device_bytes, 'B', f'{chip.name} (configs/hardware.py)')
  return hw, sustained, device_bytes


def _time_and_cost_sections(c, sustained, devices, price_per_device_hour, notes) -> dict:
  """Time (with a rate) and cost (with a price) of C FLOPs."""
  plan = {}
  if sustained is not None:
    t = run_time(c, sustained, devices)
    plan['time'] = {
        'device_seconds': _row('device-seconds', t['device_seconds'], 's', 'C / sustained FLOP/s'),
        'device_hours': _row('device-hours', t['device_hours'], 'h', 'device-seconds / 3600'),
        'device_years': _row('device-years', t['device_years'], 'y', 'device-seconds / (365.25 * 86400)'),
        'wall_days': _row(f'wall-clock days on {devices} devices', t['wall_days'], 'd',
                          'device-seconds / devices / 86400'),
    }
    if price_per_device_hour is not None:
      plan['cost'] = {
          'price': _row('price per device-hour', price_per_device_hour, 'USD', 'given'),
          'usd': _row('cost', t['device_hours'] * price_per_device_hour, 'USD',
                      'device-hours x price per device-hour'),
      }
  else:
    notes.append('time and cost need a rate: --hardware NAME (with --mfu) or --flops-per-sec '
                 'or --sustained-flops-per-sec')
    if price_per_device_hour is not None:
      notes.append('--price-per-device-hour is unused without a rate')
  return plan


def _shape_section(shape, shape_source) -> dict:
  """The model shape's fields and its parameter count."""
  sec = {k: _row(k, getattr(shape, k)) for k in
         ('n_layers', 'd_model', 'n_heads', 'n_kv_heads', 'head_dim', 'd_ff', 'vocab_size',
          'tie_embeddings')}
  sec['source'] = _row('source', shape_source or 'flags')
  if shape.vocab_size is not None:
    sec['params'] = _row('parameters of the shape', memory.shape_param_count(shape), '',
                         'embeddings + L (attention + SwiGLU + 2 norms) + final norm + head')
  return sec


# ---------------------------------------------------------------------------- output


def _fmt(value, unit=''):
  if isinstance(value, bool) or value is None or isinstance(value, str):
    return str(value)
  if unit == 'USD':
    return f'${value:,.0f}' if value >= 100 else f'${value:,.2f}'
  if isinstance(value, int) and abs(value) < 1e6:
    return f'{value:d}'
  if unit == '' and abs(value) >= 1e6:  # Counts: also say 70B, 1.4T.
    for suffix, scale in (('T', 1e12), ('B', 1e9), ('M', 1e6)):
      if abs(value) >= scale:
        return f'{value:.4g} ({value / scale:.3g}{suffix})'
  if unit in ('d', 'y', 'h', 'nats/token', 'tokens/param') or (0.01 <= abs(value) < 1e4):
    return f'{value:,.4g}' if unit != 'd' else f'{value:,.2f}'
  return f'{value:.4g}'


def format_table(plan: dict) -> str:
  """The plan as a readable text table (the same numbers as --json)."""
  lines = []
  titles = dict(compute='Compute', law='Law', hardware='Hardware', time='Time', cost='Cost',
                shape='Model shape')
  for key, title in titles.items():
    if key not in plan:
      continue
    lines.append(title)
    for row in plan[key].values():
      value = row['value']
      text = _fmt(value, row['unit'])
      if row['unit'] == 'B':
        text = f'{value / memory.GB:,.4g} GB'
      elif row['unit'] not in ('', 'USD', 'B'):
        text += ' ' + row['unit']
      how = f'  [{row["how"]}]' if row['how'] else ''
      lines.append(f'  {row["label"]:<36} {text:>16}{how}')
  dev = plan['hardware']['devices']['value']
  mem = plan['hardware'].get('device_memory')
  lines.append('Memory (GB = 1e9 bytes)')
  need_head = f'devices of {mem["value"] / memory.GB:.4g} GB' if mem else 'devices needed'
  head = f'  {"stage":<52} {"total GB":>10} {f"GB/device x{dev}":>14} {need_head:>20}  how'
  lines.append(head)
  for r in plan['memory']:
    if mem is None:
      need = '-'
    elif r['devices_needed'] is None:
      need = 'no: shard it'
    else:
      need = str(r['devices_needed'])
    lines.append(f'  {r["stage"]:<52} {r["bytes_total"] / memory.GB:>10,.4g} '
                 f'{r["bytes_per_device"] / memory.GB:>14,.4g} {need:>20}  {r["what"]}')
  for note in plan['notes']:
    lines.append(f'Note: {note}')
  return '\n'.join(lines)


def _number(text: str) -> float:
  """A positive-or-not float from '1.4e12', '70B', '1.4T', '300M', '5k' (argparse type)."""
  suffixes = {'k': 1e3, 'm': 1e6, 'b': 1e9, 'g': 1e9, 't': 1e12}
  s = text.strip().replace('_', '').replace(',', '')
  scale = 1.0
  if s and s[-1].lower() in suffixes:
    scale, s = suffixes[s[-1].lower()], s[:-1]
  try:
    return float(s) * scale
  except ValueError:
    raise argparse.ArgumentTypeError(f'not a number: {text!r} (e.g. 7e10, 70B, 1.4T)') from None


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m scaling.plan', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  g = p.add_argument_group('budget (any two of N, D, C; or one with --law)')
  g.add_argument('--params', '-N', type=_number, help='parameters N (e.g. 70B)')
  g.add_argument('--tokens', '-D', type=_number, help='training tokens D (e.g. 1.4T)')
  g.add_argument('--flops', '-C', type=_number, help='training FLOPs C in total (e.g. 5.9e23)')
  g.add_argument('--law', help=f'{", ".join(LAWS)}, or a fit.json from scaling.fit')
  g = p.add_argument_group('hardware and cost (per device)')
  g.add_argument('--hardware', help=f'chip name: {", ".join(sorted(hardware.CHIPS))}')
  g.add_argument('--flops-per-sec', type=_number, help='peak FLOP/s per device (overrides --hardware)')
  g.add_argument('--mfu', type=float, help=f'model FLOPs utilisation in (0, 1] (default {DEFAULT_MFU} when a peak is known)')
  g.add_argument('--sustained-flops-per-sec', type=_number, help='sustained FLOP/s per device (instead of --mfu)')
  g.add_argument('--devices', type=int, default=1, help='device count (default 1)')
  g.add_argument('--price-per-device-hour', '--price', type=float, help='USD per device-hour')
  g.add_argument('--device-memory-gb', type=float, help='memory per device in GB (1e9 B; overrides --hardware)')
  g = p.add_argument_group('model shape (for LoRA and the KV cache)')
  g.add_argument('--config', help='ml_collections config file whose model block gives the shape')
  for name in SHAPE_FLAGS:
    g.add_argument('--' + name.replace('_', '-'), type=int)
  g.add_argument('--context', type=int, help='KV-cache context length in tokens (default: config data.seq_len)')
  g.add_argument('--batch', type=int, default=1, help='KV-cache batch (sequences, default 1)')
  g.add_argument('--lora-rank', type=int, default=16, help='LoRA rank r (default 16)')
  g.add_argument('--lora-targets', default=','.join(memory.LORA_TARGETS_ALL),
                 help='adapted matrices per block, comma-separated (default: all linear maps)')
  g.add_argument('--kv-bytes', type=float, default=2.0, help='bytes per cached K/V element (default 2)')
  cli.add_json_argument(p)
  return p


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    shape_flags = {k: getattr(args, k) for k in SHAPE_FLAGS}
    shape, seq_len = model_shape(args.config, **shape_flags)
    targets = tuple(t.strip() for t in args.lora_targets.split(',') if t.strip())
    unknown = [t for t in targets if t not in memory.LORA_TARGETS_ALL]
    if unknown or not targets:
      raise ValueError(f'--lora-targets: unknown {unknown or targets}; '
                       f'known: {",".join(memory.LORA_TARGETS_ALL)}')
    plan = make_plan(
        params=args.params, tokens=args.tokens, flops=args.flops, law=args.law,
        hardware_name=args.hardware, flops_per_sec=args.flops_per_sec, mfu=args.mfu,
        sustained_flops_per_sec=args.sustained_flops_per_sec, devices=args.devices,
        price_per_device_hour=args.price_per_device_hour, device_memory_gb=args.device_memory_gb,
        shape=shape, shape_source=args.config or '', context=args.context if args.context is not None else seq_len,
        batch=args.batch, lora_rank=args.lora_rank, lora_targets=targets, kv_bytes=args.kv_bytes)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  cli.emit(plan, format_table(plan), args.json)
  return 0


if __name__ == '__main__':
  sys.exit(main())
