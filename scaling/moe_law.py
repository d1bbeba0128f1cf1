"""MoE scaling laws (Clark et al. 2022; Ludziejewski et al. 2025) and the effective parameter multiplier.

Units: N_act in active parameters (`params_active`: the weights one token
passes through; for a dense run the dense count), D in training tokens, E
in routed experts per MoE layer (a dense run is E = 1), C = 6·N_act·D in
training FLOPs, loss in nats/token.

The expert count enters through Clark et al.'s saturating transform

    1/Ê = 1/(E − 1 + (1/E_start − 1/E_max)^−1) + 1/E_max,

which is E_start at E = 1, about E for moderate E, and saturates at E_max.
Clark et al. fit E_start and E_max per routing method; here they are fixed
constants, not fitted (`E_START`, `E_MAX`, overridable): E_START = 1, so a
dense run has Ê = 1 and both laws reduce to a dense law there; E_MAX = 300,
so sweeps with E up to a few dozen sit well below saturation. Neither is a
value published by the papers.

Forms
  * Clark et al. 2022 ("Unified Scaling Laws for Routed Language Models"),
    at one token count D, only N and E varying:
        log10 L = a·log10 N_act + b·log10 Ê + c·log10 N_act·log10 Ê + d
    Logs base 10 (a and b do not depend on the base, c and d do). Linear in
    (a, b, c, d): least squares has one optimum, no starts needed. Fitted to
    the runs at the most common D.
  * Ludziejewski et al. 2025 ("Joint MoE Scaling Laws: Mixture of Experts
    Can Be Memory Efficient", ICML 2025, arXiv 2502.05172), joint in
    (N_act, D, Ê):
        L = a·Ê^δ·N_act^(α + γ·ln Ê) + b·Ê^ω·D^(β + ζ·ln Ê) + c
    with the exponents as written, so a loss that falls with N and D has
    α, β < 0. At Ê = 1 it is Chinchilla's law E + A/N^alpha + B/D^beta with
    E = c, A = a, alpha = −α, B = b, beta = −β. Fitted like approach 3
    (scaling/fit.py): the Huber loss (δ_H = 1e-3) of log L − log L̂ summed
    over runs, log L̂ as a log-sum-exp of the three terms, batched L-BFGS
    (scaling/lbfgs.py) from a grid of starts, the best few optima polished.

Intervals are 95% percentile-bootstrap intervals with runs resampled with
replacement; joint refits start from the full fit's best distinct optima.

Effective parameter multiplier
  A MoE run with N_act active parameters trained on D tokens costs
  C = 6·N_act·D FLOPs: the same compute as a dense model of N_act parameters
  on the same D tokens. Its multiplier is k = N_dense / N_act, where N_dense
  is the dense size whose predicted loss on those D tokens equals the MoE
  run's measured loss, L_dense(N_dense, D) = L_moe:
        N_dense = (A / (L_moe − E − B/D^beta))^(1/alpha).
  k > 1: at compute C the MoE reaches the loss a dense model reaches only
  with k× the parameters (and k× the compute) on the same tokens. When no
  dense size reaches L_moe at D (L_moe ≤ E + B/D^beta), k is infinite. The
  dense law is approach 3 fitted to the dense runs (E = 1) when they support
  it, else the joint law at E = 1; k's interval comes from that law's
  bootstrap samples.

fit.json "moe" section (from `run_moe`)::

  {"experts": [E, ...], "n_runs": int, "n_dense": int, "n_count": "active",
   "e_start", "e_max",
   "joint": {"form": str, "params": {"a", "b", "c", "alpha", "beta", "delta", "gamma",
             "omega", "zeta"}, "ci": {same keys: [lo, hi]}, "objective", "n_runs": int,
             "n_starts": int, "n_converged": int, "huber_delta", "x": [9 floats],
             "bootstrap": {"n", "n_ok", "n_failed", "seed", "starts"}},
   "clark": {"form": str, "params": {"a", "b", "c", "d"}, "ci": {...}, "D", "n_runs": int,
             "rms_log10", "bootstrap": {"n", "n_ok", "seed"}},
   "multiplier": {"reference": str, "definition": str,
                  "runs": [{"run", "experts", "top_k", "granularity", "N_active", "D",
                            "flops", "loss", "N_dense", "multiplier", "ci"}, ...],
                  "by_experts": {"<E>": {"n_runs": int, "geomean"}}},
   "skipped": {"joint" | "clark" | "multiplier" | "dense_reference": reason}}
"""

