"""launch.sweep: expansion into runs, dry run, the local pool (skip, resume, failures, preemptions, the status
file), bad input, TPU commands, Ray cluster configs (the Ray backend itself: test_ray_sweep.py)."""

import json
import os
import stat
import sys
import textwrap

import pytest
import yaml  # PyYAML comes with ml_collections: parses the Ray cluster configs of the dry run.

from launch import expand as expand_lib
from launch import ledger
from launch import ray_backend
from launch import ray_cluster
from launch import sweep as sweep_lib
from launch import tpu as tpu_lib
from model.counts import param_counts
from scaling import plan as plan_lib

DEMO = 'configs/sweeps/isoflop_cpu.py'

# A synthetic-data sweep of very small models: real runs take seconds.
TINY_SWEEP = '''
import ml_collections
from configs.sweeps import isoflop_cpu

def get_config():
  c = isoflop_cpu.get_config()
  c.base_config = 'configs/base.py'
  c.overrides = ml_collections.ConfigDict({{
      'data': {{'source': 'synthetic', 'seq_len': 32, 'global_batch_size': 16,
                'synthetic_tokens': 40_000}},
      'model': {{'vocab_size': 64}},
      'train': {{'eval_batches': 2, 'peak_flops': 1e11}},
  }})
  c.budgets = {budgets}
  c.n_sizes = {n_sizes}
  c.law = '20x'
  c.span = 2.0
  c.min_steps = {min_steps}
  c.shape.update(dict(d_multiple=4, head_dim=8, tolerance=0.15))
  c.evals_per_run = 2
  c.checkpoints_per_run = 1
  c.cooldowns_per_size = 0  # The demo's branches and target are tested on their own below.
  del c['target']
  c.fit.bootstrap = 0
  c.fit.plots = False
  {extra}
  return c
'''


def write_sweep(tmp_path, budgets=(2e9, 6e9), n_sizes=3, min_steps=20, extra='', name='sweep.py'):
  path = tmp_path / name
  path.write_text(TINY_SWEEP.format(budgets=budgets, n_sizes=n_sizes, min_steps=min_steps,
                                    extra=extra))
  return str(path)


def fake_python(tmp_path, fail_marker='NONE'):
  """An 'interpreter' that plays `python -m train`: writes a plausible summary.json.

  It fails (exit 3, after printing a message) for a workdir containing
  `fail_marker`, and records each call in calls.txt.
  """
  path = tmp_path / 'fake_python'
  path.write_text(textwrap.dedent(f'''\
      #!{sys.executable}
      import json, math, os, sys
      args = sys.argv[1:]
      workdir = args[args.index('--workdir') + 1]
      with open({str(tmp_path / 'calls.txt')!r}, 'a') as f:
        f.write(workdir + '\\n')
      if {fail_marker!r} in workdir:
        print('boom: simulated failure'); sys.exit(3)
      o = dict(a.split('=', 1) for a in args if a.startswith('--config.'))
      L, D = int(o['--config.model.n_layers']), int(o['--config.model.d_model'])
      F, C = int(o['--config.model.d_ff']), float(o['--config.train.flops'])
      N = L * (4 * D * D + 3 * D * F + 2 * D) + D + 64 * D
      T = C / (6 * N)
      loss = 1.5 + 400 / N ** 0.35 + 400 / T ** 0.3
      summary = dict(params_with_head=N, tokens=T, flops_6nd=6 * N * T)
      if '--config.optim.lr' in o:  # A tuning grid: the loss is a parabola in ln LR, optimum C^-0.2.
        lr, bs = float(o['--config.optim.lr']), int(o.get('--config.data.global_batch_size', 16))
        loss += 0.05 * math.log(lr / (0.36 * C ** -0.2)) ** 2
        summary['config'] = dict(optim=dict(lr=lr), data=dict(global_batch_size=bs, seq_len=32))
      os.makedirs(workdir, exist_ok=True)
      json.dump(dict(summary, eval_loss=loss), open(os.path.join(workdir, 'summary.json'), 'w'))
      '''))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


# ---------------------------------------------------------------------------- expansion


