"""Learning-rate and batch-size laws: the loss-minimising LR and batch per budget, then eta_opt(C) and B_opt(C).

Units: C in FLOPs (a run's `flops_6nd`, 6·N_with_head·D); the learning rate
is the schedule's peak (`config.optim.lr`); the batch B is in tokens per
optimizer step (`config.data.global_batch_size` × `config.data.seq_len`);
loss in nats/token (`eval_loss`).

Run as ``python -m scaling.hparams --runs DIR --out OUT`` (writes
OUT/hparams.json and prints a table; `--json` as every CLI here).

Method
  * Runs are grouped by FLOP budget (as approach 2 groups them) and, within
    a budget, by model size: each group is one tuning grid.
  * Per group, for the LR law: at each distinct LR the lowest loss over the
    group's batch sizes (a profile over batch; a 1-D LR sweep is its own
    profile), then a parabola of that loss in ln LR and its minimum
    eta_opt. The batch law swaps the roles. A group with fewer than 3
    distinct values, a parabola opening downward, or a minimum outside the
    sampled values is dropped with the reason (scaling.fit.parabola_minimum).
  * Power law ln y = ln k + p ln C by least squares over the groups' minima.
    Bootstrap: runs resampled with replacement within each group, profile
    and parabola refitted; 95% percentile intervals of k, p and each minimum.
  * Compared with DeepSeek LLM (2024): eta_opt = 0.3118 C^-0.125 and
    B_opt = 0.2920 C^0.3271 tokens. Their C counts non-embedding FLOPs
    (M·D, M = 72 n_layer d² + 12 n_layer d l_seq), not 6ND; at small scale M
    is well below 6N (REFERENCE.md: 6N₁/M = 0.43 at 8 layers, d 512), so
    their values at our C are a scale reference and the exponents are the
    comparable numbers.

hparams.json schema::

  {"input": {"source": str, "n_runs": int, "excluded": [[name, reason], ...]},
   "lr" | "batch": {"k", "p",                       # y_opt = k C^p
                    "unit": str, "n_groups": int,
                    "ci": {"k": [lo, hi], "p": [lo, hi]},
                    "groups": [{"flops", "N", "n_runs", "values": [...], "opt", "loss_min",
                                "ci_opt": [lo, hi], "fitted", "deepseek"}, ...],
                    "dropped": [{"flops", "N", "n_runs", "reason"}, ...],
                    "deepseek": {"k", "p", "p_in_ci": bool | None},
                    "bootstrap": {"n", "n_ok", "seed"}},
   "skipped": {"lr" | "batch": reason}}
"""

import argparse
import sys

import numpy as np

from configs import cli
from scaling import tables
from scaling.fit import FitError, parabola_minimum, power_law
from scaling.law import percentile_interval
from scaling.points import group_budgets, load_runs

DEEPSEEK = {  # DeepSeek LLM 2024 (secondary; REFERENCE.md): y_opt = k C^p, batch in tokens.
  "lr": {"k": 0.3118, "p": -0.125},
  "batch": {"k": 0.2920, "p": 0.3271},
}
LAWS = {  # name -> (Points.hparams key, symbol, noun, unit)
  "lr": ("lr", "lr", "learning rates", "peak learning rate"),
  "batch": ("batch_tokens", "B", "batch sizes", "tokens per optimizer step"),
}


def tuning_groups(points, budget_tol=0.05):
  """Index arrays of runs sharing a FLOP budget and a model size (one tuning grid each)."""
  groups = []
  for idx in group_budgets(points.C, budget_tol):
    sizes = np.round(np.log(points.N[idx]), 6)
    for s in np.unique(sizes):
      groups.append(idx[sizes == s])
  return groups


def profile(values, L):
  """(distinct values, lowest loss at each): the profile over whatever else varies.

  values: the swept hyper-parameter per run; L: final loss per run
  (nats/token). In a (LR, batch) grid the lowest loss at one LR is the loss
  at its best batch.
  """
  key = np.round(np.log(np.asarray(values, float)), 9)
  xs = np.unique(key)
  best = np.array([np.min(np.asarray(L)[key == x]) for x in xs])
  return np.exp(xs), best


def group_minimum(values, L, law):
  """(y_opt, L_min) of one group's profile parabola; FitError (with the reason) if none."""
  _, symbol, noun, _ = LAWS[law]
  xs, ls = profile(values, L)
  y_opt, l_min, _ = parabola_minimum(xs, ls, symbol, noun, noun)
  return y_opt, l_min