import numpy as np
from scipy.special import huber

from scaling.law import law_from_params, percentile_interval
from scaling.lbfgs import BOOT_FTOL, HUBER_DELTA, SCIPY_FTOL, batched_lbfgs, distinct_optima
from scaling.points import group_budgets

E_START = 1.0  # Ê at E = 1 (dense); see the module docstring.
E_MAX = 300.0  # Ê's saturation; see the module docstring.
D_SAME_DEX = 0.01  # Token counts within this many decades are one D (Clark's form holds D fixed).

JOINT_X = ("log_a", "log_b", "log_c", "alpha", "beta", "delta", "gamma", "omega", "zeta")
JOINT_FORM = ("Ludziejewski et al. 2025 joint MoE law: "
              "L = a·Ê^δ·N_act^(α+γ·ln Ê) + b·Ê^ω·D^(β+ζ·ln Ê) + c")
CLARK_FORM = ("Clark et al. 2022 routed-LM law at fixed D: "
              "log10 L = a·log10 N_act + b·log10 Ê + c·log10 N_act·log10 Ê + d")
MULTIPLIER_DEFINITION = ("k = N_dense / N_act: the dense size whose predicted loss on the run's "
                         "D tokens equals its measured loss, over its active parameters; at "
                         "C = 6·N_act·D the MoE costs what a dense N_act model on D tokens costs")


class MoEFitError(ValueError):
  """A MoE law cannot be fitted to these runs; the message says why (like scaling.fit.FitError)."""


def expert_hat(E, e_start=E_START, e_max=E_MAX):
  """Clark et al.'s saturating Ê of E routed experts (dimensionless; Ê(1) = e_start)."""
  E = np.asarray(E, float)
  return 1.0 / (1.0 / (E - 1.0 + 1.0 / (1.0 / e_start - 1.0 / e_max)) + 1.0 / e_max)


def several_experts(points):
  """Whether the runs name their expert counts and have more than one (dense is E = 1)."""
  return points.moe is not None and len(np.unique(points.moe["experts"])) > 1


def active_params(points):
  """N_act per run (parameters); MoEFitError when the input does not give params_active."""
  if not points.Ns or "active" not in points.Ns:
    raise MoEFitError("MoE laws need each run's active parameters (summary.json params_active)")
  return np.asarray(points.Ns["active"], float)


def _logs(*arrays):
  """Natural logs of positive arrays (MoEFitError naming the first bad one)."""
  out = []
  for name, v in arrays:
    v = np.asarray(v, float)
    if not np.all(np.isfinite(v) & (v > 0)):
      raise MoEFitError(f"{name} has NaN or non-positive values")
    out.append(np.log(v))
  return out


def _n_distinct(x):
  """Number of distinct values of x (to 9 decimals)."""
  return len(np.unique(np.round(np.asarray(x, float), 9)))


# ----------------------------------------------------------------------------
# Clark et al. 2022: log10 L bilinear in log10 N and log10 Ê, at one D


def _clark_design(N, E, e_start, e_max):
  """(n, 4) columns log10 N, log10 Ê, their product, 1."""
  x, y = np.log10(np.asarray(N, float)), np.log10(expert_hat(E, e_start, e_max))
  return np.stack([x, y, x * y, np.ones_like(x)], axis=1)


def fit_clark(N, E, L, weights=None, e_start=E_START, e_max=E_MAX):
  """(a, b, c, d) of Clark's form by (weighted) least squares on log10 L; None if rank-deficient."""
  X = _clark_design(N, E, e_start, e_max)
  y = np.log10(np.asarray(L, float))
  if weights is not None:  # Zero-weight rows become zero: the rank is that of the rest.
    sw = np.sqrt(np.asarray(weights, float))
    X, y = X * sw[:, None], y * sw
  coef, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
  return coef if rank == 4 else None


