"""launch.post_study and launch.post_report: phases, skip and resume, blocked runs, the tables,
bad input; with a fake interpreter that plays `python -m train` and `python -m train.post`."""

import json
import math
import os
import stat
import sys
import textwrap

import numpy as np
import pytest

from launch import post_report, post_study

from conftest import run_cli_error

# Two sizes, two seeds; `full` and `lora_r4` from the base, `more` from `full`.
STUDY = '''
import ml_collections
from configs.sweeps import post_common
from configs.sweeps.post_common import arm

def get_config():
  c = post_common.get_config()
  c.name = 'toy'
  c.question = 'does the toy gap shrink?'
  c.base_config = 'configs/base.py'
  c.base_overrides = ml_collections.ConfigDict({{'model': {{'vocab_size': 64, 'n_layers': 1}}}})
  c.sizes = ({{'name': 'd16', 'd_model': 16, 'n_heads': 2, 'n_kv_heads': 2, 'd_ff': 32}},
             {{'name': 'd64', 'd_model': 64, 'n_heads': 2, 'n_kv_heads': 2, 'd_ff': 128}})
  c.seeds = (0, 1)
  c.arms = (arm('full', method='sft', steps={steps}),
            arm('lora_r4', method='sft', steps={steps}, peft='lora', lora_rank=4),
            arm('more', start='full', method='dpo', steps=5))
  c.baseline = 'full'
  {extra}
  return c
'''


def write_study(tmp_path, steps=10, extra=''):
  path = tmp_path / 'study.py'
  path.write_text(STUDY.format(steps=steps, extra=extra))
  return str(path)


def fake_python(tmp_path, fail_marker='NONE'):
  """Plays both commands: writes config.json from the flags and a summary.json whose exact match
  is d_model / 1000 + seed / 100 - 0.1 / lora_rank (+ 0.05 for dpo); records each call."""
  path = tmp_path / 'fake_python'
  path.write_text(textwrap.dedent(f'''\
      #!{sys.executable}
      import json, os, sys
      args = sys.argv[1:]
      workdir = args[args.index('--workdir') + 1]
      with open({str(tmp_path / 'calls.txt')!r}, 'a') as f:
        f.write(os.path.basename(workdir) + '\\n')
      if {fail_marker!r} in workdir:
        print('boom: simulated failure'); sys.exit(3)
      flags = dict(a[len('--config.'):].split('=', 1) for a in args if a.startswith('--config.'))
      config = {{}}
      for key, value in flags.items():
        *parents, leaf = key.split('.')
        node = config
        for p in parents:
          node = node.setdefault(p, {{}})
        node[leaf] = value
      os.makedirs(workdir, exist_ok=True)
      summary = {{'eval_loss': 2.0}}
      if args[1] == 'train.post':
        p = config['post']
        with open(os.path.join(p['base'], 'config.json')) as f:
          config['model'] = json.load(f)['model']
        em = int(config['model']['d_model']) / 1000 + int(p['seed']) / 100
        em -= 0.1 / int(p['lora_rank']) if p.get('peft') == 'lora' else 0.0
        em += 0.05 if p['method'] == 'dpo' else 0.0
        summary = {{'exact_match': em, 'mean_reward': 2 * em, 'steps': int(p['steps']),
                    'tokens': 100 * int(p['steps']), 'trainable': {{'params': 7}}}}
      json.dump(config, open(os.path.join(workdir, 'config.json'), 'w'))
      json.dump(summary, open(os.path.join(workdir, 'summary.json'), 'w'))
      '''))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def _calls(tmp_path):
  path = tmp_path / 'calls.txt'
  names = path.read_text().split() if path.exists() else []
  if path.exists():
    path.unlink()
  return names


