"""Scaling-law fits: Chinchilla's approaches 1, 2 and 3, with bootstrap intervals.

Run as ``python -m scaling.fit (--csv F | --runs DIR) --out OUT``. Pure
numpy/scipy (matplotlib and tensorboardX only for plots, in scaling/plot.py);
it imports nothing from model/ or train/, so it fits anyone's data.

Units: N in parameters (which count: ``n_count``), D in tokens, C in FLOPs,
loss in nats/token.

Inputs
  * CSV with columns ``params``, ``tokens``, ``loss`` (optional ``flops``; when
    ``tokens`` is missing D = flops / (6 N)). Common aliases are understood
    (Epoch's ``Model Size`` and ``Training FLOP``); ``--columns`` maps others.
  * A sweep folder ``DIR/<run>/summary.json`` (+ optional ``curve.json``), as
    written by the training loop; runs without summary.json are reported and
    skipped.

Which FLOP count C is
  * Approaches 1 and 2 use the input's own FLOP number (``flops`` column,
    ``flops_6nd`` of a run, ``flops`` of a curve row), else 6·N·D.
  * Approach 3's frontier uses C = 6·N·D with the chosen N.

fit.json schema (every number is a float unless noted)::

  {
    "input": {"source": str, "n_count": str, "n_points": int,
              "excluded": [[name, reason], ...]},
    "approach1": {"a", "b", "k_N", "k_D",          # N_opt = k_N C^a, D_opt = k_D C^b
                  "curve_source": str, "n_runs": int, "n_envelope": int,
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
    "skipped": {"approachK": reason},     # approaches the input cannot support
    "prediction": {...}                   # only with --predict-flops
  }

Intervals are 95% percentile-bootstrap intervals.
"""
import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np
import scipy.optimize

HUBER_DELTA = 1e-3
PARAM_NAMES = ("log_A", "log_B", "log_E", "alpha", "beta")  # optimizer order
N_COUNTS = ("with_head", "non_embedding", "total")
CSV_ALIASES = {
  "params": ("params", "n", "model size", "model_size", "parameters", "n_params"),
  "tokens": ("tokens", "d", "training tokens", "training_tokens", "n_tokens"),
  "flops": ("flops", "c", "training flop", "training flops", "training_flops",
            "compute", "flops_6nd"),
  "loss": ("loss", "eval_loss", "final_loss"),
}


class FitError(ValueError):
  """An approach cannot be fitted to this input; the message says why."""


@dataclasses.dataclass
class Points:
  """Final (N, D, loss) of each run, plus optional training curves.

  N: parameters (count given by n_count); D: tokens; C: FLOPs used to group
  budgets (input's own FLOP count, else 6ND); L: final loss in nats/token.
  curves: per run a dict of arrays {"flops", "tokens", "loss"} or None;
  curve_source says whether curves are eval loss or smoothed train loss.
  """
  names: list
  N: np.ndarray
  D: np.ndarray
  C: np.ndarray
  L: np.ndarray
  source: str
  n_count: str
  curves: list = None
  curve_source: str = None
  excluded: list = dataclasses.field(default_factory=list)

  def subset(self, keep):
    """Points restricted to the boolean or index array keep."""
    idx = np.arange(len(self.N))[keep]
    curves = None if self.curves is None else [self.curves[i] for i in idx]
    return dataclasses.replace(
      self, names=[self.names[i] for i in idx], N=self.N[idx], D=self.D[idx],
      C=self.C[idx], L=self.L[idx], curves=curves)


# ----------------------------------------------------------------------------
# Loading


def _positive(value, what):
  """value as a finite positive float, else ValueError naming what."""
  try:
    x = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"{what}: not a number: {value!r}") from None
  if not math.isfinite(x) or x <= 0:
    raise ValueError(f"{what}: must be finite and positive, got {value!r}")
  return x


def parse_columns(spec):
  """'params=Model Size,flops=Training FLOP' -> {'params': 'Model Size', ...}."""
  mapping = {}
  for item in (spec or "").split(","):
    if not item.strip():
      continue
    if "=" not in item:
      raise ValueError(f"--columns: expected name=header, got {item!r}")
    key, header = (s.strip() for s in item.split("=", 1))
    if key not in CSV_ALIASES:
      raise ValueError(f"--columns: unknown name {key!r}; use {sorted(CSV_ALIASES)}")
    mapping[key] = header
  return mapping