def predict_clark(coef, N, E, e_start=E_START, e_max=E_MAX):
  """Clark's predicted loss (nats/token) at N active parameters and E experts."""
  return 10.0 ** (_clark_design(N, E, e_start, e_max) @ np.asarray(coef))


def _common_d(D):
  """Indices of the runs at the most common token count (within D_SAME_DEX decades)."""
  logD = np.log10(D)
  counts = [(np.abs(logD - v) <= D_SAME_DEX).sum() for v in logD]
  return np.where(np.abs(logD - logD[int(np.argmax(counts))]) <= D_SAME_DEX)[0]


def run_clark(N, D, E, L, n_boot=200, seed=0, e_start=E_START, e_max=E_MAX):
  """Clark's form on the runs at the most common D, with bootstrap CIs: the fit.json block."""
  idx = _common_d(np.asarray(D, float))
  N, E, L = (np.asarray(v, float)[idx] for v in (N, E, L))
  if len(idx) <= 4:
    raise MoEFitError(f"Clark's law has 4 parameters and needs more runs than that at one token "
                      f"count D; the most common D has {len(idx)}")
  coef = fit_clark(N, E, L, None, e_start, e_max)
  if coef is None or _n_distinct(N) < 2 or _n_distinct(E) < 2:
    raise MoEFitError(f"Clark's law needs at least 2 model sizes and 2 expert counts, not all "
                      f"sizes at one E, at one D; the {len(idx)} runs at D = "
                      f"{float(np.median(np.asarray(D)[idx])):.3g} do not determine it")
  resid = np.log10(L) - _clark_design(N, E, e_start, e_max) @ coef
  keys = ("a", "b", "c", "d")
  out = {"form": CLARK_FORM, "params": dict(zip(keys, map(float, coef))),
         "D": float(np.exp(np.mean(np.log(np.asarray(D, float)[idx])))), "n_runs": int(len(idx)),
         "rms_log10": float(np.sqrt(np.mean(resid ** 2)))}
  if n_boot > 0:
    rng = np.random.default_rng(seed)
    n = len(idx)
    rows = [fit_clark(N, E, L, np.bincount(rng.integers(0, n, n), minlength=n), e_start, e_max)
            for _ in range(n_boot)]
    rows = np.array([r for r in rows if r is not None]).reshape(-1, 4)
    out["ci"] = {k: percentile_interval(rows[:, i]) for i, k in enumerate(keys)}
    out["bootstrap"] = {"n": n_boot, "n_ok": int(len(rows)), "seed": seed}
  return out


# ----------------------------------------------------------------------------
# Ludziejewski et al. 2025: the joint law in (N_act, D, Ê)


def _joint_objective(x_P9, lnN, lnD, lnE, lnL, w_Pn, delta, grad=True):
  """Weighted Huber objective of P parameter rows (JOINT_X order) and its gradient (P×9)."""
  la, lb, lc, al, be, de, ga, om, ze = (x_P9[:, i:i + 1] for i in range(9))
  u1_Pn = la + de * lnE + (al + ga * lnE) * lnN
  u2_Pn = lb + om * lnE + (be + ze * lnE) * lnD
  m_Pn = np.maximum(np.maximum(u1_Pn, u2_Pn), lc)
  e1, e2, e3 = np.exp(u1_Pn - m_Pn), np.exp(u2_Pn - m_Pn), np.exp(lc - m_Pn)
  s_Pn = e1 + e2 + e3
  r_Pn = m_Pn + np.log(s_Pn) - lnL
  f_P = np.sum(w_Pn * huber(delta, r_Pn), axis=1)
  if not grad:
    return f_P
  q_Pn = w_Pn * np.clip(r_Pn, -delta, delta) / s_Pn
  q1, q2 = q_Pn * e1, q_Pn * e2
  g_P9 = np.stack([q1.sum(1), q2.sum(1), (q_Pn * e3).sum(1), q1 @ lnN, q2 @ lnD, q1 @ lnE,
                   q1 @ (lnE * lnN), q2 @ lnE, q2 @ (lnE * lnD)], axis=1)
  return f_P, g_P9


