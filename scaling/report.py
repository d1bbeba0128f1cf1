"""The one-page report of a scaling.fit result: OUT/report.md, OUT/report.html, OUT/points.csv.

Units: N in parameters (the fit's n_count), D in tokens, C in FLOPs (the
input's own count, summary.json `flops_6nd` for a sweep), loss in
nats/token, bpb in bits per byte, wall time in seconds, MFU as a fraction
(shown in percent). Intervals are 95% bootstrap intervals; '–' means the
input does not say.

report.md holds, in order:
  1. the input: source, N convention, number of points, runs left out and why;
  2. the fit: a (N_opt ∝ C^a) and b (D_opt ∝ C^b) of approaches 1-3 with
     intervals, or why an approach was skipped; approach 3's parameters and
     its optimum at fit.json's `ci_flops`; approach 2's budgets and the
     dropped ones with reasons; the N-convention table (`n_conventions`);
     the prediction (`--predict-flops`) and the target run, when present;
  3. the ladder (`ladder`, when present): each held-out run's predicted loss
     with its 95% prediction interval against the measured loss;
  4. the plots (PNGs beside it), each with a caption;
  5. the runs: name, N, D, C, tokens/param, loss, bpb, wall time,
     XLA FLOPs / 6ND and MFU, read from DIR/<run>/summary.json when the
     input is a sweep folder (points.source 'runs:DIR'), fitted and
     held-out runs alike.
report.html is the same page in one self-contained file: the PNGs are
embedded as base64 `data:` URIs and the CSS is inline; it loads nothing.
points.csv has one row per run of the runs table, header
  name,role,N,D,C,loss,tokens_per_param,bpb,wall_seconds,xla_flops_over_6nd,mfu
with role `fitted` or `held_out`, numbers as Python writes them (they read
back exactly) and an empty cell for unknown.
"""
import base64
import csv
import html
import json
import math
import os

from scaling import tables

PLOTS = {  # name: caption, in the order the report shows them.
  "optimal": "Compute-optimal model size N_opt (left) and training tokens D_opt (right) against "
             "training FLOPs C. Lines: each approach's fit, solid inside the data's FLOP range and "
             "dashed outside it (grey: extrapolation); bands: 95% bootstrap intervals; dots: "
             "approach 1's envelope winners and approach 2's IsoFLOP minima with 95% intervals; "
             "grey lines: the slopes of Chinchilla (approaches 1 and 3) and Epoch, drawn through "
             "this fit, to compare exponents.",
  "isoflop": "Approach 2: final loss against N at each FLOP budget (dots: runs); solid: the "
             "parabola in ln N fitted per budget; star: its minimum, bar: the 95% bootstrap "
             "interval of N_opt; dashed: approach 3's law L(N, D = C/6N) at the same budget.",
  "envelope": "Approach 1: every run's loss curve against training FLOPs, coloured by N "
              "(colourbar); black: the lower envelope, whose winning run at each FLOP value "
              "gives N_opt(C).",
  "contours": "Approach 3: lines of equal predicted loss L(N, D = C/6N) over compute and model "
              "size, on the same colour scale as the runs (dots: measured loss); red: the "
              "efficient frontier; dashed: 20 tokens per parameter; grey: beyond the data's "
              "FLOP range.",
  "residuals": "Approach 3: residual ln(L / L̂) of each run against N, one colour per FLOP "
               "budget; a trend within a budget means the law's shape misses the data there.",
}
CSV_COLUMNS = ("name", "role", "N", "D", "C", "loss", "tokens_per_param", "bpb", "wall_seconds",
               "xla_flops_over_6nd", "mfu")
DASH = "–"


# ---------------------------------------------------------------------------- formatting


def num(x, digits=3):
  """x to `digits` significant digits ('1.23e7', '0.0412'), '–' for None or non-finite."""
  if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
    return DASH
  s = f"{x:.{digits}g}"
  if "e" in s:
    mant, exp = s.split("e")
    s = f"{mant}e{int(exp)}"
  return s