def _resolve_columns(header, path, columns, n_count):
  """Map canonical names to CSV headers (explicit mapping, then aliases)."""
  lower = {h.strip().lower(): h for h in header}
  found = {}
  for key, aliases in CSV_ALIASES.items():
    if key in columns:
      if columns[key] not in header:
        raise ValueError(f"{path}: column {columns[key]!r} (for {key}) not in "
                         f"header {header}")
      found[key] = columns[key]
      continue
    if key == "params" and f"params_{n_count}" in lower:
      found[key] = lower[f"params_{n_count}"]
      continue
    for alias in aliases:
      if alias in lower:
        found[key] = lower[alias]
        break
  for key in ("params", "loss"):
    if key not in found:
      raise ValueError(f"{path}: missing column {key!r} (header: {header}); "
                       "map it with --columns")
  if "tokens" not in found and "flops" not in found:
    raise ValueError(f"{path}: missing column 'tokens' (and no 'flops' to derive "
                     f"D = flops/(6N)); header: {header}")
  return found


def load_csv(path, columns=None, n_count="with_head"):
  """Read a CSV of final points into Points.

  columns: optional {canonical: header} for params/tokens/flops/loss.
  When a column ``params_<n_count>`` exists it is N; else ``params`` is N as
  given. Raises ValueError naming the file, row and column on bad values.
  """
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such CSV file")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    cols = _resolve_columns(header, path, columns or {}, n_count)
    rows = list(reader)
  if not rows:
    raise ValueError(f"{path}: no data rows")
  vals = {k: [] for k in cols}
  for i, row in enumerate(rows, start=2):
    for key, col in cols.items():
      vals[key].append(_positive(row.get(col), f"{path} row {i} column {col!r}"))
  N = np.array(vals["params"])
  L = np.array(vals["loss"])
  D = np.array(vals["tokens"]) if "tokens" in vals else np.array(vals["flops"]) / (6 * N)
  C = np.array(vals["flops"]) if "flops" in vals else 6 * N * D
  names = [f"row{i}" for i in range(2, len(rows) + 2)]
  return Points(names, N, D, C, L, source=f"csv:{path}", n_count=n_count)


def _smooth(x, window=9):
  """Centred moving median of x (train-loss curves are noisy)."""
  half = window // 2
  return np.array([np.median(x[max(0, i - half):i + half + 1]) for i in range(len(x))])


def _curve_rows(rows, key):
  """Rows of a curve with a finite positive value under key and tokens > 0."""
  out = []
  for r in rows:
    v = r.get(key)
    if v is not None and np.isfinite(v) and v > 0 and (r.get("tokens") or 0) > 0:
      out.append(r)
  return out


def _load_curve(path, N):
  """curve.json -> ({"flops", "tokens", "loss"}, source) or (None, None).

  Eval loss where at least 2 rows have it, else train loss smoothed by a
  moving median. FLOPs are the rows' own 'flops' (6·N_with_head·tokens), else
  6·N·tokens.
  """
  if not os.path.isfile(path):
    return None, None
  try:
    with open(path) as f:
      rows = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
    raise ValueError(f"{path}: expected a JSON list of row objects")
  rows_eval = _curve_rows(rows, "eval_loss")
  if len(rows_eval) >= 2:
    use, key, source = rows_eval, "eval_loss", "eval_loss"
  else:
    use, key, source = _curve_rows(rows, "train_loss"), "train_loss", "train_loss_smoothed"
    if len(use) < 2:
      return None, None
  use = sorted(use, key=lambda r: r["tokens"])
  tokens = np.array([r["tokens"] for r in use], float)
  loss = np.array([r[key] for r in use], float)
  if key == "train_loss":
    loss = _smooth(loss)
  flops = np.array([r.get("flops") or 6.0 * N * r["tokens"] for r in use], float)
  return {"flops": flops, "tokens": tokens, "loss": loss}, source


