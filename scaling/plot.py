"""Plots, TensorBoard events and the report of a scaling.fit result (matplotlib, tensorboardX).

Units: N in parameters (the fit's n_count), D in tokens, C in training FLOPs,
loss in nats/token; every axis says which.

write_all(points, result, out) writes into OUT:
  * the PNGs the fit supports: optimal.png (N_opt and D_opt against C),
    isoflop.png (approach 2, with approach 3's law overlaid), envelope.png
    (approach 1), contours.png (approach 3's iso-loss lines over C and N),
    residuals.png (approach 3's log residuals per budget), moe.png (loss
    against active parameters per expert count, with the MoE law's curves);
  * report.md, report.html and points.csv (`scaling.report`);
  * TensorBoard events in OUT itself, one TensorBoard run (a sweep's fit
    goes to DIR/fit, beside the training runs): the PNGs as images
    `plots/<name>`, one markdown text `fit_summary` (every table of the fit),
    and scalars on log axes, each group's step named in its tag:
      frontier_step_100log10C/log10_N_opt_approachK   step = round(100 log10 C)
      frontier_step_100log10C/log10_N_opt_approach3_lo95, _hi95 (95% bootstrap band)
      frontier_step_100log10C/loss_approach3           L(N_opt, D_opt), nats/token
      envelope_step_100log10C/loss_min                 approach 1's lower envelope
      isoflop_step_100log10N/C_<budget>                approach 2's parabola per budget
      moe_step_100log10N/loss_E<E>_<D or C>_<value>    the MoE law along E's runs (N active)
    over the data's FLOP and size range (no extrapolation), grouped on the
    Custom Scalars page. No HParams and no one-point charts: the fit's
    numbers are in the text.
"""
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from scaling import moe_law
from scaling import report as report_lib
from scaling.law import CHINCHILLA, EPOCH, frontier, law_from_params, predict_loss
from scaling.points import group_budgets

COLORS = {"approach1": "tab:blue", "approach2": "tab:orange", "approach3": "tab:green"}
N_WORDS = {"with_head": "with head", "non_embedding": "non-embedding", "total": "total"}
C_LABEL = "C (training FLOPs)"
EXTRAPOLATION = {"color": "0.55", "alpha": 0.13, "lw": 0}
# Reference exponents a of N_opt ∝ C^a (REFERENCE.md): Chinchilla's approach 1 (Table 2) and the
# frontiers of the Chinchilla (approach 3) and Epoch laws.
CHINCHILLA_APPROACH1_A = 0.50
REFERENCES = (("Chinchilla approach 1", CHINCHILLA_APPROACH1_A, (0, (1, 1.5))),
              ("Chinchilla approach 3", CHINCHILLA["a"], (0, (4, 2))),
              ("Epoch (Besiroglu et al.)", EPOCH["a"], (0, (6, 2, 1, 2))))
MAX_BUDGET_LEGEND = 10  # More budgets than this: colour by C with a colourbar instead of a legend.


# ---------------------------------------------------------------------------- labels and axes


def flops_text(C):
  """'8e10' for 8e10, '1.2e16' for 1.25e16: two significant digits, no '+'."""
  mant, _, exp = f"{float(C):.2g}".partition("e")
  return f"{mant}e{int(exp)}" if exp else mant


def _n_label(points):
  return f"N (parameters, {N_WORDS.get(points.n_count, points.n_count)})"


def _ci_text(ci, fmt="{:.2f}"):
  return "" if not ci else f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"


def _log_tick(x, _pos=None):
  """Tick text of a log axis: 10^k at decades, m×10^k between."""
  if x <= 0:
    return ""
  e = math.floor(math.log10(x) + 1e-9)
  m = x / 10 ** e
  if abs(m - round(m)) > 1e-6:
    return ""
  m = round(m)
  return f"$10^{{{e}}}$" if m == 1 else f"${m}\\!\\times\\!10^{{{e}}}$"


