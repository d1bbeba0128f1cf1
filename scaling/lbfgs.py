"""A batched L-BFGS in numpy: P independent minimisations at once, with scipy's stopping rules.

Used by the approach-3 fit (scaling/fit.py), whose 4,500 grid starts and
bootstrap refits are thousands of small 5-parameter problems: one numpy
batch instead of a Python loop over scipy calls.
"""

import numpy as np

# Settings shared by the fits that use it (approach 3 in scaling/fit.py, the joint MoE law in
# scaling/moe_law.py).
HUBER_DELTA = 1e-3  # Huber loss threshold on log residuals (Hoffmann et al. 2022).
SCIPY_FTOL = 2.220446049250313e-09  # L-BFGS-B default: factr 1e7 × machine epsilon.
BOOT_FTOL = 1e-13  # Warm-started bootstrap refits (see scaling.fit.bootstrap_approach3).


def distinct_optima(optima_PK, k, tol=1e-3):
  """Up to k rows of optima (sorted best first) that differ by more than tol in every entry."""
  picked = []
  for x in optima_PK:
    if all(np.max(np.abs(x - p)) > tol for p in picked):
      picked.append(x)
      if len(picked) == k:
        break
  return np.array(picked)


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
