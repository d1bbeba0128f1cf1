"""Per-size hyper-parameter rules as data: each run's LR, batch, beta2, warmup and weight decay.

Units: N (`params`) is parameters with the output head, the N of C = 6·N·D
everywhere in chinchax; `params_non_embedding` is N without embedding and
head (Kaplan's and OLMo-core's N); C (`flops`) is training FLOPs 6·N·D.
lr is the schedule's peak learning rate; batch_tokens is tokens per optimizer
step; b2 is Adam's beta2; warmup_tokens is tokens of linear warmup;
weight_decay is AdamW's decoupled coefficient.

A spec maps targets to rules; a rule is written as
  3e-3                                               'constant' with that value
  'deepseek'                                         a named rule with its own constants
  {'rule': 'power', 'k': 0.3, 'p': -0.125, 'of': 'flops'}   a named rule with parameters
  {'rule': 'fitted', 'path': 'runs/tune/hparams/hparams.json'}  the law scaling.hparams fitted
batch_tokens resolves first. The b2 and warmup rules that depend on the batch
use it when the spec has one, else the run's own batch.

Rules (`describe` prints the chosen ones with their sources):
  lr             constant, deepseek, olmo, power, fitted
  batch_tokens   constant, deepseek, olmo, power, fitted
  b2             constant, by_batch, olmo, half_life
  warmup_tokens  constant, porian, olmo, power (of batch_tokens: a number of steps)
  weight_decay   constant, olmo
Where a published form is uncertain, the rule's source says so.
"""

import dataclasses
import json
import math
from typing import Any, Callable

from scaling.hparams import DEEPSEEK

TARGETS = ('lr', 'batch_tokens', 'b2', 'warmup_tokens', 'weight_decay')
QUANTITIES = ('params', 'params_non_embedding', 'flops', 'batch_tokens')  # What a power law is of.
FITTED_SECTION = {'lr': 'lr', 'batch_tokens': 'batch'}  # Target -> hparams.json law.
OLMO_N0 = 108e6  # OLMo-core's reference size (non-embedding parameters) for its LR and batch rules.
OLMO_B2 = (('below', 524288), ('small', 0.99), ('large', 0.95))  # OLMo-core: 0.95 from 524,288 tokens.

DEEPSEEK_SOURCE = ('DeepSeek LLM (2024, arXiv 2401.02954; secondary, REFERENCE.md). Their C is non-embedding '
                   'FLOPs M·D (M = 72 n_layer d² + 12 n_layer d l_seq), well below 6ND at small scale; '
                   'evaluated here at the run\'s 6ND, so a scale reference (as scaling/hparams.py compares)')
PORIAN_SOURCE = ('Porian et al. (2024, arXiv 2406.19146): warmup of about N tokens instead of a fixed long '
                 'warmup; their N counts the last (head) layer')
MAREK_SOURCE = ('Marek et al. (2025, arXiv 2507.07101): hold the token half-life of Adam\'s second moment '
                'fixed across batch sizes; the EMA weight halves after ln(1/2)/ln(b2) steps of B tokens. '
                'No default half-life: the paper\'s recommended value was not verified here')
BY_BATCH_SOURCE = ('OLMo-core (as olmo) from Porian et al. (2024), whose tuning found a larger beta2 '
                   '(0.99-0.999) essential at small batch; the threshold and values are OLMo-core\'s, '
                   'Porian et al.\'s own per-batch table was not verified here')


class RuleError(ValueError):
  """A bad rule for one target; the message names the target and the rule."""


class _Problem(Exception):
  """Raised inside a rule; resolve() turns it into a RuleError naming target and rule."""


@dataclasses.dataclass(frozen=True)
class Run:
  """What a rule may read about one run (units in the module docstring)."""
  params: float
  flops: float
  params_non_embedding: float | None = None
  batch_tokens: float | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
  target: str  # One of TARGETS.
  name: str  # The rule's name in a spec.
  source: str  # Where the form and its constants come from.
  formula: str  # The formula, formatted with the rule's parameters for describe().
  fn: Callable[[Run, dict], float]  # (run, parameters) -> value, in the target's unit.
  required: tuple[str, ...] = ()  # Parameters a spec must give.
  optional: tuple[tuple[str, Any], ...] = ()  # (parameter, default) a spec may give.
  load: Callable[[dict], dict] | None = None  # Parameters -> more parameters (read once per spec).


