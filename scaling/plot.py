"""Plots and TensorBoard output for scaling.fit results (matplotlib, tensorboardX).

write_all(points, result, out) writes PNGs into out and the same images, a
text summary and an HParams view (each run a point with N, D, C as
hyperparameters and final loss as metric) as TensorBoard events under out,
so ``tensorboard --logdir OUT`` shows the scaling law. Imports neither model/
nor train/.
"""
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scaling import tables  # noqa: E402
from scaling.law import frontier, law_from_params, predict_loss  # noqa: E402


def _save(fig, path):
  """Save fig as PNG; return its RGB pixels (H, W, 3, uint8) for TensorBoard."""
  fig.savefig(path, dpi=100, bbox_inches="tight")
  fig.canvas.draw()
  rgb_HW3 = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return rgb_HW3


def _band(ax, C, samples_S2, color, label):
  """Fitted power law k·C^p and its 95% bootstrap band from (p, k) rows."""
  if samples_S2 is None or len(samples_S2) < 2:
    return
  Y_SC = samples_S2[:, 1:2] * C[None] ** samples_S2[:, 0:1]
  lo, hi = np.percentile(Y_SC, [2.5, 97.5], axis=0)
  ax.fill_between(C, lo, hi, color=color, alpha=0.15, lw=0, label=label)


def plot_isoflop(points, a2):
  """IsoFLOP curves: final loss vs N per budget, parabolas and minima."""
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  cmap = plt.get_cmap("viridis")
  budgets = a2["budgets"]
  for j, b in enumerate(budgets):
    color = cmap(j / max(1, len(budgets) - 1))
    sel = np.abs(np.log10(points.C / b["flops"])) <= 0.1
    ax.scatter(points.N[sel], points.L[sel], color=color, s=14)
    x = np.linspace(np.log(points.N[sel].min()), np.log(points.N[sel].max()), 100)
    c2, c1, c0 = b["coef"]
    ax.plot(np.exp(x), c0 + c1 * x + c2 * x * x, color=color, lw=1,
            label=f"C={b['flops']:.2g}")
    ax.plot(b["N_opt"], b["loss_min"], "k*", ms=9)
  ax.set_xscale("log")
  ax.set_xlabel("N (parameters)")
  ax.set_ylabel("final loss (nats/token)")
  ax.set_title("Approach 2: IsoFLOP parabolas (★ minima)")
  ax.legend(fontsize=7)
  return fig


