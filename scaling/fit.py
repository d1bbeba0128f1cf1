"""Scaling-law fits: Chinchilla's approaches 1, 2 and 3, with bootstrap intervals.

Run as ``python -m scaling.fit (--csv F | --runs DIR) --out OUT`` (``--holdout
largest-budget`` predicts runs it did not fit: scaling/ladder.py). Pure
numpy (matplotlib and tensorboardX only for plots, in scaling/plot.py); it
imports nothing from model/ or train/, so it fits anyone's data. Inputs are
`scaling.points.Points` (CSV or a sweep folder), the law's algebra is
`scaling/law.py`, the optimizer `scaling/lbfgs.py`, fit.json and the tables
`scaling/tables.py`.

Units: N in parameters (which count: ``n_count``), D in tokens, C in FLOPs,
loss in nats/token.

Which FLOP count C is
  * Approaches 1 and 2 use the input's own FLOP number (``flops`` column,
    ``flops_6nd`` of a run, ``flops`` of a curve row), else 6·N·D.
  * Approach 3's frontier uses C = 6·N·D with the chosen N.

fit.json schema (every number is a float unless noted)::

  {
    "input": {"source": str, "n_count": str, "n_points": int,
              "excluded": [[name, reason], ...]},
    "approach1": {"a", "b", "k_N", "k_D",          # N_opt = k_N C^a, D_opt = k_D C^b
                  "curve_source": str, "n_runs": int,
                  "n_envelope": int,          # FLOP values fitted (of the 1,500-point grid)
                  "n_envelope_covered": int,  # ... reached by at least 2 curves
                  "n_interior": int,          # ... whose winner has a smaller and a larger
                                              #     run covering it with a higher loss
                  "interior_only": bool,      # fitted: interior values (default) or all covered
                  "n_distinct_N_opt": int, "warning": str,  # warning only when few remain
                  "ci": {"a": [lo, hi], "b": [lo, hi]}},
    "approach2": {"a", "b", "k_N", "k_D",
                  "budgets": [{"flops", "n_points", "N_opt", "D_opt", "loss_min",
                               "ci_N_opt": [lo, hi]} ...],
                  "dropped_budgets": [{"flops", "reason"} ...],
                  "ci": {"a": [lo, hi], "b": [lo, hi]}},
    "approach3": {"E", "A", "B", "alpha", "beta", "log_E", "log_A", "log_B",
                  "objective",            # sum of Huber losses at the optimum
                  "n_points": int, "n_starts": int, "n_converged": int,
                  "delta", "G", "a", "b",   # frontier N_opt = G (C/6)^a
                  "ci_flops",             # C at which N_opt/D_opt/loss CIs are given
                  "at_flops": {"N_opt", "D_opt", "tokens_per_param", "loss"},
                  "ci": {"E": [lo, hi], "A", "B", "alpha", "beta", "G", "a", "b",
                         "N_opt", "D_opt", "tokens_per_param", "loss"},
                  "bootstrap": {"n": int, "n_ok": int, "seed": int, "starts": int}},
    "n_conventions": {"with_head" | "non_embedding":   # a, b with either N (Pearce & Song)
                      {"approachK": {"a", "b", "ci": {"a", "b"}, "n_boot": int} | {"skipped"}}},
    "skipped": {"approachK" | "n_conventions": reason},  # what the input cannot support
    "prediction": {...},                  # only with --predict-flops
    "ladder": {...},                      # only with --holdout (schema: scaling/ladder.py)
    "moe": {...},                         # only with several expert counts (scaling/moe_law.py)
    "target_run": {"flops", "approach", "N", "D", "tokens_per_param", "ci": {"N", "D"},
                   "loss", "ci_loss", "pi_loss"}   # only with --target-flops
  }

Intervals are 95% percentile-bootstrap intervals. The main blocks use
``--n-count``; `n_conventions` refits the other convention on the same
points (C kept as the input's FLOP count) with fewer bootstrap samples
(``--conventions-bootstrap``, default min(--bootstrap, 50)). With
``--holdout`` every block is the fit of the runs not held out.
"""
import argparse
import math
import os
import sys
import time

import numpy as np

from scaling import ladder, moe_law, tables
from scaling.lbfgs import BOOT_FTOL, HUBER_DELTA, SCIPY_FTOL, batched_lbfgs, distinct_optima
from scaling.law import frontier, law_from_params, percentile_interval, predict_loss
from scaling.points import (N_COUNTS, drop_highest_loss, group_budgets, load_csv, load_runs,
                            parse_columns)

NOTHING_FITTED = 3  # Exit status when the input supports no approach (2 is bad input).


class FitError(ValueError):
  """An approach cannot be fitted to this input; the message says why."""


# ----------------------------------------------------------------------------
# Approach 3: L(N, D) = E + A/N^alpha + B/D^beta