def _log_axis(axis):
  """Decade ticks labelled 10^k; on a short axis (under 3 decades) also 2 and 5 × 10^k.

  Minor ticks are never labelled (matplotlib's default labels them on short
  axes, which is what made labels overlap).
  """
  lo, hi = sorted(axis.get_view_interval())
  span = math.log10(hi / lo) if lo > 0 else 10
  subs = (1.0, 2.0, 5.0) if span < 3 else (1.0,)
  axis.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=12))
  axis.set_major_formatter(ticker.FuncFormatter(_log_tick))
  axis.set_minor_locator(ticker.LogLocator(base=10, subs=np.arange(2, 10), numticks=12))
  axis.set_minor_formatter(ticker.NullFormatter())


def _log_axes(ax, x=True, y=True):
  if x:
    ax.set_xscale("log")
    _log_axis(ax.xaxis)
  if y:
    ax.set_yscale("log")
    _log_axis(ax.yaxis)


def tick_labels(axis):
  """The tick labels an axis draws: visible, non-empty, at a tick inside the view."""
  lo, hi = sorted(axis.get_view_interval())
  eps = 1e-9 * max(abs(lo), abs(hi), 1e-300)
  out = []
  for tick in axis.get_major_ticks() + axis.get_minor_ticks():
    if not lo - eps <= tick.get_loc() <= hi + eps:
      continue
    out += [t for t in (tick.label1, tick.label2) if t.get_visible() and t.get_text()]
  return out


def _overlapping(labels, renderer, pad=1.5):
  """Whether any two labels' text extents (padded by pad pixels) overlap."""
  boxes = [t.get_window_extent(renderer).padded(pad) for t in labels]
  return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _declutter(fig):
  """Where two tick labels of an axis would overlap: drop its minor labels, then keep every
  2nd, 3rd, ... major label until none do. A safety net: the locators above rarely need it."""
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  for ax in fig.axes:
    for axis in (ax.xaxis, ax.yaxis):
      if not _overlapping(tick_labels(axis), renderer):
        continue
      axis.set_minor_formatter(ticker.NullFormatter())
      fig.canvas.draw()
      lo, hi = sorted(axis.get_view_interval())
      locs = [x for x in axis.get_majorticklocs() if lo <= x <= hi]
      texts = axis.get_major_formatter().format_ticks(locs)
      k = 1
      while _overlapping(tick_labels(axis), renderer) and k < len(locs):
        k += 1
        axis.set_ticks(locs, [t if i % k == 0 else "" for i, t in enumerate(texts)])
        fig.canvas.draw()
  return fig


def _shade_extrapolation(ax, c_lo, c_hi, data_lo, data_hi):
  """Grey spans where C lies outside the data's FLOP range [data_lo, data_hi]."""
  for a, b in ((c_lo, data_lo), (data_hi, c_hi)):
    if b > a:
      ax.axvspan(a, b, **EXTRAPOLATION)
      ax.text(math.sqrt(a * b), 0.98, "extrapolation", transform=ax.get_xaxis_transform(),
              ha="center", va="top", fontsize=7, color="0.35")


def _split_line(ax, C, y, inside, color, label, lw=1.6):
  """y(C) solid where inside (the data's range), dashed outside it."""
  ax.plot(np.where(inside, C, np.nan), y, color=color, lw=lw, label=label)
  outside = ~inside
  # Join the dashed pieces to the solid one at the data's edges.
  edge = outside | np.r_[outside[1:], False] | np.r_[False, outside[:-1]]
  ax.plot(np.where(edge, C, np.nan), y, color=color, lw=lw * 0.8, ls="--")


def budget_colors(n):
  """n colours of a sequential map, smallest budget darkest (no pale yellow on white)."""
  cmap = plt.get_cmap("viridis")
  return [cmap(0.88 * j / max(1, n - 1)) for j in range(n)]


def _in_budget(points, flops, tol_dex=0.1):
  return np.abs(np.log10(points.C / flops)) <= tol_dex


# ---------------------------------------------------------------------------- the plots