def test_demo_sweep_expands_into_planned_runs():
  cfg = expand_lib.load_config_file(DEMO)
  sweep = expand_lib.expand(cfg)
  own = [r for r in sweep.runs if not r.parent]
  assert len(own) == len(cfg.budgets) * cfg.n_sizes
  assert sorted({r.budget for r in sweep.runs}) == sorted(cfg.budgets)
  assert len(sweep.runs) - len(own) == 14  # One branch is too short for min_steps.
  assert sweep.target_flops == 4 * max(cfg.budgets)
  for budget in cfg.budgets:
    runs = [r for r in own if r.budget == budget]
    plan = plan_lib.isoflop_plan(budget, cfg.law, cfg.n_sizes, cfg.span)
    assert [r.target_params for r in runs] == pytest.approx(plan['sizes'])
    for r in runs:
      assert r.params == pytest.approx(r.target_params, rel=cfg.shape.tolerance)
      # D = C / (6 N), rounded up to whole steps.
      assert r.tokens >= budget / (6 * r.params) > r.tokens - r.tokens_per_step
      assert r.steps >= cfg.min_steps
      sh = r.shape
      assert sh['d_model'] % sh['n_heads'] == 0 and (sh['d_model'] // sh['n_heads']) % 2 == 0
      assert sh['n_heads'] % sh['n_kv_heads'] == 0
      assert r.config.train.flops == budget and r.config.train.steps == 0
      assert r.overrides['train.flops'] == budget
      assert r.name.startswith(expand_lib.budget_label(budget) + '_')
  assert len({r.name for r in sweep.runs}) == len(sweep.runs)


def test_launcher_steps_match_the_training_loop():
  from train import optim
  for r in expand_lib.expand(expand_lib.load_config_file(DEMO)).runs:
    assert optim.planned_steps(r.config) == r.steps, r.name


def test_shape_rule_hits_targets_and_names_failures():
  base = expand_lib.load_config_file('configs/tiny_cpu.py').model
  rule = expand_lib.load_config_file(DEMO).shape
  for target in (3e5, 1e6, 5e6, 3e7):
    shape = expand_lib.build_shape(target, base, rule)
    m = base.copy_and_resolve_references()
    m.update(shape)
    assert param_counts(m).with_head == pytest.approx(target, rel=rule.tolerance)
  with pytest.raises(expand_lib.SweepError, match='no model shape within 10% of target N=1,000'):
    expand_lib.build_shape(1e3, base, rule)  # Smaller than the embedding head alone.


def test_budget_labels():
  assert expand_lib.budget_label(1e11) == '1e11'
  assert expand_lib.budget_label(3.2e12) == '3.2e12'
  assert expand_lib.budget_label(500.0) == '500'


# ---------------------------------------------------------------------------- dry run


def test_dry_run_prints_table_and_commands_and_runs_nothing(tmp_path, capsys):
  workdir = tmp_path / 'sweep'
  assert sweep_lib.main(['--config', DEMO, '--workdir', str(workdir), '--dry-run']) == 0
  out = capsys.readouterr().out
  sweep = expand_lib.expand(expand_lib.load_config_file(DEMO))
  for header in ('C (FLOPs)', 'd_model', 'N active', 'D (tokens)', 'steps', 'D/N'):
    assert header in out
  commands = [ln for ln in out.splitlines() if ' -m train ' in ln]
  assert len(commands) == len(sweep.runs)
  for r, line in zip(sweep.runs, commands):
    assert f'--workdir {workdir / r.name}' in line
    assert f'--config.train.flops={r.budget!r}' in line
    assert f'--config.model.d_model={r.shape["d_model"]}' in line
    assert '--config.train.steps=0' in line  # tiny_cpu sets steps; train.flops must win.
  assert not workdir.exists()


def test_tpu_dry_run_prints_gcloud_commands(tmp_path, capsys):
  extra = ("from launch import tpu\n  c.tpu = tpu.default_config()\n"
           "  c.tpu.update(dict(name='v5e-16-a', zone='us-west4-a', workdir='gs://b/s'))")
  cfg = write_sweep(tmp_path, extra=extra)
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--tpu', '--dry-run']) == 0
  lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith('gcloud ')]
  assert len(lines) == 6
  assert all('tpu-vm ssh v5e-16-a --zone=us-west4-a --worker=all' in ln for ln in lines)
  assert all('--workdir gs://b/s/' in ln and '--multihost' in ln for ln in lines)
  fetch = tpu_lib.fetch_commands(expand_lib.load_config_file(cfg).tpu, 'r1', '/tmp/x')
  assert fetch[0] == ['gcloud', 'storage', 'cp', 'gs://b/s/r1/summary.json', '/tmp/x/summary.json']


# ---------------------------------------------------------------------------- local pool (stubbed train)


def test_pool_continues_after_a_failure_skips_finished_runs_and_fits(tmp_path):
  cfg = write_sweep(tmp_path)
  sweep = expand_lib.expand(expand_lib.load_config_file(cfg))
  bad = sweep.runs[1].name
  python = fake_python(tmp_path, fail_marker=bad)
  workdir = tmp_path / 'sweep'
  lines = []
  rc = sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--python', python,
                       '--parallel', '2'], log=lines.append)
  text = '\n'.join(lines)
  assert rc == 1
  assert f'FAILED  {bad} (exit 3' in text and 'boom: simulated failure' in text
  assert str(workdir / bad / 'train.log') in text
  for r in sweep.runs:
    assert (workdir / r.name / 'summary.json').exists() == (r.name != bad)
  assert (workdir / 'fit' / 'fit.json').exists()  # The rest was still fitted.
  fit = json.load(open(workdir / 'fit' / 'fit.json'))
  assert fit['input']['n_points'] == len(sweep.runs) - 1

  # Rerun: finished runs are skipped, only the failed one starts again (and now succeeds).
  calls = tmp_path / 'calls.txt'
  calls.unlink()
  lines.clear()
  rc = sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--python', fake_python(tmp_path)],
                      log=lines.append)
  assert rc == 0
  assert calls.read_text().split() == [str(workdir / bad)]
  assert sum('skip    ' in ln for ln in lines) == len(sweep.runs) - 1
  fit = json.load(open(workdir / 'fit' / 'fit.json'))
  assert fit['input']['n_points'] == len(sweep.runs) and 'approach3' in fit
  assert len(open(workdir / bad / 'train.log').read().split('\n=== ')) == 3  # Appended, not replaced.


def test_run_state_sees_checkpoints(tmp_path):
  assert ledger.run_state(str(tmp_path)) == 'new'
  (tmp_path / 'checkpoints' / '40').mkdir(parents=True)
  assert ledger.run_state(str(tmp_path)) == 'resume'
  (tmp_path / 'summary.json').write_text('{}')
  assert ledger.run_state(str(tmp_path)) == 'finished'


# ---------------------------------------------------------------------------- real runs