def chinchilla_grid():
  """The 4,500 starts of Chinchilla: (log_A, log_B, log_E, alpha, beta) rows."""
  ab = np.arange(0.0, 25.1, 5.0)
  e = np.arange(-1.0, 1.01, 0.5)
  ex = np.arange(0.0, 2.01, 0.5)
  grid = np.meshgrid(ab, ab, e, ex, ex, indexing="ij")
  return np.stack([g.ravel() for g in grid], axis=1)


def huber(r, delta=HUBER_DELTA):
  """Huber loss (same as scipy.special.huber): r²/2 inside delta, linear outside."""
  absr = np.abs(r)
  return np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))


def _objective(x_P5, logN_n, logD_n, logL_n, w_Pn, delta, grad=True):
  """Weighted Huber objective of P parameter rows (and its gradient, P×5).

  w_Pn: per-problem point weights (1×n broadcasts): sum-Huber uses counts,
  mean-Huber uses counts/n.
  """
  la, lb, le, al, be = (x_P5[:, i:i + 1] for i in range(5))
  u1_Pn = la - al * logN_n
  u2_Pn = lb - be * logD_n
  m_Pn = np.maximum(np.maximum(u1_Pn, u2_Pn), le)
  e1 = np.exp(u1_Pn - m_Pn)
  e2 = np.exp(u2_Pn - m_Pn)
  e3 = np.exp(le - m_Pn)
  s_Pn = e1 + e2 + e3
  r_Pn = m_Pn + np.log(s_Pn) - logL_n
  f_P = np.sum(w_Pn * huber(r_Pn, delta), axis=1)
  if not grad:
    return f_P
  q_Pn = w_Pn * np.clip(r_Pn, -delta, delta) / s_Pn
  q1, q2 = q_Pn * e1, q_Pn * e2
  g_P5 = np.stack([q1.sum(1), q2.sum(1), (q_Pn * e3).sum(1),
                   -(q1 @ logN_n), -(q2 @ logD_n)], axis=1)
  return f_P, g_P5


def _logs(N, D, L):
  """Validated logs of N, D, L (ValueError on NaN or non-positive values)."""
  out = []
  for name, v in (("N", N), ("D", D), ("loss", L)):
    v = np.asarray(v, float)
    bad = ~np.isfinite(v) | (v <= 0)
    if bad.any():
      raise ValueError(f"{name} has NaN or non-positive values at index "
                       f"{np.where(bad)[0][:5].tolist()}")
    out.append(np.log(v))
  return out


def _check_identifiable(N, D):
  """FitError when (N, D) cannot determine the 5 parameters of approach 3."""
  n = len(N)
  if n <= 5:
    raise FitError(f"approach 3 has 5 parameters and needs more points than that; got {n}")
  if len(np.unique(np.round(np.log(N), 9))) < 2:
    raise FitError("approach 3 needs at least 2 distinct model sizes N")
  if len(np.unique(np.round(np.log(D), 9))) < 2:
    raise FitError("approach 3 needs at least 2 distinct token counts D")


def _multi_start(logN, logD, logL, W_Pn, starts_P5, delta, reduce, max_iter,
                 ftol=SCIPY_FTOL):
  """Batched L-BFGS from every start; W_Pn rows are per-problem point counts."""
  n = len(logN)
  scale = 1.0 / n if reduce == "mean" else 1.0
  if reduce not in ("sum", "mean"):
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
  W_Pn = np.asarray(W_Pn, float) * scale

  def fun(x, rows, grad):
    w = W_Pn if W_Pn.shape[0] == 1 else W_Pn[rows]
    return _objective(x, logN, logD, logL, w, delta, grad)

  return batched_lbfgs(fun, starts_P5, max_iter=max_iter, ftol=ftol)


