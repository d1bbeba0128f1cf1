"""The ladder: hold out runs, fit the rest, predict the held-out runs' final loss, compare.

Units: N in parameters (the fit's n_count), D in tokens, C in FLOPs (the
input's own count, e.g. summary.json `flops_6nd`), loss in nats/token,
errors in percent of the measured loss.

`python -m scaling.fit --holdout SPEC` runs it: `split` takes the held-out
runs out (SPEC is `largest-budget` or comma-separated name globs), the fit
sees only the rest, and `verify` turns that fit into predictions:

  * Per held-out run, approach 3: L̂(N_i, D_i), the fitted law at the run's
    own N and D. `ci` is the law's 95% interval (percentiles over the
    approach-3 bootstrap laws). `pi` is the 95% prediction interval of one
    measurement: each bootstrap law's log-loss plus one normal draw with the
    fit's residual sd (a run's own scatter: seed, eval sample), which the
    law's interval alone leaves out. `inside` says whether the measurement
    lies in `pi`, `inside_ci` whether it lies in `ci`.
  * Per held-out budget, where approach 2 fitted: the predicted frontier
    point N_opt = k_N C^a, D_opt = C / (6 N_opt) (interval from the
    approach-2 bootstrap), the loss there by the approach-3 law (interval
    from pairing the two bootstraps' samples), against the best held-out
    run of that budget. A run off the frontier has a higher loss, so this
    comparison is tight only for a run at (or sizes bracketing closely) the
    predicted optimum: a target run.

`target_run(result, C)` gives the compute-optimal N and D of a run at C FLOPs
from a fit (approach 3, else 2, else 1) and the loss predicted there; a
sweep trains it last and the ladder checks it.

fit.json['ladder'] schema::

  {"holdout": str, "n_fitted": int, "n_held_out": int,
   "residual_sd": float,                # sd of log L - log L̂ over the fitted points
   "runs": [{"name", "N", "D", "flops", "measured",
             "approach3": {"loss", "ci": [lo, hi], "pi": [lo, hi], "error_pct",
                           "inside": bool, "inside_ci": bool}}, ...],
   "budgets": [{"flops", "n_runs", "best_run", "best_N", "measured",
                "approach2": {"N_opt", "ci_N_opt", "D_opt", "loss", "ci", "pi",
                              "error_pct", "inside", "N_over_N_opt"}}, ...],
   "summary": {"n", "n_inside", "n_inside_ci",     # counts None without a bootstrap
               "mean_abs_error_pct", "max_abs_error_pct"},
   "skipped": {"approach2" | "approach3": reason}}

Intervals are None (and `inside` with them) when the fit had no bootstrap.
"""

import fnmatch

import numpy as np

from scaling.law import frontier, law_from_params, percentile_interval, predict_loss
from scaling.points import group_budgets

LARGEST_BUDGET = "largest-budget"
N_LAW_PARAMS = 5  # E, A, B, alpha, beta: the residual sd's degrees of freedom.


def split(points, spec, budget_tol=0.05):
  """(fitted, held_out) Points: spec is 'largest-budget' or comma-separated name globs.

  'largest-budget' holds out every run of the largest FLOP budget (budgets as
  approach 2 groups them, within budget_tol decades). The fitted points list
  the held-out runs in `excluded`. Raises ValueError when the spec selects
  nothing or everything.
  """
  spec = (spec or "").strip()
  if spec == LARGEST_BUDGET:
    groups = group_budgets(points.C, budget_tol)
    if len(groups) < 2:
      raise ValueError(f"--holdout {spec}: the input has only one FLOP budget")
    hold = np.zeros(len(points.N), bool)
    hold[groups[-1]] = True
  else:
    globs = [g.strip() for g in spec.split(",") if g.strip()]
    if not globs:
      raise ValueError(f"--holdout: expected '{LARGEST_BUDGET}' or name globs, got {spec!r}")
    hold = np.array([any(fnmatch.fnmatchcase(n, g) for g in globs) for n in points.names])
  if not hold.any():
    shown = ", ".join(points.names[:5]) + (", ..." if len(points.names) > 5 else "")
    raise ValueError(f"--holdout {spec}: matches no run (runs: {shown})")
  if hold.all():
    raise ValueError(f"--holdout {spec}: matches every run; nothing is left to fit")
  fitted, held = points.subset(~hold), points.subset(hold)
  fitted.excluded = list(points.excluded) + [
    [n, "held out: predicted by the ladder, not fitted"] for n in held.names]
  held.excluded = []
  return fitted, held