def load_runs(root, n_count="with_head", warn=print):
  """Read a sweep folder DIR/<run>/summary.json (+ curve.json) into Points.

  N is summary['params_<n_count>'], D = summary['tokens'], loss =
  summary['eval_loss'], C = summary['flops_6nd'] when present else 6ND.
  Runs without summary.json or with a non-finite loss are listed in
  Points.excluded (and passed to warn), never used silently.
  """
  if n_count not in N_COUNTS:
    raise ValueError(f"n_count must be one of {N_COUNTS}, got {n_count!r}")
  if not os.path.isdir(root):
    raise ValueError(f"{root}: no such sweep folder")
  names, Ns, Ds, Cs, Ls, curves, sources, excluded = [], [], [], [], [], [], set(), []
  for name in sorted(os.listdir(root)):
    run = os.path.join(root, name)
    if not os.path.isdir(run):
      continue
    spath = os.path.join(run, "summary.json")
    if not os.path.isfile(spath):
      excluded.append([name, "no summary.json (unfinished run?)"])
      continue
    try:
      with open(spath) as f:
        s = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{spath}: not valid JSON ({e})") from None
    if "eval_loss" not in s:
      raise ValueError(f"{spath}: missing key 'eval_loss'")
    loss = s["eval_loss"]
    if not isinstance(loss, (int, float)) or not np.isfinite(loss) or loss <= 0:
      excluded.append([name, f"eval_loss is {loss!r} (diverged?)"])
      continue
    key = f"params_{n_count}"
    for k in (key, "tokens"):
      if k not in s:
        raise ValueError(f"{spath}: missing key {k!r}")
    N = _positive(s[key], f"{spath} key {key!r}")
    D = _positive(s["tokens"], f"{spath} key 'tokens'")
    C = _positive(s["flops_6nd"], f"{spath} key 'flops_6nd'") if "flops_6nd" in s else 6 * N * D
    curve, src = _load_curve(os.path.join(run, "curve.json"), N)
    names.append(name); Ns.append(N); Ds.append(D); Cs.append(C); Ls.append(float(loss))
    curves.append(curve)
    if src:
      sources.add(src)
  for name, reason in excluded:
    warn(f"warning: run {name!r} skipped: {reason}")
  if not names:
    raise ValueError(f"{root}: no finished runs (no */summary.json with a finite eval_loss)")
  pts = Points(names, np.array(Ns), np.array(Ds), np.array(Cs), np.array(Ls),
               source=f"runs:{root}", n_count=n_count, curves=curves,
               curve_source="+".join(sorted(sources)) or None, excluded=excluded)
  return pts


def drop_highest_loss(points, k):
  """Points without the k highest-loss points (Epoch drop 5 of 245)."""
  if k <= 0:
    return points
  if k >= len(points.L):
    raise ValueError(f"--drop-highest-loss {k} leaves no points (have {len(points.L)})")
  keep = np.ones(len(points.L), bool)
  keep[np.argsort(points.L)[-k:]] = False
  dropped = [[points.names[i], "dropped: among the highest losses"] for i in np.where(~keep)[0]]
  out = points.subset(keep)
  out.excluded = list(points.excluded) + dropped
  return out


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


def _two_loop(g_P5, S_Pm5, Y_Pm5, rho_Pm):
  """L-BFGS two-loop recursion, batched; history ordered oldest -> newest."""
  m = S_Pm5.shape[1]
  q = g_P5.copy()
  alpha_Pm = np.zeros_like(rho_Pm)
  for i in reversed(range(m)):
    alpha_Pm[:, i] = rho_Pm[:, i] * np.sum(S_Pm5[:, i] * q, axis=1)
    q -= alpha_Pm[:, i, None] * Y_Pm5[:, i]
  yy = np.sum(Y_Pm5[:, -1] ** 2, axis=1)
  sy = np.sum(S_Pm5[:, -1] * Y_Pm5[:, -1], axis=1)
  gamma = np.where(rho_Pm[:, -1] > 0, sy / np.where(yy > 0, yy, 1.0), 1.0)
  r = gamma[:, None] * q
  for i in range(m):
    beta = rho_Pm[:, i] * np.sum(Y_Pm5[:, i] * r, axis=1)
    r += S_Pm5[:, i] * (alpha_Pm[:, i] - beta)[:, None]
  return r