def test_real_runs_train_with_their_budget_and_are_skipped_on_rerun(tmp_path):
  """Two real runs in one long-lived worker (--worker-pool; tests/test_micro_sweep_... runs
  processes); a rerun skips them."""
  cfg = write_sweep(tmp_path, budgets=(1e9,), n_sizes=2)
  workdir = tmp_path / 'sweep'
  lines = []
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--worker-pool', '--no-fit'],
                        log=lines.append) == 0, '\n'.join(lines)
  for r in expand_lib.expand(expand_lib.load_config_file(cfg)).runs:
    s = json.load(open(workdir / r.name / 'summary.json'))
    assert s['params_with_head'] == r.params and s['steps'] == r.steps
    assert s['config']['train']['flops'] == 1e9
    assert s['flops_6nd'] == pytest.approx(1e9, rel=1 / r.steps)
    log = open(workdir / r.name / 'train.log').read()
    assert 'worker pool' in log and 'done:' in log
    assert s['startup']['imports'] < 0.5  # JAX and the project were imported once, by the worker.
  lines.clear()
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--no-fit'], log=lines.append) == 0
  assert sum('skip    ' in ln for ln in lines) == 2


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize('extra, message', [
    ("c.base_config = 'configs/nope.py'", "base_config 'configs/nope.py': no such file"),
    ('c.budgets = (1e9, -1.0)', 'every FLOP budget must be a positive number, got \\[-1.0\\]'),
    ('c.budgets = (0.0,)', 'must be a positive number'),
    ('c.budgets = ()', 'budgets: empty'),
    ("c.overrides.data.nonsense = 3", "unknown config key 'data.nonsense'"),
    ("c.overrides.model.d_model = 64", 'model.d_model is set per run by the shape rule'),
    ("c.overrides.train.steps = 10", 'train.steps is set per run'),
    ('c.shape.max_d_model = 16', 'budget 2e\\+09, size 3/3: no model shape within 15%'),
    ('c.min_steps = 10_000', r'shorter than min_steps=10000 .*2e9_L'),
    ('c.n_sizes = 5; c.span = 1.05', 'build the same shape'),
    ("c.law = 'kaplan'", "budget 2e\\+09: --law 'kaplan': not a known law"),
    ('del c["n_sizes"]', 'the sweep config lacks n_sizes'),
])
def test_bad_sweeps_are_refused_with_the_reason(tmp_path, capsys, extra, message):
  cfg = write_sweep(tmp_path, extra=extra)
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--dry-run']) == 2
  import re
  err = capsys.readouterr().err
  assert err.startswith('error: ') and re.search(message, err), err
  assert not (tmp_path / 'w').exists()


def test_missing_sweep_config_and_bad_parallel(tmp_path, capsys):
  assert sweep_lib.main(['--config', str(tmp_path / 'no.py'), '--workdir', str(tmp_path)]) == 2
  assert 'no such file' in capsys.readouterr().err
  assert sweep_lib.main(['--config', DEMO, '--workdir', str(tmp_path), '--parallel', '0']) == 2
  assert '--parallel must be >= 1' in capsys.readouterr().err


def test_tpu_flag_needs_a_tpu_block(tmp_path, capsys):
  cfg = write_sweep(tmp_path)
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--tpu', '--dry-run']) == 2
  assert 'has no tpu block' in capsys.readouterr().err


# ---------------------------------------------------------------------------- AOT hook


def test_check_fit_hook_runs_scaling_aot_per_run(tmp_path, monkeypatch):
  import importlib.util
  import stat as stat_lib
  sweep = expand_lib.expand(expand_lib.load_config_file(write_sweep(tmp_path)))
  # A stand-in interpreter for `python -m scaling.aot`: d_model < 20 fits, 12 is a bad config.
  fake = tmp_path / 'fake_python'
  seen = tmp_path / 'seen.txt'
  fake.write_text(textwrap.dedent(f"""\
      #!{sys.executable}
      import sys
      args = sys.argv[1:]
      if 'STATUS' in open({str(seen)!r} + '.mode').read():
        sys.exit(3)
      d = int(next(a.split('=')[1] for a in args if a.startswith('--config.model.d_model=')))
      topo = args[args.index('--topology') + 1]
      open({str(seen)!r}, 'a').write(f'{{d}} {{topo}}\\n')
      if d == 12:
        print('error: mesh does not match', file=sys.stderr); sys.exit(2)
      print('fake verdict'); sys.exit(0 if d < 20 else 1)
      """))
  fake.chmod(fake.stat().st_mode | stat_lib.S_IEXEC)
  (tmp_path / 'seen.txt.mode').write_text('run')
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: object() if name == 'libtpu' else real_find_spec(name, *a))
  lines = []
  assert sweep_lib.check_fit(sweep, 'v5p:2x2x2', log=lines.append, python=str(fake)) is False
  seen_rows = seen.read_text().split('\n')[:-1]
  assert len(seen_rows) == len(sweep.runs) and all(r.endswith(' v5p:2x2x2') for r in seen_rows)
  if any(r.shape['d_model'] == 12 for r in sweep.runs):
    assert any('DOES NOT FIT (check failed: mesh does not match)' in ln for ln in lines)
  assert any(ln.endswith(': fits (fake verdict)') for ln in lines)
  (tmp_path / 'seen.txt.mode').write_text('STATUS')  # The check itself cannot run: unavailable.
  assert sweep_lib.check_fit(sweep, 'v5p:2x2x2', log=lines.append, python=str(fake)) is None
  assert 'scaling.aot could not run' in lines[-1]
  monkeypatch.setattr(importlib.util, 'find_spec',
                      lambda name, *a: None if name == 'libtpu' else real_find_spec(name, *a))
  assert sweep_lib.check_fit(sweep, 'v5p:2x2x2', log=lines.append, python=str(fake)) is None
  assert 'libtpu is not installed' in lines[-1]


