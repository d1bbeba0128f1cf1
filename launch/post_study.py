"""Post-training scaling studies: pre-train the base sizes, post-train every arm, tabulate against N.

  python -m launch.post_study --study lora_rank --workdir runs/post/lora_rank --bases runs/post/bases
  python -m launch.post_study --study prefs|grpo|distill --workdir DIR [--bases B] [--dry-run]

A study is configs/sweeps/post_<study>.py (a get_config(); its keys are listed
in configs/sweeps/post_common.py): base sizes, what every run shares, seeds,
and arms. Its runs, all processes (this module never imports train/):

  base_<size>             `python -m train` of each base size, in --bases (default --workdir)
  teacher_<size>_s<seed>  the study's teacher, if it has one: `python -m train.post` from that base
  <arm>_<size>_s<seed>    every arm once per size and seed: `python -m train.post` from the base,
                          or from the arm it starts from (same size and seed), post.seed = seed

They run in phases by dependency depth (the bases, then what starts from
them, ...), each phase through launch.sweep.run_all: the local process pool,
a train.log per run, the phase's sweep_status.json, finished runs (those with
summary.json) skipped and unfinished ones resumed from their checkpoints. A
run whose start or teacher did not finish is 'blocked' (not started). A run
folder whose config.json disagrees with the run's flags is refused before
anything starts, so a changed study never silently reuses an old run.

Then launch.post_report reads every arm's summary.json and writes
DIR/study.json, study.md, study.png and TensorBoard events in DIR/study/.
Rerunning the same command skips what finished and rewrites the report.
Exit status: 0; 1 when a run failed or was blocked; 2 for bad input (an
unknown study, a bad study config, a folder of another run), with one line.
"""

import argparse
import dataclasses
import glob
import json
import os
import shlex
import sys
import time

import ml_collections

from configs import load
from launch import post_report
from launch import sweep
from launch.expand import REPO_ROOT, SweepError, apply_overrides, flag_value, flatten
from model.counts import param_counts

STUDY_DIR = 'configs/sweeps'  # Where configs/sweeps/post_<study>.py live (repo-relative).
STUDY_KEYS = ('name', 'question', 'base_config', 'base_overrides', 'sizes', 'post_config', 'post',
              'seeds', 'arms', 'metrics', 'baseline')
SET_BY_STUDY = ('base', 'teacher', 'seed')  # post.* fields the runner sets on each run itself.
FINISHED = ('ok', 'skipped')


@dataclasses.dataclass
class StudyRun:
  """One process of a study."""
  name: str  # Also its folder's name.
  folder: str  # Its workdir (absolute).
  argv: list  # The command (run from the repository root).
  kind: str  # 'base', 'teacher' or 'arm'.
  size: str  # The base size's name.
  N: int  # Parameters with head of the base size (model.counts `with_head`).
  arm: str = ''  # The arm ('' for a base, 'teacher' for the teacher).
  seed: int | None = None  # post.seed (None for a base).
  needs: tuple = ()  # Runs that must finish first (its start, its teacher).
  depth: int = 0  # Its phase: 0 for bases, 1 + the deepest of `needs` otherwise.


# ---------------------------------------------------------------------------- the study config


def study_names() -> list[str]:
  """The studies that configs/sweeps/post_<study>.py files define (post_common is shared code)."""
  paths = glob.glob(os.path.join(REPO_ROOT, STUDY_DIR, 'post_*.py'))
  names = [os.path.basename(p)[len('post_'):-len('.py')] for p in paths]
  return sorted(n for n in names if n != 'common')


def load_study(study: str, path: str | None = None) -> ml_collections.ConfigDict:
  """The study's config: `path`, or configs/sweeps/post_<study>.py; SweepError naming --study."""
  if path is None:
    if study not in study_names():
      raise SweepError(f'--study {study!r}: no such study; choose one of '
                       f'{", ".join(study_names())} ({STUDY_DIR}/post_<study>.py)')
    path = os.path.join(STUDY_DIR, f'post_{study}.py')
  try:
    return load.load_config_file(path, 'study config')
  except load.ConfigError as e:
    raise SweepError(str(e)) from None


def _arm_errors(s) -> list[str]:
  errors, seen = [], []
  for i, a in enumerate(s.arms):
    name = a.get('name') if isinstance(a, dict) else None
    if not name or name in ('base', 'teacher') or name in seen:
      errors.append(f'arms[{i}]: name {name!r} must be a new name other than base and teacher')
      continue
    if a.get('start', 'base') != 'base' and a.get('start') not in seen:
      errors.append(f'arms[{i}] ({name}): start={a.get("start")!r} must be base or an earlier arm')
    if a.get('teacher') and not s.get('teacher'):
      errors.append(f'arms[{i}] ({name}): teacher=True but the study has no teacher block')
    fixed = sorted(set(a.get('post', {})) & set(SET_BY_STUDY))
    if fixed:
      errors.append(f'arms[{i}] ({name}): post.{", post.".join(fixed)} are set by the study runner')
    seen.append(name)
  return errors