def fit_approach3(N, D, L, starts=None, delta=HUBER_DELTA, reduce="sum",
                  max_iter=1000, polish=True, return_all=False):
  """Chinchilla's approach-3 fit, vectorized over all starts.

  Minimises sum_i Huber_delta(LSE(log_A - alpha log N_i, log_B - beta log D_i,
  log_E) - log L_i) with L-BFGS from every start (default: the 4,500-point
  Chinchilla grid) using scipy's stopping rule, keeps the best, then (polish)
  refines the 8 best distinct optima with a tight stopping rule.
  reduce='mean' averages instead of summing (the Chinchilla pitfall; for
  demonstration only). Returns the law dict (see module docstring) plus
  'objective', 'n_points', 'n_starts', 'n_converged', 'delta', 'x'.
  Raises FitError when there are too few points or no start converges.
  """
  logN, logD, logL = _logs(N, D, L)
  _check_identifiable(N, D)
  starts = chinchilla_grid() if starts is None else np.atleast_2d(np.asarray(starts, float))
  x, f, status, n_iter = _multi_start(logN, logD, logL, np.ones((1, len(logN))), starts,
                                      delta, reduce, max_iter)
  ok = (status == 0) | (status == 2)
  if not ok.any():
    raise FitError(f"approach 3: the fit did not converge from any of {len(starts)} "
                   f"starts (max_iter={max_iter})")
  f_ok = np.where(ok, f, np.inf)
  best = int(np.argmin(f_ok))
  xb, fb = x[best], float(f[best])
  if polish:  # refine the best few optima with a tight stopping rule
    top = distinct_optima(x[np.argsort(f_ok)[:64]], 8)
    xp, fp, stp, _ = _multi_start(logN, logD, logL, np.ones((1, len(logN))), top, delta,
                                  reduce, max_iter, ftol=BOOT_FTOL)
    j = int(np.argmin(np.where(np.isfinite(fp), fp, np.inf)))
    if np.isfinite(fp[j]) and fp[j] < fb:
      xb, fb = xp[j], float(fp[j])
  law = law_from_params(xb)
  law.update({"objective": fb, "n_points": int(len(logN)), "n_starts": int(len(starts)),
              "n_converged": int(ok.sum()), "delta": delta, "reduce": reduce,
              "iterations": int(n_iter[best]), "x": xb.tolist()})
  if return_all:
    order = np.argsort(f_ok)
    law["_optima"] = x[order[np.isfinite(f_ok[order])]]
  return law


def bootstrap_approach3(N, D, L, starts_K5, n_boot=200, seed=0, delta=HUBER_DELTA,
                        max_iter=1000):
  """Refit approach 3 on n_boot resamples (points with replacement).

  Every resample is refitted from each row of starts_K5 (by default the best
  distinct local optima of the full-grid fit: the full grid on every resample
  would cost n_boot × 4,500 runs); all n_boot·K problems run as one batch.
  Returns an (n_ok, 5) array of parameter rows and the number of failures.

  Pitfall: scipy's stopping rule is an absolute decrease of 2.2e-9 once the
  objective is below 1 (it divides by max(|f|, 1)); the summed Huber
  objective is ~1e-3, so a refit started at the full-data optimum stops
  at its start and the intervals collapse (alpha's 95% CI on Epoch's data:
  width 0.002 instead of 0.05). Refits therefore use ftol = BOOT_FTOL.
  """
  logN, logD, logL = _logs(N, D, L)
  n = len(logN)
  rng = np.random.default_rng(seed)
  W_Bn = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])
  K = len(starts_K5)
  W_Pn = np.repeat(W_Bn, K, axis=0)
  starts_P5 = np.tile(starts_K5, (n_boot, 1))
  x, f, status, _ = _multi_start(logN, logD, logL, W_Pn, starts_P5, delta, "sum", max_iter,
                                 ftol=BOOT_FTOL)
  ok = ((status == 0) | (status == 2)) & np.isfinite(f)
  f_BK = np.where(ok, f, np.inf).reshape(n_boot, K)
  best_B = np.argmin(f_BK, axis=1)
  good = np.isfinite(f_BK[np.arange(n_boot), best_B])
  x_B5 = x.reshape(n_boot, K, 5)[np.arange(n_boot), best_B]
  return x_B5[good], int((~good).sum())


_ci = percentile_interval  # 95% percentile interval [lo, hi] (None if fewer than 2 samples).


def approach3_derived(x_B5, C):
  """Per-sample law quantities (E, A, ..., N_opt at C, loss at C) as arrays."""
  out = {k: [] for k in ("E", "A", "B", "alpha", "beta", "G", "a", "b",
                         "N_opt", "D_opt", "tokens_per_param", "loss")}
  for x in x_B5:
    law = law_from_params(x)
    n_opt, d_opt = frontier(law, C)
    for key in ("E", "A", "B", "alpha", "beta", "G", "a", "b"):
      out[key].append(law[key])
    out["N_opt"].append(float(n_opt)); out["D_opt"].append(float(d_opt))
    out["tokens_per_param"].append(float(d_opt / n_opt))
    out["loss"].append(float(predict_loss(law, n_opt, d_opt)))
  return {k: np.array(v) for k, v in out.items()}