def plot_isoflop(points, a2, law=None):
  """Approach 2: final loss against N per FLOP budget, the fitted parabolas in ln N, their
  minima with 95% bootstrap intervals of N_opt, and (law: approach 3) L(N, C/(6N)) overlaid."""
  fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
  budgets = a2["budgets"]
  colors = budget_colors(len(budgets))
  handles = []
  n_lo, n_hi, l_vals = np.inf, 0.0, []
  for b, color in zip(budgets, colors):
    sel = _in_budget(points, b["flops"])
    N, L = points.N[sel], points.L[sel]
    ax.scatter(N, L, color=color, s=22, zorder=3, edgecolors="white", linewidths=0.4)
    x = np.linspace(np.log(N.min()), np.log(N.max()), 100)
    c2, c1, c0 = b["coef"]
    ax.plot(np.exp(x), c0 + c1 * x + c2 * x * x, color=color, lw=1.6)
    if law is not None:
      Nl = np.logspace(np.log10(N.min()) - 0.15, np.log10(N.max()) + 0.15, 100)
      ax.plot(Nl, predict_loss(law, Nl, b["flops"] / (6 * Nl)), color=color, lw=1.1, ls="--")
    ci = b.get("ci_N_opt")
    xerr = None if not ci else [[max(0.0, b["N_opt"] - ci[0])], [max(0.0, ci[1] - b["N_opt"])]]
    ax.errorbar(b["N_opt"], b["loss_min"], xerr=xerr, fmt="*", color="k", ms=11, capsize=4,
                elinewidth=1.2, zorder=4)
    handles.append(Line2D([], [], color=color, marker="o", lw=1.6,
                          label=f"C = {flops_text(b['flops'])} FLOPs ({b['n_points']} runs)"))
    n_lo, n_hi = min(n_lo, N.min()), max(n_hi, N.max())
    l_vals += [L.min(), L.max(), b["loss_min"]]
  handles += [Line2D([], [], color="k", lw=1.6, label="approach 2: parabola in ln N"),
              Line2D([], [], color="k", marker="*", ms=10, ls="-", lw=1.2,
                     label="approach 2: minimum, bar = 95% CI of N_opt")]
  if law is not None:
    handles.append(Line2D([], [], color="k", lw=1.1, ls="--",
                          label="approach 3: law L(N, D = C/6N)"))
  ax.set_xlim(n_lo / 10 ** 0.2, n_hi * 10 ** 0.2)
  pad = 0.08 * (max(l_vals) - min(l_vals))
  ax.set_ylim(min(l_vals) - pad, max(l_vals) + pad)
  _log_axes(ax, y=False)
  ax.set_xlabel(_n_label(points))
  ax.set_ylabel("final loss (nats/token)")
  ax.grid(alpha=0.3, which="major")
  ci = (a2.get("ci") or {}).get("a")
  n_drop = len(a2.get("dropped_budgets", []))
  ax.set_title(f"Approach 2: IsoFLOP profiles\nN_opt ∝ C^{a2['a']:.3f}{_ci_text(ci, '{:.3f}')}",
               fontsize=10)
  fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False,
             title=f"{len(budgets)} budgets fitted" + (
               f", {n_drop} dropped\n(reasons in fit.json)" if n_drop else ""),
             title_fontsize=8, alignment="left")
  return _declutter(fig)


def data_flops(points, result):
  """(lowest, highest) C of the data: the runs' FLOPs and approach 1's envelope (its curves
  reach below the final points)."""
  lo, hi = float(points.C.min()), float(points.C.max())
  if result.get("approach1"):
    c_env = result["approach1"]["_envelope"][0]
    lo, hi = min(lo, float(c_env.min())), max(hi, float(c_env.max()))
  return lo, hi


def _frontier_lines(result, C):
  """{approach: (N_opt(C), D_opt(C), label)} of every fitted approach."""
  lines = {}
  for name in ("approach1", "approach2"):
    r = result.get(name)
    if r:
      n_opt = r["k_N"] * C ** r["a"]
      lines[name] = (n_opt, C / (6 * n_opt), r)
  r = result.get("approach3")
  if r:
    n_opt, d_opt = frontier(r, C)
    lines["approach3"] = (n_opt, d_opt, r)
  return lines