def test_fit_of_the_sweep_reads_only_its_runs_and_reports_a_failed_fit(tmp_path, monkeypatch):
  from scaling import fit as fit_lib
  names = []
  for i, (n, d) in enumerate([(1e4, 1e6), (2e4, 5e5), (4e4, 2.5e5), (1e4, 3e6), (3e4, 1e6),
                              (9e4, 3.3e5)]):
    names.append(f'run{i}')
    os.makedirs(tmp_path / names[-1])
    json.dump(dict(params_with_head=n, tokens=d, flops_6nd=6 * n * d,
                   eval_loss=1.5 + 400 / n ** 0.35 + 400 / d ** 0.3),
              open(tmp_path / names[-1] / 'summary.json', 'w'))
  os.makedirs(tmp_path / 'not_this_sweep')  # Left out, not reported.
  lines = []
  result = sweep_lib.fit_sweep(str(tmp_path), names, str(tmp_path / 'fit'), bootstrap=20,
                               plots=False, log=lines.append)
  assert result['input']['n_points'] == 6 and 'approach3' in result
  assert not any('not_this_sweep' in ln for ln in lines)
  assert (tmp_path / 'fit' / 'fit.json').exists()

  def broken(points, **kw):
    raise fit_lib.FitError('no approach could be fitted')

  monkeypatch.setattr(fit_lib, 'fit_all', broken)
  lines = []
  assert sweep_lib.fit_sweep(str(tmp_path), names, str(tmp_path / 'fit2'), bootstrap=0,
                             plots=False, log=lines.append) is None
  assert any('fit: failed: no approach could be fitted' in ln for ln in lines)


# ---------------------------------------------------------------------------- preemption, retries, status file


def preempting_python(tmp_path, always_preempted='NONE', failing='NONE'):
  """An 'interpreter' playing `python -m train` that is preempted once, then resumes.

  First start: 'saves' a checkpoint and exits 75, as the training loop does on
  SIGTERM. Next start: finds the checkpoint and writes summary.json. A
  workdir containing `always_preempted` exits 75 every time; one containing
  `failing` exits 3. Each call is recorded in calls.txt.
  """
  path = tmp_path / 'preempting_python'
  path.write_text(textwrap.dedent(f'''\
      #!{sys.executable}
      import json, os, sys
      args = sys.argv[1:]
      workdir = args[args.index('--workdir') + 1]
      with open({str(tmp_path / 'calls.txt')!r}, 'a') as f:
        f.write(workdir + '\\n')
      if {failing!r} in workdir:
        print('boom: simulated failure'); sys.exit(3)
      ckpts = os.path.join(workdir, 'checkpoints')
      if os.path.isdir(ckpts) and {always_preempted!r} not in workdir:
        print('resumed from step 7')
        json.dump(dict(eval_loss=1.0), open(os.path.join(workdir, 'summary.json'), 'w'))
        sys.exit(0)
      os.makedirs(os.path.join(ckpts, '7'), exist_ok=True)
      print('SIGTERM: saved step 7'); sys.exit(75)
      '''))
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


def test_pool_requeues_preempted_runs_within_budget_and_retries_failures(tmp_path):
  cfg = write_sweep(tmp_path)
  names = [r.name for r in expand_lib.expand(expand_lib.load_config_file(cfg)).runs]
  spot, bad = names[0], names[1]
  python = preempting_python(tmp_path, always_preempted=spot, failing=bad)
  workdir = tmp_path / 'sweep'
  lines = []
  rc = sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--python', python, '--parallel', '2',
                       '--no-fit', '--max-preemptions', '2', '--max-failures', '1'], log=lines.append)
  text = '\n'.join(lines)
  assert rc == 1, text
  status = json.load(open(workdir / 'sweep_status.json'))
  assert (status['format'], status['backend'], status['max_preemptions'], status['max_failures']) == (
      1, 'local', 2, 1)
  assert status['counts'] == {'ok': len(names) - 2, 'preempted-out': 1, 'failed': 1}
  runs = {r['name']: r for r in status['runs']}
  assert [r['name'] for r in status['runs']] == names  # Every run, in the sweep's order.
  s = runs[spot]
  assert (s['state'], s['attempts'], s['preemptions'], s['failures'], s['last_exit']) == (
      'preempted-out', 3, 3, 0, 75)
  assert s['log_tail'] == ['SIGTERM: saved step 7']
  s = runs[bad]
  assert (s['state'], s['attempts'], s['preemptions'], s['failures'], s['last_exit']) == ('failed', 2, 0, 2, 3)
  assert s['log_tail'] == ['boom: simulated failure'] and s['log'] == str(workdir / bad / 'train.log')
  for n in names[2:]:
    assert runs[n]['state'] == 'ok' and runs[n]['history'] == ['preempted (exit 75)', 'finished']
    assert f'resume  {n}' in text and f'PREEMPT {n} (exit 75' in text
    assert 'resumed from step 7' in open(workdir / n / 'train.log').read()
  assert f'PREEMPT {spot} (exit 75, ' in text and 'more than --max-preemptions 2' in text
  assert f'FAILED  {bad} (exit 3' in text and 'retry 1 of 1' in text
  assert lines[-2].startswith(f'{len(names) - 2} ran, 0 skipped (finished), 1 failed, 1 preempted out in ')
  calls = open(tmp_path / 'calls.txt').read().split()
  assert calls.count(str(workdir / spot)) == 3 and calls.count(str(workdir / bad)) == 2
  assert f'{spot} (preempted-out, see' in lines[-1]

  # The default budgets keep the old behaviour: a failed run is not retried.
  lines.clear()
  (tmp_path / 'calls.txt').unlink()
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--python', python, '--no-fit'],
                        log=lines.append) == 1
  calls = open(tmp_path / 'calls.txt').read().split()
  assert calls.count(str(workdir / bad)) == 1 and calls.count(str(workdir / spot)) == 4  # 3 preemptions + 1.
  assert sum('skip    ' in ln for ln in lines) == len(names) - 2