def _log_losses(x_B5, N, D):
  """log L̂(N, D) of each bootstrap parameter row (log_A, log_B, log_E, alpha, beta)."""
  x = np.asarray(x_B5, float)
  u1 = x[:, 0] - x[:, 3] * np.log(N)
  u2 = x[:, 1] - x[:, 4] * np.log(D)
  return np.logaddexp(np.logaddexp(u1, u2), x[:, 2])


def residual_sd(law, points):
  """sd of log L - log L̂(N, D) over points (n - 5 degrees of freedom)."""
  r = np.log(points.L) - np.log(predict_loss(law, points.N, points.D))
  return float(np.sqrt(np.sum(r ** 2) / max(1, len(r) - N_LAW_PARAMS)))


def _loss_row(predicted, log_samples, sd, z, measured=None):
  """{"loss", "ci", "pi"} (+ "error_pct", "inside", "inside_ci" against a measurement)."""
  row = {"loss": float(predicted), "ci": None, "pi": None}
  if len(log_samples) >= 2:
    row["ci"] = percentile_interval(np.exp(log_samples))
    row["pi"] = percentile_interval(np.exp(log_samples + sd * z[:len(log_samples)]))
  if measured is not None:
    row["error_pct"] = float(100.0 * (predicted - measured) / measured)
    row["inside"] = None if row["pi"] is None else bool(row["pi"][0] <= measured <= row["pi"][1])
    row["inside_ci"] = None if row["ci"] is None else bool(row["ci"][0] <= measured <= row["ci"][1])
  return row


def _frontier2(a2, C):
  """Approach 2's N_opt at C and its bootstrap samples (k_N C^a per (a, k) row)."""
  n_opt = a2["k_N"] * C ** a2["a"]
  s = a2.get("_samples")
  samples = np.empty(0) if s is None or not len(s) else s[:, 1] * C ** s[:, 0]
  return float(n_opt), samples


def verify(result, fitted, held, spec="", seed=0, budget_tol=0.05):
  """Predicted vs measured final loss of the held-out runs; returns fit.json's 'ladder' block.

  result: fit_all on `fitted` (the approach-3 and approach-2 blocks with their
  in-memory bootstrap samples); held: the held-out Points. seed draws the
  prediction interval's noise.
  """
  a3, a2 = result.get("approach3"), result.get("approach2")
  block = {"holdout": spec, "n_fitted": int(len(fitted.N)), "n_held_out": int(len(held.N)),
           "runs": [], "budgets": [], "skipped": {}}
  for name, r in (("approach3", a3), ("approach2", a2)):
    if r is None:
      block["skipped"][name] = result.get("skipped", {}).get(name, "not fitted")
  x_B5 = a3.get("_samples") if a3 else None
  x_B5 = np.empty((0, 5)) if x_B5 is None else np.asarray(x_B5)
  z = np.random.default_rng(seed).standard_normal(max(len(x_B5), 1))
  sd = residual_sd(a3, fitted) if a3 else None
  if a3:
    block["residual_sd"] = sd
  for i, name in enumerate(held.names):
    N, D, C, L = (float(v[i]) for v in (held.N, held.D, held.C, held.L))
    row = {"name": name, "N": N, "D": D, "flops": C, "measured": L}
    if a3:
      row["approach3"] = _loss_row(predict_loss(a3, N, D), _log_losses(x_B5, N, D), sd, z, L)
    block["runs"].append(row)
  if a2:
    for idx in group_budgets(held.C, budget_tol):
      block["budgets"].append(_budget_row(a2, a3, held, idx, x_B5, sd, z))
  rows = [r["approach3"] for r in block["runs"] if "approach3" in r]
  if rows:
    errs = np.abs([r["error_pct"] for r in rows])
    block["summary"] = {"n": len(rows),  # the n_inside counts are None without a bootstrap
                        "n_inside": _count(r["inside"] for r in rows),
                        "n_inside_ci": _count(r["inside_ci"] for r in rows),
                        "mean_abs_error_pct": float(errs.mean()),
                        "max_abs_error_pct": float(errs.max())}
  return block