def joint_starts():
  """The 675 starts (JOINT_X rows): log a, log b in {0, 5, .., 20}, log c in {-1, 0, 1},
  α, β in {-0.2, -0.5, -1}, and the MoE terms δ = γ = ω = ζ = 0 (the dense law).

  On synthetic laws (3 noise draws, 60 runs) this reached the optimum of a
  9x larger grid that also started δ and ω at ±0.3, in a fifth of the time.
  """
  ab, c, ex, zero = (np.arange(0.0, 20.1, 5.0), np.array([-1.0, 0.0, 1.0]),
                     np.array([-0.2, -0.5, -1.0]), np.array([0.0]))
  grid = np.meshgrid(ab, ab, c, ex, ex, zero, zero, zero, zero, indexing="ij")
  return np.stack([g.ravel() for g in grid], axis=1)


def _multi_start(logs, W_Pn, starts, max_iter, ftol):
  lnN, lnD, lnE, lnL = logs
  W_Pn = np.asarray(W_Pn, float)

  def fun(x, rows, grad):
    w = W_Pn if W_Pn.shape[0] == 1 else W_Pn[rows]
    return _joint_objective(x, lnN, lnD, lnE, lnL, w, HUBER_DELTA, grad)

  return batched_lbfgs(fun, starts, max_iter=max_iter, ftol=ftol)


def _joint_logs(N, D, E, L, e_start, e_max):
  """(ln N, ln D, ln Ê, ln L), checked: MoEFitError when the runs cannot determine the law."""
  logs = _logs(("N_active", N), ("D", D), ("loss", L))
  lnE = np.log(expert_hat(E, e_start, e_max))
  n = len(logs[0])
  if n <= len(JOINT_X):
    raise MoEFitError(f"the joint law has {len(JOINT_X)} parameters and needs more runs than "
                      f"that; got {n}")
  for name, v in (("model sizes N_active", logs[0]), ("token counts D", logs[1]),
                  ("expert counts E", lnE)):
    if _n_distinct(v) < 2:
      raise MoEFitError(f"the joint law needs at least 2 distinct {name}")
  return logs[0], logs[1], lnE, logs[2]


def fit_joint(N, D, E, L, starts=None, max_iter=1000, e_start=E_START, e_max=E_MAX):
  """The joint law from every start (default `joint_starts`), best optimum polished.

  Returns {"params", "objective", "n_runs", "n_starts", "n_converged", "huber_delta", "x",
  "_optima"} (x in JOINT_X order). MoEFitError on too few runs or no converged start.
  """
  logs = _joint_logs(N, D, E, L, e_start, e_max)
  starts = joint_starts() if starts is None else np.atleast_2d(np.asarray(starts, float))
  x, f, status, _ = _multi_start(logs, np.ones((1, len(logs[0]))), starts, max_iter, SCIPY_FTOL)
  ok = ((status == 0) | (status == 2)) & np.isfinite(f)
  if not ok.any():
    raise MoEFitError(f"the joint law did not converge from any of {len(starts)} starts")
  f_ok = np.where(ok, f, np.inf)
  order = np.argsort(f_ok)
  top = distinct_optima(x[order[:64]], 8)
  xp, fp, _, _ = _multi_start(logs, np.ones((1, len(logs[0]))), top, max_iter, BOOT_FTOL)
  fp = np.where(np.isfinite(fp), fp, np.inf)
  xb, fb = (xp[np.argmin(fp)], float(fp.min())) if fp.min() < f_ok[order[0]] \
    else (x[order[0]], float(f_ok[order[0]]))
  return {"form": JOINT_FORM, "params": joint_params(xb), "objective": fb,
          "n_runs": int(len(logs[0])), "n_starts": int(len(starts)), "n_converged": int(ok.sum()),
          "huber_delta": HUBER_DELTA, "x": xb.tolist(),
          "_optima": x[order[np.isfinite(f_ok[order])]]}


