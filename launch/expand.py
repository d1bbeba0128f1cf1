"""Expand a sweep config into runs: shapes, budgets, hyper-parameter rules, variants, cooldown branches.

A sweep config (`configs/sweeps/*.py`, a `get_config()`) names a run config
file, overrides common to every run, FLOP budgets and how many model sizes to
spread around each budget's compute-optimal N (`scaling.plan.isoflop_plan`).
Each target N becomes a model shape (fixed head size and aspect ratio
d_model / n_layers, d_ff tuned within bounds to land on N; see `build_shape`),
and each run trains for its own budget as `train.flops` = C, so warmup and the
decay are matched to its own horizon (Chinchilla; Porian et al. 2024).

Units: C in FLOPs (6 N D, total for the run), N = parameters with the output
head that a token passes through (model.counts `active`: `with_head` for a
dense model, the N that `train` and `scaling.fit` use; for MoE, equal active
compute), D in tokens, steps in optimizer steps.

Optional sweep keys:
  variants            {name: overrides}: the whole IsoFLOP grid once per variant,
                      runs named <variant>_<budget>_<shape> (e.g. dense against MoE
                      at equal active N; configs/sweeps/moe_cpu.py).
  grid                {key: values}: a tuning grid, the product of the values as variants
                      (`_grid`: runs named lr0.003-bs32_<budget>_<shape>); the sweep's
                      fit adds the LR and batch laws (scaling.hparams).
  hparams             {target: rule}: per-run LR, batch, b2, warmup and weight decay
                      (scaling.rules; `_rule_overrides`).
  cooldowns_per_size  K: WSD cooldown branches, K points per size (`_cooldown_branches`).
  target              {'flops_factor': f}: after the fit, train the compute-optimal run
                      at f x the largest budget and check its predicted loss
                      (launch.sweep.train_target).

Used by `launch.sweep` (the command, backends and fit); imports only the
closed-form counts from the model (`model.counts`) and scaling's arithmetic.
"""

import dataclasses
import math
import os
import sys

import ml_collections

from configs import load
from model.counts import decay_start, param_counts, planned_steps, warmup_steps
from scaling import plan as plan_lib
from scaling import rules

REPO_ROOT = load.REPO_ROOT
SHAPE_KEYS = ('n_layers', 'd_model', 'n_heads', 'n_kv_heads', 'd_ff')
SWEEP_KEYS = ('base_config', 'overrides', 'budgets', 'law', 'n_sizes', 'span', 'min_steps', 'shape',
              'evals_per_run', 'logs_per_run', 'checkpoints_per_run', 'fit')
# Optional sweep keys: per-run hyper-parameter rules (scaling.rules) and WSD cooldown branches.
HPARAM_KEYS = {'lr': 'optim.lr', 'b2': 'optim.b2', 'weight_decay': 'optim.weight_decay'}


class SweepError(ValueError):
  """An invalid sweep; the message names the key, budget or size at fault."""


@dataclasses.dataclass
class Run:
  """One training run of a sweep."""
  name: str  # '<budget>_<shape>': also its workdir name under the sweep folder.
  budget: float  # Training FLOPs C of the run (6 N D, whole run).
  target_params: float  # N the plan asked for (parameters, with head).
  params: int  # N of the built shape (parameters with head a token passes through: `active`).
  shape: dict  # model.{n_layers, d_model, n_heads, n_kv_heads, d_ff}.
  steps: int  # Optimizer steps train will plan for train.flops = budget.
  tokens_per_step: int  # data.global_batch_size * data.seq_len.
  overrides: dict  # Dotted key -> value: every --config.a.b=v flag of the command.
  config: ml_collections.ConfigDict  # The full run config (base file + overrides).
  variant: str = ''  # The sweep's `variants` entry it belongs to ('' without variants).
  parent: str = ''  # A cooldown branch: the run (name) it starts from; '' for a run from scratch.
  branch_step: int = 0  # A cooldown branch: the parent's step it starts from (its decay start).

  @property
  def tokens(self) -> int:
    """Tokens D actually trained (steps rounded up, so 6 N D >= budget by < 1 step)."""
    return self.steps * self.tokens_per_step

  @property
  def tokens_per_param(self) -> float:
    return self.tokens / self.params