def fit_law(points, law, n_boot=200, seed=0, budget_tol=0.05):
  """The eta_opt(C) (law='lr') or B_opt(C) (law='batch') power law; returns its block.

  Raises FitError when the input has no LR/batch per run, or fewer than 2
  groups give a valid minimum.
  """
  if points.hparams is None:
    raise FitError("the runs' summary.json lack config.optim.lr or config.data."
                   "global_batch_size / seq_len")
  key, _, _, unit = LAWS[law]
  y = points.hparams[key]
  groups, dropped = [], []
  for idx in tuning_groups(points, budget_tol):
    C = float(np.exp(np.mean(np.log(points.C[idx]))))
    base = {"flops": C, "N": float(points.N[idx[0]]), "n_runs": int(len(idx))}
    try:
      y_opt, l_min = group_minimum(y[idx], points.L[idx], law)
    except FitError as e:
      dropped.append({**base, "reason": str(e)})
      continue
    groups.append({**base, "values": sorted(set(np.round(y[idx], 12).tolist())), "opt": y_opt,
                   "loss_min": l_min, "_idx": idx})
  if len(groups) < 2:
    why = "; ".join(f"C={d['flops']:.3g}: {d['reason']}" for d in dropped[:4])
    raise FitError(f"the {law} law needs at least 2 budgets with a valid minimum; got "
                   f"{len(groups)}" + (f" ({why})" if why else ""))
  C = np.array([g["flops"] for g in groups])
  p, k = power_law(C, [g["opt"] for g in groups])
  samples, per_group = _bootstrap(points, groups, y, law, C, n_boot, seed)
  ds = DEEPSEEK[law]
  out = {"k": k, "p": p, "unit": unit, "n_groups": len(groups), "groups": groups,
         "dropped": dropped}
  for g, opts in zip(groups, per_group):
    g["ci_opt"] = percentile_interval(opts)
    g["fitted"] = k * g["flops"] ** p
    g["deepseek"] = ds["k"] * g["flops"] ** ds["p"]
    g.pop("_idx")
  ci_p = percentile_interval(samples[:, 0]) if len(samples) else None
  out["ci"] = {"k": percentile_interval(samples[:, 1]) if len(samples) else None, "p": ci_p}
  out["deepseek"] = {**ds, "p_in_ci": None if ci_p is None else bool(ci_p[0] <= ds["p"] <= ci_p[1])}
  out["bootstrap"] = {"n": n_boot, "n_ok": int(len(samples)), "seed": seed}
  out["_samples"] = samples
  return out


def _bootstrap(points, groups, y, law, C, n_boot, seed):
  """(p, k) rows over n_boot resamples (runs within groups) and each group's minima."""
  rng = np.random.default_rng(seed)
  rows, per_group = [], [[] for _ in groups]
  for _ in range(n_boot):
    mins = np.full(len(groups), np.nan)
    for j, g in enumerate(groups):
      idx = rng.choice(g["_idx"], len(g["_idx"]))
      try:
        mins[j] = group_minimum(y[idx], points.L[idx], law)[0]
      except FitError:
        continue
      per_group[j].append(mins[j])
    ok = np.isfinite(mins)
    if ok.sum() >= 2 and len(np.unique(C[ok])) >= 2:
      rows.append(power_law(C[ok], mins[ok]))
  return np.array(rows, float).reshape(-1, 2), per_group


def fit_hparams(points, n_boot=200, seed=0, budget_tol=0.05):
  """Both laws (whichever the runs support); returns the hparams.json dict."""
  result = {"input": {"source": points.source, "n_runs": int(len(points.N)),
                      "excluded": points.excluded}, "skipped": {}}
  for law in LAWS:
    try:
      result[law] = fit_law(points, law, n_boot, seed, budget_tol)
    except FitError as e:
      result["skipped"][law] = str(e)
  return result


def format_table(result):
  """Console summary: per law the fit, DeepSeek's, and each budget's minimum."""
  lines = [f"input: {result['input']['source']}  runs: {result['input']['n_runs']}"
           f"  excluded: {len(result['input']['excluded'])}"]
  for law, (_, symbol, _, unit) in LAWS.items():
    r = result.get(law)
    if r is None:
      lines.append(f"{law}: skipped: {result['skipped'].get(law, '')}")
      continue
    ci, ds = r["ci"], r["deepseek"]
    lines.append(f"{symbol}_opt(C) = {r['k']:.4g} C^{r['p']:.4f}   p 95% CI "
                 f"{tables.fmt_ci(ci['p'], '{:.4f}') or 'none'}, "
                 f"k {tables.fmt_ci(ci['k'], '{:.3g}') or 'none'}   "
                 f"({unit}, {r['n_groups']} tuning grids)")
    lines.append(f"  DeepSeek LLM: {ds['k']} C^{ds['p']}  (p inside our CI: "
                 f"{'-' if ds['p_in_ci'] is None else ('yes' if ds['p_in_ci'] else 'no')})")
    lines.append(f"  {'C':>9} {'N':>9} {'runs':>4} {'opt':>10} {'95% CI':>22} {'law':>10} "
                 f"{'DeepSeek':>10} {'loss_min':>8}")
    for g in r["groups"]:
      lines.append(f"  {g['flops']:>9.3g} {g['N']:>9.3g} {g['n_runs']:>4} {g['opt']:>10.4g} "
                   f"{tables.fmt_ci(g['ci_opt'], '{:.4g}'):>22} {g['fitted']:>10.4g} "
                   f"{g['deepseek']:>10.4g} {g['loss_min']:>8.4f}")
    for d in r["dropped"]:
      lines.append(f"  dropped C={d['flops']:.3g} N={d['N']:.3g} ({d['n_runs']} runs): "
                   f"{d['reason']}")
  return "\n".join(lines)


def _parser():
  p = argparse.ArgumentParser(prog="python -m scaling.hparams",
                              description=__doc__.split("\n")[0])
  p.add_argument("--runs", required=True, help="sweep folder DIR/<run>/summary.json")
  p.add_argument("--out", required=True, help="output folder (hparams.json)")
  p.add_argument("--bootstrap", type=int, default=200, help="bootstrap samples (0: none)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--budget-tol", type=float, default=0.05,
                 help="FLOPs within this many decades form one budget")
  cli.add_json_argument(p)
  return p


def main(argv=None):
  args = _parser().parse_args(argv)
  try:
    if args.bootstrap < 0:
      raise ValueError("--bootstrap must be >= 0")
    points = load_runs(args.runs, warn=lambda m: print(m, file=sys.stderr))
    result = fit_hparams(points, args.bootstrap, args.seed, args.budget_tol)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  path = tables.write_json(result, args.out, "hparams.json")
  cli.emit(tables.public(result), format_table(result) + f"\nwrote {path}", args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