def joint_params(x9):
  """{"a", "b", "c", "alpha", "beta", "delta", "gamma", "omega", "zeta"} of a JOINT_X row."""
  la, lb, lc, *rest = (float(v) for v in x9)
  return {"a": float(np.exp(la)), "b": float(np.exp(lb)), "c": float(np.exp(lc)),
          **dict(zip(("alpha", "beta", "delta", "gamma", "omega", "zeta"), rest))}


def predict_joint(x9, N, D, E, e_start=E_START, e_max=E_MAX):
  """The joint law's loss (nats/token) at N active parameters, D tokens, E experts."""
  p = joint_params(x9)
  lnE = np.log(expert_hat(E, e_start, e_max))
  N, D = np.asarray(N, float), np.asarray(D, float)
  return (p["a"] * np.exp(p["delta"] * lnE) * N ** (p["alpha"] + p["gamma"] * lnE)
          + p["b"] * np.exp(p["omega"] * lnE) * D ** (p["beta"] + p["zeta"] * lnE) + p["c"])


def joint_dense_law(x9):
  """The joint law at E = 1 (Ê = E_START = 1) as Chinchilla's {E, A, B, alpha, beta}."""
  p = joint_params(x9)
  return {"E": p["c"], "A": p["a"], "B": p["b"], "alpha": -p["alpha"], "beta": -p["beta"]}


def bootstrap_joint(N, D, E, L, starts_K9, n_boot=200, seed=0, max_iter=1000,
                    e_start=E_START, e_max=E_MAX):
  """Refit the joint law on n_boot resamples of the runs from each start row, in one batch.

  Returns (x_B9 of the resamples that converged, number that failed).
  """
  logs = _joint_logs(N, D, E, L, e_start, e_max)
  n = len(logs[0])
  rng = np.random.default_rng(seed)
  W_Bn = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])
  K = len(starts_K9)
  x, f, status, _ = _multi_start(logs, np.repeat(W_Bn, K, axis=0), np.tile(starts_K9, (n_boot, 1)),
                                 max_iter, BOOT_FTOL)
  ok = ((status == 0) | (status == 2)) & np.isfinite(f)
  f_BK = np.where(ok, f, np.inf).reshape(n_boot, K)
  best = np.argmin(f_BK, axis=1)
  good = np.isfinite(f_BK[np.arange(n_boot), best])
  return x.reshape(n_boot, K, 9)[np.arange(n_boot), best][good], int((~good).sum())


def run_joint(N, D, E, L, n_boot=200, seed=0, boot_starts=8, starts=None, e_start=E_START,
              e_max=E_MAX):
  """The joint law with bootstrap CIs: the fit.json block ('_samples' holds the rows)."""
  out = fit_joint(N, D, E, L, starts, e_start=e_start, e_max=e_max)
  optima = out.pop("_optima")
  if n_boot > 0:
    start_rows = distinct_optima(np.vstack([np.array(out["x"])[None], optima]), boot_starts)
    x_B9, n_fail = bootstrap_joint(N, D, E, L, start_rows, n_boot, seed,
                                   e_start=e_start, e_max=e_max)
    rows = [joint_params(x) for x in x_B9]
    out["ci"] = {k: percentile_interval([r[k] for r in rows]) for k in out["params"]}
    out["bootstrap"] = {"n": n_boot, "n_ok": int(len(x_B9)), "n_failed": n_fail, "seed": seed,
                        "starts": int(len(start_rows))}
    out["_samples"] = x_B9
  return out


# ----------------------------------------------------------------------------
# The effective parameter multiplier


def dense_equivalent(law, L, D):
  """Dense parameters N with E + A/N^alpha + B/D^beta = L at D tokens; inf where none reaches L."""
  L, D = np.asarray(L, float), np.asarray(D, float)
  gap = L - law["E"] - law["B"] * D ** (-law["beta"])
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    n = (law["A"] / gap) ** (1.0 / law["alpha"])
  return np.where(gap > 0, n, np.inf) if law["alpha"] > 0 else np.full_like(gap, np.nan)