@dataclasses.dataclass
class Sweep:
  """An expanded sweep: the runs plus what is needed to start them."""
  base_config: str  # Run config file as passed to `python -m train --config`.
  runs: list
  fit: ml_collections.ConfigDict
  warnings: list
  tpu: ml_collections.ConfigDict | None = None
  ray: ml_collections.ConfigDict | None = None  # The optional `ray` block (ray_backend.default_config).
  hparams: list = dataclasses.field(default_factory=list)  # scaling.rules.describe of the `hparams` rules.
  target_flops: float | None = None  # The `target` run's budget C (FLOPs), trained after the fit.
  grid: bool = False  # A tuning grid (`grid`): the sweep's fit adds the LR and batch laws.

  def after(self) -> dict:
    """{cooldown branch: the run it starts from}: the order the backends keep."""
    return {r.name: r.parent for r in self.runs if r.parent}


# ---------------------------------------------------------------------------- config files


def load_config_file(path: str, what: str = 'config') -> ml_collections.ConfigDict:
  """`get_config()` of a Python config file; SweepError naming `what` when it cannot."""
  try:
    return load.load_config_file(path, what)
  except load.ConfigError as e:
    raise SweepError(str(e)) from e


def flatten(tree, prefix: str = '') -> dict:
  """{'data': {'seq_len': 64}} -> {'data.seq_len': 64} (ConfigDicts or dicts)."""
  out = {}
  items = tree.items() if hasattr(tree, 'items') else []
  for k, v in items:
    key = f'{prefix}{k}'
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v, key + '.'))
    else:
      out[key] = v
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict, what: str) -> None:
  """Set dotted keys on `config` in place; SweepError for unknown keys or wrong types."""
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise SweepError(f'{what}: unknown config key {key!r}')
      node = node[p]
    if leaf not in node:
      raise SweepError(f'{what}: unknown config key {key!r}')
    try:
      node[leaf] = value
    except (TypeError, ValueError) as e:
      raise SweepError(f'{what}: {key}={value!r}: {e}') from None


