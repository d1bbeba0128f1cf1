"""scaling.rules: each rule against hand-computed values, spec parsing, batch dependence, errors."""

import json
import math

import ml_collections
import pytest

from scaling import rules
from scaling.rules import RuleError, resolve

N0 = 108e6  # OLMo-core's reference size: its rules are round numbers there and at 8 x N0.


def one(target, rule, **run):
  """The value of one target's rule for a run (params 1e6, flops 1e18 unless given)."""
  run = {'params': 1e6, 'flops': 1e18} | run
  return resolve({target: rule}, **run)[target]


# ---- lr.

def test_lr_constant_deepseek_and_power():
  assert one('lr', 3e-3) == 3e-3
  # DeepSeek: 0.3118 C^-0.125 at C = 1e18: 0.3118 * 10^(-2.25) = 0.3118 * 0.0056234 = 1.75338e-3.
  assert one('lr', 'deepseek', flops=1e18) == pytest.approx(1.75338e-3, rel=1e-5)
  # power of flops by default: 0.3 * (1e16)^-0.125 = 0.3 * 10^-2 = 3e-3.
  assert one('lr', {'rule': 'power', 'k': 0.3, 'p': -0.125}, flops=1e16) == pytest.approx(3e-3)
  # power of params: 2 * (1e6)^-0.5 = 2e-3.
  assert one('lr', {'rule': 'power', 'k': 2, 'p': -0.5, 'of': 'params'}) == pytest.approx(2e-3)


def test_lr_olmo():
  # 0.0047 (N_ne / 108M)^(-1/3) / 2: at 108M 0.0047 / 2 = 0.00235; at 8 x 108M the cube root halves it again.
  assert one('lr', 'olmo', params_non_embedding=N0) == pytest.approx(0.00235)
  assert one('lr', 'olmo', params_non_embedding=8 * N0) == pytest.approx(0.001175)
  # divide=1: OLMo-core's older cosine ladder, no halving.
  assert one('lr', {'rule': 'olmo', 'divide': 1}, params_non_embedding=N0) == pytest.approx(0.0047)


# ---- batch_tokens.

def test_batch_deepseek_and_olmo():
  # DeepSeek: 0.2920 C^0.3271 at C = 1e18: 0.2920 * 10^5.8878 = 0.2920 * 772,325 = 225,519 tokens.
  assert one('batch_tokens', 'deepseek', flops=1e18) == pytest.approx(0.2920 * 10 ** 5.8878, rel=1e-9)
  assert one('batch_tokens', 'deepseek', flops=1e18) == pytest.approx(225_519, rel=1e-5)
  # OLMo: 2048 * 160 (N_ne / 108M)^(2/3): 327,680 at 108M; x 8^(2/3) = 4 at 8 x 108M: 1,310,720.
  assert one('batch_tokens', 'olmo', params_non_embedding=N0) == 327_680
  assert one('batch_tokens', 'olmo', params_non_embedding=8 * N0) == 1_310_720


def test_batch_rounds_to_whole_sequences_when_seq_len_is_given():
  # DeepSeek at C = 1e15: 0.2920 * 10^4.9065 = 0.2920 * 80,631 = 23,544 tokens = 367.9 windows of 64
  # -> 368 x 64 = 23,552.
  assert one('batch_tokens', 'deepseek', flops=1e15) == pytest.approx(23_544.1, abs=0.5)
  assert one('batch_tokens', 'deepseek', flops=1e15, seq_len=64) == 23_552
  assert one('batch_tokens', 10, seq_len=64) == 64  # At least one sequence.


# ---- b2, warmup, weight decay.

def test_b2_by_batch_and_olmo():
  assert one('b2', 'olmo', batch_tokens=327_680) == 0.99
  assert one('b2', 'olmo', batch_tokens=524_288) == 0.95  # OLMo-core: 0.95 from 524,288 tokens up.
  rule = {'rule': 'by_batch', 'below': 1000, 'small': 0.999, 'large': 0.98}
  assert one('b2', rule, batch_tokens=999) == 0.999
  assert one('b2', rule, batch_tokens=1000) == 0.98
  assert one('b2', 'by_batch', batch_tokens=65_536) == 0.99  # Defaults are OLMo-core's.


