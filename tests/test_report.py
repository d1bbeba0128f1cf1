"""Tests for scaling.report: report.md, a self-contained report.html and points.csv from a fit."""
import base64
import csv
import html.parser
import json
import os
import re

import pytest

from scaling import fit, report
from scaling import points as points_lib

pytest.importorskip("scaling.plot")  # The fit writes the report with its plots.

from test_fit import LAWS, _make_sweep, _points, _subgrid, synthetic

PNGS = ("optimal", "isoflop", "envelope", "contours", "residuals")


class _Tables(html.parser.HTMLParser):
  """Every <table id=...> of a page as rows of cell texts, and every <img src>."""

  def __init__(self):
    super().__init__()
    self.tables, self.srcs, self.links = {}, [], []
    self._table = self._row = self._cell = None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "table":
      self._table = self.tables.setdefault(attrs.get("id"), [])
    elif tag == "tr" and self._table is not None:
      self._row = []
    elif tag in ("td", "th") and self._row is not None:
      self._cell = ""
    elif tag == "img":
      self.srcs.append(attrs.get("src", ""))
    for key in ("href", "src"):
      if key in attrs and tag != "img":
        self.links.append(attrs[key])
    if tag in ("link", "script"):
      self.links.append(tag)

  def handle_endtag(self, tag):
    if tag in ("td", "th") and self._cell is not None:
      self._row.append(self._cell)
      self._cell = None
    elif tag == "tr" and self._row is not None:
      self._table.append(self._row)
      self._row = None
    elif tag == "table":
      self._table = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell += data


def _read(path):
  with open(path) as f:
    return f.read()


def _parse(path):
  p = _Tables()
  with open(path) as f:
    p.feed(f.read())
  return p