def fixed(x, places=4):
  """x with `places` decimals, '–' for None."""
  return DASH if x is None or not math.isfinite(x) else f"{x:.{places}f}"


def interval(ci, fmt=num):
  """'[lo, hi]' of an interval, '–' for none."""
  return DASH if not ci or ci[0] is None else f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def duration(seconds):
  """'23.7 s', '12.3 min', '2.1 h'; '–' for None."""
  if seconds is None or not math.isfinite(seconds):
    return DASH
  if seconds < 90:
    return f"{seconds:.1f} s"
  if seconds < 90 * 60:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def _yes(flag):
  return DASH if flag is None else ("yes" if flag else "no")


# ---------------------------------------------------------------------------- the page as blocks
# A block is ("h", level, text), ("p", text), ("table", id, headers, rows) or ("img", name, path).


def _approach_notes(name, r):
  if name == "approach1":
    kept = "interior winners" if r.get("interior_only") else "all covered"
    s = (f"{r.get('n_runs', DASH)} curves ({r.get('curve_source')}); {r.get('n_envelope', DASH)} "
         f"of {r.get('n_envelope_covered', DASH)} FLOP values fitted ({kept}), "
         f"{r.get('n_distinct_N_opt', DASH)} distinct N_opt")
  elif name == "approach2":
    s = (f"{len(r.get('budgets', []))} budgets fitted, "
         f"{len(r.get('dropped_budgets', []))} dropped")
  else:
    s = (f"sum-Huber objective {num(r.get('objective'), 5)}, {r.get('n_points', DASH)} points, "
         f"{r.get('n_converged', DASH)}/{r.get('n_starts', DASH)} starts converged")
  boot = r.get("bootstrap")
  if boot:
    s += f"; bootstrap {boot.get('n_ok', DASH)}/{boot.get('n', DASH)}"
  if r.get("warning"):
    s += f"; warning: {r['warning']}"
  return s


def _fit_blocks(result):
  inp = result.get("input", {})
  blocks = [("h", 2, "Fit"),
            ("p", (f"Input: {inp.get('source', DASH)}; N = parameters "
                   f"({inp.get('n_count', DASH)}); {inp.get('n_points', DASH)} points; "
                   f"runs left out: {len(inp.get('excluded', []))}. Intervals: 95% bootstrap."))]
  rows = []
  for name in ("approach1", "approach2", "approach3"):
    r = result.get(name)
    if r is None:
      rows.append([name, "skipped", DASH, DASH, DASH,
                   result.get("skipped", {}).get(name, "")])
      continue
    ci = r.get("ci") or {}
    rows.append([name, f"{r['a']:.3f}", interval(ci.get("a")), f"{r['b']:.3f}",
                 interval(ci.get("b")), _approach_notes(name, r)])
  blocks.append(("table", "fit", ["approach", "a (N_opt ∝ C^a)", "95% CI", "b (D_opt ∝ C^b)",
                                  "95% CI", "notes"], rows))
  r = result.get("approach3")
  if r:
    ci = r.get("ci") or {}
    at = r.get("at_flops", {})
    rows = [[k, num(r.get(k), 4), interval(ci.get(k), lambda v: num(v, 4))]
            for k in ("E", "A", "B", "alpha", "beta", "G")]
    c = num(r.get("ci_flops"))
    rows += [[f"{k} at C = {c}", num(at.get(k), 4), interval(ci.get(k), lambda v: num(v, 4))]
             for k in ("N_opt", "D_opt", "tokens_per_param", "loss")]
    blocks += [("h", 3, "Approach 3: L(N, D) = E + A/N^alpha + B/D^beta"),
               ("table", "approach3", ["parameter", "value", "95% CI"], rows)]
  r = result.get("approach2")
  if r:
    rows = [[num(b["flops"]), str(b.get("n_points", DASH)), num(b["N_opt"]),
             interval(b.get("ci_N_opt")), num(b.get("D_opt")), fixed(b.get("loss_min"))]
            for b in r.get("budgets", [])]
    blocks += [("h", 3, "Approach 2: IsoFLOP budgets"),
               ("table", "approach2", ["C (FLOPs)", "runs", "N_opt", "95% CI", "D_opt",
                                       "loss at minimum"], rows)]
    dropped = r.get("dropped_budgets", [])
    if dropped:
      blocks.append(("p", "Dropped budgets: " + "; ".join(
        f"C = {num(d['flops'])} ({d.get('n_points', DASH)} points): {d['reason']}"
        for d in dropped) + "."))
  blocks += _conventions_blocks(result)
  blocks += _prediction_blocks(result)
  if result.get("target_run"):
    blocks += [("h", 3, "Target run"), ("p", tables.format_target(result["target_run"]))]
  return blocks