def test_b2_half_life():
  # 0.5^(B / t): B = t/2 -> sqrt(0.5) = 0.70711; B = t/100 -> 0.5^0.01 = exp(-0.0069315) = 0.99309.
  assert one('b2', {'rule': 'half_life', 'tokens': 1e6}, batch_tokens=5e5) == pytest.approx(0.7071068)
  b2 = one('b2', {'rule': 'half_life', 'tokens': 1e6}, batch_tokens=1e4)
  assert b2 == pytest.approx(0.9930925, rel=1e-7)
  # The definition: the weight halves after ln(1/2)/ln(b2) steps of B tokens = 1e6 tokens.
  assert math.log(0.5) / math.log(b2) * 1e4 == pytest.approx(1e6)


def test_b2_and_warmup_use_the_resolved_batch_else_the_runs():
  run = dict(params=1e9, flops=1e21, params_non_embedding=8 * N0, batch_tokens=1000)
  spec = {'b2': 'olmo', 'batch_tokens': 'olmo', 'warmup_tokens': {'rule': 'power', 'k': 3, 'p': 1,
                                                                  'of': 'batch_tokens'}}
  out = resolve(spec, **run)
  assert out['batch_tokens'] == 1_310_720 and out['b2'] == 0.95  # Not the run's 1,000 tokens.
  assert out['warmup_tokens'] == 3 * 1_310_720
  out = resolve({'b2': 'olmo', 'warmup_tokens': spec['warmup_tokens']}, **run)
  assert out == {'b2': 0.99, 'warmup_tokens': 3000}  # No batch rule: the run's own batch.
  # The rounded batch is the one b2 sees: 524,100 / 512 = 1023.6 -> 1,024 x 512 = 524,288 -> 0.95.
  out = resolve({'batch_tokens': 524_100, 'b2': 'olmo'}, params=1e6, flops=1e18, seq_len=512)
  assert out == {'batch_tokens': 524_288, 'b2': 0.95}


def test_warmup_and_weight_decay():
  assert one('warmup_tokens', 'porian', params=3e7) == 3e7  # Porian: N tokens, N with head.
  assert one('warmup_tokens', {'rule': 'porian', 'multiple': 2}, params=3e7) == 6e7
  assert one('warmup_tokens', 'olmo', params=3e7, params_non_embedding=2e7) == 2e7
  assert one('warmup_tokens', 0) == 0  # Zero warmup is a setting, not an error.
  assert one('weight_decay', 'olmo') == 0.1
  assert one('weight_decay', 0) == 0


# ---- fitted.

def _hparams_json(tmp_path, data):
  path = tmp_path / 'hparams.json'
  path.write_text(json.dumps(data))
  return str(path)


def test_fitted_reads_hparams_json(tmp_path):
  path = _hparams_json(tmp_path, {'lr': {'k': 0.5, 'p': -0.1, 'unit': 'peak learning rate'},
                                  'batch': {'k': 0.01, 'p': 0.5}, 'skipped': {}})
  spec = {'lr': {'rule': 'fitted', 'path': path}, 'batch_tokens': {'rule': 'fitted', 'path': path}}
  out = resolve(spec, params=1e8, flops=1e20)
  # lr: 0.5 * (1e20)^-0.1 = 0.5 * 10^-2 = 5e-3; batch: 0.01 * (1e20)^0.5 = 0.01 * 1e10 = 1e8 tokens.
  assert out['lr'] == pytest.approx(5e-3)
  assert out['batch_tokens'] == pytest.approx(1e8)
  lines = rules.describe(spec)
  assert '0.5·C^-0.1000' in lines[0] and path in lines[0] and 'scaling.hparams' in lines[0]


@pytest.mark.parametrize('content, needle', [
    (None, 'cannot read'),
    ('{not json', 'cannot read'),
    (json.dumps({'batch': {'k': 1, 'p': 1}, 'skipped': {'lr': 'fewer than 3 LRs'}}), 'fewer than 3 LRs'),
    (json.dumps({'lr': {'k': None, 'p': -0.1}}), 'positive k'),
    (json.dumps([1, 2]), "no 'lr' law"),
])
def test_fitted_bad_files(tmp_path, content, needle):
  path = tmp_path / 'hparams.json'
  if content is not None:
    path.write_text(content)
  with pytest.raises(RuleError, match="lr \\(rule 'fitted'\\)") as e:
    rules.parse({'lr': {'rule': 'fitted', 'path': str(path)}})
  assert needle in str(e.value)


# ---- spec parsing.