def study_errors(s) -> list[str]:
  """Problems with a study config, each naming its key."""
  missing = [k for k in STUDY_KEYS if k not in s]
  if missing:
    return [f'study config: missing key(s) {", ".join(missing)}']
  errors = []
  names = [z.get('name') for z in s.sizes]
  if not names or not all(names) or len(set(names)) != len(names):
    errors.append(f'sizes: need at least one, each with a distinct name; got {names}')
  if (not s.seeds or len(set(s.seeds)) != len(s.seeds) or
      not all(isinstance(x, int) and x >= 0 for x in s.seeds)):
    errors.append(f'seeds={tuple(s.seeds)!r}: need distinct integers >= 0')
  if not s.arms:
    errors.append('arms: the study has none')
  errors += _arm_errors(s)
  arm_names = [a.get('name') for a in s.arms if isinstance(a, dict)]
  if s.baseline and s.baseline not in arm_names:
    errors.append(f'baseline={s.baseline!r}: not an arm ({", ".join(map(str, arm_names))})')
  if not s.metrics:
    errors.append('metrics: name at least one summary.json key')
  t = s.get('teacher')
  if t and t.get('size') not in names:
    errors.append(f'teacher.size={t.get("size")!r}: not one of sizes ({", ".join(map(str, names))})')
  return errors


# ---------------------------------------------------------------------------- runs


def _base_run(s, size: dict, bases: str, python: str) -> StudyRun:
  overrides = {**flatten(s.base_overrides),
               **{f'model.{k}': v for k, v in size.items() if k != 'name'}}
  config = load.load_config_file(s.base_config, 'base_config')
  apply_overrides(config, overrides, f'base {size["name"]}')
  name = f'base_{size["name"]}'
  folder = os.path.join(bases, name)
  argv = [python, '-m', 'train', '--config', s.base_config, '--workdir', folder]
  argv += [f'--config.{k}={flag_value(v)}' for k, v in overrides.items()]
  return StudyRun(name, folder, argv, 'base', size['name'], param_counts(config.model).with_head)


def _post_run(s, arm: str, start: StudyRun, fields: dict, seed: int, teacher: StudyRun | None,
              workdir: str, python: str) -> StudyRun:
  """`arm` ('teacher' for the study's teacher) from `start` at post.seed = seed."""
  name = f'{arm}_{start.size}_s{seed}'
  post = {**flatten(s.post), **fields, 'seed': seed, 'base': start.folder}
  if teacher is not None:
    post['teacher'] = teacher.folder
  check = load.load_config_file(s.post_config, 'post_config')
  apply_overrides(check, {f'post.{k}': v for k, v in post.items()}, f'run {name}')
  folder = os.path.join(workdir, name)
  argv = [python, '-m', 'train.post', '--config', s.post_config, '--workdir', folder]
  argv += [f'--config.post.{k}={flag_value(v)}' for k, v in post.items()]
  needs = (start,) + ((teacher,) if teacher is not None else ())
  return StudyRun(name, folder, argv, 'teacher' if arm == 'teacher' else 'arm', start.size,
                  start.N, arm, seed, tuple(r.name for r in needs), 1 + max(r.depth for r in needs))


def expand_study(s, workdir: str, bases: str, python: str = sys.executable) -> list[StudyRun]:
  """Every run of the study, in dependency order: bases, the teacher, then the arms per size and
  seed. SweepError names a config key that does not exist."""
  workdir, bases = os.path.abspath(workdir), os.path.abspath(bases)
  base = {z['name']: _base_run(s, z, bases, python) for z in s.sizes}
  runs = list(base.values())
  teacher = None
  if s.get('teacher'):
    t = s.teacher
    teacher = _post_run(s, 'teacher', base[t.size], t.post.to_dict(), t.seed, None, workdir,
                        python)
    runs.append(teacher)
  for size in base:
    for seed in s.seeds:
      mine = {'base': base[size]}
      for a in s.arms:
        mine[a['name']] = _post_run(s, a['name'], mine[a.get('start', 'base')],
                                    dict(a.get('post', {})), seed,
                                    teacher if a.get('teacher') else None, workdir, python)
        runs.append(mine[a['name']])
  return runs


def _same(saved, text: str) -> bool:
  """Whether a saved config value is what the flag `text` sets (ints and floats compare as numbers)."""
  if isinstance(saved, (int, float)) and not isinstance(saved, bool):
    try:
      return float(text) == float(saved)
    except ValueError:
      return False
  return flag_value(saved) == text