def flag_value(value) -> str:
  """A config value as absl's --config.a.b=v parses it back."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, float):
    return repr(value)
  return str(value)


def budget_label(flops: float) -> str:
  """1e11 -> '1e11', 3.2e12 -> '3.2e12' (workdir-friendly)."""
  mantissa, exp = f'{flops:.3g}'.split('e') if 'e' in f'{flops:.3g}' else (f'{flops:.3g}', None)
  return mantissa if exp is None else f'{mantissa}e{int(exp)}'


# ---------------------------------------------------------------------------- shapes


def _n_active(model_cfg, shape: dict) -> int:
  """N of `shape`: parameters with head that a token passes through (= with head when dense)."""
  m = ml_collections.ConfigDict(model_cfg.to_dict())
  m.update(shape)
  return param_counts(m).active


def build_shape(target_params: float, model_cfg: ml_collections.ConfigDict,
                rule: ml_collections.ConfigDict) -> dict:
  """A model shape with about `target_params` parameters (with head).

  The rule (sweep config `shape`): d_model is a multiple of `d_multiple`;
  the head size is the smallest even divisor of d_model that is at least
  `head_dim` (so heads always divide d_model and RoPE gets an even size);
  n_layers = d_model / aspect rounded down or up, clamped to [1, max_layers]; n_kv_heads =
  n_heads / g, g the largest divisor of n_heads not above kv_group. d_ff starts
  at ff_ratio * d_model and is then tuned, in multiples of ff_multiple and
  within [ff_min, ff_max] * d_model, to land on the target. Of the d_model
  values whose untuned size is nearest the target, the first whose tuned size
  is within `tolerance` (relative) wins. Everything else (vocabulary, tying,
  qk_norm) comes from `model_cfg`. Raises SweepError when no shape is close
  enough.
  """
  step = rule.d_multiple
  if step % 2:
    raise SweepError(f'shape.d_multiple={step}: must be even (RoPE needs an even head size)')
  candidates = []
  for d in range(step, rule.max_d_model + 1, step):
    head = min(k for k in range(2, d + 1, 2) if d % k == 0 and (k >= rule.head_dim or k == d))
    heads = d // head
    group = max(g for g in range(1, rule.kv_group + 1) if heads % g == 0)
    for n_layers in sorted({min(max(1, f(d / rule.aspect)), rule.max_layers)
                            for f in (math.floor, math.ceil)}):
      shape = dict(n_layers=n_layers, d_model=d, n_heads=heads, n_kv_heads=heads // group,
                   d_ff=_round_to(rule.ff_ratio * d, rule.ff_multiple))
      err = abs(math.log(_n_active(model_cfg, shape) / target_params))
      candidates.append((err, d, n_layers, shape))
  candidates.sort(key=lambda t: t[:3])
  best = None
  for _, d, _, shape in candidates[:4]:
    # N is linear in d_ff: solve for the target, then round and clamp.
    probe = 64 * max(1, model_cfg.get('moe_granularity', 1))  # d_expert = d_ff / granularity.
    n0 = _n_active(model_cfg, {**shape, 'd_ff': 0})
    slope = (_n_active(model_cfg, {**shape, 'd_ff': probe}) - n0) / probe
    lo = _round_up(rule.ff_min * d, rule.ff_multiple)
    hi = max(lo, int(rule.ff_max * d // rule.ff_multiple) * rule.ff_multiple)
    d_ff = min(max(_round_to((target_params - n0) / slope, rule.ff_multiple), lo), hi)
    shape = {**shape, 'd_ff': d_ff}
    n = _n_active(model_cfg, shape)
    err = abs(n / target_params - 1)
    if best is None or err < best[0]:
      best = (err, shape, n)
    if err <= rule.tolerance:
      return shape
  err, shape, n = best
  raise SweepError(
      f'no model shape within {rule.tolerance:.0%} of target N={target_params:,.0f}: nearest is '
      f'{shape_name(shape)} with N={n:,} ({err:.0%} off); adjust the budgets, span or the shape '
      f'rule (d_multiple={step}, aspect={rule.aspect}, ff_min..ff_max={rule.ff_min}..{rule.ff_max}, '
      f'max_d_model={rule.max_d_model}, max_layers={rule.max_layers})')


def _round_to(x: float, multiple: int) -> int:
  return max(multiple, int(round(x / multiple)) * multiple)


def _round_up(x: float, multiple: int) -> int:
  return max(multiple, int(math.ceil(x / multiple)) * multiple)


def run_name(prefix: str, budget: float, shape: dict) -> str:
  """'[<prefix>_]<budget>_<shape>': a run's name and folder ('moe_2e11_L2-d64-h4-f176')."""
  return f'{prefix}_' * bool(prefix) + f'{budget_label(budget)}_{shape_name(shape)}'


def shape_name(shape: dict) -> str:
  """'L2-d64-h4-f192' (layers, d_model, heads, d_ff)."""
  kv = '' if shape['n_kv_heads'] == shape['n_heads'] else f'kv{shape["n_kv_heads"]}'
  return f'L{shape["n_layers"]}-d{shape["d_model"]}-h{shape["n_heads"]}{kv}-f{shape["d_ff"]}'


# ---------------------------------------------------------------------------- expansion


def _check_sweep_keys(s) -> list:
  """The sweep's budgets, sorted; SweepError for missing keys or bad budgets."""
  missing = [k for k in SWEEP_KEYS if k not in s]
  if missing:
    raise SweepError(f'the sweep config lacks {", ".join(missing)} (see configs/sweeps/isoflop_cpu.py)')
  budgets = list(s.budgets)
  if not budgets:
    raise SweepError('budgets: empty; give FLOP budgets, e.g. (1e11, 3e11, 1e12)')
  bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, (int, float))
         or not math.isfinite(b) or b <= 0]
  if bad:
    raise SweepError(f'budgets: every FLOP budget must be a positive number, got {bad}')
  if len(set(budgets)) != len(budgets):
    raise SweepError(f'budgets: duplicates in {budgets}')
  return sorted(budgets)


def _base_config(s) -> tuple[ml_collections.ConfigDict, dict]:
  """(base run config with the common overrides applied, the common overrides as dotted keys)."""
  base = load_config_file(s.base_config, 'base_config')
  common = flatten(s.overrides)
  for key in common:
    if key.startswith('train.') and key.split('.')[1] in ('steps', 'tokens', 'flops'):
      raise SweepError(f'overrides: {key} is set per run (train.flops = its budget); remove it')
    if key.startswith('model.') and key.split('.')[1] in SHAPE_KEYS:
      raise SweepError(f'overrides: {key} is set per run by the shape rule; remove it')
  apply_overrides(base, common, 'overrides')
  return base, common