def _frontier_bands(name, r, C):
  """(N lo, N hi, D lo, D hi) 95% bands over C from the bootstrap samples, or None."""
  s = r.get("_samples")
  if s is None or len(s) < 2:
    return None
  if name == "approach3":
    fr = [frontier(law_from_params(x), C) for x in s]
    N_SC, D_SC = np.array([f[0] for f in fr]), np.array([f[1] for f in fr])
  else:
    N_SC = s[:, 1:2] * C[None] ** s[:, 0:1]
    D_SC = C[None] / (6 * N_SC)
  n_lo, n_hi = np.nanpercentile(N_SC, [2.5, 97.5], axis=0)
  d_lo, d_hi = np.nanpercentile(D_SC, [2.5, 97.5], axis=0)
  return n_lo, n_hi, d_lo, d_hi


def plot_optimal(points, result):
  """N_opt(C) and D_opt(C): each approach's fit with its 95% band, the approach-1 envelope
  and approach-2 minima, Chinchilla and Epoch reference slopes, extrapolation shaded."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), layout="constrained")
  data_lo, data_hi = data_flops(points, result)
  pred = result.get("prediction", {}).get("flops")
  c_lo, c_hi = data_lo / 3, max(data_hi * 10, 2 * pred if pred else 0)
  C = np.logspace(np.log10(c_lo), np.log10(c_hi), 200)
  inside = (C >= data_lo) & (C <= data_hi)
  lines = _frontier_lines(result, C)
  ys = [[], []]
  for name, (n_opt, d_opt, r) in lines.items():
    ci = r.get("ci") or {}
    _split_line(axes[0], C, n_opt, inside, COLORS[name],
                f"{name}: a = {r['a']:.3f}{_ci_text(ci.get('a'), '{:.3f}')}, "
                f"b = {r['b']:.3f}{_ci_text(ci.get('b'), '{:.3f}')}")
    _split_line(axes[1], C, d_opt, inside, COLORS[name], None)
    band = _frontier_bands(name, r, C)
    if band is not None:
      axes[0].fill_between(C, band[0], band[1], color=COLORS[name], alpha=0.14, lw=0)
      axes[1].fill_between(C, band[2], band[3], color=COLORS[name], alpha=0.14, lw=0)
    ys[0] += [n_opt.min(), n_opt.max()]
    ys[1] += [d_opt.min(), d_opt.max()]
  a1 = result.get("approach1")
  if a1:
    c_env, n_env = a1["_envelope"][:2]
    step = max(1, len(c_env) // 40)
    for ax, y in zip(axes, (n_env, c_env / (6 * n_env))):
      ax.scatter(c_env[::step], y[::step], s=9, color=COLORS["approach1"], zorder=3,
                 label="approach 1: envelope winners" if ax is axes[0] else None)
  a2 = result.get("approach2")
  if a2:
    for j, b in enumerate(a2["budgets"]):
      ci = b.get("ci_N_opt")
      n_err = None if not ci else [[max(0.0, b["N_opt"] - ci[0])], [max(0.0, ci[1] - b["N_opt"])]]
      d_err = None if not ci else [[max(0.0, b["D_opt"] - b["flops"] / (6 * ci[1]))],
                                   [max(0.0, b["flops"] / (6 * ci[0]) - b["D_opt"])]]
      label = "approach 2: IsoFLOP minima, 95% CI" if j == 0 else None
      axes[0].errorbar(b["flops"], b["N_opt"], yerr=n_err, fmt="o", ms=5, capsize=3,
                       color=COLORS["approach2"], zorder=4, label=label)
      axes[1].errorbar(b["flops"], b["D_opt"], yerr=d_err, fmt="o", ms=5, capsize=3,
                       color=COLORS["approach2"], zorder=4)
  anchor = next((k for k in ("approach3", "approach2", "approach1") if k in lines), None)
  c0 = math.sqrt(data_lo * data_hi)
  if anchor is not None:
    n0 = float(np.interp(np.log(c0), np.log(C), lines[anchor][0]))
    d0 = c0 / (6 * n0)
    for label, a, ls in REFERENCES:
      axes[0].plot(C, n0 * (C / c0) ** a, color="0.3", lw=1, ls=ls,
                   label=f"reference slope, {label}: a = {a:.2f}")
      axes[1].plot(C, d0 * (C / c0) ** (1 - a), color="0.3", lw=1, ls=ls)
  p3 = result.get("prediction", {}).get("approach3")
  if pred and p3:
    ci = p3.get("ci") or {}
    for ax, key in zip(axes, ("N_opt", "D_opt")):
      c = ci.get(key)
      err = None if not c else [[max(0.0, p3[key] - c[0])], [max(0.0, c[1] - p3[key])]]
      ax.errorbar(pred, p3[key], yerr=err, fmt="D", ms=6, capsize=3, color="k", zorder=5,
                  label=f"approach 3 prediction at C = {flops_text(pred)}, 95% CI"
                  if ax is axes[0] else None)
      ys[ax is axes[1]] += [p3[key]]
  n_words = N_WORDS.get(points.n_count, points.n_count)
  for i, (ax, what) in enumerate(zip(axes, (f"N_opt (parameters, {n_words})",
                                            "D_opt (training tokens)"))):
    _shade_extrapolation(ax, c_lo, c_hi, data_lo, data_hi)
    ax.set_xlim(c_lo, c_hi)
    if ys[i]:
      ax.set_ylim(min(ys[i]) / 3, max(ys[i]) * 3)
    _log_axes(ax)
    ax.set_xlabel(C_LABEL)
    ax.set_ylabel(what)
    ax.grid(alpha=0.3, which="major")
  axes[0].set_title("compute-optimal model size", fontsize=10)
  axes[1].set_title("compute-optimal training tokens", fontsize=10)
  handles = axes[0].get_legend_handles_labels()[0]
  handles.append(Patch(**EXTRAPOLATION,
                       label="outside the data's FLOP range (dashed: extrapolated)"))
  handles.append(Line2D([], [], color="0.2", alpha=0.3, lw=6, label="shaded bands: 95% bootstrap"))
  fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)
  fig.suptitle("Compute-optimal allocation against training compute"
               + (f"; reference slopes drawn through the "
                  f"{anchor.replace('approach', 'approach ')} fit at C = {flops_text(c0)}"
                  if anchor is not None else ""), fontsize=11)
  return _declutter(fig)


def plot_contours(points, law):
  """Approach 3: iso-loss contours of L(N, C/(6N)) over (C, N), the runs coloured by measured
  loss on the same scale, the efficient frontier and 20 tokens/param."""
  fig, ax = plt.subplots(figsize=(7.5, 5.2), layout="constrained")
  C_pts = 6 * points.N * points.D
  lc = np.linspace(np.log10(C_pts.min()) - 0.5, np.log10(C_pts.max()) + 1, 200)
  ln = np.linspace(np.log10(points.N.min()) - 0.5, np.log10(points.N.max()) + 0.5, 200)
  C_GG, N_GG = np.meshgrid(10 ** lc, 10 ** ln)
  L_GG = predict_loss(law, N_GG, C_GG / (6 * N_GG))
  hi = float(points.L.max() + 0.15 * np.ptp(points.L))  # Contours only up to the data's losses.
  levels = ticker.MaxNLocator(11).tick_values(float(L_GG.min()), hi)
  levels = levels[(levels > L_GG.min()) & (levels < L_GG.max())]
  norm = Normalize(vmin=min(levels[0], points.L.min()), vmax=max(levels[-1], points.L.max()))
  cmap = plt.get_cmap("viridis")
  cs = ax.contour(C_GG, N_GG, L_GG, levels=levels, cmap=cmap, norm=norm, linewidths=0.9)
  ax.clabel(cs, fontsize=6.5, fmt="%.2f")
  ax.scatter(C_pts, points.N, c=points.L, cmap=cmap, norm=norm, s=30, edgecolors="k",
             linewidths=0.6, zorder=3, label="runs (fill: measured final loss)")
  C = 10 ** lc
  n_opt, _ = frontier(law, C)
  ax.plot(C, n_opt, "r-", lw=1.6,
          label=f"efficient frontier N_opt ∝ C^{law['a']:.3f}")
  ax.plot(C, np.sqrt(C / (6 * 20)), color="0.3", lw=1, ls="--", label="20 tokens/param")
  _shade_extrapolation(ax, C[0], C[-1], C_pts.min(), C_pts.max())
  ax.set_xlim(C[0], C[-1])
  ax.set_ylim(10 ** ln[0], 10 ** ln[-1])
  _log_axes(ax)
  ax.set_xlabel("C = 6ND (training FLOPs)")
  ax.set_ylabel(_n_label(points))
  ci = law.get("ci") or {}
  ax.set_title(f"Approach 3: L = E + A/N^α + B/D^β; E = {law['E']:.3f}{_ci_text(ci.get('E'))}, "
               f"α = {law['alpha']:.3f}, β = {law['beta']:.3f}", fontsize=9)
  fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax,
               label="loss (nats/token): contour lines = law, dots = measured")
  ax.legend(fontsize=8, loc="lower right")
  return _declutter(fig)


def plot_residuals(points, law):
  """Approach 3: log residual ln(L / L̂) of every run against N, coloured by FLOP budget."""
  r = np.log(points.L) - np.log(predict_loss(law, points.N, points.D))
  fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
  groups = group_budgets(points.C)
  if len(groups) <= MAX_BUDGET_LEGEND:
    for idx, color in zip(groups, budget_colors(len(groups))):
      idx = idx[np.argsort(points.N[idx])]
      C = float(np.exp(np.mean(np.log(points.C[idx]))))
      ax.plot(points.N[idx], r[idx], "o-", color=color, ms=5, lw=0.8,
              label=f"C = {flops_text(C)} FLOPs")
    fig.legend(loc="outside right upper", fontsize=8, frameon=False, title="budget")
  else:
    norm = LogNorm(points.C.min(), points.C.max())
    ax.scatter(points.N, r, c=points.C, cmap="viridis", norm=norm, s=14)
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label=C_LABEL)
    _log_axis(cb.ax.yaxis)
  ax.axhline(0, color="k", lw=0.8)
  rms = float(np.sqrt(np.mean(r ** 2)))
  ax.axhspan(-rms, rms, color="0.5", alpha=0.1, lw=0)
  _log_axes(ax, y=False)
  ax.set_xlabel(_n_label(points))
  ax.set_ylabel("ln(L / L̂): measured over law (≈ relative error)")
  ax.grid(alpha=0.3, which="major")
  ax.set_title(f"Approach 3 residuals by budget: RMS {rms:.3g} (grey band ±RMS), "
               f"{len(r)} runs", fontsize=10)
  return _declutter(fig)


CURVE_WORDS = {"eval_loss": "eval loss", "train_loss_smoothed": "train loss (moving median)"}


def plot_envelope(points, a1):
  """Approach 1: every training curve against C, coloured by N (colourbar), and the lower
  envelope whose winners give N_opt(C)."""
  fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
  norm = LogNorm(points.N.min(), points.N.max())
  cmap = plt.get_cmap("viridis")
  for c, n in zip(points.curves, points.N):
    if c is not None:
      ax.plot(c["flops"], c["loss"], lw=1, alpha=0.85, color=cmap(norm(n)))
      ax.plot(c["flops"][-1], c["loss"][-1], "o", ms=3, color=cmap(norm(n)))
  C, _, l_min, _ = a1["_envelope"]
  kept = "FLOP values with an interior winner" if a1.get("interior_only") else "covered FLOP values"
  ax.plot(C, l_min, "k-", lw=2, label=f"lower envelope (fitted: {len(C)} {kept})")
  flops = np.concatenate([c["flops"] for c in points.curves if c is not None])
  ax.set_xlim(flops.min() / 10 ** 0.05, flops.max() * 10 ** 0.05)
  _log_axes(ax, y=False)
  ax.set_xlabel(C_LABEL)
  src = "+".join(CURVE_WORDS.get(s, s) for s in (a1.get("curve_source") or "loss").split("+"))
  ax.set_ylabel(f"{src} (nats/token)")
  ax.grid(alpha=0.3, which="major")
  ci = a1.get("ci") or {}
  ax.set_title(f"Approach 1: training curves, N_opt ∝ C^{a1['a']:.3f}"
               f"{_ci_text(ci.get('a'), '{:.3f}')}", fontsize=10)
  cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=_n_label(points))
  _log_axis(cb.ax.yaxis)
  ax.legend(fontsize=8, loc="upper right")
  return _declutter(fig)


def plot_moe(points, block):
  """MoE runs: final loss against active parameters per expert count E, and the fitted MoE law's
  curves along each E's runs (scaling.moe_law.law_curves)."""
  fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
  E, N = points.moe["experts"], moe_law.active_params(points)
  es = list(np.unique(E))
  colors = budget_colors(len(es))
  for e, color in zip(es, colors):
    sel = E == e
    ax.scatter(N[sel], points.L[sel], color=color, s=24, zorder=3, edgecolors="white",
               linewidths=0.4, label=f"E = {e:g}" + (" (dense)" if e == 1 else ""))
  for c in moe_law.law_curves(points, block):
    ax.plot(c["N"], c["loss"], color=colors[es.index(c["experts"])], lw=1.2)
  _log_axes(ax, y=False)
  ax.set_xlabel("N_act (active parameters per token)")
  ax.set_ylabel("final loss (nats/token)")
  ax.grid(alpha=0.3, which="major")
  form = (block.get("joint") or block.get("clark") or {}).get("form", "no MoE law fitted")
  ax.set_title(f"MoE runs by expert count; lines: {form}", fontsize=8)
  ax.legend(fontsize=8, loc="upper right", title="dots: runs; lines: law along their D or C",
            title_fontsize=7)
  return _declutter(fig)