def batched_lbfgs(fun, x0_P5, max_iter=1000, memory=10, ftol=2.220446049250313e-09,
                  gtol=1e-5, max_ls=30):
  """Minimise P independent problems at once with L-BFGS (numpy, no loop over P).

  fun(x_K5, rows_K, grad) -> f_K (, g_K5) evaluates the problems listed in
  rows. Stopping rules follow scipy's L-BFGS-B defaults: relative decrease
  (f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= ftol, or max |grad| <= gtol.
  Armijo backtracking line search; problems leave the batch as they stop.

  Returns (x_P5, f_P, status_P, n_iter_P); status 0 converged (ftol/gtol),
  2 stopped because no step decreased f (a kink or round-off floor: also a
  local optimum for this piecewise objective), 1 hit max_iter, 3 non-finite.
  """
  P, k = x0_P5.shape
  x = np.array(x0_P5, float)
  rows = np.arange(P)
  f, g = fun(x, rows, True)
  S = np.zeros((P, memory, k)); Y = np.zeros((P, memory, k)); rho = np.zeros((P, memory))
  status = np.full(P, -1)
  status[~np.isfinite(f) | ~np.all(np.isfinite(g), 1)] = 3
  status[(status < 0) & (np.max(np.abs(g), 1) <= gtol)] = 0
  n_iter = np.zeros(P, int)
  for _ in range(max_iter):
    act = np.where(status < 0)[0]
    if act.size == 0:
      break
    xa, fa, ga = x[act], f[act], g[act]
    d = -_two_loop(ga, S[act], Y[act], rho[act])
    gd = np.sum(ga * d, 1)
    reset = ~(gd < 0) | ~np.isfinite(gd)
    if reset.any():
      d[reset] = -ga[reset]
      gd[reset] = -np.sum(ga[reset] ** 2, 1)
      S[act[reset]] = 0; Y[act[reset]] = 0; rho[act[reset]] = 0
    fresh = rho[act, -1] == 0  # no history: scipy's first step min(1, 1/|d|)
    t = np.where(fresh, np.minimum(1.0, 1.0 / np.linalg.norm(d, axis=1)), 1.0)
    todo = np.arange(act.size)
    ok_all = np.zeros(act.size, bool)
    for _ls in range(max_ls):
      xt = xa[todo] + t[todo, None] * d[todo]
      ft = fun(xt, act[todo], False)
      ok = np.isfinite(ft) & (ft <= fa[todo] + 1e-4 * t[todo] * gd[todo])
      ok_all[todo[ok]] = True
      todo = todo[~ok]
      if todo.size == 0:
        break
      t[todo] *= 0.5
    status[act[~ok_all]] = 2
    acc = np.where(ok_all)[0]
    if acc.size == 0:
      continue
    ia = act[acc]
    xn = xa[acc] + t[acc, None] * d[acc]
    fn, gn = fun(xn, ia, True)
    s, y = xn - xa[acc], gn - ga[acc]
    sy = np.sum(s * y, 1)
    upd = sy > 1e-10 * np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1)
    iu = ia[upd]
    S[iu] = np.roll(S[iu], -1, axis=1); S[iu, -1] = s[upd]
    Y[iu] = np.roll(Y[iu], -1, axis=1); Y[iu, -1] = y[upd]
    rho[iu] = np.roll(rho[iu], -1, axis=1); rho[iu, -1] = 1.0 / sy[upd]
    n_iter[ia] += 1
    rel = (fa[acc] - fn) / np.maximum(np.maximum(np.abs(fa[acc]), np.abs(fn)), 1.0)
    done = (rel <= ftol) | (np.max(np.abs(gn), 1) <= gtol)
    x[ia], f[ia], g[ia] = xn, fn, gn
    status[ia[done]] = 0
    status[ia[~np.isfinite(fn)]] = 3
  status[status < 0] = 1
  return x, f, status, n_iter


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