def test_bad_budgets_and_backends_are_refused(tmp_path, capsys):
  cfg = write_sweep(tmp_path)
  base = ['--config', cfg, '--workdir', str(tmp_path / 'w'), '--dry-run']
  assert sweep_lib.main(base + ['--max-failures', '-1']) == 2
  assert 'must be >= 0' in capsys.readouterr().err
  assert sweep_lib.main(base + ['--backend', 'ray', '--ray-resources', 'TPU']) == 2
  assert "'TPU' is not NAME=AMOUNT" in capsys.readouterr().err
  extra = "from launch import tpu\n  c.tpu = tpu.default_config()\n  c.tpu.update(dict(name='a', zone='b'))"
  cfg = write_sweep(tmp_path, extra=extra, name='tpu_sweep.py')
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--tpu', '--backend', 'ray',
                         '--dry-run']) == 2
  assert '--tpu and --backend ray: choose one' in capsys.readouterr().err
  assert not (tmp_path / 'w').exists()


# ---------------------------------------------------------------------------- Ray: cluster configs (no Ray needed)


def _yaml_sections(out: str) -> dict:
  """{'tpu': config, 'gpu': config, 'commands': lines} from the output of --dry-run --backend ray."""
  sections, current = {}, None
  for line in out.splitlines():
    if line.startswith('# ---- Ray cluster config for'):
      current = 'tpu' if 'TPU' in line else 'gpu'
      sections[current] = []
    elif line.startswith('# ---- commands'):
      current = 'commands'
    elif current:
      sections.setdefault(current, []).append(line)
  return {'tpu': yaml.safe_load('\n'.join(sections['tpu'])),
          'gpu': yaml.safe_load('\n'.join(sections['gpu'])), 'commands': sections['commands']}


def test_ray_dry_run_prints_cluster_configs_for_tpu_vms_and_gpu_hosts(tmp_path, capsys):
  extra = ("from launch import tpu\n  c.tpu = tpu.default_config()\n"
           "  c.tpu.update(dict(name='x', zone='us-west4-a', project='my-proj', workdir='gs://b/s'))\n"
           "  c.tpu.accelerator_type = 'v5litepod-8'\n  c.tpu.runtime_version = 'v2-alpha-tpuv5-lite'\n"
           "  c.tpu.spot = False")
  cfg = write_sweep(tmp_path, extra=extra)
  workdir = tmp_path / 'w'
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--backend', 'ray', '--dry-run',
                         '--max-preemptions', '5']) == 0
  out = capsys.readouterr().out
  s = _yaml_sections(out)
  tpu_cfg, gpu_cfg = s['tpu'], s['gpu']
  assert tpu_cfg['provider'] == dict(type='gcp', region='us-west4', availability_zone='us-west4-a',
                                     project_id='my-proj')
  worker = tpu_cfg['available_node_types']['tpu_worker']
  assert worker['node_config'] == dict(acceleratorType='v5litepod-8', runtimeVersion='v2-alpha-tpuv5-lite',
                                       schedulingConfig=dict(spot=False))
  assert worker['resources'] == {'TPU': 8}
  assert tpu_cfg['available_node_types']['head']['resources'] == {'CPU': 0}  # The driver only.
  assert tpu_cfg['file_mounts'] == {'~/chinchax': expand_lib.REPO_ROOT}
  assert any("pip install -e '.[ray,gcs,tpu-aot]'" in c for c in tpu_cfg['worker_setup_commands'])
  gpu_worker = gpu_cfg['available_node_types']['gpu_worker']
  assert gpu_worker['node_config']['guestAccelerators'] == [
      dict(acceleratorType='nvidia-tesla-a100', acceleratorCount=1)]
  assert gpu_worker['resources'] == {'GPU': 1}
  assert gpu_worker['node_config']['scheduling']['provisioningModel'] == 'SPOT'
  assert any("pip install -e '.[ray,gcs]'" in c and 'jax[cuda12]' in c for c in gpu_cfg['worker_setup_commands'])
  assert 'ray up -y ray_tpu.yaml' in out and 'ray up -y ray_gpu.yaml' in out
  submits = [ln for ln in out.splitlines() if ln.startswith('ray job submit ')]
  assert len(submits) == 2
  assert all('-m launch.sweep' in ln and '--backend ray --ray-address auto' in ln and
             '--max-preemptions 5' in ln and f'--workdir /mnt/sweeps/{workdir.name}' in ln for ln in submits)
  assert '--ray-resources TPU=8' in submits[0] and '--ray-resources GPU=1' in submits[1]
  assert not workdir.exists()