def run_approach3(points, n_boot=200, seed=0, ci_flops=None, boot_starts=16,
                  starts=None, max_iter=1000):
  """Approach 3 on Points with bootstrap CIs; returns the fit.json block.

  The in-memory '_samples' key holds the bootstrap parameter rows (for plots).
  """
  law = fit_approach3(points.N, points.D, points.L, starts=starts, max_iter=max_iter,
                      return_all=True)
  C = float(ci_flops if ci_flops is not None else np.max(6 * points.N * points.D))
  n_opt, d_opt = frontier(law, C)
  law["ci_flops"] = C
  law["at_flops"] = {"N_opt": float(n_opt), "D_opt": float(d_opt),
                     "tokens_per_param": float(d_opt / n_opt),
                     "loss": float(predict_loss(law, n_opt, d_opt))}
  optima = law.pop("_optima")
  if n_boot > 0:
    start_rows = distinct_optima(np.vstack([np.array(law["x"])[None], optima]), boot_starts)
    x_B5, n_fail = bootstrap_approach3(points.N, points.D, points.L, start_rows,
                                       n_boot, seed, max_iter=max_iter)
    derived = approach3_derived(x_B5, C)
    law["ci"] = {k: _ci(v) for k, v in derived.items()}
    law["bootstrap"] = {"n": n_boot, "n_ok": int(len(x_B5)), "n_failed": n_fail,
                        "seed": seed, "starts": int(len(start_rows))}
    law["_samples"] = x_B5
  return law


# ----------------------------------------------------------------------------
# Approach 2: IsoFLOP parabolas


def parabola_minimum(X, L, symbol="N", noun="model sizes", range_noun="sizes"):
  """Parabola L = c0 + c1 x + c2 x², x = ln X; returns (X_opt, L_min, coeffs).

  X is any positive quantity swept at fixed compute (N, a learning rate, a
  batch size); L in nats/token. Raises FitError for fewer than 3 distinct
  values, a parabola opening downward, or a minimum outside the sampled
  values (an extrapolation, not a measurement); the messages name symbol
  and noun.
  """
  X = np.asarray(X, float)
  L = np.asarray(L, float)
  x = np.log(X)
  n_distinct = len(np.unique(np.round(x, 9)))
  if n_distinct < 3:
    raise FitError(f"fewer than 3 distinct {noun} ({n_distinct})")
  c2, c1, c0 = np.polyfit(x, L, 2)
  if c2 <= 0:
    raise FitError(f"parabola opens downward (curvature {c2:.3g}): no minimum")
  x_opt = -c1 / (2 * c2)
  if not (x.min() <= x_opt <= x.max()):
    raise FitError(f"minimum {symbol}={math.exp(x_opt):.3g} lies outside the sampled "
                   f"{range_noun} [{X.min():.3g}, {X.max():.3g}]")
  return math.exp(x_opt), c0 - c1 * c1 / (4 * c2), (c2, c1, c0)


def isoflop_minimum(N, L):
  """Approach 2's parabola of loss in ln N at one budget: (N_opt, L_min, coeffs).

  Raises FitError for fewer than 3 sizes, a parabola opening downward, or a
  minimum outside the sampled sizes.
  """
  return parabola_minimum(N, L, "N", "model sizes", "sizes")


def power_law(C, Y):
  """Least squares log Y = log k + p log C; returns (p, k)."""
  p, logk = np.polyfit(np.log(C), np.log(Y), 1)
  return float(p), float(math.exp(logk))


def _approach2_core(points, groups, tol_span):
  """Per-budget minima (list of dicts) and dropped budgets (with reasons)."""
  budgets, dropped = [], []
  for idx in groups:
    C = float(np.exp(np.mean(np.log(points.C[idx]))))
    span = float(np.log10(points.C[idx].max() / points.C[idx].min()))
    try:
      if span > tol_span:
        raise FitError(f"points span {span:.2f} dex of FLOPs: not one IsoFLOP budget")
      n_opt, l_min, coef = isoflop_minimum(points.N[idx], points.L[idx])
    except FitError as e:
      dropped.append({"flops": C, "n_points": int(len(idx)), "reason": str(e)})
      continue
    budgets.append({"flops": C, "n_points": int(len(idx)), "N_opt": n_opt,
                    "D_opt": C / (6 * n_opt), "loss_min": l_min, "coef": list(coef),
                    "idx": idx})
  return budgets, dropped