def _of(run: Run, name: str) -> float:
  """The run's quantity `name` (one of QUANTITIES); a _Problem when the caller did not give it."""
  value = getattr(run, name)
  if value is None:
    raise _Problem(f'needs the run\'s {name}, which was not given')
  return float(value)


def _power(run: Run, q: dict) -> float:
  """k·x^p with x the run's `of` quantity."""
  return q['k'] * _of(run, q['of']) ** q['p']


def _olmo_lr(run: Run, q: dict) -> float:
  """0.0047·(N_ne / 108e6)^(-1/3) / divide. OLMo-core's WSD ladder divides by 2; its older cosine ladder
  by 1 at sequence length 2048, 4 at 4096 and 16 at 8192 (so divide=1, 4 or 16 reproduces it)."""
  return 0.0047 * (_of(run, q['of']) / OLMO_N0) ** (-1 / 3) / q['divide']


def _olmo_batch(run: Run, q: dict) -> float:
  """round(2048·160·(N_ne / 108e6)^(2/3)) tokens: 160 sequences of 2,048 at 108M, before the ladder
  rounds it to a multiple of micro-batch × data-parallel size (hardware-dependent; not done here)."""
  return float(round(2048 * 160 * (_of(run, q['of']) / OLMO_N0) ** (2 / 3)))


def _by_batch(run: Run, q: dict) -> float:
  """small when the batch is below `below` tokens, else large."""
  return q['small'] if _of(run, 'batch_tokens') < q['below'] else q['large']


def _half_life(run: Run, q: dict) -> float:
  """0.5^(B / tokens): the second moment's weight halves after `tokens` tokens at any batch B."""
  return 0.5 ** (_of(run, 'batch_tokens') / q['tokens'])