def test_ray_dry_run_for_multi_host_slices_and_tpu_hosts(tmp_path, capsys):
  extra = ("from launch import tpu\n  c.tpu = tpu.default_config()\n  c.tpu.update(dict(zone='z-a-1'))\n"
           "  c.tpu.accelerator_type = 'v4-16'")
  cfg = write_sweep(tmp_path, extra=extra)
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--backend', 'ray',
                         '--dry-run']) == 0
  out = capsys.readouterr().out
  assert 'GCP TPU VMs (v4-16, slices of 2 hosts: each run one process per host)' in out
  assert 'acceleratorType: v4-16' in out and '--ray-resources TPU=4' in out
  # A TPU run of a v4-16 sweep spans the slice's 2 hosts, reserved through Ray's head resource.
  parser = sweep_lib.build_parser()
  sweep = expand_lib.expand(expand_lib.load_config_file(cfg))
  args = parser.parse_args(['--config', cfg, '--workdir', 'w', '--backend', 'ray'])
  assert sweep_lib._ray_slices(args, sweep, {'TPU': 4.0}) == (2, 'TPU-v4-16-head')
  assert sweep_lib._ray_slices(args, sweep, {'CPU': 1.0}) == (1, 'slice-head')
  args = parser.parse_args(['--config', cfg, '--workdir', 'w', '--backend', 'ray', '--hosts-per-run', '-1'])
  with pytest.raises(sweep_lib.SweepError, match='must be >= 1'):
    sweep_lib._ray_slices(args, sweep, {'CPU': 1.0})
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--hosts-per-run', '2']) == 2
  assert '--hosts-per-run is for --backend ray' in capsys.readouterr().err
  assert [ray_cluster.tpu_hosts(t) for t in ('v2-8', 'v4-8', 'v4-32', 'v5p-8', 'v5litepod-8',
                                             'v5litepod-16', 'v6e-4')] == [
      (1, 4), (1, 4), (4, 4), (1, 4), (1, 8), (4, 4), (1, 4)]
  for bad in ('v9-8', 'v4', 'v4-x'):
    with pytest.raises(ValueError, match='accelerator_type'):
      ray_cluster.tpu_hosts(bad)
  assert ray_backend.parse_resources('TPU=4, CPU=8') == {'TPU': 4.0, 'CPU': 8.0}
  assert ray_backend.parse_resources('') == {'CPU': 1.0}


def test_the_125m_sweep_config_expands_around_chinchillas_optimum():
  sweep = expand_lib.expand(expand_lib.load_config_file('configs/sweeps/isoflop_125m.py'))
  assert len(sweep.runs) == 15 and {r.budget for r in sweep.runs} == {1e18, 3e18, 1e19}
  middle = [r for r in sweep.runs if r.budget == 3e18][2]
  assert 0.9 < middle.params / plan_lib.isoflop_plan(3e18, 'chinchilla')['n_opt'] < 1.1
  assert all(r.steps >= 200 and r.tokens_per_step == 256 * 1024 for r in sweep.runs)
  assert sweep.tpu.name and sweep.tpu.workdir.startswith('/mnt/')


# ---------------------------------------------------------------------------- cooldown branches


def _family_sweep(tmp_path, k=2, budgets=(1e9, 3e9)):
  return write_sweep(tmp_path, budgets=budgets, n_sizes=1, min_steps=10,
                     extra=f'c.cooldowns_per_size = {k}')


def test_cooldown_branches_start_from_their_parents_decay_start(tmp_path):
  sweep = expand_lib.expand(expand_lib.load_config_file(_family_sweep(tmp_path, k=3, budgets=(1e9, 2e9, 4e9))))
  own = [r for r in sweep.runs if not r.parent]
  branches = [r for r in sweep.runs if r.parent]
  assert len(own) == 3 and branches  # The 4e9 run branches at 2e9 and 1e9, the 2e9 run at 1e9.
  by_name = {r.name: r for r in sweep.runs}
  for b in branches:
    p = by_name[b.parent]
    assert b.budget < p.budget and b.shape == p.shape and b.params == p.params
    assert b.steps < p.steps
    # The branch decays over its own last decay_fraction; it starts at that step of the parent.
    frac = b.config.optim.decay_fraction
    assert b.branch_step == b.steps - round(frac * b.steps)
    assert str(b.branch_step) in p.overrides['train.checkpoint_steps'].split(',')
    # Same trajectory up to the branch: same schedule, peak LR and warmup in steps.
    for key in ('optim.schedule', 'optim.warmup_steps', 'optim.lr', 'data.global_batch_size'):
      assert b.overrides.get(key) == p.overrides.get(key), key
    assert b.overrides['optim.schedule'] == 'wsd'
    assert 'train.checkpoint_steps' not in b.overrides
    assert b.tokens >= b.budget / (6 * b.params) > b.tokens - b.tokens_per_step
    argv = expand_lib.train_command(sweep, b, '/w')
    assert f'--config.train.init_from=/w/{p.name}:{b.branch_step}' in argv
  assert sweep.after() == {b.name: b.parent for b in branches}
  # Every budget's point of a size appears once: no branch duplicates a run of the sweep.
  assert len({r.name for r in sweep.runs}) == len(sweep.runs)
  text = expand_lib.format_table(sweep)
  assert 'cooldown branches' in text and '@ step' in text


def test_no_cooldowns_keeps_cosine_runs_and_bad_counts_are_refused(tmp_path, capsys):
  sweep = expand_lib.expand(expand_lib.load_config_file(_family_sweep(tmp_path, k=0)))
  assert not any(r.parent for r in sweep.runs)
  assert all('optim.schedule' not in r.overrides for r in sweep.runs)
  cfg = write_sweep(tmp_path, extra='c.cooldowns_per_size = -1', name='bad.py')
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--dry-run']) == 2
  assert 'cooldowns_per_size=-1' in capsys.readouterr().err


def test_a_branch_waits_for_its_parent_and_fails_with_it(tmp_path):
  sweep = expand_lib.expand(expand_lib.load_config_file(_family_sweep(tmp_path)))
  (branch,) = [r for r in sweep.runs if r.parent]
  workdir = str(tmp_path / 'w')
  commands = [(r.name, expand_lib.train_command(sweep, r, workdir, fake_python(tmp_path)))
              for r in reversed(sweep.runs)]  # Branch first in the queue: it must still wait.
  lines = []
  assert sweep_lib.run_all(commands, workdir, parallel=2, log=lines.append,
                           after=sweep.after())[branch.name] == 'ok'
  calls = open(tmp_path / 'calls.txt').read().split()
  assert calls.index(os.path.join(workdir, branch.name)) > calls.index(os.path.join(workdir, branch.parent))
  # A parent that fails takes its branch with it, without starting it.
  (tmp_path / 'calls.txt').unlink()
  workdir = str(tmp_path / 'w2')
  commands = [(r.name, expand_lib.train_command(sweep, r, workdir, fake_python(tmp_path, branch.parent)))
              for r in sweep.runs]
  lines = []
  res = sweep_lib.run_all(commands, workdir, parallel=2, log=lines.append, after=sweep.after())
  assert res[branch.parent] == 'failed' and res[branch.name] == 'failed'
  assert os.path.join(workdir, branch.name) not in open(tmp_path / 'calls.txt').read().split()
  status = json.load(open(os.path.join(workdir, 'sweep_status.json')))
  (rec,) = [r for r in status['runs'] if r['name'] == branch.name]
  assert rec['attempts'] == 0 and 'its parent' in rec['last_event']


