"""Tests for scaling.plot: every plot from a synthetic fit, readable (units, colourbars, legends,
tick labels that never overlap), and the fit's TensorBoard run (one folder, no HParams sub-runs,
a complete text table, scalars on log axes)."""
import glob
import os
import re
import struct

import pytest
from matplotlib.collections import PathCollection
from matplotlib.contour import ContourSet

from scaling import fit
from scaling import points as points_lib

plot = pytest.importorskip("scaling.plot")

from test_fit import LAWS, _make_sweep, _points, _subgrid, synthetic, write_law_sweep


def _sweep_fit(root, budgets=None, n_boot=8):
  """Points and fit (with a prediction at 1e21) of a synthetic sweep folder at root."""
  if budgets is None:
    _make_sweep(root, LAWS["chinchilla"])
  else:
    write_law_sweep(root, LAWS["chinchilla"], budgets, seed=0)
  points = points_lib.load_runs(root, warn=lambda m: None)
  result = fit.fit_all(points, n_boot=n_boot, starts=_subgrid()[::3], boot_starts=4,
                       log=lambda m: None, conventions_boot=0)
  result["prediction"] = fit.predict(result, 100 * points.C.max())
  return points, result


def _csv_fit():
  """A CSV-like input (no curves) with 12 budgets: residuals colour by C with a colourbar."""
  N, D, L = synthetic(LAWS["epoch"], 0, n_budgets=12, n_sizes=6, noise=0.01)
  points = _points(N, D, L)
  return points, fit.fit_all(points, n_boot=5, starts=_subgrid()[::6], log=lambda m: None)


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
  root = tmp_path_factory.mktemp("sweeps")
  narrow = [(8e10, -0.6, 0.6, 5), (2e11, -0.6, 0.6, 5), (5e11, -0.6, 0.6, 5)]  # under a decade
  return {"sweep": _sweep_fit(str(root / "wide")),
          "narrow": _sweep_fit(str(root / "narrow"), narrow),
          "csv": _csv_fit()}


def overlapping_tick_labels(fig):
  """(axes label, text a, text b) for every two drawn tick labels whose text extents overlap."""
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  bad = []
  for ax in fig.axes:
    for axis in (ax.xaxis, ax.yaxis):
      lo, hi = sorted(axis.get_view_interval())
      eps = 1e-9 * max(abs(lo), abs(hi))
      labels = [t for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                if lo - eps <= tick.get_loc() <= hi + eps
                for t in (tick.label1, tick.label2) if t.get_visible() and t.get_text()]
      boxes = [t.get_window_extent(renderer) for t in labels]
      for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
          if boxes[i].overlaps(boxes[j]):
            bad.append((ax.get_label() or ax.get_title(), labels[i].get_text(),
                        labels[j].get_text()))
  return bad


def cut_off_texts(fig):
  """Figure texts, titles, axis labels and legend texts that reach outside the figure."""
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  texts = list(fig.texts)
  for ax in fig.axes:
    texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
  legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
  texts += [t for leg in legends for t in [*leg.get_texts(), leg.get_title()]]
  box = fig.bbox.padded(1)
  out = []
  for t in texts:
    if t.get_visible() and t.get_text():
      ext = t.get_window_extent(renderer)
      if not (box.contains(*ext.min) and box.contains(*ext.max)):
        out.append(t.get_text())
  return out


def _is_colorbar(ax):
  return ax.get_label() == "<colorbar>"


def _legend_texts(fig):
  legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
  return [t.get_text() for leg in legends for t in leg.get_texts()]


def test_the_checks_see_overlaps_and_cut_off_text_and_declutter_fixes_overlaps():
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(3, 2))
  ax.set_xticks([1.0, 1.01, 1.02], ["a long label", "another long one", "and a third"])
  ax.set_xlim(0.99, 1.03)
  assert overlapping_tick_labels(fig)
  assert not overlapping_tick_labels(plot._declutter(fig))
  assert not cut_off_texts(fig)
  ax.set_title("a title far wider than this small figure can hold, cut off at both ends")
  assert cut_off_texts(fig)
  plt.close(fig)