def run_approach2(points, n_boot=200, seed=0, tol_dex=0.05):
  """Approach 2 on Points: per-budget parabola minima, then power laws.

  Bootstrap resamples points within each budget. Raises FitError when fewer
  than 2 budgets give a valid minimum.
  """
  groups = group_budgets(points.C, tol_dex)
  if len(groups) < 2:
    raise FitError(f"approach 2 needs at least 2 FLOP budgets; found {len(groups)}")
  budgets, dropped = _approach2_core(points, groups, 2 * tol_dex)
  if len(budgets) < 2:
    why = "; ".join(f"C={d['flops']:.3g}: {d['reason']}" for d in dropped[:4])
    raise FitError(f"approach 2 needs at least 2 budgets with a valid minimum; got "
                   f"{len(budgets)} ({why})")
  C = np.array([b["flops"] for b in budgets])
  a, kN = power_law(C, [b["N_opt"] for b in budgets])
  b_, kD = power_law(C, [b["D_opt"] for b in budgets])
  rng = np.random.default_rng(seed)
  samp_a, samp_b, samp_k, per_budget = [], [], [], [[] for _ in budgets]
  for _ in range(n_boot):
    mins = []
    for j, bud in enumerate(budgets):
      idx = rng.choice(bud["idx"], len(bud["idx"]))
      try:
        n_opt = isoflop_minimum(points.N[idx], points.L[idx])[0]
      except FitError:
        mins.append(np.nan); continue
      mins.append(n_opt); per_budget[j].append(n_opt)
    mins = np.array(mins)
    ok = np.isfinite(mins)
    if ok.sum() >= 2:
      pa, pk = power_law(C[ok], mins[ok])
      pb, _ = power_law(C[ok], C[ok] / (6 * mins[ok]))
      samp_a.append(pa); samp_b.append(pb); samp_k.append(pk)
  for j, bud in enumerate(budgets):
    bud["ci_N_opt"] = _ci(per_budget[j])
    bud["n_boot_ok"] = len(per_budget[j])
    bud.pop("idx")
  out = {"a": a, "b": b_, "k_N": kN, "k_D": kD, "budgets": budgets,
         "dropped_budgets": dropped}
  if n_boot > 0:
    out["ci"] = {"a": _ci(samp_a), "b": _ci(samp_b)}
    out["bootstrap"] = {"n": n_boot, "n_ok": len(samp_a), "seed": seed}
    out["_samples"] = np.array([samp_a, samp_k]).T
  return out


# ----------------------------------------------------------------------------
# Approach 1: lower envelope of training curves


MIN_INTERIOR = 20  # Fewer interior FLOP values than this: approach 1 warns.
MIN_DISTINCT_N_OPT = 3  # Fewer distinct winning sizes than this: approach 1 warns (< 2 refuses).


def envelope(curves, Ns, n_grid=1500, interior_only=True):
  """Lowest loss over all curves at n_grid log-spaced FLOP values.

  curves: list of {"flops", "loss"} (or None), FLOPs as the input counts
  them; Ns: parameters per curve. A FLOP value is covered when at least 2
  curves reach it. Its winner is interior when at least one smaller and one
  larger run (by N) cover it with a higher loss: the optimum is bracketed.
  Elsewhere the winner is the edge of the sizes that reach that FLOP value,
  and N_opt is biased towards that edge. interior_only keeps interior FLOP
  values only; False keeps every covered one (Chinchilla's envelope).

  Returns (C, N_opt, loss_min, run index) of the kept FLOP values and
  {"n_covered", "n_interior"} (counts of grid values).
  Raises FitError when fewer than 2 runs have curves, the curves do not
  overlap, or (interior_only) no FLOP value has an interior winner.
  """
  use = [i for i, c in enumerate(curves) if c is not None and len(c["flops"]) >= 2]
  if len(use) < 2:
    raise FitError(f"approach 1 needs training curves from at least 2 runs; got {len(use)}")
  lo = min(np.log(curves[i]["flops"][0]) for i in use)
  hi = max(np.log(curves[i]["flops"][-1]) for i in use)
  grid = np.linspace(lo, hi, n_grid)
  loss_RG = np.full((len(use), n_grid), np.inf)
  for r, i in enumerate(use):
    lc = np.log(curves[i]["flops"])
    inside = (grid >= lc[0]) & (grid <= lc[-1])
    loss_RG[r, inside] = np.interp(grid[inside], lc, curves[i]["loss"])
  covered_G = np.isfinite(loss_RG).sum(0) >= 2
  if covered_G.sum() < 2:
    raise FitError("approach 1: curves do not overlap in FLOPs")
  best_G = np.argmin(loss_RG, axis=0)
  lmin_G = loss_RG[best_G, np.arange(n_grid)]
  N_R = np.asarray(Ns, float)[use]
  higher_RG = np.isfinite(loss_RG) & (loss_RG > lmin_G[None])
  smaller_G = (higher_RG & (N_R[:, None] < N_R[best_G][None])).any(0)
  larger_G = (higher_RG & (N_R[:, None] > N_R[best_G][None])).any(0)
  interior_G = covered_G & smaller_G & larger_G
  counts = {"n_covered": int(covered_G.sum()), "n_interior": int(interior_G.sum())}
  keep_G = interior_G if interior_only else covered_G
  if interior_only and not keep_G.any():
    raise FitError(f"approach 1: no FLOP value has an interior winner (of "
                   f"{counts['n_covered']} covered, every winner is the smallest or largest run "
                   "reaching it): the sizes do not bracket the optimum anywhere")
  run = np.array(use)[best_G][keep_G]
  return np.exp(grid[keep_G]), np.asarray(Ns)[run], lmin_G[keep_G], run, counts