def _main(tmp_path, cfg, python):
  """(exit status, log) of the toy study with this interpreter, 4 runs at a time."""
  lines = []
  rc = post_study.main(['--study', 'toy', '--config', cfg, '--workdir', str(tmp_path / 'study'),
                        '--bases', str(tmp_path / 'bases'), '--python', python, '--parallel', '4'],
                       log=lines.append)
  return rc, '\n'.join(lines)


def test_a_study_runs_in_phases_tabulates_and_skips_on_rerun(tmp_path):
  cfg = write_study(tmp_path)
  rc, text = _main(tmp_path, cfg, fake_python(tmp_path))
  assert rc == 0, text
  calls = _calls(tmp_path)
  assert set(calls[:2]) == {'base_d16', 'base_d64'} and len(calls) == 2 + 2 * 2 * 3
  assert calls.index('more_d16_s0') > calls.index('full_d64_s1')  # Phase 2 after phase 1.
  assert (tmp_path / 'bases' / 'base_d16' / 'summary.json').exists()
  study = tmp_path / 'study'
  result = json.loads((study / 'study.json').read_text())
  assert [z['name'] for z in result['sizes']] == ['d16', 'd64']
  assert result['sizes'][0]['N'] < result['sizes'][1]['N']
  full, lora = result['table']['exact_match']['full'], result['table']['exact_match']['lora_r4']
  assert full['d64']['n'] == 2 and full['d64']['mean'] == pytest.approx(0.064 + 0.005)
  assert full['d64']['sd'] == pytest.approx(0.01 / math.sqrt(2))  # Seeds 0 and 1: 0.01 apart.
  assert lora['d16']['mean'] == pytest.approx(0.016 + 0.005 - 0.025)
  gap = result['delta']['exact_match']['lora_r4']
  assert gap['sizes']['d16']['mean'] == pytest.approx(-0.025) and gap['sizes']['d16']['sd'] == 0
  assert gap['slope']['per_decade'] == pytest.approx(0.0, abs=1e-12) and gap['slope']['points'] == 4
  more = result['delta']['mean_reward']['more']  # dpo from full: +0.05 exact, +0.1 reward.
  assert more['sizes']['d64']['mean'] == pytest.approx(0.1)
  rec = next(r for r in result['runs'] if r['name'] == 'lora_r4_d64_s1')
  assert (rec['arm'], rec['size'], rec['seed'], rec['state'], rec['trained']) == (
      'lora_r4', 'd64', 1, 'ok', 7)
  md = (study / 'study.md').read_text()
  assert 'does the toy gap shrink?' in md and '| lora_r4 | ' in md and 'exact_match: arm − full' in md
  assert '0.069 ± 0.007 (2)' in md and '-0.025 ± 0.000 (2)' in md
  assert (study / 'study.png').stat().st_size > 1000
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(study / 'study'))

  rc, text = _main(tmp_path, cfg, fake_python(tmp_path))  # Everything finished: nothing runs.
  assert rc == 0 and _calls(tmp_path) == [] and 'skip' in text
  assert json.loads((study / 'study.json').read_text())['table'] == result['table']


def test_a_failed_run_blocks_what_starts_from_it_and_a_rerun_resumes(tmp_path):
  cfg = write_study(tmp_path)
  rc, text = _main(tmp_path, cfg, fake_python(tmp_path, fail_marker='full_d16_s0'))
  assert rc == 1 and 'blocked more_d16_s0: full_d16_s0 did not finish' in text
  assert 'more_d16_s0' not in _calls(tmp_path)
  result = json.loads((tmp_path / 'study' / 'study.json').read_text())
  states = {r['name']: r['state'] for r in result['runs']}
  assert states['full_d16_s0'] == 'failed' and states['more_d16_s0'] == 'blocked'
  assert states['more_d16_s1'] == 'ok' and result['table']['exact_match']['full']['d16']['n'] == 1
  rc, _ = _main(tmp_path, cfg, fake_python(tmp_path))
  assert rc == 0 and _calls(tmp_path) == ['full_d16_s0', 'more_d16_s0']