SCIPY_FTOL = 2.220446049250313e-09  # L-BFGS-B default: factr 1e7 × machine epsilon
BOOT_FTOL = 1e-13  # warm-started bootstrap refits (see bootstrap_approach3)


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


def _scipy_polish(x0, logN, logD, logL, w_n, delta, reduce, options=None):
  """One scipy L-BFGS-B run from x0 (default options: the slow reference)."""
  scale = 1.0 / len(logN) if reduce == "mean" else 1.0
  w = (np.asarray(w_n, float) * scale)[None]

  def fg(x):
    f, g = _objective(x[None], logN, logD, logL, w, delta, True)
    return f[0], g[0]

  res = scipy.optimize.minimize(fg, x0, jac=True, method="L-BFGS-B", options=options)
  return res.x, float(res.fun), res


def _exp(x: float) -> float:
  """math.exp that gives inf instead of raising OverflowError (a diverged fit's log A)."""
  return math.exp(x) if x < 709.0 else math.inf


def law_from_params(x5):
  """Dict of the law from (log_A, log_B, log_E, alpha, beta), with frontier."""
  la, lb, le, al, be = (float(v) for v in x5)
  law = {"E": _exp(le), "A": _exp(la), "B": _exp(lb), "alpha": al,
         "beta": be, "log_E": le, "log_A": la, "log_B": lb}
  law.update(frontier_constants(law))
  return law


def frontier_constants(law):
  """G, a, b of the efficient frontier N_opt = G (C/6)^a, D_opt = (C/6)^b / G.

  G is computed from log A and log B, so a law whose A or B overflows a float
  still has a finite frontier when the ratio is finite.
  """
  al, be = law["alpha"], law["beta"]
  if al <= 0 or be <= 0:
    return {"G": float("nan"), "a": float("nan"), "b": float("nan")}
  la = law.get("log_A", math.log(law["A"]) if law["A"] > 0 else -math.inf)
  lb = law.get("log_B", math.log(law["B"]) if law["B"] > 0 else -math.inf)
  G = _exp((math.log(al) + la - math.log(be) - lb) / (al + be))
  return {"G": G, "a": be / (al + be), "b": al / (al + be)}


def frontier(law, C):
  """(N_opt, D_opt) in parameters and tokens at FLOPs C (C = 6 N D)."""
  k = frontier_constants(law)
  C = np.asarray(C, float)
  return k["G"] * (C / 6) ** k["a"], (C / 6) ** k["b"] / k["G"]


def predict_loss(law, N, D):
  """L(N, D) = E + A/N^alpha + B/D^beta in nats/token."""
  return law["E"] + law["A"] / np.asarray(N, float) ** law["alpha"] \
    + law["B"] / np.asarray(D, float) ** law["beta"]


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


def fit_approach3_slow(N, D, L, starts=None, delta=HUBER_DELTA, reduce="sum"):
  """Reference: a plain scipy L-BFGS-B loop over the starts; best result.

  Slow (minutes for the full grid); used to check fit_approach3.
  """
  logN, logD, logL = _logs(N, D, L)
  starts = chinchilla_grid() if starts is None else np.atleast_2d(starts)
  best = (None, np.inf)
  for x0 in starts:
    x, f, _ = _scipy_polish(x0, logN, logD, logL, np.ones(len(logN)), delta, reduce)
    if np.isfinite(f) and f < best[1]:
      best = (x, f)
  law = law_from_params(best[0])
  law.update({"objective": best[1], "x": best[0].tolist()})
  return law


def distinct_optima(optima_K5, k, tol=1e-3):
  """Up to k rows of optima (sorted best first) that differ by more than tol."""
  picked = []
  for x in optima_K5:
    if all(np.max(np.abs(x - p)) > tol for p in picked):
      picked.append(x)
      if len(picked) == k:
        break
  return np.array(picked)


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


def _ci(samples):
  """95% percentile interval [lo, hi] of the samples (None if fewer than 2).

  Infinite samples (a resample whose fit diverged, e.g. A overflowing) stay in:
  if more than 2.5% of them are infinite, the interval is honestly unbounded.
  """
  s = np.asarray(samples, float)
  s = s[~np.isnan(s)]
  if len(s) < 2:
    return None
  q = np.percentile(s, [2.5, 97.5], method="inverted_cdf")
  return [float(q[0]), float(q[1])]


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


