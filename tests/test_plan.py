"""The planner: the guide's worked example, the laws, the sweep helper and bad input."""

import json
import os
import subprocess
import sys

import pytest

from scaling import law as law_lib
from scaling import plan

GB = 1e9
WORKED = ['--params', '70B', '--tokens', '1.4T', '--sustained-flops-per-sec', '5e14',
          '--devices', '1000', '--price-per-device-hour', '3']
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _value(p, section, key):
  return p[section][key]['value']


# ---------------------------------------------------------------------------- the guide


def test_worked_example_70b_on_1p4t_tokens():
  p = plan.make_plan(params=70e9, tokens=1.4e12, sustained_flops_per_sec=5e14, devices=1000,
                     price_per_device_hour=3.0)
  flops = _value(p, 'compute', 'flops')
  assert flops == pytest.approx(5.88e23)  # "about 5.9e23".
  assert round(flops, -22) == pytest.approx(5.9e23)
  assert _value(p, 'time', 'device_years') == pytest.approx(37, abs=0.5)  # "about 37 device-years".
  assert 12 <= _value(p, 'time', 'wall_days') <= 16  # "about two weeks" on 1,000 devices (13.6 d).
  assert _value(p, 'cost', 'usd') == pytest.approx(0.98e6, rel=1e-3)  # "on the order of $1M".


def test_worked_example_memory_rows():
  by = {r['stage']: r for r in plan.make_plan(params=7e9, tokens=1.4e11)['memory']}
  assert by['inference weights fp16']['bytes_total'] == pytest.approx(14 * GB)
  assert by['train (pre-training / full fine-tune), data parallel']['bytes_total'] == pytest.approx(112 * GB)
  by = {r['stage']: r for r in plan.make_plan(params=70e9, tokens=1.4e12)['memory']}
  got = [by[f'inference weights {p}']['bytes_total'] / GB for p in ('fp16', 'int8', 'int4')]
  assert got == pytest.approx([140, 70, 35])


def test_cli_worked_example_prints_the_numbers(capsys):
  assert plan.main(WORKED) == 0
  out = capsys.readouterr().out
  assert '5.88e+23' in out and '37.27' in out and '13.61' in out and '$980,000' in out
  assert '2 weight16 + 2 grad16 + 4 fp32 master + 4 Adam m + 4 Adam v' in out


def test_cli_json_matches_table(tmp_path, capsys):
  assert plan.main(WORKED + ['--json']) == 0
  data = json.loads(capsys.readouterr().out)
  assert data['time']['device_years']['value'] == pytest.approx(37.27, abs=0.01)
  assert data['compute']['flops']['how'] == 'C = 6 N D'
  path = tmp_path / 'plan.json'
  assert plan.main(WORKED + ['--json', str(path)]) == 0
  assert json.loads(path.read_text()) == data


# ---------------------------------------------------------------------------- laws


def test_chinchilla_unrounded_gives_40b_at_5p76e23():
  n_opt, d_opt = law_lib.CHINCHILLA.optimum(5.76e23)
  assert n_opt == pytest.approx(40e9, rel=0.02)
  assert 6 * n_opt * d_opt == pytest.approx(5.76e23)
  assert law_lib.CHINCHILLA.frontier()[1] == pytest.approx(0.4565, abs=1e-4)  # Table 2: approach 3 -> 0.46.