def _make_run(s, base, common: dict, budget: float, target: float, shape: dict, name: str) -> Run:
  """One run of `budget` FLOPs with `shape`: its config, steps and command-line overrides."""
  per_run = {f'model.{k}': v for k, v in shape.items()}
  per_run.update({'train.flops': float(budget), 'train.steps': 0, 'train.tokens': 0})
  config = ml_collections.ConfigDict(base.to_dict())
  apply_overrides(config, per_run, f'run {name}')
  hp = _rule_overrides(s, config, budget, name)
  apply_overrides(config, hp, f'run {name}')
  phases = _wsd_overrides(s, config)
  apply_overrides(config, phases, f'run {name}')
  steps = planned_steps(config)
  cadence = _cadence(s, steps)
  apply_overrides(config, cadence, f'run {name}')
  overrides = {**common, **per_run, **hp, **phases, **cadence}
  overrides = {k: v for k, v in overrides.items()
               if not (k in ('train.steps', 'train.tokens') and _get(base, k) == 0)}
  return Run(name=name, budget=float(budget), target_params=target,
             params=param_counts(config.model).active, shape=shape, steps=steps,
             tokens_per_step=config.data.global_batch_size * config.data.seq_len, overrides=overrides,
             config=config)


def _rule_overrides(s, config, budget: float, name: str) -> dict:
  """The sweep's `hparams` rules (scaling.rules) for one run, as dotted overrides.

  lr, b2 and weight_decay set their optim fields; batch_tokens sets
  data.global_batch_size to the nearest whole number of sequences (at least
  1); warmup_tokens sets optim.warmup_steps to whole steps (at least 1) at the
  run's batch. N is the run's active parameters with head (= with head when
  dense), C its budget.
  """
  spec = s.get('hparams')
  if not spec:
    return {}
  counts = param_counts(config.model)
  seq = config.data.seq_len
  try:
    values = rules.resolve(spec.to_dict() if hasattr(spec, 'to_dict') else dict(spec),
                           params=counts.active, flops=budget,
                           params_non_embedding=counts.non_embedding,
                           batch_tokens=config.data.global_batch_size * seq, seq_len=seq)
  except rules.RuleError as e:
    raise SweepError(f'hparams: run {name}: {e}') from None
  out = {HPARAM_KEYS[k]: float(v) for k, v in values.items() if k in HPARAM_KEYS}
  batch = config.data.global_batch_size
  if 'batch_tokens' in values:
    batch = out['data.global_batch_size'] = max(1, round(values['batch_tokens'] / seq))
  if 'warmup_tokens' in values:
    out['optim.warmup_steps'] = max(1, math.ceil(values['warmup_tokens'] / (batch * seq)))
  return out


def _wsd_overrides(s, config) -> dict:
  """With cooldown branches: a WSD schedule whose warmup is fixed in steps.

  A branch must follow its parent exactly up to the branch point, so the
  warmup cannot be a fraction of each run's own length: it becomes the
  parent's warmup in steps (optim.warmup_steps, or warmup_fraction of the
  run's planned steps).
  """
  if not s.get('cooldowns_per_size'):
    return {}
  return {'optim.schedule': 'wsd', 'optim.warmup_steps': warmup_steps(config)}


def _budget_runs(s, base, common: dict, budget: float, runs: list, variant: str = '') -> list:
  """The runs of one budget: the plan's sizes around N_opt, each built into a shape."""
  try:
    p = plan_lib.isoflop_plan(float(budget), s.law, n_sizes=s.n_sizes, span=s.span)
  except ValueError as e:
    raise SweepError(f'budget {budget:g}: {e}') from None
  seen, out = {}, []
  for i, target in enumerate(p['sizes']):
    try:
      shape = build_shape(target, base.model, s.shape)
    except SweepError as e:
      raise SweepError(f'budget {budget:g}, size {i + 1}/{len(p["sizes"])}: {e}') from None
    name = run_name(variant, budget, shape)
    if name not in seen and any(r.name == name for r in runs):
      raise SweepError(f'budget {budget:g}: run name {name} repeats another budget\'s '
                       '(budgets equal to 3 significant digits)')
    if name in seen:
      raise SweepError(f'budget {budget:g}: sizes {seen[name] + 1} and {i + 1} (targets '
                       f'{p["sizes"][seen[name]]:,.0f} and {target:,.0f}) build the same shape '
                       f'{shape_name(shape)}; use fewer sizes, a wider span or a smaller head_dim')
    seen[name] = i
    out.append(dataclasses.replace(_make_run(s, base, common, budget, target, shape, name),
                                   variant=variant))
  return out


