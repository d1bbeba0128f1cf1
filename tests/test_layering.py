"""The house as built: every import points down (README "Architecture"), imports inside functions included.

Each module's imports are read with `ast` (top level and inside functions),
mapped to the project's rooms, and checked against the rules table below. A
circle between two project modules fails too. Function-local imports are
allowed only for the optional heavy dependencies named in LOCAL_OK.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('configs', 'model', 'train', 'scaling', 'launch')

# scaling/ has three halves: pure (numbers in, numbers out), arithmetic (budgets, memory), cost.
SCALING_PURE = {'scaling.points', 'scaling.law', 'scaling.lbfgs', 'scaling.fit', 'scaling.tables',
                'scaling.plot', 'scaling.report', 'scaling.ladder', 'scaling.hparams', 'scaling.rules',
                'scaling.moe_law'}
SCALING_ARITHMETIC = {'scaling.plan', 'scaling.memory'}
SCALING_COST = {'scaling.flops', 'scaling.aot', 'scaling.quant', 'scaling.gptq',
                'scaling.export'}
MODEL_JAX_FREE = {'model.counts'}

# Third-party modules that may be imported inside a function (optional or heavy), with the reason.
LOCAL_OK = {
    'matplotlib': 'plots only',
    'scaling.plot': 'matplotlib, only when plotting',
    'tensorboardX': 'only process 0 writes events',
    'jax.experimental.topologies': 'libtpu, for scaling.aot only',
    'pyarrow': 'parquet input only',
    'sentencepiece': 'BPE tokenizers only',
    'fcntl': 'POSIX only',
    'gcsfs': 'gs:// paths only',
    'ray': 'the Ray sweep backend only',
}


def room(module: str) -> str:
  """The room of a project module: a package, or a half of scaling/."""
  if module in SCALING_PURE:
    return 'scaling.pure'
  if module in SCALING_ARITHMETIC:
    return 'scaling.arithmetic'
  if module in SCALING_COST:
    return 'scaling.cost'
  return module.split('.')[0]


def allowed(src: str, dst: str) -> bool:
  """Whether module `src` may import project module `dst` (the README's table)."""
  r_src, r_dst = room(src), room(dst)
  if r_src in ('benchmarks', 'tests'):
    return True
  rules = {
      'configs': {'configs'},
      'model': {'model', 'configs'},
      'train': {'train', 'model', 'configs'},
      'scaling.pure': {'scaling.pure', 'configs'},
      'scaling.arithmetic': {'scaling.pure', 'scaling.arithmetic', 'configs'},
      'scaling.cost': {'scaling.pure', 'scaling.arithmetic', 'scaling.cost', 'train', 'model',
                       'configs'},
      'launch': {'launch', 'scaling.pure', 'scaling.arithmetic', 'model', 'configs'},
  }
  if r_src == 'scaling.arithmetic' and r_dst == 'model':
    return dst in MODEL_JAX_FREE
  if r_src == 'launch' and r_dst == 'model':
    return dst in MODEL_JAX_FREE
  return r_dst in rules[r_src]


def project_modules() -> dict[str, str]:
  out = {}
  for top in PACKAGES + ('benchmarks',):
    for folder, _, names in os.walk(os.path.join(REPO, top)):
      for n in names:
        if n.endswith('.py'):
          rel = os.path.relpath(os.path.join(folder, n), REPO)[:-3].replace(os.sep, '.')
          out[rel.removesuffix('.__init__').removesuffix('.__main__')] = os.path.join(folder, n)
  return out


MODULES = project_modules()


def imports(path: str, module: str) -> list[tuple[str, bool, int]]:
  """(imported module, inside a function?, line) for every import in the file."""
  tree = ast.parse(open(path).read(), path)
  out = []

  def visit(node, in_func):
    for child in ast.iter_child_nodes(node):
      inner = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
      if isinstance(child, ast.Import):
        out.extend((a.name, inner, child.lineno) for a in child.names)
      elif isinstance(child, ast.ImportFrom):
        base = child.module or ''
        if child.level:  # Relative import: resolve against the package.
          base = '.'.join(module.split('.')[:-child.level] + ([base] if base else []))
        # `from scaling import fit` imports scaling.fit; `from model.counts import f`, model.counts.
        out.extend((f'{base}.{a.name}', inner, child.lineno) for a in child.names)
      visit(child, inner)

  visit(tree, False)
  return out


def _project(name: str) -> str | None:
  if name.split('.')[0] not in PACKAGES:
    return None
  while name and name not in MODULES:
    name = name.rpartition('.')[0]
  return name or None


EDGES = {m: {(_project(n), inner, line) for n, inner, line in imports(p, m) if _project(n)}
         for m, p in MODULES.items()}


@pytest.mark.parametrize('module', sorted(MODULES))
def test_every_import_points_down(module):
  bad = [f'line {line}: {module} ({room(module)}) imports {dst} ({room(dst)})'
         for dst, _, line in EDGES[module] if dst != module and not allowed(module, dst)]
  assert not bad, '\n'.join(bad)


@pytest.mark.parametrize('module', sorted(MODULES))
def test_function_local_imports_only_for_optional_heavy_dependencies(module):
  bad = []
  for name, inner, line in imports(MODULES[module], module):
    if inner and not any(name == k or name.startswith(k + '.') for k in LOCAL_OK):
      bad.append(f'line {line}: {name}')
  assert not bad, f'{module} imports inside functions: {bad}'


def test_no_import_circles():
  graph = {m: {d for d, _, _ in e if d != m} for m, e in EDGES.items()}
  circles = []

  def walk(node, path):
    for nxt in graph.get(node, ()):
      if nxt == path[0]:
        circles.append(' -> '.join(path + [nxt]))
      elif nxt not in path and len(path) < 12:
        walk(nxt, path + [nxt])

  for m in sorted(graph):
    walk(m, [m])
  assert not circles, circles[:5]


def test_the_rules_catch_what_they_should():
  # The checker itself can fail: an upward import and an import of train from launch are refused.
  assert not allowed('model.transformer', 'train.step')
  assert not allowed('launch.sweep', 'train.loop')
  assert not allowed('scaling.fit', 'scaling.plan')
  assert not allowed('scaling.plan', 'model.transformer')
  assert not allowed('configs.base', 'model.counts')
  assert allowed('scaling.aot', 'train.step') and allowed('launch.sweep', 'model.counts')