def test_rounded_chinchilla_values_move_the_prediction():
  # REFERENCE.md pitfall: the rounded eq. 10 values change N_opt(5.76e23) by ~20% (32B, not 40B).
  rounded = law_lib.Law('rounded', E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
  assert rounded.optimum(5.76e23)[0] < 0.85 * law_lib.CHINCHILLA.optimum(5.76e23)[0]


def test_epoch_exponent():
  assert law_lib.EPOCH.frontier()[1] == pytest.approx(0.513, abs=1e-3)  # Besiroglu et al.: a = 0.513.


def test_twenty_x():
  n, d = law_lib.get_law('20x').optimum(1.2e21)
  assert d == pytest.approx(20 * n)
  assert 6 * n * d == pytest.approx(1.2e21)


@pytest.mark.parametrize('name', ['chinchilla', 'epoch'])
def test_optimum_minimises_loss_on_the_isoflop(name):
  law = law_lib.get_law(name)
  c = 1e21
  n_opt, _ = law.optimum(c)
  at = lambda n: law.loss(n, c / (6 * n))
  assert at(n_opt) < at(n_opt * 1.05) and at(n_opt) < at(n_opt / 1.05)


@pytest.mark.parametrize('name', ['chinchilla', 'epoch', '20x'])
def test_inverse_frontier(name):
  law = law_lib.get_law(name)
  n, d = law.optimum(3e22)
  assert law.tokens_for_params(n) == pytest.approx(d, rel=1e-9)
  assert law.params_for_tokens(d) == pytest.approx(n, rel=1e-9)


def _write(tmp_path, data, name='fit.json'):
  path = tmp_path / name
  path.write_text(data if isinstance(data, str) else json.dumps(data))
  return str(path)


def test_fit_json_law_matches_builtin(tmp_path):
  c = law_lib.CHINCHILLA
  path = _write(tmp_path, {'approach3': {'E': c.E, 'A': c.A, 'B': c.B, 'alpha': c.alpha, 'beta': c.beta,
                                         'ci': {'alpha': [0.3, 0.4]}},
                           'approach1': {'a': 0.5, 'b': 0.5}})
  law = law_lib.get_law(path)
  assert law.optimum(1e21) == pytest.approx(c.optimum(1e21))
  p = plan.make_plan(flops=1e21, law=path)
  assert _value(p, 'compute', 'params') == pytest.approx(c.optimum(1e21)[0])


@pytest.mark.parametrize('content, match', [
    ({'approach1': {'a': 0.5}}, 'no "approach3" block.*found: approach1'),
    ({'approach3': {'E': 1.7, 'A': 400}}, 'lacks B, alpha, beta'),
    ({'approach3': {'E': 1.7, 'A': 400, 'B': 400, 'alpha': -0.3, 'beta': 0.3}}, 'alpha must be a positive'),
    ('not json {', 'not a fit: cannot read it as JSON'),
    ([1, 2], 'not a fit'),
])
def test_bad_fit_json(tmp_path, content, match):
  path = _write(tmp_path, content)
  with pytest.raises(ValueError, match=match) as e:
    law_lib.get_law(path)
  assert path in str(e.value) and '--law' in str(e.value)


def test_unknown_law_name():
  with pytest.raises(ValueError, match='--law.*chinchilla, epoch, 20x'):
    law_lib.get_law('kaplan')


# ---------------------------------------------------------------------------- budget resolution


def test_any_two_give_the_third():
  assert plan.resolve_budget(params=1e9, tokens=2e10)['flops'] == pytest.approx(1.2e20)
  assert plan.resolve_budget(params=1e9, flops=1.2e20)['tokens'] == pytest.approx(2e10)
  assert plan.resolve_budget(tokens=2e10, flops=1.2e20)['params'] == pytest.approx(1e9)
  # All three, rounded but consistent (5.9e23 vs 6ND = 5.88e23): accepted.
  assert plan.resolve_budget(70e9, 1.4e12, 5.9e23)['flops'] == 5.9e23


def test_one_with_a_law():
  b = plan.resolve_budget(params=1e9, law=law_lib.TWENTY_X)
  assert b['tokens'] == pytest.approx(2e10) and b['flops'] == pytest.approx(1.2e20)
  b = plan.resolve_budget(tokens=2e10, law=law_lib.TWENTY_X)
  assert b['params'] == pytest.approx(1e9)


def test_n_from_model_shape(tmp_path):
  from scaling import memory
  shape = memory.ModelShape(2, 128, 4, 4, 512, vocab_size=2048)
  p = plan.make_plan(tokens=1e8, shape=shape)
  assert _value(p, 'compute', 'params') == memory.shape_param_count(shape)
  # With --flops and --law, the law decides N; the shape only feeds LoRA/KV (and a note says they differ).
  p = plan.make_plan(flops=1e21, law='chinchilla', shape=shape, context=128)
  assert _value(p, 'compute', 'params') == pytest.approx(law_lib.CHINCHILLA.optimum(1e21)[0])
  assert any('the model shape has' in n for n in p['notes'])
  assert any(r['stage'].startswith('KV cache') for r in p['memory'])


@pytest.mark.parametrize('kwargs, match', [
    (dict(params=70e9, tokens=1.4e12, flops=1e24), 'inconsistent --params, --tokens, --flops'),
    (dict(flops=1e21), 'give two of --params, --tokens, --flops'),
    (dict(), 'give two'),
    (dict(params=0.0, tokens=1e9), '--params must be > 0'),
    (dict(params=1e9, tokens=-1e9), '--tokens must be > 0'),
    (dict(params=1e9, tokens=1e9, devices=0, sustained_flops_per_sec=1e14), '--devices must be > 0'),
    (dict(params=1e9, tokens=1e9, hardware_name='tpu9'), '--hardware.*known: a100, h100'),
    (dict(params=1e9, tokens=1e9, hardware_name='h100', mfu=1.5), '--mfu'),
    (dict(params=1e9, tokens=1e9, mfu=0.4), '--mfu needs a peak'),
    (dict(params=1e9, tokens=1e9, hardware_name='h100', mfu=0.4, sustained_flops_per_sec=1e14), 'not both'),
    (dict(params=1e9, tokens=1e9, flops_per_sec=1e14, sustained_flops_per_sec=2e14), 'exceeds the peak'),
    (dict(params=1e9, tokens=1e9, price_per_device_hour=-3.0), '--price-per-device-hour'),
])
def test_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    plan.make_plan(**kwargs)


def test_hardware_table_and_mfu():
  p = plan.make_plan(params=1e9, tokens=2e10, hardware_name='H100', mfu=0.5, devices=8)
  assert _value(p, 'hardware', 'sustained') == pytest.approx(0.5 * 989e12)
  assert _value(p, 'time', 'wall_days') == pytest.approx(1.2e20 / (0.5 * 989e12) / 8 / 86400)
  p = plan.make_plan(params=1e9, tokens=2e10, hardware_name='h100')
  assert 'assumed default' in p['hardware']['mfu']['how']  # The default MFU is said, not hidden.


# ---------------------------------------------------------------------------- sweep helper


def test_isoflop_plan():
  out = plan.isoflop_plan(1e19, 'chinchilla', n_sizes=5, span=4.0)
  n_opt, d_opt = law_lib.CHINCHILLA.optimum(1e19)
  assert out['n_opt'] == pytest.approx(n_opt) and out['d_opt'] == pytest.approx(d_opt)
  assert out['sizes'][2] == pytest.approx(n_opt)
  assert out['sizes'][0] == pytest.approx(n_opt / 4) and out['sizes'][-1] == pytest.approx(n_opt * 4)
  ratios = [b / a for a, b in zip(out['sizes'], out['sizes'][1:])]
  assert ratios == pytest.approx([2.0] * 4)  # Even in log N.
  assert all(6 * n * d == pytest.approx(1e19) for n, d in zip(out['sizes'], out['tokens']))
  assert plan.isoflop_plan(1e19, law_lib.EPOCH, n_sizes=1)['sizes'] == pytest.approx([law_lib.EPOCH.optimum(1e19)[0]])
  with pytest.raises(ValueError, match='span'):
    plan.isoflop_plan(1e19, '20x', span=0.5)
  with pytest.raises(ValueError, match='n_sizes'):
    plan.isoflop_plan(1e19, '20x', n_sizes=0)
  with pytest.raises(ValueError, match='--flops'):
    plan.isoflop_plan(0.0, '20x')


# ---------------------------------------------------------------------------- CLI


def test_cli_config_shape(capsys):
  assert plan.main(['--flops', '1e21', '--law', 'chinchilla', '--config', os.path.join(ROOT, 'configs', 'base.py'),
                    '--hardware', 'h100', '--devices', '8']) == 0
  out = capsys.readouterr().out
  assert 'LoRA r=16' in out and 'QLoRA' in out and 'KV cache, context 128 x batch 1' in out


def test_cli_without_shape_says_lora_needs_one(capsys):
  assert plan.main(['--flops', '1e21', '--law', 'chinchilla']) == 0
  out = capsys.readouterr().out
  assert 'LoRA, QLoRA and KV-cache rows need a model shape' in out
  assert '2.217e+09' in out  # N_opt(1e21) under unrounded Chinchilla.


@pytest.mark.parametrize('argv, match', [
    (['--params', '70B', '--tokens', '1.4T', '--flops', '1e24'], 'inconsistent'),
    (['--params', '70B', '--tokens', '1.4T', '--hardware', 'nope'], 'known: a100'),
    (['--flops', '1e21', '--law', 'missing.json'], 'no such file'),
    (['--flops', '1e21', '--n-layers', '4'], '--d-model'),
    (['--params', '1B', '--tokens', '1T', '--config', 'nope.py'], '--config'),
    (['--params', '1B', '--tokens', '1T', '--n-layers', '2', '--d-model', '64', '--n-heads', '4',
      '--d-ff', '64', '--lora-targets', 'q,x'], '--lora-targets'),
])
def test_cli_bad_input_exits_2_without_traceback(argv, match, capsys):
  assert plan.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and 'Traceback' not in err
  assert match in err


def test_cli_bad_config_file(tmp_path, capsys):
  path = _write(tmp_path, 'x = 1\n', 'cfg.py')
  assert plan.main(['--params', '1B', '--tokens', '1T', '--config', path]) == 2
  assert 'has no get_config()' in capsys.readouterr().err


def test_module_entry_point_exit_status():
  run = lambda *a: subprocess.run([sys.executable, '-m', 'scaling.plan', *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=60)
  ok = run(*WORKED)
  assert ok.returncode == 0 and '37.27' in ok.stdout
  bad = run('--params', '70B', '--tokens', '1.4T', '--hardware', 'tpu9')
  assert bad.returncode == 2 and 'Traceback' not in bad.stderr and '--hardware' in bad.stderr