def _approach1_fit(curves, Ns, interior_only=True):
  """(a, k_N, b, k_D, envelope tuple, counts) from curves; FitError if degenerate."""
  C, n_opt, l_min, run, counts = envelope(curves, Ns, interior_only=interior_only)
  if len(np.unique(n_opt)) < 2:
    raise FitError("approach 1: one model size is best at every "
                   + ("interior " if interior_only else "") + "FLOP value (no trade-off to fit)")
  a, kN = power_law(C, n_opt)
  b, kD = power_law(C, C / (6 * n_opt))
  return a, kN, b, kD, (C, n_opt, l_min, run), counts


def _approach1_warning(n_kept, n_distinct, interior_only):
  """The warning string of a thin envelope, or None."""
  what = "interior FLOP values" if interior_only else "covered FLOP values"
  why = []
  if n_kept < MIN_INTERIOR:
    why.append(f"only {n_kept} {what} (< {MIN_INTERIOR})")
  if n_distinct < MIN_DISTINCT_N_OPT:
    why.append(f"only {n_distinct} distinct N_opt (< {MIN_DISTINCT_N_OPT}: a line through "
               "that few sizes)")
  return "; ".join(why) + ": the exponent rests on few points" if why else None


def run_approach1(points, n_boot=200, seed=0, interior_only=True):
  """Approach 1 on Points with curves; bootstrap resamples runs.

  interior_only: fit only FLOP values whose winning run is interior (see
  `envelope`); False is Chinchilla's plain envelope, kept for comparison.
  The block says how many FLOP values were covered, interior and kept, and
  carries a 'warning' when few remain.
  """
  if points.curves is None:
    raise FitError("approach 1 needs training curves (a sweep folder with curve.json); "
                   "a CSV of final losses has none")
  a, kN, b, kD, env, counts = _approach1_fit(points.curves, points.N, interior_only)
  rng = np.random.default_rng(seed)
  sa, sb, sk = [], [], []
  n = len(points.N)
  for _ in range(n_boot):
    idx = rng.integers(0, n, n)
    try:
      pa, pk, pb, _, _, _ = _approach1_fit([points.curves[i] for i in idx], points.N[idx],
                                           interior_only)
    except FitError:
      continue
    sa.append(pa); sb.append(pb); sk.append(pk)
  n_distinct = int(len(np.unique(env[1])))
  out = {"a": a, "b": b, "k_N": kN, "k_D": kD, "curve_source": points.curve_source,
         "n_runs": int(sum(c is not None for c in points.curves)),
         "n_envelope": int(len(env[0])), "n_envelope_covered": counts["n_covered"],
         "n_interior": counts["n_interior"], "interior_only": bool(interior_only),
         "n_distinct_N_opt": n_distinct, "_envelope": env}
  warning = _approach1_warning(len(env[0]), n_distinct, interior_only)
  if warning:
    out["warning"] = warning
  if n_boot > 0:
    out["ci"] = {"a": _ci(sa), "b": _ci(sb)}
    out["bootstrap"] = {"n": n_boot, "n_ok": len(sa), "seed": seed}
    out["_samples"] = np.array([sa, sk]).T
  return out


# ----------------------------------------------------------------------------
# Putting it together


CONVENTIONS = ("with_head", "non_embedding")  # N counts reported side by side (Pearce & Song).
CONVENTION_BOOT = 50  # Default bootstrap samples for the convention not chosen by --n-count.


def _steps(points, n_boot, seed, ci_flops, budget_tol, boot_starts, starts, interior_only):
  """(name, thunk) of the three approaches on points."""
  return (("approach1", lambda: run_approach1(points, n_boot, seed, interior_only)),
          ("approach2", lambda: run_approach2(points, n_boot, seed, budget_tol)),
          ("approach3", lambda: run_approach3(points, n_boot, seed, ci_flops,
                                              boot_starts, starts)))


def _exponents(block, n_boot):
  """{"a", "b", "ci": {"a", "b"}, "n_boot"} of an approach block (plus its warning)."""
  ci = block.get("ci") or {}
  out = {"a": block["a"], "b": block["b"], "ci": {"a": ci.get("a"), "b": ci.get("b")},
         "n_boot": int(n_boot)}
  if block.get("warning"):
    out["warning"] = block["warning"]
  return out