GRID_NAMES = {'optim.lr': 'lr', 'data.global_batch_size': 'bs', 'optim.b2': 'b2',
              'optim.weight_decay': 'wd', 'optim.warmup_steps': 'wu'}  # Short names in run names.


def _grid(s) -> list:
  """[(name, {dotted key: value})]: the product of the sweep's `grid` values ([('', {})] without).

  grid = {'optim': {'lr': (1e-3, 3e-3)}, 'data': {'global_batch_size': (16, 32)}} gives
  4 points named lr0.001-bs16, lr0.001-bs32, ... (a tuning grid per budget and size).
  """
  grid = flatten(s.get('grid') or {})
  points = [('', {})]
  for key, values in grid.items():
    if isinstance(values, (str, bytes)) or not hasattr(values, '__len__') or not len(values):
      raise SweepError(f'grid.{key}={values!r}: give a non-empty tuple of values')
    short = GRID_NAMES.get(key, key.split('.')[-1].replace('_', ''))
    points = [('-'.join(filter(None, (name, f'{short}{v:g}' if isinstance(v, (int, float)) else
                                      f'{short}{v}'))), {**o, key: v})
              for name, o in points for v in values]
  return points


def _variants(s, base, common: dict) -> list:
  """[(variant name, its base config, its overrides)]: `variants` times the `grid` points; one
  unnamed variant without either."""
  if not s.get('variants') and not s.get('grid'):
    return [('', base, common)]
  variants = dict(s.get('variants') or {'': {}})
  out = []
  for (vname, overrides), (gname, point) in [(v, g) for v in variants.items() for g in _grid(s)]:
    name = '-'.join(n for n in (vname, gname) if n)
    if not name.replace('-', '').replace('.', '').isalnum():
      raise SweepError(f'variants: name {name!r} must be letters, digits, "-" or "." (a folder prefix)')
    extra = {**flatten(overrides), **point}
    config = ml_collections.ConfigDict(base.to_dict())
    apply_overrides(config, extra, f'variants.{name}')
    for key in extra:
      if key.startswith('model.') and key.split('.')[1] in SHAPE_KEYS:
        raise SweepError(f'variants.{name}: {key} is set per run by the shape rule; remove it')
    g = config.model.get('moe_granularity', 1)
    if config.model.get('moe_num_experts', 0) and s.shape.ff_multiple % g:
      raise SweepError(f'variants.{name}: model.moe_granularity={g} does not divide '
                       f'shape.ff_multiple={s.shape.ff_multiple}, so d_ff could not be split into experts')
    out.append((name, config, {**common, **extra}))
  return out


def _check_lengths(s, runs: list) -> list[str]:
  """SweepError for runs shorter than min_steps; warnings for runs far from their planned N."""
  too_short = [r for r in runs if r.steps < s.min_steps]
  if too_short:
    lines = [f'{r.name}: {r.steps} steps (D={r.tokens:,} tokens at {r.tokens_per_step:,} tokens/step)'
             for r in too_short]
    raise SweepError(
        f'{len(too_short)} run(s) shorter than min_steps={s.min_steps} (warmup and cosine need room, '
        f'and step rounding moves C): ' + '; '.join(lines) +
        '. Raise the smallest budget, shrink data.global_batch_size * data.seq_len, or lower span.')
  off = [r for r in runs if abs(r.params / r.target_params - 1) > 0.05]
  if off:
    return [f'{len(off)} run(s) more than 5% from the planned N (shape rounding): '
            + ', '.join(r.name for r in off)]
  return []