@pytest.mark.parametrize("which", ["sweep", "narrow", "csv"])
def test_every_plot_renders_with_units_and_no_overlapping_tick_labels(fits, which, tmp_path):
  import matplotlib.pyplot as plt
  points, result = fits[which]
  names = set(plot.figures(points, result))
  assert names == ({"optimal", "isoflop", "contours", "residuals"}
                   | ({"envelope"} if which != "csv" else set()))
  for name, make in plot.figures(points, result).items():
    fig = make()
    assert not overlapping_tick_labels(fig), (which, name, overlapping_tick_labels(fig))
    for ax in fig.axes:  # Units on every axis: "name (unit)", a colourbar's label too.
      labels = [ax.get_ylabel()] if _is_colorbar(ax) else [ax.get_xlabel(), ax.get_ylabel()]
      assert all(re.search(r"\(.+\)", s) for s in labels), (name, labels)
    assert not cut_off_texts(fig), (which, name, cut_off_texts(fig))
    path = str(tmp_path / f"{name}.png")
    plot.save(fig, path)
    assert os.path.getsize(path) > 5000, name
    assert plt.imread(path).shape[2] in (3, 4)


def test_what_each_plot_shows(fits):
  """The issue's list: colourbars where colour is a value, legends with units, error bars,
  approach 3 on the IsoFLOP plot, the frontier's references and extrapolation, residuals per
  budget."""
  import matplotlib.pyplot as plt
  points, result = fits["sweep"]
  figs = {name: make() for name, make in plot.figures(points, result).items()}

  env = figs["envelope"]
  bars = [ax for ax in env.axes if _is_colorbar(ax)]
  assert len(bars) == 1 and bars[0].get_ylabel().startswith("N (parameters")

  con = figs["contours"]
  assert sum(_is_colorbar(ax) for ax in con.axes) == 1
  main = next(ax for ax in con.axes if not _is_colorbar(ax))
  cs = [c for c in main.collections if isinstance(c, ContourSet)] or [
    a for a in main.get_children() if isinstance(a, ContourSet)]
  dots = [c for c in main.collections if isinstance(c, PathCollection)]
  assert cs and dots
  assert (cs[0].norm.vmin, cs[0].norm.vmax) == (dots[0].norm.vmin, dots[0].norm.vmax)

  iso = figs["isoflop"]
  texts = _legend_texts(iso)
  budgets = result["approach2"]["budgets"]
  for b in budgets:
    assert f"C = {plot.flops_text(b['flops'])} FLOPs ({b['n_points']} runs)" in texts
  assert any("approach 3" in t for t in texts)
  ax = iso.axes[0]
  n_dashed = sum(1 for line in ax.get_lines() if line.get_linestyle() == "--")
  assert n_dashed == len(budgets)  # one approach-3 curve per budget
  assert len(ax.containers) == len(budgets)  # one error bar per minimum
  assert all(b["ci_N_opt"] for b in budgets)

  opt = figs["optimal"]
  texts = _legend_texts(opt)
  assert "approach 1: envelope winners" in texts
  assert any("Chinchilla approach 3: a = 0.46" in t for t in texts)
  assert any("Chinchilla approach 1: a = 0.50" in t for t in texts)
  assert any("Epoch" in t and "a = 0.51" in t for t in texts)
  assert any("outside the data's FLOP range" in t for t in texts)
  for ax in opt.axes:
    spans = [p for p in ax.patches if p.get_alpha() == plot.EXTRAPOLATION["alpha"]]
    assert len(spans) >= 1
    assert [t.get_text() for t in ax.texts].count("extrapolation") == len(spans)

  res = figs["residuals"]
  texts = _legend_texts(res)
  assert len([t for t in texts if t.endswith("FLOPs")]) == 3
  assert len(res.axes) == 1  # one scatter, no histogram panel
  for fig in figs.values():
    plt.close(fig)


def test_residuals_with_many_budgets_use_a_colourbar(fits):
  import matplotlib.pyplot as plt
  points, result = fits["csv"]
  fig = plot.plot_residuals(points, result["approach3"])
  bars = [ax for ax in fig.axes if _is_colorbar(ax)]
  assert len(bars) == 1 and bars[0].get_ylabel() == plot.C_LABEL
  plt.close(fig)