def figures(points, result):
  """{name: thunk returning a figure} for every plot the result supports."""
  figs = {"optimal": lambda: plot_optimal(points, result)}
  if "n_runs" in result.get("moe", {}):
    figs["moe"] = lambda: plot_moe(points, result["moe"])
  if result.get("approach2"):
    figs["isoflop"] = lambda: plot_isoflop(points, result["approach2"], result.get("approach3"))
  if result.get("approach1"):
    figs["envelope"] = lambda: plot_envelope(points, result["approach1"])
  if result.get("approach3"):
    figs["contours"] = lambda: plot_contours(points, result["approach3"])
    figs["residuals"] = lambda: plot_residuals(points, result["approach3"])
  return figs


def save(fig, path):
  """Save fig as PNG (100 dpi) and close it."""
  fig.savefig(path, dpi=100)
  plt.close(fig)


# ---------------------------------------------------------------------------- TensorBoard


SCALARS_NOTE = ("Scalars of this run are on log axes: in `frontier_step_100log10C/*` and "
                "`envelope_step_100log10C/*` the step is round(100 log10 C), C in training FLOPs "
                "(step 1900 = 1e19 FLOPs); in `isoflop_step_100log10N/*` it is round(100 log10 N), "
                "N in parameters. N_opt is written as log10 N_opt, loss in nats/token. They span "
                "the data's range only; the Custom Scalars page overlays them.")