def n_conventions(points, result, n_boot, seed=0, budget_tol=0.05, boot_starts=16,
                  starts=None, interior_only=True, log=print):
  """a and b of every approach with N counted with the head and non-embedding.

  The chosen convention (points.n_count) is copied from result's blocks; the
  other is refitted on the same points with N swapped (C, the input's FLOP
  count, is kept; approach 3's frontier uses 6·N·D with that N) and n_boot
  bootstrap samples. Returns {"with_head": {"approach1": {"a", "b", "ci",
  "n_boot"} | {"skipped": reason}, ...}, "non_embedding": {...}}.
  Raises ValueError when the input does not name both counts.
  """
  out = {}
  for count in CONVENTIONS:
    if count == points.n_count:
      out[count] = {name: _exponents(result[name], result[name].get("bootstrap", {}).get("n", 0))
                    if name in result
                    else {"skipped": result["skipped"].get(name, "")}
                    for name in ("approach1", "approach2", "approach3")}
      continue
    block = {}
    for name, fn in _steps(points.with_count(count), n_boot, seed, None, budget_tol,
                           boot_starts, starts, interior_only):
      try:
        block[name] = _exponents(fn(), n_boot)
      except FitError as e:
        block[name] = {"skipped": str(e)}
        log(f"n_conventions {count} {name} skipped: {e}")
    out[count] = block
  return out


def fit_all(points, n_boot=200, seed=0, ci_flops=None, budget_tol=0.05, boot_starts=16,
            starts=None, log=print, interior_only=True, conventions_boot=None):
  """All approaches the input supports; returns the fit.json dict.

  The main blocks use points.n_count; 'n_conventions' repeats a and b with N
  with the head and non-embedding when the input names both (the other
  convention with conventions_boot bootstrap samples, default
  min(n_boot, CONVENTION_BOOT)). Keys starting with '_' are in-memory extras
  for plots (not written).
  """
  result = {"input": {"source": points.source, "n_count": points.n_count,
                      "n_points": int(len(points.N)), "excluded": points.excluded},
            "skipped": {}}
  for name, fn in _steps(points, n_boot, seed, ci_flops, budget_tol, boot_starts, starts,
                         interior_only):
    t0 = time.perf_counter()
    try:
      result[name] = fn()
      result[name]["seconds"] = round(time.perf_counter() - t0, 3)
    except FitError as e:
      result["skipped"][name] = str(e)
      log(f"{name} skipped: {e}")
  missing = [c for c in CONVENTIONS if c not in (points.Ns or {})]
  if missing:
    result["skipped"]["n_conventions"] = (f"the input does not give N as {' and '.join(missing)} "
                                          "(summary.json params_<count>, or CSV columns "
                                          "params_with_head and params_non_embedding)")
  else:
    n_other = min(n_boot, CONVENTION_BOOT) if conventions_boot is None else conventions_boot
    result["n_conventions"] = n_conventions(points, result, n_other, seed, budget_tol,
                                            boot_starts, starts, interior_only, log)
  moe = moe_section(points, n_boot, seed, boot_starts, log)
  if moe is not None:
    result["moe"] = moe
  return result


def moe_section(points, n_boot=200, seed=0, boot_starts=16, log=print):
  """fit.json's 'moe' block (scaling/moe_law.py) when the runs have several expert counts, else None.

  The multiplier's dense reference is approach 3 on the dense runs (E = 1) with N = active params.
  """
  if not moe_law.several_experts(points):
    return None
  dense, why = None, None
  try:
    dense = run_approach3(points.subset(points.moe["experts"] == 1).with_count("active"), n_boot,
                          seed, boot_starts=boot_starts)
  except ValueError as e:  # FitError, or runs without params_active.
    why = f"approach 3 on the dense runs: {e}"
  try:
    return moe_law.run_moe(points, dense, n_boot, seed, dense_skipped=why, log=log)
  except moe_law.MoEFitError as e:
    return {"skipped": {"moe": str(e)}}


def predict(result, C):
  """N_opt, D_opt, tokens/param (and loss for approach 3) at FLOPs C, per approach.

  Intervals come from the bootstrap samples kept in result['_samples'] keys.
  """
  out = {"flops": float(C)}
  for name in ("approach1", "approach2"):
    r = result.get(name)
    if not r:
      continue
    n_opt = r["k_N"] * C ** r["a"]
    row = {"N_opt": n_opt, "D_opt": C / (6 * n_opt), "tokens_per_param": C / (6 * n_opt ** 2)}
    s = r.get("_samples")
    if s is not None and len(s):
      ns = s[:, 1] * C ** s[:, 0]
      row["ci"] = {"N_opt": _ci(ns), "D_opt": _ci(C / (6 * ns)),
                   "tokens_per_param": _ci(C / (6 * ns ** 2))}
    out[name] = row
  r = result.get("approach3")
  if r:
    n_opt, d_opt = frontier(r, C)
    row = {"N_opt": float(n_opt), "D_opt": float(d_opt),
           "tokens_per_param": float(d_opt / n_opt),
           "loss": float(predict_loss(r, n_opt, d_opt))}
    s = r.get("_samples")
    if s is not None and len(s):
      der = approach3_derived(s, C)
      row["ci"] = {k: _ci(der[k]) for k in ("N_opt", "D_opt", "tokens_per_param", "loss")}
    out["approach3"] = row
  return out