def effective_multiplier(N_act, D, L, law, sample_laws=()):
  """k = N_dense / N_act per run (see the module docstring) and its 95% intervals.

  law: the dense reference law {E, A, B, alpha, beta}; sample_laws: its
  bootstrap samples (intervals are None without them). Returns (k_R, [ci per run]).
  """
  N_act = np.asarray(N_act, float)
  k = dense_equivalent(law, L, D) / N_act
  if not len(sample_laws):
    return k, [None] * len(k)
  K_SR = np.array([dense_equivalent(s, L, D) / N_act for s in sample_laws])
  return k, [percentile_interval(K_SR[:, r]) for r in range(len(k))]


def _reference(dense, joint):
  """(reference name, law, sample laws) for the multiplier, or None."""
  if dense is not None:
    s = dense.get("_samples")
    return ("approach 3 on the dense runs (E = 1), N = active parameters", dense,
            [law_from_params(x) for x in (s if s is not None else [])])
  if joint is not None:
    s = joint.get("_samples")
    return ("the joint law at E = 1", joint_dense_law(joint["x"]),
            [joint_dense_law(x) for x in (s if s is not None else [])])
  return None


def multiplier_block(points, N_act, ref):
  """The fit.json 'multiplier' block of the MoE runs (E > 1) against ref."""
  name, law, samples = ref
  moe = points.moe
  sel = np.where(moe["experts"] > 1)[0]
  k, ci = effective_multiplier(N_act[sel], points.D[sel], points.L[sel], law, samples)
  runs, by = [], {}
  for j, i in enumerate(sel):
    runs.append({"run": points.names[i], "experts": float(moe["experts"][i]),
                 "top_k": float(moe["top_k"][i]), "granularity": float(moe["granularity"][i]),
                 "N_active": float(N_act[i]), "D": float(points.D[i]),
                 "flops": float(6 * N_act[i] * points.D[i]), "loss": float(points.L[i]),
                 "N_dense": float(k[j] * N_act[i]), "multiplier": float(k[j]), "ci": ci[j]})
    by.setdefault(f"{moe['experts'][i]:g}", []).append(k[j])
  return {"reference": name, "definition": MULTIPLIER_DEFINITION, "runs": runs,
          "by_experts": {e: {"n_runs": len(v), "geomean": float(np.exp(np.mean(np.log(v))))}
                         for e, v in by.items()}}


def run_moe(points, dense=None, n_boot=200, seed=0, dense_skipped=None, log=print,
            e_start=E_START, e_max=E_MAX):
  """The fit.json 'moe' section of runs with several expert counts (schema: module docstring).

  dense: approach 3's block fitted to the dense runs with N = active
  parameters (its '_samples' give the multiplier's interval), or None with
  dense_skipped saying why; then the joint law at E = 1 is the reference.
  Forms the runs cannot support are listed under 'skipped', never raised.
  """
  N_act = active_params(points)
  E = np.asarray(points.moe["experts"], float)
  out = {"experts": [float(e) for e in np.unique(E)], "n_runs": int(len(E)),
         "n_dense": int((E == 1).sum()), "n_count": "active", "e_start": e_start, "e_max": e_max,
         "skipped": {}}
  for name, fit in (("joint", lambda: run_joint(N_act, points.D, E, points.L, n_boot, seed,
                                                e_start=e_start, e_max=e_max)),
                    ("clark", lambda: run_clark(N_act, points.D, E, points.L, n_boot, seed,
                                                e_start, e_max))):
    try:
      out[name] = fit()
    except MoEFitError as e:
      out["skipped"][name] = str(e)
      log(f"moe {name} skipped: {e}")
  if dense_skipped:
    out["skipped"]["dense_reference"] = dense_skipped
  ref = _reference(dense, out.get("joint"))
  if ref is None:
    out["skipped"]["multiplier"] = ("no dense reference law: approach 3 on the dense runs and "
                                    "the joint law were both skipped")
  else:
    out["multiplier"] = multiplier_block(points, N_act, ref)
  return out


# ----------------------------------------------------------------------------
# Curves for plots and TensorBoard, and the console table