def _steps(lo, hi, every=5):
  """Integer steps round(100 log10 x) from lo to hi, every `every` (0.05 decades)."""
  s_lo, s_hi = math.ceil(100 * math.log10(lo)), math.floor(100 * math.log10(hi))
  steps = np.arange(s_lo, s_hi + 1, every)
  return steps if len(steps) else np.array([s_lo])


def scalars(points, result):
  """{tag: [(step, value), ...]} of the fit on log axes (see the module docstring)."""
  out = {}
  steps = _steps(*data_flops(points, result), every=2)
  C = 10.0 ** (steps / 100)
  g = "frontier_step_100log10C"
  for name, (n_opt, d_opt, r) in _frontier_lines(result, C).items():
    out[f"{g}/log10_N_opt_{name}"] = list(zip(steps, np.log10(n_opt)))
    if name == "approach3":
      band = _frontier_bands(name, r, C)
      if band is not None:
        out[f"{g}/log10_N_opt_approach3_lo95"] = list(zip(steps, np.log10(band[0])))
        out[f"{g}/log10_N_opt_approach3_hi95"] = list(zip(steps, np.log10(band[1])))
      out[f"{g}/loss_approach3"] = list(zip(steps, predict_loss(r, n_opt, d_opt)))
  a1 = result.get("approach1")
  if a1:
    c_env, _, l_min, _ = a1["_envelope"]
    s_env = np.round(100 * np.log10(c_env)).astype(int)
    best = {}
    for s, v in zip(s_env, l_min):
      best[s] = min(v, best.get(s, np.inf))
    out["envelope_step_100log10C/loss_min"] = sorted(best.items())
  a2 = result.get("approach2")
  if a2:
    for b in a2["budgets"]:
      sel = _in_budget(points, b["flops"])
      s = _steps(points.N[sel].min(), points.N[sel].max(), every=1)
      x = np.log(10.0 ** (s / 100))
      c2, c1, c0 = b["coef"]
      tag = f"isoflop_step_100log10N/C_{flops_text(b['flops'])}"
      out[tag] = list(zip(s, c0 + c1 * x + c2 * x * x))
  if "n_runs" in result.get("moe", {}):
    for c in moe_law.law_curves(points, result["moe"]):
      tag = f"moe_step_100log10N/loss_E{c['experts']:g}_{c['kind']}_{flops_text(c['value'])}"
      out[tag] = list(zip(np.round(100 * np.log10(c["N"])).astype(int), c["loss"]))
  return out