def _conventions_blocks(result):
  block = result.get("n_conventions")
  if not block:
    why = result.get("skipped", {}).get("n_conventions")
    return [("p", f"N conventions: skipped: {why}")] if why else []
  rows = []
  for count, per in block.items():
    for name in ("approach1", "approach2", "approach3"):
      r = per.get(name) or {}
      if "a" not in r:
        rows.append([count, name, "skipped", DASH, DASH, DASH, r.get("skipped", "")])
        continue
      ci = r.get("ci") or {}
      rows.append([count, name, f"{r['a']:.3f}", interval(ci.get("a")), f"{r['b']:.3f}",
                   interval(ci.get("b")), str(r.get("n_boot", 0))
                   + (f"; warning: {r['warning']}" if r.get("warning") else "")])
  return [("h", 3, "N counted with and without embeddings (Pearce & Song)"),
          ("table", "n_conventions", ["N convention", "approach", "a", "95% CI", "b", "95% CI",
                                      "bootstrap samples"], rows)]


def _prediction_blocks(result):
  pred = result.get("prediction")
  if not pred:
    return []
  rows = []
  for name in ("approach1", "approach2", "approach3"):
    row = pred.get(name)
    if not row:
      continue
    ci = row.get("ci") or {}
    rows.append([name, num(row["N_opt"]), interval(ci.get("N_opt")), num(row["D_opt"]),
                 interval(ci.get("D_opt")), num(row["tokens_per_param"]),
                 interval(ci.get("tokens_per_param")), fixed(row.get("loss")),
                 interval(ci.get("loss"), fixed)])
  return [("h", 3, f"Prediction at C = {num(pred['flops'])} FLOPs"),
          ("table", "prediction", ["approach", "N_opt", "95% CI", "D_opt", "95% CI",
                                   "tokens/param", "95% CI", "loss", "95% CI"], rows)]


def _ladder_blocks(block):
  blocks = [("h", 2, "Ladder: predicted vs measured"),
            ("p", (f"Held out {block.get('n_held_out', DASH)} runs "
                   f"({block.get('holdout', DASH)}), fitted {block.get('n_fitted', DASH)}; "
                   f"residual sd of the fit {num(block.get('residual_sd'))} (log loss)."))]
  for name, why in (block.get("skipped") or {}).items():
    blocks.append(("p", f"{name} skipped: {why}"))
  rows = []
  for r in block.get("runs", []):
    p = r.get("approach3") or {}
    err = p.get("error_pct")
    rows.append([str(r.get("name", DASH)), num(r.get("N")), num(r.get("D")),
                 fixed(p.get("loss")), interval(p.get("pi"), fixed), fixed(r.get("measured")),
                 DASH if err is None else f"{err:+.2f}", _yes(p.get("inside"))])
  blocks.append(("table", "ladder", ["run", "N", "D", "predicted loss (approach 3)",
                                     "95% prediction interval", "measured", "error %",
                                     "inside"], rows))
  s = block.get("summary")
  if s:
    blocks.append(("p", (f"{s.get('n_inside', DASH)}/{s.get('n', DASH)} inside the 95% "
                         f"prediction interval; mean |error| "
                         f"{num(s.get('mean_abs_error_pct'))}%, max "
                         f"{num(s.get('max_abs_error_pct'))}%.")))
  rows = []
  for b in block.get("budgets", []):
    p = b.get("approach2") or {}
    err = p.get("error_pct")
    rows.append([num(b.get("flops")), num(p.get("N_opt")), interval(p.get("ci_N_opt")),
                 str(b.get("best_run", DASH)), num(p.get("N_over_N_opt")),
                 fixed(b.get("measured")), fixed(p.get("loss")), interval(p.get("pi"), fixed),
                 DASH if err is None else f"{err:+.2f}", _yes(p.get("inside"))])
  if rows:
    blocks.append(("table", "ladder_budgets",
                   ["C (FLOPs)", "predicted N_opt (approach 2)", "95% CI", "best held-out run",
                    "N / N_opt", "measured", "frontier loss", "95% prediction interval",
                    "error %", "inside"], rows))
  return blocks