def test_a_folder_of_another_run_is_refused_before_anything_starts(tmp_path, capsys):
  assert _main(tmp_path, write_study(tmp_path), fake_python(tmp_path))[0] == 0
  _calls(tmp_path)
  err = run_cli_error(lambda argv: _main(tmp_path, write_study(tmp_path, steps=20),
                                         fake_python(tmp_path))[0], [], capsys)
  assert 'full_d16_s0 holds another run' in err and 'post.steps is' in err
  assert _calls(tmp_path) == []


@pytest.mark.parametrize('extra, message', [
    ("c.arms = c.arms + (arm('x', start='nope'),)", "start='nope' must be base or an earlier arm"),
    ("c.baseline = 'nope'", "baseline='nope': not an arm"),
    ("c.arms = (arm('full', teacher=True),)", 'teacher=True but the study has no teacher block'),
    ("c.arms = (arm('full', seed=3),)", 'post.seed are set by the study runner'),
    ("c.arms = (arm('full', lora_rnak=3),)", "unknown config key 'post.lora_rnak'"),
    ("c.seeds = ()", 'seeds=(): need distinct integers'),
])
def test_bad_study_configs_are_refused_naming_the_key(tmp_path, capsys, extra, message):
  cfg = write_study(tmp_path, extra=extra)
  err = run_cli_error(lambda argv: _main(tmp_path, cfg, fake_python(tmp_path))[0], [], capsys)
  assert message in err


def test_an_unknown_study_exits_2_naming_the_studies(tmp_path, capsys):
  err = run_cli_error(post_study.main, ['--study', 'lora', '--workdir', str(tmp_path)], capsys)
  assert "--study 'lora': no such study" in err
  assert 'distill, grpo, lora_rank, prefs' in err


@pytest.mark.parametrize('study, n_runs, phases', [
    ('lora_rank', 3 + 3 * 3 * 5, 2), ('prefs', 3 + 3 * 2 * 6, 3), ('grpo', 3 + 3 * 3 * 3, 3),
    ('distill', 3 + 1 + 3 * 3 * 3, 3)])
def test_the_study_configs_expand_into_valid_runs(tmp_path, study, n_runs, phases):
  s = post_study.load_study(study)
  assert post_study.study_errors(s) == [] and s.name == study
  runs = post_study.expand_study(s, str(tmp_path / 'w'), str(tmp_path / 'b'))  # Keys checked.
  assert len(runs) == n_runs and max(r.depth for r in runs) + 1 == phases
  assert [r.N for r in runs if r.kind == 'base'] == sorted(r.N for r in runs if r.kind == 'base')
  if study == 'distill':
    text = [r for r in runs if r.arm == 'distill_text'][0]
    assert '--config.post.distill_source=text' in text.argv
    assert f'--config.post.teacher={tmp_path}/w/teacher_d128_s0' in text.argv


def test_slopes_and_stats_by_hand():
  assert post_report._stats([1.0, 3.0, None]) == {'n': 2, 'mean': 2.0, 'sd': math.sqrt(2)}
  assert post_report._stats([]) == {'n': 0, 'mean': None, 'sd': None}
  line = post_report._slope([(4.0, 1.0), (5.0, 3.0), (6.0, 5.0)])
  assert line['per_decade'] == pytest.approx(2.0) and line['se'] == pytest.approx(0.0, abs=1e-9)
  noisy = post_report._slope([(4.0, 0.0), (4.0, 1.0), (5.0, 1.0), (5.0, 2.0)])
  x, y = np.array([4, 4, 5, 5.]), np.array([0, 1, 1, 2.])
  se = math.sqrt(np.sum((y - (x - 3.5)) ** 2) / 2 / np.sum((x - 4.5) ** 2))
  assert noisy['per_decade'] == pytest.approx(1.0) and noisy['se'] == pytest.approx(se)
  assert post_report._slope([(4.0, 1.0)])['per_decade'] is None