def _layout(tags):
  """Custom Scalars layout: the frontier of every approach in one chart, the band, the parabolas."""
  front = [t for t in tags if t.startswith("frontier_") and "log10_N_opt" in t
           and not t.endswith("95")]
  band = [f"frontier_step_100log10C/log10_N_opt_approach3{s}" for s in ("", "_lo95", "_hi95")]
  layout = {"fit: frontier (step = 100 log10 C)": {
    "log10 N_opt, every approach": ["Multiline", front]}}
  if all(t in tags for t in band):
    layout["fit: frontier (step = 100 log10 C)"]["log10 N_opt, approach 3, 95% band"] = [
      "Margin", band]
  iso = [t for t in tags if t.startswith("isoflop_")]
  if iso:
    layout["fit: IsoFLOP parabolas (step = 100 log10 N)"] = {
      "loss (nats/token) per budget": ["Multiline", iso]}
  moe = [t for t in tags if t.startswith("moe_")]
  if moe:
    layout["fit: MoE law (step = 100 log10 N_active)"] = {
      "loss (nats/token) per expert count": ["Multiline", moe]}
  return layout


def _remove_old_events(out):
  """Delete this folder's earlier fit events (and an older version's hparams/ sub-runs)."""
  for folder, _, names in os.walk(out, topdown=False):
    if folder != out and os.path.relpath(folder, out).split(os.sep)[0] != "hparams":
      continue
    for n in names:
      if n.startswith("events.out.tfevents."):
        os.remove(os.path.join(folder, n))
    if folder != out and not os.listdir(folder):
      os.rmdir(folder)