def group_budgets(C, tol_dex=0.05):
  """Group indices by FLOP budget: sorted log10 C split where gaps exceed tol_dex."""
  logC = np.log10(C)
  order = np.argsort(logC)
  groups, cur = [], [order[0]]
  for prev, i in zip(order[:-1], order[1:]):
    if logC[i] - logC[prev] > tol_dex:
      groups.append(np.array(cur)); cur = []
    cur.append(i)
  groups.append(np.array(cur))
  return groups


def isoflop_minimum(N, L):
  """Parabola L = c0 + c1 x + c2 x², x = ln N; returns (N_opt, L_min, coeffs).

  Raises FitError for fewer than 3 sizes, a parabola opening downward, or a
  minimum outside the sampled sizes (an extrapolation, not a measurement).
  """
  x = np.log(N)
  if len(np.unique(np.round(x, 9))) < 3:
    raise FitError(f"fewer than 3 distinct model sizes ({len(np.unique(np.round(x, 9)))})")
  c2, c1, c0 = np.polyfit(x, L, 2)
  if c2 <= 0:
    raise FitError(f"parabola opens downward (curvature {c2:.3g}): no minimum")
  x_opt = -c1 / (2 * c2)
  if not (x.min() <= x_opt <= x.max()):
    raise FitError(f"minimum N={math.exp(x_opt):.3g} lies outside the sampled sizes "
                   f"[{N.min():.3g}, {N.max():.3g}]")
  return math.exp(x_opt), c0 - c1 * c1 / (4 * c2), (c2, c1, c0)


def _power_law(C, Y):
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
  a, kN = _power_law(C, [b["N_opt"] for b in budgets])
  b_, kD = _power_law(C, [b["D_opt"] for b in budgets])
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
      pa, pk = _power_law(C[ok], mins[ok])
      pb, _ = _power_law(C[ok], C[ok] / (6 * mins[ok]))
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