def _md_table(text, first_header):
  """Rows (cell lists, header first) of the markdown table whose first header cell is given."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
  rows = []
  for line in lines[start:]:
    if not line.startswith("|"):
      break
    if not line.startswith("|---"):
      rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
  return rows


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
  root = tmp_path_factory.mktemp("report")
  sweep, out = str(root / "sweep"), str(root / "out")
  _make_sweep(sweep, LAWS["chinchilla"])
  for i, name in enumerate(sorted(os.listdir(sweep))[:2]):  # two runs with every summary key
    path = os.path.join(sweep, name, "summary.json")
    with open(path) as f:
      s = json.load(f)
    s.update(eval_bpb=1.25 + i, wall_seconds=42.0 + 100 * i, flops_xla=1.3 * s["flops_6nd"],
             flops_xla_model=1.1 * s["flops_6nd"])
    with open(path, "w") as f:
      json.dump(s, f)
  rc = fit.main(["--runs", sweep, "--out", out, "--bootstrap", "8", "--predict-flops", "1e21"])
  assert rc == 0
  return sweep, out


def test_report_files_embed_every_png_and_load_nothing(sweep_report):
  _, out = sweep_report
  for name in ("report.md", "report.html", "points.csv"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  page = _parse(os.path.join(out, "report.html"))
  with open(os.path.join(out, "report.html")) as f:
    text = f.read()
  for name in PNGS:
    with open(os.path.join(out, f"{name}.png"), "rb") as f:
      data = base64.b64encode(f.read()).decode("ascii")
    assert f'src="data:image/png;base64,{data}"' in text, name
  assert len(page.srcs) == len(PNGS) and all(s.startswith("data:image/png;base64,")
                                             for s in page.srcs)
  assert not page.links  # no stylesheet, script or link to fetch
  with open(os.path.join(out, "report.md")) as f:
    md = f.read()
  for name in PNGS:
    assert f"![{name}]({name}.png)" in md


def test_report_fit_tables_have_intervals(sweep_report):
  _, out = sweep_report
  res = json.loads(_read(os.path.join(out, "fit.json")))
  tables = _parse(os.path.join(out, "report.html")).tables
  fit_rows = {r[0]: r for r in tables["fit"][1:]}
  assert set(fit_rows) == {"approach1", "approach2", "approach3"}
  for name, row in fit_rows.items():
    assert row[1] == f"{res[name]['a']:.3f}" and row[2].startswith("[")
  params = {r[0]: r for r in tables["approach3"][1:]}
  assert {"E", "A", "B", "alpha", "beta"} <= set(params) and params["alpha"][2].startswith("[")
  assert len(tables["approach2"]) == 1 + len(res["approach2"]["budgets"])
  assert len(tables["n_conventions"]) == 1 + 6
  assert [r[0] for r in tables["prediction"][1:]] == ["approach1", "approach2", "approach3"]


def test_per_run_table_has_a_row_per_run_from_summary_json(sweep_report):
  sweep, out = sweep_report
  points = points_lib.load_runs(sweep, warn=lambda m: None)
  for path in (os.path.join(out, "report.html"), os.path.join(out, "report.md")):
    if path.endswith(".html"):
      rows = _parse(path).tables["runs"]
    else:
      rows = _md_table(_read(path), "run")
    header, body = rows[0], rows[1:]
    assert header == ["run", "N", "D", "C (FLOPs)", "tokens/param", "loss (nats/token)", "bpb",
                      "wall time", "XLA FLOPs / 6ND", "MFU"]
    assert [r[0] for r in body] == points.names  # 15 finished runs; unfinished ones left out
    by_name = {r[0]: dict(zip(header, r)) for r in body}
    first, second, other = (by_name[n] for n in points.names[:2] + points.names[-1:])
    assert (first["bpb"], first["wall time"], first["XLA FLOPs / 6ND"]) == (
      "1.2500", "42.0 s", "1.100")
    assert second["wall time"] == "2.4 min" and first["MFU"] == "40.00%"
    assert other["bpb"] == other["wall time"] == other["XLA FLOPs / 6ND"] == report.DASH
  md = _read(os.path.join(out, "report.md"))
  assert "zz_unfinished (no summary.json" in md and "zz_diverged" in md


def test_points_csv_reads_back_the_points(sweep_report):
  sweep, out = sweep_report
  points = points_lib.load_runs(sweep, warn=lambda m: None)
  with open(os.path.join(out, "points.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == list(report.CSV_COLUMNS)
  assert [r["name"] for r in rows] == points.names
  for key, values in (("N", points.N), ("D", points.D), ("C", points.C), ("loss", points.L)):
    assert [float(r[key]) for r in rows] == [float(v) for v in values], key
  assert rows[0]["bpb"] == "1.25" and rows[-1]["bpb"] == ""
  assert float(rows[0]["mfu"]) == 0.4 and {r["role"] for r in rows} == {"fitted"}


def test_ladder_rows_and_held_out_runs(tmp_path):
  sweep, out = str(tmp_path / "sweep"), str(tmp_path / "out")
  _make_sweep(sweep, LAWS["chinchilla"], diverged=False, unfinished=False)
  rc = fit.main(["--runs", sweep, "--out", out, "--bootstrap", "8", "--holdout",
                 "largest-budget", "--no-plots"])
  assert rc == 0
  res = json.loads(_read(os.path.join(out, "fit.json")))
  points = points_lib.load_runs(sweep, warn=lambda m: None)
  fitted = points.subset([i for i, n in enumerate(points.names) if not n.startswith("c1e+19")])
  paths = report.write_report(fitted, res, out)
  assert [os.path.basename(p) for p in paths] == ["report.md", "report.html", "points.csv"]
  tables = _parse(paths[1]).tables
  held = [r["name"] for r in res["ladder"]["runs"]]
  assert len(held) == 5
  ladder = tables["ladder"]
  assert ladder[0][:3] == ["run", "N", "D"] and [r[0] for r in ladder[1:]] == held
  for row, r in zip(ladder[1:], res["ladder"]["runs"]):
    p = r["approach3"]
    assert row[3] == f"{p['loss']:.4f}" and row[5] == f"{r['measured']:.4f}"
    assert row[7] == ("yes" if p["inside"] else "no")
  runs = tables["runs"]
  assert len(runs) == 1 + 15  # fitted and held-out runs
  assert sum(r[0].endswith("(held out)") for r in runs[1:]) == 5
  with open(paths[2], newline="") as f:
    roles = [r["role"] for r in csv.DictReader(f)]
  assert roles.count("held_out") == 5 and roles.count("fitted") == 10
  assert not _parse(paths[1]).srcs  # no plots were made


def test_csv_input_report_shows_dashes(tmp_path):
  N, D, L = synthetic(LAWS["epoch"], 0, n_budgets=3, n_sizes=5, noise=0.01)
  points = _points(N, D, L)
  res = fit.fit_all(points, n_boot=0, starts=_subgrid()[::6], log=lambda m: None)
  paths = report.write_report(points, res, str(tmp_path))
  runs = _parse(paths[1]).tables["runs"]
  assert len(runs) == 1 + len(N)
  assert all(r[6:] == [report.DASH] * 4 for r in runs[1:])
  fit_rows = {r[0]: r for r in _parse(paths[1]).tables["fit"][1:]}
  assert fit_rows["approach1"][1] == "skipped" and "curves" in fit_rows["approach1"][5]