def law_curves(points, block, e_start=E_START, e_max=E_MAX):
  """[{"experts", "kind", "value", "N", "D", "loss"}] of the fitted law along each E's runs.

  The joint law: one curve per group of 2+ runs of that E sharing a D (kind
  "D", value D tokens), else (an IsoFLOP sweep) sharing C = 6 N_act D within
  0.05 decades (kind "C", value C FLOPs, D = C/(6 N)); where it was skipped,
  Clark's law at its D. N steps by 0.01 decades over a group's sizes
  (TensorBoard step round(100 log10 N)).
  """
  N_act, E = active_params(points), np.asarray(points.moe["experts"], float)
  joint, clark = block.get("joint"), block.get("clark")
  out = []
  for e in np.unique(E):
    sel = np.where(E == e)[0]
    paths = []
    if joint is not None:
      for kind, v, tol in (("D", points.D[sel], D_SAME_DEX),
                           ("C", 6 * N_act[sel] * points.D[sel], 0.05)):
        paths = [(sel[g], kind, float(np.exp(np.mean(np.log(v[g])))))
                 for g in group_budgets(v, tol) if len(g) > 1]
        if paths:
          break
    elif clark is not None:
      at_d = sel[np.abs(np.log10(points.D[sel] / clark["D"])) <= D_SAME_DEX]
      paths += [(at_d, "D", clark["D"])] if len(at_d) else []
    for idx, kind, value in paths:
      lo, hi = np.log10(N_act[idx].min()), np.log10(N_act[idx].max())
      N = 10.0 ** (np.arange(np.ceil(100 * lo), np.floor(100 * hi) + 1) / 100)
      if len(N) < 2:
        continue
      D = np.full_like(N, value) if kind == "D" else value / (6 * N)
      loss = predict_joint(joint["x"], N, D, e, e_start, e_max) if joint is not None else \
        predict_clark([clark["params"][k] for k in "abcd"], N, np.full_like(N, e), e_start, e_max)
      out.append({"experts": float(e), "kind": kind, "value": value, "N": N, "D": D,
                  "loss": loss})
  return out


def _num(x, fmt=".4g"):
  """A bound or multiplier as text; None (fit.json's null) and inf mean no dense size reaches it."""
  return "inf" if x is None or x == float("inf") else format(x, fmt)


def _ci_text(ci):
  return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else ""


def format_moe(block):
  """Console lines of the 'moe' section: the fitted forms and the per-run multipliers."""
  if "n_runs" not in block:
    return f"moe skipped: {block['skipped'].get('moe', '')}"
  experts = ", ".join(f"{e:g}" for e in block["experts"])
  lines = [f"moe: {block['n_runs']} runs ({block['n_dense']} dense), E in {{{experts}}}, "
           f"N = active params, Ê with E_start {block['e_start']:g}, E_max {block['e_max']:g}"]
  for name in ("joint", "clark"):
    r = block.get(name)
    if r is None:
      lines.append(f"  {name} skipped: {block['skipped'].get(name, '')}")
      continue
    lines.append(f"  {r['form']}  ({r['n_runs']} runs"
                 + (f" at D = {r['D']:.3g}" if name == "clark" else "") + ")")
    ci = r.get("ci") or {}
    lines += [f"    {k:<6} {v:>11.4g}  {_ci_text(ci.get(k))}" for k, v in r["params"].items()]
  m = block.get("multiplier")
  if m is None:
    lines.append(f"  multiplier skipped: {block['skipped'].get('multiplier', '')}")
    return "\n".join(lines)
  lines.append(f"  effective parameter multiplier k = N_dense/N_act (reference: {m['reference']})")
  lines.append(f"    {'run':<24} {'E':>4} {'top_k':>5} {'N_active':>10} {'D':>10} {'loss':>7} "
               f"{'k':>7}  95% CI")
  for r in m["runs"]:
    lines.append(f"    {r['run'][:24]:<24} {r['experts']:>4g} {r['top_k']:>5g} "
                 f"{r['N_active']:>10.3g} {r['D']:>10.3g} {r['loss']:>7.4f} "
                 f"{_num(r['multiplier'], '.3g'):>7}  {_ci_text(r['ci'])}")
  return "\n".join(lines)