def envelope(curves, Ns, n_grid=1500):
  """Lowest loss over all curves at n_grid log-spaced FLOP values.

  curves: list of {"flops", "loss"} (or None); Ns: parameters per curve.
  Only FLOP values covered by at least 2 curves are kept. Returns arrays
  (C, N_opt, loss_min, run index).
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
  covered = np.isfinite(loss_RG).sum(0) >= 2
  if covered.sum() < 2:
    raise FitError("approach 1: curves do not overlap in FLOPs")
  best = np.argmin(loss_RG, axis=0)
  run = np.array(use)[best][covered]
  return np.exp(grid[covered]), np.asarray(Ns)[run], loss_RG.min(0)[covered], run


def _approach1_fit(curves, Ns):
  """(a, k_N, b, k_D, envelope tuple) from curves; FitError if degenerate."""
  C, n_opt, l_min, run = envelope(curves, Ns)
  if len(np.unique(n_opt)) < 2:
    raise FitError("approach 1: one model size is best at every FLOP value "
                   "(no trade-off to fit)")
  a, kN = _power_law(C, n_opt)
  b, kD = _power_law(C, C / (6 * n_opt))
  return a, kN, b, kD, (C, n_opt, l_min, run)


def run_approach1(points, n_boot=200, seed=0):
  """Approach 1 on Points with curves; bootstrap resamples runs."""
  if points.curves is None:
    raise FitError("approach 1 needs training curves (a sweep folder with curve.json); "
                   "a CSV of final losses has none")
  a, kN, b, kD, env = _approach1_fit(points.curves, points.N)
  rng = np.random.default_rng(seed)
  sa, sb, sk = [], [], []
  n = len(points.N)
  for _ in range(n_boot):
    idx = rng.integers(0, n, n)
    try:
      pa, pk, pb, _, _ = _approach1_fit([points.curves[i] for i in idx], points.N[idx])
    except FitError:
      continue
    sa.append(pa); sb.append(pb); sk.append(pk)
  out = {"a": a, "b": b, "k_N": kN, "k_D": kD, "curve_source": points.curve_source,
         "n_runs": int(sum(c is not None for c in points.curves)),
         "n_envelope": int(len(env[0])), "_envelope": env}
  if n_boot > 0:
    out["ci"] = {"a": _ci(sa), "b": _ci(sb)}
    out["bootstrap"] = {"n": n_boot, "n_ok": len(sa), "seed": seed}
    out["_samples"] = np.array([sa, sk]).T
  return out


# ----------------------------------------------------------------------------
# Putting it together


def fit_all(points, n_boot=200, seed=0, ci_flops=None, budget_tol=0.05, boot_starts=16,
            starts=None, log=print):
  """All approaches the input supports; returns the fit.json dict.

  Keys starting with '_' are in-memory extras for plots (not written).
  """
  result = {"input": {"source": points.source, "n_count": points.n_count,
                      "n_points": int(len(points.N)), "excluded": points.excluded},
            "skipped": {}}
  steps = (("approach1", lambda: run_approach1(points, n_boot, seed)),
           ("approach2", lambda: run_approach2(points, n_boot, seed, budget_tol)),
           ("approach3", lambda: run_approach3(points, n_boot, seed, ci_flops,
                                               boot_starts, starts)))
  for name, fn in steps:
    t0 = time.perf_counter()
    try:
      result[name] = fn()
      result[name]["seconds"] = round(time.perf_counter() - t0, 3)
    except FitError as e:
      result["skipped"][name] = str(e)
      log(f"{name} skipped: {e}")
  return result


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


def load_law(path):
  """The approach-3 law from a fit.json (file or folder holding it).

  Returns a dict with E, A, B, alpha, beta, G, a, b (and ci when present);
  use frontier(law, C) and predict_loss(law, N, D). Raises ValueError when
  the file has no approach-3 fit, quoting the reason it was skipped.
  """
  if os.path.isdir(path):
    path = os.path.join(path, "fit.json")
  with open(path) as f:
    data = json.load(f)
  if "approach3" not in data:
    reason = data.get("skipped", {}).get("approach3", "not present")
    raise ValueError(f"{path}: no approach-3 fit ({reason})")
  law = dict(data["approach3"])
  for k in ("E", "A", "B", "alpha", "beta"):
    if k not in law:
      raise ValueError(f"{path}: approach3 lacks {k!r}")
  law.update(frontier_constants(law))
  return law


def _public(obj):
  """obj without '_'-prefixed keys, numpy converted, for json.dump."""
  if isinstance(obj, dict):
    return {k: _public(v) for k, v in obj.items() if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [_public(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def write_json(result, out_dir):
  """Write OUT/fit.json; returns its path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, "fit.json")
  with open(path, "w") as f:
    json.dump(_public(result), f, indent=2)
  return path


def _fmt_ci(ci, fmt="{:.3g}"):
  return "" if not ci else "[" + fmt.format(ci[0]) + ", " + fmt.format(ci[1]) + "]"