def _read_events(path, event_pb2):
  """Parse a TFRecord event file without TensorFlow."""
  with open(path, "rb") as f:
    data = f.read()
  i = 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    ev = event_pb2.Event()
    ev.ParseFromString(data[i + 12:i + 12 + n])
    yield ev
    i += 12 + n + 4


def _events(out):
  from tensorboardX.proto import event_pb2
  files = [f for f in glob.glob(os.path.join(out, "**", "events.out.tfevents.*"), recursive=True)]
  steps, texts = {}, {}
  for path in files:
    for ev in _read_events(path, event_pb2):
      for v in ev.summary.value:
        steps.setdefault(v.tag, []).append(ev.step)
        if v.metadata.plugin_data.plugin_name == "text":
          texts[v.tag] = v.tensor.string_val[0].decode()
  return files, steps, texts


def test_write_all_one_tensorboard_folder_text_table_and_log_axis_scalars(tmp_path):
  _make_sweep(str(tmp_path / "sweep"), LAWS["chinchilla"])
  out = str(tmp_path / "out")
  old = os.path.join(out, "hparams", "c1e+17_n0")  # An older version's HParams sub-run.
  os.makedirs(old)
  open(os.path.join(old, "events.out.tfevents.1.old"), "wb").close()
  rc = fit.main(["--runs", str(tmp_path / "sweep"), "--out", out, "--bootstrap", "8"])
  assert rc == 0
  for name in ("optimal", "envelope", "isoflop", "contours", "residuals"):
    assert os.path.getsize(os.path.join(out, f"{name}.png")) > 5000, name
  for name in ("report.md", "report.html", "points.csv"):
    assert os.path.isfile(os.path.join(out, name))
  files, steps, texts = _events(out)
  assert [os.path.dirname(f) for f in files] == [out]  # one TensorBoard run, no sub-runs
  assert not os.path.exists(os.path.join(out, "hparams"))
  assert {f"plots/{n}" for n in ("optimal", "envelope", "isoflop", "contours", "residuals")} \
    <= set(steps)
  assert not any("hparams" in t for t in steps)
  (text,) = texts.values()  # one text summary: the fit's tables in markdown, in full
  for row in ("| approach1 |", "| approach2 |", "| approach3 |", "| alpha |",
              "| with_head | approach3 |", "| non_embedding | approach3 |"):
    assert row in text, row
  assert "|---|" in text and "```" not in text
  assert text.rstrip().endswith(plot.SCALARS_NOTE)
  scalar_tags = [t for t in steps if t.split("/")[0].endswith(("100log10C", "100log10N"))]
  assert {"frontier_step_100log10C/log10_N_opt_approach3", "envelope_step_100log10C/loss_min",
          "frontier_step_100log10C/log10_N_opt_approach3_lo95"} <= set(scalar_tags)
  assert len([t for t in scalar_tags if t.startswith("isoflop_")]) == 3
  one_point = [t for t in steps if not t.startswith(("plots/", "fit_summary", "custom_scalars"))
               and len(steps[t]) < 10]
  assert not one_point, one_point
  s = steps["frontier_step_100log10C/log10_N_opt_approach3"]
  assert s == sorted(s) and 1500 <= s[0] < s[-1] <= 1900  # 100 log10 C over the data's FLOPs
  points = points_lib.load_runs(str(tmp_path / "sweep"), warn=lambda m: None)
  result = fit.fit_all(points, n_boot=0, starts=_subgrid()[::6], log=lambda m: None)
  plot.write_tensorboard(out, {}, result, points)
  assert len(_events(out)[0]) == 1  # a rerun replaces the fit's events


def test_write_all_on_a_csv_fit_without_tensorboard(fits, tmp_path):
  points, result = fits["csv"]
  paths = plot.write_all(points, result, str(tmp_path), tensorboard=False)
  assert sorted(os.path.basename(p) for p in paths) == [
    "contours.png", "isoflop.png", "optimal.png", "points.csv", "report.html", "report.md",
    "residuals.png"]
  assert not glob.glob(str(tmp_path / "events.out.tfevents.*"))