def expand(sweep_cfg: ml_collections.ConfigDict) -> Sweep:
  """The runs of a sweep config, budget by budget, smallest model first.

  Raises SweepError (naming the key, budget or size) for an unknown base config
  or override key, non-positive budgets, a size no shape can build, duplicate
  shapes within a budget, or runs shorter than `min_steps`.
  """
  s = sweep_cfg
  budgets = _check_sweep_keys(s)
  base, common = _base_config(s)
  runs = []
  for variant, v_base, v_common in _variants(s, base, common):
    for budget in budgets:
      runs += _budget_runs(s, v_base, v_common, budget, runs, variant)
  warns = _check_lengths(s, runs)
  branches, notes = _cooldown_branches(s, runs, budgets)
  runs += branches
  warns += notes
  return Sweep(base_config=s.base_config, runs=runs, fit=s.fit, warnings=warns, tpu=s.get('tpu'),
               ray=s.get('ray'), hparams=_describe_rules(s), target_flops=_target_flops(s, budgets),
               grid=bool(s.get('grid')))


def _target_flops(s, budgets: list) -> float | None:
  """The `target` run's budget: target.flops_factor x the largest budget (None without `target`)."""
  t = s.get('target')
  if not t:
    return None
  f = t.get('flops_factor')
  if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or f <= 0:
    raise SweepError(f'target.flops_factor={f!r}: must be a positive number (the target run\'s '
                     'budget over the largest budget, e.g. 4.0)')
  if s.get('variants') or s.get('grid'):
    raise SweepError('target: not with variants or a grid (which fit would predict it?); '
                     'give the target to a sweep of one variant')
  return float(f) * max(budgets)


def target_run(sweep_cfg, flops: float, n_params: float) -> Run:
  """The target run: `flops` FLOPs at N = n_params (the fit's N_opt), built like every run.

  Named target_<budget>_<shape>, so `scaling.ladder.split(points, 'target_*')`
  holds it out. Raises SweepError when no shape is close enough to N.
  """
  s = sweep_cfg
  base, common = _base_config(s)
  try:
    shape = build_shape(n_params, base.model, s.shape)
  except SweepError as e:
    raise SweepError(f'target run at {flops:.3g} FLOPs: {e}') from None
  name = run_name('target', flops, shape)
  return _make_run(s, base, common, flops, n_params, shape, name)


def _describe_rules(s) -> list:
  spec = s.get('hparams')
  if not spec:
    return []
  try:
    return rules.describe(spec.to_dict() if hasattr(spec, 'to_dict') else dict(spec))
  except rules.RuleError as e:
    raise SweepError(f'hparams: {e}') from None


def _cooldown_branches(s, runs: list, budgets: list) -> tuple[list, list]:
  """WSD cooldown branches (sweep key `cooldowns_per_size` = K; 0 or absent: none).

  Each run of budget C_i (a WSD run from scratch) gets up to K - 1 branches,
  one per next smaller budget C_j of the sweep (nearest first). A branch has
  the run's shape and hyper-parameters and ends where that N meets C_j
  (D_j = C_j / 6N); it starts from the run's checkpoint at its own decay
  start (the run keeps that step: train.checkpoint_steps) and trains only
  its decay, so a size gives K points of its IsoFLOP curves for the price
  of one run plus K - 1 decays (Hägele et al. 2024). A branch whose point is
  already a run of the sweep (same shape and budget) is not added; one
  shorter than min_steps, or whose decay would start before the warmup
  ends, is left out with a warning. Returns (branches, warnings).
  """
  k = s.get('cooldowns_per_size', 0) or 0
  if isinstance(k, bool) or not isinstance(k, int) or k < 0:
    raise SweepError(f'cooldowns_per_size={k!r}: must be a whole number >= 0 (0: no branches)')
  names = {r.name for r in runs}
  branches, short = [], []
  for parent in list(runs):
    points = []
    for budget in [b for b in reversed(budgets) if b < parent.budget][:max(k - 1, 0)]:
      name = run_name(parent.variant, budget, parent.shape)
      if name in names:
        continue
      run = _branch_run(s, parent, budget, name)
      if run.steps < s.min_steps or run.branch_step <= warmup_steps(run.config):
        short.append(f'{name} ({run.steps} steps, decay from step {run.branch_step})')
        continue
      names.add(name)
      branches.append(run)
      points.append(run.branch_step)
    if points:
      parent.overrides['train.checkpoint_steps'] = ','.join(map(str, sorted(points)))
      parent.config.train.checkpoint_steps = parent.overrides['train.checkpoint_steps']
  notes = [f'{len(short)} cooldown branch(es) left out (shorter than min_steps={s.min_steps} or '
           f'decaying from inside the warmup): ' + ', '.join(short)] if short else []
  return branches, notes