def format_table(result):
  """Console summary of every approach (plain text)."""
  lines = [f"input: {result['input']['source']}  N = params ({result['input']['n_count']})"
           f"  points: {result['input']['n_points']}"
           f"  excluded: {len(result['input']['excluded'])}"]
  lines.append(f"{'approach':<10} {'a (N_opt~C^a)':>14} {'95% CI':>18} "
               f"{'b (D_opt~C^b)':>14} {'95% CI':>18}")
  for name in ("approach1", "approach2", "approach3"):
    r = result.get(name)
    if r is None:
      lines.append(f"{name:<10} skipped: {result['skipped'].get(name, '')}")
      continue
    ci = r.get("ci") or {}
    lines.append(f"{name:<10} {r['a']:>14.3f} {_fmt_ci(ci.get('a')):>18} "
                 f"{r['b']:>14.3f} {_fmt_ci(ci.get('b')):>18}")
  r = result.get("approach3")
  if r:
    ci = r.get("ci") or {}
    lines.append("")
    lines.append(f"approach 3: L(N, D) = E + A/N^alpha + B/D^beta   (sum-Huber "
                 f"objective {r['objective']:.5g}, {r['n_points']} points, "
                 f"{r['n_converged']}/{r['n_starts']} starts converged)")
    for k, fmt in (("E", "{:.4f}"), ("A", "{:.1f}"), ("B", "{:.1f}"), ("alpha", "{:.4f}"),
                   ("beta", "{:.4f}"), ("G", "{:.4g}")):
      lines.append(f"  {k:<6} {fmt.format(r[k]):>10}  {_fmt_ci(ci.get(k), fmt)}")
    at = r["at_flops"]
    lines.append(f"  at C = {r['ci_flops']:.3g}: N_opt {at['N_opt']:.3g} "
                 f"{_fmt_ci(ci.get('N_opt'))}, D_opt {at['D_opt']:.3g} "
                 f"{_fmt_ci(ci.get('D_opt'))}, tokens/param {at['tokens_per_param']:.1f} "
                 f"{_fmt_ci(ci.get('tokens_per_param'), '{:.1f}')}")
  r = result.get("approach2")
  if r:
    lines.append("")
    lines.append("approach 2 budgets: " + ", ".join(
      f"C={b['flops']:.2g}: N_opt {b['N_opt']:.3g} {_fmt_ci(b['ci_N_opt'])}"
      for b in r["budgets"]))
    dropped = r["dropped_budgets"]
    for d in dropped[:6]:
      lines.append(f"  dropped C={d['flops']:.3g} ({d['n_points']} pts): {d['reason']}")
    if len(dropped) > 6:
      lines.append(f"  ... {len(dropped) - 6} more dropped budgets (see fit.json)")
  return "\n".join(lines)


def format_prediction(pred):
  """Console lines for predict()."""
  lines = [f"prediction at C = {pred['flops']:.3g} FLOPs:"]
  for name in ("approach1", "approach2", "approach3"):
    row = pred.get(name)
    if not row:
      continue
    ci = row.get("ci") or {}
    s = (f"  {name}: N_opt {row['N_opt']:.4g} {_fmt_ci(ci.get('N_opt'))}, "
         f"D_opt {row['D_opt']:.4g} {_fmt_ci(ci.get('D_opt'))}, "
         f"tokens/param {row['tokens_per_param']:.1f} "
         f"{_fmt_ci(ci.get('tokens_per_param'), '{:.1f}')}")
    if "loss" in row:
      s += f", loss {row['loss']:.4f} {_fmt_ci(ci.get('loss'), '{:.4f}')}"
    lines.append(s)
  return "\n".join(lines)


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
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--predict-flops", type=float, default=None, help="C for the prediction")
  p.add_argument("--drop-highest-loss", type=int, default=0, help="drop the K highest losses")
  p.add_argument("--budget-tol", type=float, default=0.05,
                 help="approach 2: FLOPs within this many decades form one budget")
  p.add_argument("--no-plots", action="store_true", help="skip PNGs and TensorBoard")
  return p


def main(argv=None):
  args = _parser().parse_args(argv)
  t0 = time.perf_counter()
  try:
    if args.bootstrap < 0:
      raise ValueError("--bootstrap must be >= 0")
    if args.predict_flops is not None and not args.predict_flops > 0:
      raise ValueError("--predict-flops must be positive")
    if args.csv:
      points = load_csv(args.csv, parse_columns(args.columns), args.n_count)
    else:
      points = load_runs(args.runs, args.n_count, warn=lambda m: print(m, file=sys.stderr))
    points = drop_highest_loss(points, args.drop_highest_loss)
    result = fit_all(points, args.bootstrap, args.seed, args.predict_flops, args.budget_tol,
                     args.boot_starts, log=lambda m: print(m, file=sys.stderr))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.predict_flops:
    result["prediction"] = predict(result, args.predict_flops)
  path = write_json(result, args.out)
  t_fit = time.perf_counter() - t0
  print(format_table(result))
  if args.predict_flops:
    print(format_prediction(result["prediction"]))
  if not args.no_plots:
    from scaling import plot  # matplotlib only when plotting
    files = plot.write_all(points, result, args.out)
    print(f"plots: {', '.join(os.path.basename(f) for f in files)}; "
          f"TensorBoard: tensorboard --logdir {args.out}")
  print(f"wrote {path} (fit {t_fit:.1f} s, total {time.perf_counter() - t0:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