def test_spec_forms_number_name_mapping_and_configdict():
  run = dict(params=1e6, flops=1e18, params_non_embedding=N0)
  assert one('lr', 3) == 3.0  # An int is a constant too.
  assert resolve({'lr': {'rule': 'constant', 'value': 1e-3}}, **run) == {'lr': 1e-3}
  spec = ml_collections.ConfigDict({'lr': {'rule': 'olmo', 'divide': 1.0}, 'b2': 0.98})
  assert resolve(spec, **run) == {'lr': pytest.approx(0.0047), 'b2': 0.98}
  assert resolve({}, **run) == {}


def test_describe_one_line_per_target_with_formula_and_source():
  lines = rules.describe({'lr': 'deepseek', 'b2': {'rule': 'half_life', 'tokens': 2e6}, 'weight_decay': 0.1})
  assert len(lines) == 3
  assert lines[0].startswith('lr') and '0.3118·C^-0.125' in lines[0] and 'DeepSeek LLM' in lines[0]
  assert '2e+06' in lines[1] and 'Marek' in lines[1]
  assert lines[2].split()[:3] == ['weight_decay', 'constant', '0.1']


def test_every_target_has_constant_and_every_rule_a_source():
  for target in rules.TARGETS:
    assert 'constant' in rules.names(target)
  assert {r.target for r in rules.RULES.values()} == set(rules.TARGETS)
  assert all(r.source and r.formula for r in rules.RULES.values())
  assert rules.format_values({'b2': 0.99, 'lr': 0.003, 'batch_tokens': 65536}) == \
      'lr 0.003 | batch_tokens 65,536 | b2 0.99'


# ---- errors: each a RuleError (a ValueError) naming the target.

@pytest.mark.parametrize('spec, needle', [
    ({'momentum': 0.9}, "unknown hyper-parameter target 'momentum'"),
    ({'lr': 'chinchilla'}, "lr: unknown rule 'chinchilla' (known: constant, deepseek, olmo, power, fitted)"),
    ({'lr': {'k': 1}}, "lr: a mapping rule needs 'rule'"),
    ({'lr': [1e-3]}, 'lr: a rule is a number'),
    ({'lr': True}, 'lr: a rule is a number'),
    ({'lr': {'rule': 'power', 'k': 1}}, "lr (rule 'power'): missing parameter(s) p"),
    ({'b2': 'half_life'}, "b2 (rule 'half_life'): missing parameter(s) tokens"),
    ({'lr': {'rule': 'olmo', 'scale': 2}}, "lr (rule 'olmo'): unknown parameter(s) scale"),
    ({'lr': {'rule': 'deepseek', 'k': 2}}, "lr (rule 'deepseek'): unknown parameter(s) k"),
    ({'lr': {'rule': 'power', 'k': 1, 'p': 1, 'of': 'steps'}}, "lr (rule 'power'): parameter of must be"),
    ({'lr': {'rule': 'power', 'k': 'big', 'p': 1}}, "lr (rule 'power'): parameter k must be a finite"),
    ({'lr': {'rule': 'fitted', 'path': ''}}, "lr (rule 'fitted'): parameter path must be a file path"),
    ({'lr': float('nan')}, 'lr: a rule is a number'),
    ({'lr': {'rule': 'power', 'k': -1, 'p': 1}}, "lr (rule 'power'): gave -1e+18, outside (0, inf)"),
    ({'batch_tokens': 0}, "batch_tokens (rule 'constant'): gave 0, outside (0, inf)"),
    ({'b2': 1.0}, "b2 (rule 'constant'): gave 1, outside (0, 1)"),
    ({'warmup_tokens': -5}, "warmup_tokens (rule 'constant'): gave -5, outside [0, inf)"),
    ({'lr': 'olmo'}, "lr (rule 'olmo'): needs the run's params_non_embedding, which was not given"),
    ({'b2': 'olmo'}, "b2 (rule 'olmo'): needs the run's batch_tokens"),
    ({'lr': {'rule': 'power', 'k': 1, 'p': 1e6}}, "lr (rule 'power'): cannot evaluate"),
])
def test_errors_name_the_target_and_rule(spec, needle):
  with pytest.raises(RuleError) as e:
    resolve(spec, params=1e6, flops=1e18)
  assert isinstance(e.value, ValueError)
  assert needle in str(e.value)


def test_a_spec_must_be_a_mapping():
  with pytest.raises(RuleError, match='mapping target -> rule'):
    rules.describe(['lr', 'olmo'])