def test_micro_sweep_with_a_branch_end_to_end(tmp_path):
  """Two runs and one cooldown branch, trained for real; the fit sees three (N, D) points."""
  cfg = _family_sweep(tmp_path)
  sweep = expand_lib.expand(expand_lib.load_config_file(cfg))
  (branch,) = [r for r in sweep.runs if r.parent]
  workdir = tmp_path / 'sweep'
  lines = []
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--parallel', '2', '--no-fit'],
                        log=lines.append) == 0, '\n'.join(lines)
  s = json.load(open(workdir / branch.name / 'summary.json'))
  parent = json.load(open(workdir / branch.parent / 'summary.json'))
  assert s['parent'] == str(workdir / branch.parent) and s['branch_step'] == branch.branch_step
  assert s['steps'] == branch.steps and s['tokens'] == branch.tokens
  assert s['params_with_head'] == parent['params_with_head']
  assert s['flops_6nd'] == pytest.approx(branch.budget, rel=1 / branch.steps)
  # The branch is the parent's run up to the branch step, then its own decay: its loss is
  # above the longer parent's and its curve starts after the branch point.
  assert s['eval_loss'] > parent['eval_loss']
  from scaling import points as points_lib
  pts = points_lib.load_runs(str(workdir), warn=lambda m: None)
  assert len(pts.names) == 3 and len(set(pts.N)) == 2


# ---------------------------------------------------------------------------- hyper-parameter rules


def test_hparam_rules_set_each_runs_values_and_dry_run_prints_them(tmp_path, capsys):
  rules = ("c.hparams = ml_collections.ConfigDict({'lr': {'rule': 'power', 'k': 2.0, 'p': -0.5, "
           "'of': 'params'}, 'warmup_tokens': 'porian', 'b2': 0.98, 'batch_tokens': 1024})")
  cfg = write_sweep(tmp_path, budgets=(2e9, 6e9), n_sizes=3, extra=rules)
  sweep = expand_lib.expand(expand_lib.load_config_file(cfg))
  for r in sweep.runs:
    assert r.config.optim.lr == pytest.approx(2.0 * r.params ** -0.5)
    assert r.overrides['optim.lr'] == pytest.approx(2.0 * r.params ** -0.5)
    assert r.config.data.global_batch_size == 1024 // 32 and r.tokens_per_step == 1024
    assert r.config.optim.warmup_steps == -(-r.params // 1024)  # N tokens, whole steps.
    assert r.config.optim.b2 == 0.98
  assert len({r.config.optim.lr for r in sweep.runs}) == len({r.params for r in sweep.runs}) > 1
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--dry-run']) == 0
  out = capsys.readouterr().out
  assert 'hyper-parameter rules' in out and 'porian' in out
  assert f'{sweep.runs[0].config.optim.lr:.3g}' in out and '--config.optim.lr=' in out


def test_a_bad_hparam_rule_is_refused_naming_it(tmp_path, capsys):
  cfg = write_sweep(tmp_path, extra="c.hparams = ml_collections.ConfigDict({'lr': 'nonsense'})")
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--dry-run']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: hparams') and 'nonsense' in err and 'Traceback' not in err


# ---------------------------------------------------------------------------- variants (dense against MoE)


def test_moe_sweep_configs_match_active_parameters_across_variants():
  sweep = expand_lib.expand(expand_lib.load_config_file('configs/sweeps/moe_cpu.py'))
  by_variant = {}
  for r in sweep.runs:
    assert r.name.startswith(f'{r.variant}_')
    if not r.parent:  # The planned runs (their cooldown branches are tested above).
      by_variant.setdefault(r.variant, []).append(r)
  assert sorted(by_variant) == ['dense', 'moe'] and len({r.budget for r in sweep.runs}) >= 3
  for d, m in zip(by_variant['dense'], by_variant['moe']):  # Same plan target, same budget.
    assert d.budget == m.budget and d.target_params == m.target_params
    assert abs(m.params / d.params - 1) < 0.05  # Equal active N (and so equal D and C).
    assert m.config.model.moe_num_experts == 8 and d.config.model.moe_num_experts == 0
    assert m.overrides['model.moe_num_experts'] == 8
    total = param_counts(m.config.model).with_head
    assert total > 1.5 * m.params  # The MoE stores more than a token uses (6 of 8 experts idle).
  experts = expand_lib.expand(expand_lib.load_config_file('configs/sweeps/moe_experts_cpu.py'))
  assert {r.config.model.moe_num_experts for r in experts.runs} == {0, 1, 2, 4, 8, 16}
  gran = expand_lib.expand(expand_lib.load_config_file('configs/sweeps/moe_granularity_cpu.py'))
  moe = [r for r in gran.runs if r.variant != 'dense']
  assert {(r.config.model.moe_granularity, r.config.model.moe_top_k) for r in moe} == {
      (1, 1), (2, 2), (4, 4), (8, 8)}
  for r in moe:  # Experts of d_ff / G, E = 4G: the same stored and active MLP at every G.
    assert r.config.model.moe_num_experts == 4 * r.config.model.moe_granularity
    assert r.config.model.d_ff % r.config.model.moe_granularity == 0