def _branch_run(s, parent: Run, budget: float, name: str) -> Run:
  """The cooldown branch of `parent` that ends at `budget` FLOPs (see _cooldown_branches)."""
  config = ml_collections.ConfigDict(parent.config.to_dict())
  config.train.flops = float(budget)
  steps = planned_steps(config)
  cadence = _cadence(s, steps)
  apply_overrides(config, cadence, f'run {name}')
  overrides = {**parent.overrides, 'train.flops': float(budget), **cadence}
  return dataclasses.replace(parent, name=name, budget=float(budget), steps=steps,
                             overrides=overrides, config=config, parent=parent.name,
                             branch_step=decay_start(config))


def _get(config, dotted: str):
  for k in dotted.split('.'):
    config = config[k]
  return config


def _cadence(s, steps: int) -> dict:
  """Per-run eval/log/checkpoint intervals (in steps) from the sweep's per-run counts.

  A count of 0 leaves the base config's interval, except checkpoints_per_run=0,
  which disables checkpoints (an interrupted run then restarts from step 0).
  """
  out = {}
  for key, count in (('train.eval_every', s.evals_per_run), ('train.log_every', s.logs_per_run),
                     ('train.checkpoint_every', s.checkpoints_per_run)):
    if count:
      out[key] = max(1, math.ceil(steps / count))
  if s.checkpoints_per_run == 0:
    out['train.checkpoint_every'] = 0
  return out


# ---------------------------------------------------------------------------- commands and table


def train_command(sweep: Sweep, run: Run, workdir: str, python: str = sys.executable) -> list:
  """argv of `python -m train` for one run (run from the repository root)."""
  argv = [python, '-m', 'train', '--config', sweep.base_config,
          '--workdir', os.path.join(workdir, run.name)]
  argv += [f'--config.{k}={flag_value(v)}' for k, v in run.overrides.items()]
  if run.parent:
    argv.append(f'--config.train.init_from={os.path.join(workdir, run.parent)}:{run.branch_step}')
  return argv


def format_table(sweep: Sweep) -> str:
  """The runs as a text table: budget, shape, N (with head), D, steps, tokens/param, and the
  hyper-parameters each run gets (peak LR, batch in tokens, Adam b2, warmup steps); a
  cooldown branch names its parent and branch step."""
  head = (f'{"run":<30} {"C (FLOPs)":>10} {"L":>3} {"d_model":>7} {"heads":>5} {"kv":>3} '
          f'{"d_ff":>5} {"N target":>10} {"N active":>11} {"D (tokens)":>11} {"steps":>6} '
          f'{"D/N":>7} {"lr":>8} {"batch":>7} {"b2":>6} {"warmup":>6}  from')
  lines = [head, '-' * len(head)]
  for r in sweep.runs:
    sh, o = r.shape, r.config.optim
    origin = f'{r.parent} @ step {r.branch_step}' if r.parent else '-'
    lines.append(f'{r.name:<30} {r.budget:>10.3g} {sh["n_layers"]:>3} {sh["d_model"]:>7} '
                 f'{sh["n_heads"]:>5} {sh["n_kv_heads"]:>3} {sh["d_ff"]:>5} '
                 f'{r.target_params:>10,.0f} {r.params:>11,} {r.tokens:>11,} {r.steps:>6} '
                 f'{r.tokens_per_param:>7.1f} {o.lr:>8.3g} {r.tokens_per_step:>7,} {o.b2:>6.4g} '
                 f'{warmup_steps(r.config):>6}  {origin}')
  own = sum(6.0 * r.params * r.tokens_per_step * (r.steps - r.branch_step) for r in sweep.runs)
  n_branches = sum(bool(r.parent) for r in sweep.runs)
  branches = (f' ({n_branches} cooldown branches: each trains only its decay)' if n_branches else '')
  lines.append(f'{len(sweep.runs)} runs{branches}, {len({r.budget for r in sweep.runs})} budgets, '
               f'{own:.3g} FLOPs in total (6 N D of the steps each run trains)')
  if sweep.hparams:
    lines += ['hyper-parameter rules (sweep key hparams):'] + [f'  {x}' for x in sweep.hparams]
  return '\n'.join(lines)