def plot_optimal(points, result):
  """N_opt and D_opt against C: per-approach fits, minima and 95% bands."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
  c_lo = points.C.min() / 3
  c_hi = max(points.C.max() * 30, result.get("prediction", {}).get("flops", 0))
  C = np.logspace(np.log10(c_lo), np.log10(c_hi), 100)
  colors = {"approach1": "tab:blue", "approach2": "tab:orange", "approach3": "tab:green"}
  for name in ("approach1", "approach2"):
    r = result.get(name)
    if not r:
      continue
    s = r.get("_samples")
    n_opt = r["k_N"] * C ** r["a"]
    axes[0].plot(C, n_opt, color=colors[name], label=f"{name}: a={r['a']:.3f}")
    axes[1].plot(C, C / (6 * n_opt), color=colors[name], label=f"{name}: b={r['b']:.3f}")
    _band(axes[0], C, s, colors[name], None)
    if s is not None and len(s) > 1:  # D_opt = C / (6 N_opt): band from the same samples
      Y_SC = s[:, 1:2] * C[None] ** s[:, 0:1]
      lo, hi = np.percentile(C / (6 * Y_SC), [2.5, 97.5], axis=0)
      axes[1].fill_between(C, lo, hi, color=colors[name], alpha=0.15, lw=0)
  if result.get("approach1"):
    c_env, n_env = result["approach1"]["_envelope"][:2]
    axes[0].scatter(c_env[::25], n_env[::25], s=6, color=colors["approach1"])
  if result.get("approach2"):
    for b in result["approach2"]["budgets"]:
      err = b.get("ci_N_opt")
      yerr = None if not err else [[b["N_opt"] - err[0]], [err[1] - b["N_opt"]]]
      axes[0].errorbar(b["flops"], b["N_opt"], yerr=yerr, fmt="o", color=colors["approach2"])
      axes[1].plot(b["flops"], b["D_opt"], "o", color=colors["approach2"])
  r = result.get("approach3")
  if r:
    n_opt, d_opt = frontier(r, C)
    axes[0].plot(C, n_opt, color=colors["approach3"], label=f"approach3: a={r['a']:.3f}")
    axes[1].plot(C, d_opt, color=colors["approach3"], label=f"approach3: b={r['b']:.3f}")
    s = r.get("_samples")
    if s is not None and len(s) > 1:
      fr = [frontier(law_from_params(x), C) for x in s]
      for i, ax in enumerate(axes):
        lo, hi = np.percentile([f[i] for f in fr], [2.5, 97.5], axis=0)
        ax.fill_between(C, lo, hi, color=colors["approach3"], alpha=0.15, lw=0)
  for ax, what in zip(axes, ("N_opt (parameters)", "D_opt (tokens)")):
    ax.set_xscale("log"); ax.set_yscale("log")
    ax.set_xlabel("C (FLOPs)"); ax.set_ylabel(what)
    ax.grid(alpha=0.3, which="both"); ax.legend(fontsize=8)
  fig.suptitle("Compute-optimal allocation (bands: 95% bootstrap)")
  return fig


def plot_contours(points, law):
  """Approach-3 iso-loss contours over (C, N), data points and the frontier."""
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  C_pts = 6 * points.N * points.D
  lc = np.linspace(np.log10(C_pts.min()) - 0.5, np.log10(C_pts.max()) + 1, 200)
  ln = np.linspace(np.log10(points.N.min()) - 0.5, np.log10(points.N.max()) + 0.5, 200)
  C_GG, N_GG = np.meshgrid(10 ** lc, 10 ** ln)
  L_GG = predict_loss(law, N_GG, C_GG / (6 * N_GG))
  levels = np.quantile(L_GG, np.linspace(0.02, 0.9, 14))
  cs = ax.contour(C_GG, N_GG, L_GG, levels=np.unique(levels), cmap="viridis", linewidths=0.8)
  ax.clabel(cs, fontsize=6, fmt="%.2f")
  sc = ax.scatter(C_pts, points.N, c=points.L, cmap="viridis", s=10, edgecolors="none")
  n_opt, _ = frontier(law, 10 ** lc)
  ax.plot(10 ** lc, n_opt, "r-", lw=1.5, label=f"frontier N_opt ∝ C^{law['a']:.3f}")
  ax.set_xscale("log"); ax.set_yscale("log")
  ax.set_ylim(10 ** ln[0], 10 ** ln[-1])
  ax.set_xlabel("C = 6ND (FLOPs)"); ax.set_ylabel("N (parameters)")
  ax.set_title(f"Approach 3: E={law['E']:.3f} A={law['A']:.3g} B={law['B']:.3g} "
               f"α={law['alpha']:.3f} β={law['beta']:.3f}", fontsize=9)
  fig.colorbar(sc, label="loss (nats/token)")
  ax.legend(fontsize=8)
  return fig


def plot_residuals(points, law):
  """Approach-3 residuals log L - log L_hat against N and as a histogram."""
  r = np.log(points.L) - np.log(predict_loss(law, points.N, points.D))
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  sc = axes[0].scatter(points.N, r, c=np.log10(points.D), s=10, cmap="plasma")
  axes[0].axhline(0, color="k", lw=0.8)
  axes[0].set_xscale("log")
  axes[0].set_xlabel("N (parameters)"); axes[0].set_ylabel("log L - log L̂")
  fig.colorbar(sc, ax=axes[0], label="log10 D")
  axes[1].hist(r, bins=min(40, max(5, len(r) // 5)))
  axes[1].set_xlabel("residual (log loss)")
  axes[1].set_title(f"RMS {np.sqrt(np.mean(r ** 2)):.3g}, n={len(r)}")
  return fig


def plot_envelope(points, a1):
  """Approach 1: every training curve against C and their lower envelope."""
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for c, n in zip(points.curves, points.N):
    if c is not None:
      ax.plot(c["flops"], c["loss"], lw=0.7, alpha=0.6,
              color=plt.get_cmap("viridis")(np.log(n / points.N.min()) /
                                            max(1e-9, np.log(points.N.max() / points.N.min()))))
  C, _, l_min, _ = a1["_envelope"]
  ax.plot(C, l_min, "k-", lw=1.5, label=f"envelope ({a1['curve_source']})")
  ax.set_xscale("log")
  ax.set_xlabel("C (FLOPs)"); ax.set_ylabel("loss (nats/token)")
  ax.set_title(f"Approach 1: a={a1['a']:.3f}, b={a1['b']:.3f}")
  ax.legend(fontsize=8)
  return fig


def figures(points, result):
  """{name: figure} for every plot the result supports."""
  figs = {"optimal": lambda: plot_optimal(points, result)}
  if result.get("approach1"):
    figs["envelope"] = lambda: plot_envelope(points, result["approach1"])
  if result.get("approach2"):
    figs["isoflop"] = lambda: plot_isoflop(points, result["approach2"])
  if result.get("approach3"):
    figs["contours"] = lambda: plot_contours(points, result["approach3"])
    figs["residuals"] = lambda: plot_residuals(points, result["approach3"])
  return figs


def write_tensorboard(out, images, result, points):
  """Images, a text summary and one HParams point per run, under out."""
  from tensorboardX import SummaryWriter
  with SummaryWriter(out) as writer:
    for name, rgb_HW3 in images.items():
      writer.add_image(f"scaling/{name}", rgb_HW3, 0, dataformats="HWC")
    table = tables.format_table(result)
    if "prediction" in result:
      table += "\n" + tables.format_prediction(result["prediction"])
    writer.add_text("scaling/summary", "```\n" + table + "\n```", 0)
    r = result.get("approach3")
    if r:
      for k in ("E", "A", "B", "alpha", "beta", "a", "b", "objective"):
        writer.add_scalar(f"approach3/{k}", r[k], 0)
  for i, name in enumerate(points.names):
    n, d = float(points.N[i]), float(points.D[i])
    with SummaryWriter(os.path.join(out, "hparams")) as writer:
      writer.add_hparams({"N": n, "D": d, "C": 6 * n * d, "tokens_per_param": d / n},
                         {"final_loss": float(points.L[i])}, name=name)


def write_all(points, result, out, tensorboard=True):
  """Write every PNG into out (and TensorBoard events); returns the PNG paths."""
  os.makedirs(out, exist_ok=True)
  paths, images = [], {}
  for name, make in figures(points, result).items():
    path = os.path.join(out, f"{name}.png")
    images[name] = _save(make(), path)
    paths.append(path)
  if tensorboard:
    write_tensorboard(out, images, result, points)
  return paths