def folder_errors(runs: list) -> list[str]:
  """Runs whose folder holds a config.json that disagrees with the run's flags."""
  errors = []
  for r in runs:
    path = os.path.join(r.folder, 'config.json')
    if not os.path.isfile(path):
      continue
    with open(path) as f:
      saved = load.with_defaults(json.load(f))
    bad = []
    for flag in (a for a in r.argv if a.startswith('--config.')):
      key, text = flag[len('--config.'):].split('=', 1)
      node = saved
      for part in key.split('.'):
        node = node.get(part) if isinstance(node, dict) else None
      if not _same(node, text):
        bad.append(f'{key} is {node!r}, the study sets {text}')
    if bad:
      errors.append(f'{r.folder} holds another run ({"; ".join(bad)}): move it away, or give '
                    'another --workdir / --bases')
  return errors


# ---------------------------------------------------------------------------- running


def run_phases(runs: list, parallel: int = 1, log=print) -> dict:
  """Run the study phase by phase (module docstring); -> {name: 'ok' | 'skipped' | 'failed' |
  'preempted-out' | 'blocked'}."""
  states = {}
  for depth in sorted({r.depth for r in runs}):
    ready = []
    for r in (r for r in runs if r.depth == depth):
      unfinished = [n for n in r.needs if states.get(n) not in FINISHED]
      if unfinished:
        states[r.name] = 'blocked'
        log(f'blocked {r.name}: {", ".join(unfinished)} did not finish')
      else:
        ready.append(r)
    for parent in sorted({os.path.dirname(r.folder) for r in ready}):
      these = [(r.name, r.argv) for r in ready if os.path.dirname(r.folder) == parent]
      states.update(sweep.run_all(these, parent, parallel, log))
  return states


def format_plan(runs: list) -> str:
  """The runs as a text table: phase, kind, size, N, seed, and what each starts from."""
  head = f'{"run":<28} {"phase":>5} {"kind":<7} {"size":<6} {"N":>9} {"seed":>4}  from'
  lines = [head, '-' * len(head)]
  for r in runs:
    seed = '' if r.seed is None else r.seed
    lines.append(f'{r.name:<28} {r.depth:>5} {r.kind:<7} {r.size:<6} {r.N:>9,} {seed:>4}  '
                 f'{", ".join(r.needs) or "-"}')
  lines.append(f'{len(runs)} runs in {len({r.depth for r in runs})} phases')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m launch.post_study',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--study', required=True, help='the study: configs/sweeps/post_<study>.py')
  p.add_argument('--workdir', required=True, help='study folder: its runs, study.json, study.md')
  p.add_argument('--bases', default=None,
                 help='folder of the pre-trained bases (default --workdir); studies may share it')
  p.add_argument('--config', default=None, help='a study config file instead of the named one')
  p.add_argument('--dry-run', action='store_true', help='print the runs and commands; run nothing')
  p.add_argument('--parallel', type=int, default=1, help='runs at once (default 1)')
  p.add_argument('--python', default=sys.executable, help='interpreter of the runs')
  return p


def _prepare(args):
  """(study config, runs) after every check that starts nothing; SweepError on bad input."""
  if args.parallel < 1:
    raise SweepError('--parallel must be >= 1')
  s = load_study(args.study, args.config)
  errors = study_errors(s)
  if errors:
    raise SweepError('invalid study config: ' + '; '.join(errors))
  runs = expand_study(s, args.workdir, args.bases or args.workdir, args.python)
  errors = folder_errors(runs)
  if errors:
    raise SweepError('; '.join(errors))
  return s, runs


def main(argv=None, log=print) -> int:
  args = build_parser().parse_args(argv)
  try:
    s, runs = _prepare(args)
  except (SweepError, load.ConfigError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  log(f'study {s.name}: {s.question}')
  log(format_plan(runs))
  if args.dry_run:
    log(f'\ncommands (run from {REPO_ROOT}):')
    for r in runs:
      log(shlex.join(r.argv))
    return 0
  t0 = time.perf_counter()
  states = run_phases(runs, args.parallel, log)
  result = post_report.collect(s, runs, states)
  paths = post_report.write_all(result, os.path.abspath(args.workdir))
  log(post_report.markdown(result))
  not_done = sorted(n for n, v in states.items() if v not in FINISHED)
  log(f'study {s.name}: {len(runs) - len(not_done)} of {len(runs)} runs finished in '
      f'{time.perf_counter() - t0:.0f} s; wrote {", ".join(paths)}')
  if not_done:
    log(f'not finished: {", ".join(f"{n} ({states[n]})" for n in not_done)}')
  return 1 if not_done else 0


if __name__ == '__main__':
  sys.exit(main())