def run_rows(points, result):
  """One dict per run (CSV_COLUMNS keys): the fitted points, then the ladder's held-out runs."""
  source = points.source or ""
  root = source[len("runs:"):] if source.startswith("runs:") else None
  rows = [_run_row(name, "fitted", points.N[i], points.D[i], points.C[i], points.L[i],
                   _summary(root, name)) for i, name in enumerate(points.names)]
  for r in (result.get("ladder") or {}).get("runs", []):
    rows.append(_run_row(r.get("name", ""), "held_out", r.get("N"), r.get("D"), r.get("flops"),
                         r.get("measured"), _summary(root, r.get("name"))))
  return rows


def _summary(root, name):
  """DIR/name/summary.json as a dict ({} when there is none or it cannot be read)."""
  if root is None or not name:
    return {}
  try:
    with open(os.path.join(root, name, "summary.json")) as f:
      s = json.load(f)
  except (OSError, ValueError):
    return {}
  return s if isinstance(s, dict) else {}


def _number(x):
  return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) \
    and math.isfinite(x) else None


def _run_row(name, role, N, D, C, loss, s):
  N, D, C = _number(N), _number(D), _number(C)
  xla = _number(s.get("flops_xla_model")) or _number(s.get("flops_xla"))
  six_nd = _number(s.get("flops_6nd")) or (6 * N * D if N and D else None)
  return {"name": name, "role": role, "N": N, "D": D, "C": C, "loss": _number(loss),
          "tokens_per_param": D / N if N and D else None, "bpb": _number(s.get("eval_bpb")),
          "wall_seconds": _number(s.get("wall_seconds")),
          "xla_flops_over_6nd": xla / six_nd if xla and six_nd else None,
          "mfu": _number(s.get("mfu"))}


def _runs_blocks(result, rows):
  held = any(r["role"] == "held_out" for r in rows)
  table = [[r["name"] + (" (held out)" if r["role"] == "held_out" else ""), num(r["N"]),
            num(r["D"]), num(r["C"]), num(r["tokens_per_param"]), fixed(r["loss"]),
            fixed(r["bpb"]), duration(r["wall_seconds"]), fixed(r["xla_flops_over_6nd"], 3),
            DASH if r["mfu"] is None else f"{100 * r['mfu']:.2f}%"] for r in rows]
  blocks = [("h", 2, "Runs"),
            ("table", "runs", ["run", "N", "D", "C (FLOPs)", "tokens/param",
                               "loss (nats/token)", "bpb", "wall time", "XLA FLOPs / 6ND",
                               "MFU"], table),
            ("p", ("loss: final eval loss; bpb: its bits per byte; XLA FLOPs: XLA's count of "
                   "the compiled train step without remat recomputation (summary.json "
                   "flops_xla_model, else flops_xla), over 6ND (flops_6nd); MFU: model FLOP/s "
                   "over the measured peak. All rows are in points.csv"
                   + (", fitted and held-out runs." if held else ".")))]
  held_names = {r["name"] for r in rows if r["role"] == "held_out"}
  left = [(n, why) for n, why in result.get("input", {}).get("excluded", [])
          if n not in held_names]
  if left:
    blocks.append(("p", "Left out of the fit: " + "; ".join(f"{n} ({why})" for n, why in left)
                   + "."))
  return blocks