def _count(flags):
  """How many flags are True, or None when there are no intervals (flags None)."""
  flags = list(flags)
  return None if any(f is None for f in flags) else int(sum(flags))


def _budget_row(a2, a3, held, idx, x_B5, sd, z):
  """One held-out budget: approach 2's frontier point and its loss vs the best held-out run."""
  C = float(np.exp(np.mean(np.log(held.C[idx]))))
  best = idx[int(np.argmin(held.L[idx]))]
  n_opt, n_samples = _frontier2(a2, C)
  row = {"flops": C, "n_runs": int(len(idx)), "best_run": held.names[best],
         "best_N": float(held.N[best]), "measured": float(held.L[best])}
  pred = {"N_opt": n_opt, "ci_N_opt": percentile_interval(n_samples), "D_opt": C / (6 * n_opt),
          "N_over_N_opt": float(held.N[best] / n_opt)}
  if a3:
    k = min(len(n_samples), len(x_B5))
    logs = np.array([_log_losses(x_B5[j:j + 1], n_samples[j], C / (6 * n_samples[j]))[0]
                     for j in range(k)])
    pred.update(_loss_row(predict_loss(a3, n_opt, C / (6 * n_opt)), logs, sd, z,
                          row["measured"]))
  row["approach2"] = pred
  return row


def target_run(result, flops, points=None, approach=None, seed=0):
  """Compute-optimal N (parameters) and D (tokens) of a run at `flops` FLOPs, from a fit.

  approach: 'approach3' (the law's frontier, C = 6 N D with the fit's N),
  'approach2' or 'approach1' (N_opt = k_N C^a, D = C / (6 N)); default the
  first of those the fit has. The loss predicted at (N, D) comes from the
  approach-3 law when there is one, with its 95% interval and, given the
  fitted points (for the residual sd), a 95% prediction interval.
  Raises ValueError when the fit has none of the approaches.
  """
  names = [approach] if approach else ["approach3", "approach2", "approach1"]
  name = next((n for n in names if result.get(n)), None)
  if name is None:
    raise ValueError(f"target run: the fit has no {' or '.join(names)} "
                     f"({'; '.join(f'{k}: {v}' for k, v in result.get('skipped', {}).items())})")
  r, C = result[name], float(flops)
  a3 = result.get("approach3")
  x_B5 = a3.get("_samples") if a3 else None
  x_B5 = np.empty((0, 5)) if x_B5 is None else np.asarray(x_B5)
  if name == "approach3":
    n, d = (float(v) for v in frontier(r, C))
    from_samples = [frontier(law_from_params(x), C)[0] for x in x_B5]
  else:
    n, from_samples = _frontier2(r, C)
    d = C / (6 * n)
  n_s = np.asarray(from_samples, float)
  out = {"flops": C, "approach": name, "N": n, "D": d, "tokens_per_param": d / n,
         "ci": {"N": percentile_interval(n_s), "D": percentile_interval(C / (6 * n_s))}}
  if a3:
    sd = residual_sd(a3, points) if points is not None else 0.0
    z = np.random.default_rng(seed).standard_normal(max(len(x_B5), 1))
    row = _loss_row(predict_loss(a3, n, d), _log_losses(x_B5, n, d), sd, z)
    out.update({"loss": row["loss"], "ci_loss": row["ci"],
                "pi_loss": row["pi"] if points is not None else None})
  return out