def _read_fitted(path: str, section: str) -> dict:
  """k and p of the `section` law in the hparams.json at `path` (y_opt = k·C^p, C = 6ND FLOPs)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise _Problem(f'cannot read {path}: {e}') from None
  law = data.get(section) if isinstance(data, dict) else None
  if not isinstance(law, dict):
    skipped = (data.get('skipped') or {}).get(section) if isinstance(data, dict) else None
    raise _Problem(f"{path} has no '{section}' law" + (f' (scaling.hparams skipped it: {skipped})'
                                                       if skipped else ''))
  k, p = law.get('k'), law.get('p')
  if not (_is_number(k) and _is_number(p)) or k <= 0:
    raise _Problem(f"{path}: the '{section}' law needs a positive k and a finite p, got k={k}, p={p}")
  return {'k': float(k), 'p': float(p), 'of': 'flops'}


def _olmo_source(where: str) -> str:
  return (f'allenai/OLMo-core, olmo_core/model_ladder/wsds_chinchilla_run_configurator.py {where}, '
          'citing Porian et al. (2024); its N is non-embedding parameters (ModelLadder.get_num_params)')


def _constant(target: str) -> Rule:
  return Rule(target, 'constant', 'the sweep config', '{value:g}', lambda run, q: q['value'],
              required=('value',))


def _fitted(target: str, unit: str) -> Rule:
  section = FITTED_SECTION[target]
  return Rule(target, 'fitted', f"python -m scaling.hparams (the '{section}' law of its hparams.json, "
              "fitted on this project's own tuning runs)", '{k:.4g}·C^{p:.4f} ' + unit + ' from {path}',
              _power, required=('path',), load=lambda q: _read_fitted(q['path'], section))


def _deepseek(target: str, law: str, unit: str) -> Rule:
  k, p = DEEPSEEK[law]['k'], DEEPSEEK[law]['p']
  return Rule(target, 'deepseek', DEEPSEEK_SOURCE, f'{k}·C^{p} {unit}(C = 6ND FLOPs)',
              lambda run, q: k * _of(run, 'flops') ** p)


def _power_rule(target: str, unit: str) -> Rule:
  return Rule(target, 'power', 'the sweep config', '{k:g}·{of}^{p:g} ' + unit, _power,
              required=('k', 'p'), optional=(('of', 'flops'),))


_LIST = [
    _constant('lr'),
    _deepseek('lr', 'lr', ''),
    Rule('lr', 'olmo', _olmo_source('configure_optimizer'), '0.0047·({of}/1.08e8)^(-1/3)/{divide:g}',
         _olmo_lr, optional=(('divide', 2.0), ('of', 'params_non_embedding'))),
    _power_rule('lr', ''),
    _fitted('lr', ''),
    _constant('batch_tokens'),
    _deepseek('batch_tokens', 'batch', 'tokens '),
    Rule('batch_tokens', 'olmo', _olmo_source('configure_target_batch_size'),
         'round(2048·160·({of}/1.08e8)^(2/3)) tokens', _olmo_batch,
         optional=(('of', 'params_non_embedding'),)),
    _power_rule('batch_tokens', 'tokens'),
    _fitted('batch_tokens', 'tokens'),
    _constant('b2'),
    Rule('b2', 'by_batch', BY_BATCH_SOURCE, '{small:g} if batch < {below:g} tokens else {large:g}',
         _by_batch, optional=OLMO_B2),
    Rule('b2', 'olmo', _olmo_source('configure_optimizer'), '0.99 if batch < 524288 tokens else 0.95',
         lambda run, q: _by_batch(run, dict(OLMO_B2))),
    Rule('b2', 'half_life', MAREK_SOURCE, '0.5^(batch / {tokens:g} tokens)', _half_life,
         required=('tokens',)),
    _constant('warmup_tokens'),
    Rule('warmup_tokens', 'porian', PORIAN_SOURCE, '{multiple:g}·params tokens (N with head)',
         lambda run, q: q['multiple'] * _of(run, 'params'), optional=(('multiple', 1.0),)),
    Rule('warmup_tokens', 'olmo',
         _olmo_source('configure_chinchilla_periods: warmup = 1 token per parameter'),
         'params_non_embedding tokens', lambda run, q: _of(run, 'params_non_embedding')),
    _power_rule('warmup_tokens', 'tokens'),
    _constant('weight_decay'),
    Rule('weight_decay', 'olmo', _olmo_source('configure_optimizer: AdamW weight_decay=0.1, none on '
                                              'the embeddings; chinchax decays all but the norms'),
         '0.1', lambda run, q: 0.1),
]
RULES = {(r.target, r.name): r for r in _LIST}

# Valid values per target: (low, low itself allowed?, high, never allowed). Zero warmup and decay are settings.
RANGES = {'lr': (0, False, math.inf), 'batch_tokens': (0, False, math.inf), 'b2': (0, False, 1),
          'warmup_tokens': (0, True, math.inf), 'weight_decay': (0, True, math.inf)}


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def names(target: str) -> list[str]:
  """The rule names a spec may use for `target`."""
  return [name for t, name in RULES if t == target]


def _parse_one(target: str, rule) -> tuple[Rule, dict]:
  """(Rule, parameters) of one spec entry; RuleError naming the target (and rule) when it is bad."""
  if target not in TARGETS:
    raise RuleError(f"unknown hyper-parameter target '{target}' (known: {', '.join(TARGETS)})")
  if _is_number(rule):
    name, given = 'constant', {'value': float(rule)}
  elif isinstance(rule, str):
    name, given = rule, {}
  elif hasattr(rule, 'items'):  # A dict or a ConfigDict.
    given = dict(rule.items())
    name = given.pop('rule', None)
    if not isinstance(name, str):
      raise RuleError(f"{target}: a mapping rule needs 'rule': one of {', '.join(names(target))}")
  else:
    raise RuleError(f'{target}: a rule is a number, a rule name or a mapping with \'rule\', got {rule!r}')
  if (target, name) not in RULES:
    raise RuleError(f"{target}: unknown rule '{name}' (known: {', '.join(names(target))})")
  r = RULES[target, name]
  return r, _parameters(r, given)


def _parameters(r: Rule, given: dict) -> dict:
  """The rule's parameters: the defaults, overridden by `given`, each checked."""
  where = f"{r.target} (rule '{r.name}')"
  allowed = set(r.required) | {k for k, _ in r.optional}
  unknown = sorted(set(given) - allowed)
  if unknown:
    raise RuleError(f"{where}: unknown parameter(s) {', '.join(unknown)} "
                    f"(takes: {', '.join(sorted(allowed)) or 'none'})")
  missing = [k for k in r.required if k not in given]
  if missing:
    raise RuleError(f"{where}: missing parameter(s) {', '.join(missing)}")
  q = dict(r.optional) | given
  for k, v in q.items():
    if k == 'path':
      ok = isinstance(v, str) and v
    elif k == 'of':
      ok = v in QUANTITIES
    else:
      ok = _is_number(v)
    if not ok:
      expected = {'of': f"one of {', '.join(QUANTITIES)}", 'path': 'a file path'}.get(k, 'a finite number')
      raise RuleError(f'{where}: parameter {k} must be {expected}, got {v!r}')
  if r.load:
    try:
      q |= r.load(q)
    except _Problem as e:
      raise RuleError(f'{where}: {e}') from None
  return q