def write_tensorboard(out, pngs, result, points):
  """Events in out (one TensorBoard run): images, one markdown text, scalars on log axes.

  pngs: {name: path of the PNG}. Earlier fit events in out are replaced.
  """
  # Local: tensorboardX is needed only when writing events, not to plot.
  from tensorboardX import SummaryWriter

  _remove_old_events(out)
  tags = scalars(points, result)
  with SummaryWriter(out) as writer:
    for name, path in pngs.items():
      rgba_HW4 = plt.imread(path)
      writer.add_image(f"plots/{name}", (rgba_HW4[..., :3] * 255).round().astype(np.uint8), 0,
                       dataformats="HWC")
    text = report_lib.fit_markdown(result) + "\n\n" + SCALARS_NOTE
    writer.add_text("fit_summary", text, 0)
    for tag, rows in tags.items():
      for step, value in rows:
        if np.isfinite(value):
          writer.add_scalar(tag, float(value), int(step))
    writer.add_custom_scalars(_layout(tags))


def write_all(points, result, out, tensorboard=True, report=True):
  """Write the PNGs, the report (report.md, report.html, points.csv) and TensorBoard events.

  Returns the paths written: the PNGs, then the report's files.
  """
  os.makedirs(out, exist_ok=True)
  pngs = {}
  for name, make in figures(points, result).items():
    pngs[name] = os.path.join(out, f"{name}.png")
    save(make(), pngs[name])
  files = list(pngs.values())
  if report:
    files += report_lib.write_report(points, result, out, pngs=pngs)
  if tensorboard:
    write_tensorboard(out, pngs, result, points)
  return files
