"""Vmapped replicas: R copies of one run in one program, differing in init seed or optimizer scalars.

`train.replicas = 'optim.lr=1e-3,3e-3,1e-2'` trains three copies of the run,
one per value, as one jitted step vmapped over a stacked state: the parameters
and optimizer moments get a leading replica axis (unsharded: every device holds
every replica's slice of the state, sharded as a lone run's would be). Several
keys vary together: 'init_seed=0,1;optim.lr=1e-3,3e-3' (each key lists R
values; replica i takes the i-th of each).

- What may vary: `init_seed` (the parameter init; the data order stays the
  run's `seed`, so all replicas read one batch stream) and the optimizer's
  scalars optim.lr, b1, b2, eps and weight_decay. The optimizer then keeps
  them in its state (`optax.inject_hyperparams`), so each replica's slice
  carries its own values through checkpoints and resumes.
- Each replica is a run of its own to everything downstream: its folder
  `WORKDIR/<name>` (`folder_names`) holds the config.json that trains it alone
  (`python -m train --config WORKDIR/<name>/config.json ...`), its curve.json,
  TensorBoard events and summary.json, so `scaling.fit --runs WORKDIR` sees R
  runs. The stacked checkpoint lives in WORKDIR; rerunning the command resumes
  all replicas together.
- A replica whose loss or gradient norm turns non-finite has that update
  dropped (as train.nonfinite='skip' does, so no NaN reaches the state or a
  checkpoint); under nonfinite='stop' its curve then ends there, its
  summary.json records `diverged_at_step` and a null eval loss, and the
  others train on. The run stops (status cli.NONFINITE) when every replica has.
"""

import ml_collections

KEYS = ('init_seed', 'optim.lr', 'optim.b1', 'optim.b2', 'optim.eps', 'optim.weight_decay')
OPTIMIZER_SCALARS = ('lr', 'b1', 'b2', 'eps', 'weight_decay')  # optim.* kept in the optimizer state.
_SHORT = {'init_seed': 'seed', 'optim.lr': 'lr', 'optim.b1': 'b1', 'optim.b2': 'b2',
          'optim.eps': 'eps', 'optim.weight_decay': 'wd'}


def parse(spec: str) -> dict[str, list]:
  """'optim.lr=1e-3,3e-3;init_seed=0,1' -> {'optim.lr': [0.001, 0.003], 'init_seed': [0, 1]}.

  {} for '' (no replicas). ValueError naming the problem otherwise.
  """
  out = {}
  for part in filter(None, (p.strip() for p in str(spec).split(';'))):
    key, sep, values = part.partition('=')
    key = key.strip()
    if not sep or key not in KEYS:
      raise ValueError(f'{part!r}: expected KEY=V1,V2,... with KEY one of {", ".join(KEYS)}')
    if key in out:
      raise ValueError(f'{key} is given twice')
    cast = int if key == 'init_seed' else float
    try:
      out[key] = [cast(v) for v in values.split(',') if v.strip()]
    except ValueError:
      raise ValueError(f'{key}: values must be {cast.__name__}s, got {values!r}') from None
  lengths = {len(v) for v in out.values()}
  if len(lengths) > 1:
    raise ValueError('every key needs the same number of values (one per replica), got '
                     + ', '.join(f'{k}: {len(v)}' for k, v in out.items()))
  if out and lengths.pop() < 2:
    raise ValueError('replicas need at least 2 values')
  return out


def count(config) -> int:
  """R, the number of replicas (0: a lone run)."""
  values = parse(config.train.replicas)
  return len(next(iter(values.values()))) if values else 0


def init_seed(config) -> int:
  """The seed of the parameter init: `init_seed`, or `seed` where it is -1."""
  return config.seed if config.init_seed < 0 else config.init_seed


def replica_configs(config) -> list[ml_collections.ConfigDict]:
  """Each replica as the config that trains it alone (train.replicas cleared)."""
  values = parse(config.train.replicas)
  out = []
  for i in range(count(config)):
    c = ml_collections.ConfigDict(config.to_dict())
    c.train.replicas = ''
    for key, vs in values.items():
      section, _, field = key.rpartition('.')
      (c[section] if section else c)[field] = vs[i]
    out.append(c)
  return out


def folder_names(config) -> list[str]:
  """'r0_lr=0.001', 'r1_lr=0.003', ...: each replica's folder under the run's workdir."""
  values = parse(config.train.replicas)
  return [f'r{i}_' + '_'.join(f'{_SHORT[k]}={vs[i]:g}' for k, vs in values.items())
          for i in range(count(config))]


def optimizer_values(config) -> dict[str, list[float]]:
  """{scalar: R values} of the optimizer's per-replica scalars (all of OPTIMIZER_SCALARS)."""
  return {k: [float(c.optim[k]) for c in replica_configs(config)] for k in OPTIMIZER_SCALARS}


def errors(config) -> list[str]:
  """Problems with train.replicas (and init_seed), each naming the key."""
  t, errs = config.train, []
  if config.init_seed < -1:
    errs.append(f'init_seed={config.init_seed}: must be >= 0, or -1 for `seed`')
  try:
    values = parse(t.replicas)
  except ValueError as e:
    return errs + [f'train.replicas={t.replicas!r}: {e}']
  if not values:
    return errs
  if t.init_from:
    errs.append('train.replicas with train.init_from: a cooldown branch starts from one '
                'parent run; branch each replica\'s own config instead')
  if config.model.moe_dispatch == 'alltoall' and config.model.moe_num_experts:
    errs.append("train.replicas with model.moe_dispatch='alltoall': its shard_map over the "
                "expert axis cannot run under the replicas' vmap; use 'dropless' or 'blocked'")
  if any(s < 0 for s in values.get('init_seed', [])):
    errs.append(f'train.replicas: init_seed values must be >= 0, got {values["init_seed"]}')
  for key in ('optim.lr', 'optim.eps'):
    if any(v <= 0 for v in values.get(key, [])):
      errs.append(f'train.replicas: {key} values must be > 0, got {values[key]}')
  for key in ('optim.b1', 'optim.b2'):
    if any(not 0 <= v < 1 for v in values.get(key, [])):
      errs.append(f'train.replicas: {key} values must be in [0, 1), got {values[key]}')
  if any(v < 0 for v in values.get('optim.weight_decay', [])):
    errs.append(f'train.replicas: optim.weight_decay values must be >= 0, got '
                f'{values["optim.weight_decay"]}')
  return errs