def _parser():
  p = argparse.ArgumentParser(prog="python -m scaling.fit", description=__doc__.split("\n")[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--csv", help="CSV with params, tokens (or flops), loss")
  src.add_argument("--runs", help="sweep folder DIR/<run>/summary.json")
  p.add_argument("--out", required=True, help="output folder (fit.json, PNGs, TensorBoard)")
  p.add_argument("--columns", default="",
                 help="CSV header mapping, e.g. 'params=Model Size,flops=Training FLOP'")
  p.add_argument("--n-count", default="with_head", choices=N_COUNTS,
                 help="which parameter count is N (default: with the output head)")
  p.add_argument("--bootstrap", type=int, default=200, help="bootstrap samples (0: none)")
  p.add_argument("--boot-starts", type=int, default=16,
                 help="approach-3 starts per bootstrap sample (best distinct grid optima)")
  p.add_argument("--conventions-bootstrap", type=int, default=None,
                 help="bootstrap samples for the N convention not chosen by --n-count "
                      f"(default: min(--bootstrap, {CONVENTION_BOOT}))")
  p.add_argument("--envelope", default="interior", choices=("interior", "all"),
                 help="approach 1: fit only FLOP values whose winning run is interior "
                      "(default), or every covered one (Chinchilla's envelope, edge-biased)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--predict-flops", type=float, default=None, help="C for the prediction")
  p.add_argument("--holdout", default=None,
                 help="ladder: runs to hold out and predict, '" + ladder.LARGEST_BUDGET
                      + "' or comma-separated name globs (e.g. 'c1e19_*,target')")
  p.add_argument("--target-flops", type=float, default=None,
                 help="compute-optimal N and D (and predicted loss) of a target run at C FLOPs")
  p.add_argument("--drop-highest-loss", type=int, default=0, help="drop the K highest losses")
  p.add_argument("--budget-tol", type=float, default=0.05,
                 help="approach 2: FLOPs within this many decades form one budget")
  p.add_argument("--no-plots", action="store_true", help="skip PNGs and TensorBoard")
  return p


def _check_args(args):
  """ValueError naming the flag for a value no fit can use."""
  if args.bootstrap < 0:
    raise ValueError("--bootstrap must be >= 0")
  if args.conventions_bootstrap is not None and args.conventions_bootstrap < 0:
    raise ValueError("--conventions-bootstrap must be >= 0")
  for flag in ("predict_flops", "target_flops"):
    v = getattr(args, flag)
    if v is not None and not (math.isfinite(v) and v > 0):
      raise ValueError(f"--{flag.replace('_', '-')} must be positive")


def main(argv=None):
  args = _parser().parse_args(argv)
  t0 = time.perf_counter()

  def log(message):
    print(message, file=sys.stderr)

  try:
    _check_args(args)
    if args.csv:
      points = load_csv(args.csv, parse_columns(args.columns), args.n_count)
    else:
      points = load_runs(args.runs, args.n_count, warn=log)
    points = drop_highest_loss(points, args.drop_highest_loss)
    held = None
    if args.holdout:
      points, held = ladder.split(points, args.holdout, args.budget_tol)
    result = fit_all(points, args.bootstrap, args.seed, args.predict_flops, args.budget_tol,
                     args.boot_starts, log=log, interior_only=args.envelope == "interior",
                     conventions_boot=args.conventions_bootstrap)
    if held is not None:
      result["ladder"] = ladder.verify(result, points, held, args.holdout, seed=args.seed,
                                       budget_tol=args.budget_tol)
    if args.target_flops:
      result["target_run"] = ladder.target_run(result, args.target_flops, points,
                                               seed=args.seed)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not any(k in result for k in ("approach1", "approach2", "approach3")):
    why = "; ".join(f"{k}: {v}" for k, v in result["skipped"].items())
    print(f"error: no approach could be fitted to {points.source} ({why}); nothing written",
          file=sys.stderr)
    return NOTHING_FITTED
  if args.predict_flops:
    result["prediction"] = predict(result, args.predict_flops)
  path = tables.write_json(result, args.out)
  t_fit = time.perf_counter() - t0
  print(tables.format_table(result))
  if args.predict_flops:
    print(tables.format_prediction(result["prediction"]))
  if "moe" in result:
    print(moe_law.format_moe(result["moe"]))
  if not args.no_plots:
    from scaling import plot  # Local: matplotlib, only when plotting.
    files = plot.write_all(points, result, args.out)
    print(f"plots: {', '.join(os.path.basename(f) for f in files)}; "
          f"TensorBoard: tensorboard --logdir {args.out}")
  print(f"wrote {path} (fit {t_fit:.1f} s, total {time.perf_counter() - t0:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