def parse(spec) -> dict[str, tuple[Rule, dict]]:
  """target -> (Rule, parameters) for every entry of `spec`; RuleError on the first bad one.

  Fitted rules read their hparams.json here, so a sweep can check its spec before any run.
  """
  if not hasattr(spec, 'items'):
    raise RuleError(f'a hyper-parameter spec is a mapping target -> rule, got {spec!r}')
  return {target: _parse_one(target, rule) for target, rule in spec.items()}


def _value(target: str, r: Rule, q: dict, run: Run) -> float:
  """One rule's value for one run, checked against the target's valid range."""
  where = f"{target} (rule '{r.name}')"
  try:
    value = float(r.fn(run, q))
  except _Problem as e:
    raise RuleError(f'{where}: {e}') from None
  except (OverflowError, ZeroDivisionError, ValueError) as e:
    raise RuleError(f'{where}: cannot evaluate ({e})') from None
  lo, lo_ok, hi = RANGES[target]
  if not (math.isfinite(value) and (value > lo or (lo_ok and value == lo)) and value < hi):
    raise RuleError(f"{where}: gave {value:g}, outside {'[' if lo_ok else '('}{lo:g}, {hi:g})")
  return value


def resolve(spec, *, params: float, flops: float, params_non_embedding: float | None = None,
            batch_tokens: float | None = None, seq_len: int | None = None) -> dict[str, float]:
  """Values for the targets named in `spec`, for one run (units in the module docstring).

  spec: a mapping target -> rule, where a rule is a number (constant), a rule name
  (str, e.g. 'deepseek'), or a mapping {'rule': name, ...parameters}.
  params: N with head; flops: the run's C = 6·N·D; params_non_embedding: N without
  embedding and head (the 'olmo' rules need it); batch_tokens: the run's current batch
  in tokens per step. b2 and warmup rules see the resolved batch_tokens when spec has
  one, else this argument. seq_len: when given, a resolved batch_tokens is rounded to a
  whole number of sequences (at least one) before anything reads it.
  Raises RuleError (a ValueError) naming the target and rule for unknown targets or
  names, missing or invalid parameters, unreadable fitted files, or results outside a
  target's range (lr, batch_tokens > 0; 0 < b2 < 1; warmup_tokens, weight_decay >= 0).
  """
  rules = parse(spec)
  run = Run(params, flops, params_non_embedding, batch_tokens)
  out = {}
  if 'batch_tokens' in rules:
    out['batch_tokens'] = _value('batch_tokens', *rules['batch_tokens'], run)
    if seq_len:
      out['batch_tokens'] = float(max(1, round(out['batch_tokens'] / seq_len)) * seq_len)
    run = dataclasses.replace(run, batch_tokens=out['batch_tokens'])
  for target in TARGETS:
    if target in rules and target != 'batch_tokens':
      out[target] = _value(target, *rules[target], run)
  return out


def describe(spec) -> list[str]:
  """One line per target in `spec`: the rule, its formula with its parameters, and its source."""
  lines = []
  for target, (r, q) in parse(spec).items():
    lines.append(f'{target:<13} {r.name:<9} {r.formula.format(**q)}   [{r.source}]')
  return lines


def format_values(values: dict[str, float]) -> str:
  """'lr 0.003 | batch_tokens 65,536 | b2 0.99 | ...': one run's resolved values, for --dry-run."""
  fmt = {'lr': '{:.3g}', 'batch_tokens': '{:,.0f}', 'b2': '{:.4g}', 'warmup_tokens': '{:,.0f}',
         'weight_decay': '{:g}'}
  return ' | '.join(f'{t} {fmt[t].format(values[t])}' for t in TARGETS if t in values)