@pytest.mark.parametrize('extra, message', [
    ("c.variants = ml_collections.ConfigDict({'a b': {}})", "variants: name 'a b'"),
    ("c.variants = ml_collections.ConfigDict({'m': {'model': {'d_model': 8}}})",
     'variants.m: model.d_model is set per run'),
    ("c.variants = ml_collections.ConfigDict({'m': {'model': {'nonsense': 1}}})",
     "variants.m: unknown config key 'model.nonsense'"),
    ("c.variants = ml_collections.ConfigDict({'m': {'model': {'moe_num_experts': 12, "
     "'moe_granularity': 3}}})", 'moe_granularity=3 does not divide shape.ff_multiple'),
])
def test_bad_variants_are_refused_naming_them(tmp_path, capsys, extra, message):
  cfg = write_sweep(tmp_path, extra=extra)
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--dry-run']) == 2
  assert message in capsys.readouterr().err


def test_variants_are_fitted_each_on_their_own_and_together(tmp_path):
  extra = "c.variants = ml_collections.ConfigDict({'a': {}, 'b': {'optim': {'lr': 1e-3}}})"
  cfg = write_sweep(tmp_path, budgets=(2e9, 6e9, 2e10), n_sizes=3, extra=extra)
  workdir = tmp_path / 'w'
  lines = []
  sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--python', fake_python(tmp_path)],
                 log=lines.append)
  for sub in ('fit/a', 'fit/b', 'fit'):
    assert (workdir / sub / 'fit.json').is_file(), '\n'.join(lines)
  a = json.load(open(workdir / 'fit' / 'a' / 'fit.json'))
  assert a['input']['n_points'] == 9
  assert json.load(open(workdir / 'fit' / 'fit.json'))['input']['n_points'] == 18


# ---------------------------------------------------------------------------- the target run


def test_target_run_is_planned_by_the_fit_trained_last_and_verified(tmp_path):
  extra = "c.target = ml_collections.ConfigDict({'flops_factor': 4.0})"
  cfg = write_sweep(tmp_path, budgets=(2e9, 6e9, 2e10), n_sizes=5, extra=extra)
  workdir = tmp_path / 'w'
  lines = []
  fake = fake_python(tmp_path)
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--python', fake,
                         '--bootstrap', '20'], log=lines.append) == 0, '\n'.join(lines)
  fit = json.load(open(workdir / 'fit' / 'fit.json'))
  plan, block = fit['target_run'], fit['ladder']
  assert plan['flops'] == 8e10 and plan['approach'] == 'approach3'
  (row,) = block['runs']
  assert row['name'].startswith('target_8e10_') and block['n_fitted'] == 15
  assert row['flops'] == pytest.approx(8e10, rel=0.02)
  assert abs(row['N'] / plan['N'] - 1) < 0.15  # Built at the nearest shape to N_opt.
  # The fake runs follow one law exactly, so the fit predicts the held-out target closely.
  assert abs(row['approach3']['error_pct']) < 1.0
  calls = open(tmp_path / 'calls.txt').read().split()
  assert calls[-1].endswith(row['name'])  # Trained last, after the fit.
  assert any(ln.startswith('target: ladder: held out 1 runs') for ln in lines), '\n'.join(lines)
  # Rerunning skips every run, the target included, and verifies again.
  lines.clear()
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--python', fake,
                         '--bootstrap', '20'], log=lines.append) == 0
  assert len(open(tmp_path / 'calls.txt').read().split()) == len(calls)


@pytest.mark.parametrize('extra, message', [
    ("c.target = ml_collections.ConfigDict({'flops_factor': -1.0})", 'target.flops_factor=-1.0'),
    ("c.target = ml_collections.ConfigDict({'flops_factor': 4.0})\n  "
     "c.variants = ml_collections.ConfigDict({'a': {}, 'b': {}})", 'target: not with variants'),
])
def test_bad_targets_are_refused(tmp_path, capsys, extra, message):
  cfg = write_sweep(tmp_path, extra=extra)
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'w'), '--dry-run']) == 2
  assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------- tuning grids


def test_a_tuning_grid_runs_every_point_and_fits_the_lr_law(tmp_path, capsys):
  extra = ("c.grid = ml_collections.ConfigDict({'optim': {'lr': (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)}})\n  "
           "c.n_sizes = 1")
  cfg = write_sweep(tmp_path, budgets=(2e9, 6e9, 2e10), n_sizes=1, extra=extra)
  sweep = expand_lib.expand(expand_lib.load_config_file(cfg))
  assert len(sweep.runs) == 15 and sweep.grid
  assert {r.variant for r in sweep.runs} == {f'lr{v:g}' for v in (1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2)}
  assert all(r.config.optim.lr == float(r.variant[2:]) for r in sweep.runs)
  workdir = tmp_path / 'w'
  lines = []
  assert sweep_lib.main(['--config', cfg, '--workdir', str(workdir), '--python', fake_python(tmp_path),
                         '--bootstrap', '20'], log=lines.append) == 0, '\n'.join(lines)
  law = json.load(open(workdir / 'fit' / 'hparams' / 'hparams.json'))['lr']
  assert law['n_groups'] == 3 and law['p'] == pytest.approx(-0.2, abs=0.02)
  assert any("'rule': 'fitted'" in ln for ln in lines)
  cfg = write_sweep(tmp_path, extra="c.grid = ml_collections.ConfigDict({'optim': {'lr': ()}})",
                    name='bad.py')
  assert sweep_lib.main(['--config', cfg, '--workdir', str(tmp_path / 'b'), '--dry-run']) == 2
  assert 'grid.optim.lr=()' in capsys.readouterr().err