def page_blocks(result, pngs, rows):
  """The whole page as blocks; pngs: {name: path}, rows: run_rows."""
  out = [("h", 1, "Scaling-law fit report")] + _fit_blocks(result)
  if result.get("ladder"):
    out += _ladder_blocks(result["ladder"])
  if pngs:
    out.append(("h", 2, "Plots"))
    for name, path in pngs.items():
      out += [("h", 3, f"{name}.png"), ("img", name, path), ("p", PLOTS.get(name, ""))]
  return out + _runs_blocks(result, rows)


# ---------------------------------------------------------------------------- rendering


def _md_cell(text):
  return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(page):
  """Markdown of blocks (images as relative links to the PNGs beside it)."""
  lines = []
  for b in page:
    if b[0] == "h":
      lines += ["#" * b[1] + " " + b[2], ""]
    elif b[0] == "p":
      lines += [b[1], ""]
    elif b[0] == "table":
      _, _, headers, rows = b
      lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
      lines.append("|" + "|".join("---" for _ in headers) + "|")
      lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
      lines.append("")
    elif b[0] == "img":
      lines += [f"![{b[1]}]({os.path.basename(b[2])})", ""]
  return "\n".join(lines)


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
"""


def to_html(page, title="Scaling-law fit report"):
  """One self-contained HTML page of blocks (PNGs as base64 data: URIs, CSS inline)."""
  e = html.escape
  parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>"]
  for b in page:
    if b[0] == "h":
      parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
    elif b[0] == "p":
      parts.append(f"<p>{e(b[1])}</p>")
    elif b[0] == "table":
      _, tid, headers, rows = b
      parts.append(f'<table id="{e(tid)}"><thead><tr>'
                   + "".join(f"<th>{e(str(h))}</th>" for h in headers) + "</tr></thead><tbody>")
      parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows]
      parts.append("</tbody></table>")
    elif b[0] == "img":
      with open(b[2], "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
      parts.append(f'<img alt="{e(b[1])}" src="data:image/png;base64,{data}">')
  parts.append("</body></html>")
  return "\n".join(parts)


def fit_markdown(result):
  """The fit's tables (and the ladder's) as markdown: TensorBoard's text summary."""
  page = _fit_blocks(result)
  if result.get("ladder"):
    page += _ladder_blocks(result["ladder"])
  return to_markdown(page)


def write_points_csv(rows, path):
  """points.csv of run_rows (CSV_COLUMNS; empty cell = unknown)."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(CSV_COLUMNS)
    for r in rows:
      w.writerow(["" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k])
                  for k in CSV_COLUMNS])


def write_report(points, result, out, pngs=None):
  """Write OUT/report.md, OUT/report.html and OUT/points.csv; returns their paths.

  pngs: {name: path} of the plots to show (default: every PLOTS name with a
  PNG in out).
  """
  os.makedirs(out, exist_ok=True)
  if pngs is None:
    pngs = {n: os.path.join(out, f"{n}.png") for n in PLOTS
            if os.path.isfile(os.path.join(out, f"{n}.png"))}
  pngs = {n: pngs[n] for n in sorted(pngs, key=lambda n: list(PLOTS).index(n)
                                     if n in PLOTS else len(PLOTS))}
  rows = run_rows(points, result)
  page = page_blocks(result, pngs, rows)
  paths = [os.path.join(out, n) for n in ("report.md", "report.html", "points.csv")]
  with open(paths[0], "w") as f:
    f.write(to_markdown(page))
  with open(paths[1], "w") as f:
    f.write(to_html(page))
  write_points_csv(rows, paths[2])
  return paths
