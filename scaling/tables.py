"""fit.json and the console tables of a scaling.fit result (pure Python)."""

import json
import math
import os

import numpy as np


def public(obj):
  """obj without '_'-prefixed keys, numpy converted, for json.dump."""
  if isinstance(obj, dict):
    return {k: public(v) for k, v in obj.items() if not str(k).startswith("_")}
  if isinstance(obj, (list, tuple)):
    return [public(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def write_json(result, out_dir, name="fit.json"):
  """Write OUT/name (default fit.json) without the in-memory '_' keys; returns its path."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, name)
  with open(path, "w") as f:
    json.dump(public(result), f, indent=2)
  return path


def fmt_ci(ci, fmt="{:.3g}"):
  """'[lo, hi]' of an interval, or '' for none."""
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
    lines.append(f"{name:<10} {r['a']:>14.3f} {fmt_ci(ci.get('a')):>18} "
                 f"{r['b']:>14.3f} {fmt_ci(ci.get('b')):>18}")
  r = result.get("approach1")
  if r:
    kept = "interior" if r.get("interior_only", False) else "all covered"
    lines.append("")
    lines.append(f"approach 1 envelope ({kept}): {r['n_envelope']} FLOP values fitted of "
                 f"{r.get('n_envelope_covered', r['n_envelope'])} covered "
                 f"({r.get('n_interior', '?')} with an interior winner), "
                 f"{r.get('n_distinct_N_opt', '?')} distinct N_opt")
    if r.get("warning"):
      lines.append(f"  warning: {r['warning']}")
  r = result.get("approach3")
  if r:
    ci = r.get("ci") or {}
    lines.append("")
    lines.append(f"approach 3: L(N, D) = E + A/N^alpha + B/D^beta   (sum-Huber "
                 f"objective {r['objective']:.5g}, {r['n_points']} points, "
                 f"{r['n_converged']}/{r['n_starts']} starts converged)")
    for k, fmt in (("E", "{:.4f}"), ("A", "{:.1f}"), ("B", "{:.1f}"), ("alpha", "{:.4f}"),
                   ("beta", "{:.4f}"), ("G", "{:.4g}")):
      lines.append(f"  {k:<6} {fmt.format(r[k]):>10}  {fmt_ci(ci.get(k), fmt)}")
    at = r["at_flops"]
    lines.append(f"  at C = {r['ci_flops']:.3g}: N_opt {at['N_opt']:.3g} "
                 f"{fmt_ci(ci.get('N_opt'))}, D_opt {at['D_opt']:.3g} "
                 f"{fmt_ci(ci.get('D_opt'))}, tokens/param {at['tokens_per_param']:.1f} "
                 f"{fmt_ci(ci.get('tokens_per_param'), '{:.1f}')}")
  r = result.get("approach2")
  if r:
    lines.append("")
    lines.append("approach 2 budgets: " + ", ".join(
      f"C={b['flops']:.2g}: N_opt {b['N_opt']:.3g} {fmt_ci(b['ci_N_opt'])}"
      for b in r["budgets"]))
    dropped = r["dropped_budgets"]
    for d in dropped[:6]:
      lines.append(f"  dropped C={d['flops']:.3g} ({d['n_points']} pts): {d['reason']}")
    if len(dropped) > 6:
      lines.append(f"  ... {len(dropped) - 6} more dropped budgets (see fit.json)")
  if result.get("n_conventions"):
    lines += ["", *format_conventions(result["n_conventions"])]
  elif "n_conventions" in result.get("skipped", {}):
    lines += ["", f"N conventions: skipped: {result['skipped']['n_conventions']}"]
  if result.get("ladder"):
    lines += ["", *format_ladder(result["ladder"])]
  if result.get("target_run"):
    lines += ["", format_target(result["target_run"])]
  return "\n".join(lines)


def format_conventions(block):
  """Lines of the a/b table with N with the head and N non-embedding side by side."""
  lines = [f"{'N convention':<14} {'approach':<10} {'a':>7} {'95% CI':>18} {'b':>7} "
           f"{'95% CI':>18} {'boot':>5}"]
  for count, per in block.items():
    for name in ("approach1", "approach2", "approach3"):
      r = per.get(name) or {}
      if "a" not in r:
        lines.append(f"{count:<14} {name:<10} skipped: {r.get('skipped', '')}")
        continue
      ci = r.get("ci") or {}
      lines.append(f"{count:<14} {name:<10} {r['a']:>7.3f} {fmt_ci(ci.get('a')):>18} "
                   f"{r['b']:>7.3f} {fmt_ci(ci.get('b')):>18} {r.get('n_boot', 0):>5}")
  return lines


def _yes(flag):
  return "-" if flag is None else ("yes" if flag else "NO")


def format_ladder(block):
  """Lines of the ladder: predicted vs measured loss of every held-out run."""
  lines = [f"ladder: held out {block['n_held_out']} runs ({block['holdout']}), "
           f"fitted {block['n_fitted']}"
           + (f"; residual sd {block['residual_sd']:.4f} (log loss)"
              if block.get("residual_sd") is not None else "")]
  for name, why in block.get("skipped", {}).items():
    lines.append(f"  {name} skipped: {why}")
  if any("approach3" in r for r in block["runs"]):
    lines.append(f"  {'run':<20} {'N':>9} {'D':>9} {'measured':>9} {'predicted':>9} "
                 f"{'95% PI':>18} {'error %':>8} {'in PI':>5} {'in CI':>5}")
    for r in block["runs"]:
      p = r["approach3"]
      lines.append(f"  {r['name'][:20]:<20} {r['N']:>9.3g} {r['D']:>9.3g} {r['measured']:>9.4f} "
                   f"{p['loss']:>9.4f} {fmt_ci(p['pi'], '{:.4f}'):>18} {p['error_pct']:>+8.2f} "
                   f"{_yes(p['inside']):>5} {_yes(p['inside_ci']):>5}")
  s = block.get("summary")
  if s:
    inside = ("no intervals (no bootstrap)" if s["n_inside"] is None else
              f"{s['n_inside']}/{s['n']} inside the 95% prediction interval, "
              f"{s['n_inside_ci']}/{s['n']} inside the law's 95% interval")
    lines.append(f"  approach 3: {inside}; mean |error| {s['mean_abs_error_pct']:.2f}%, "
                 f"max {s['max_abs_error_pct']:.2f}%")
  for b in block.get("budgets", []):
    p = b["approach2"]
    s = (f"  approach 2 frontier at C={b['flops']:.3g}: N_opt {p['N_opt']:.3g} "
         f"{fmt_ci(p['ci_N_opt'])}; best held-out run {b['best_run']} (N {b['best_N']:.3g}, "
         f"{p['N_over_N_opt']:.2f}x N_opt) measured {b['measured']:.4f}")
    if "loss" in p:
      s += (f", frontier loss {p['loss']:.4f} {fmt_ci(p['pi'], '{:.4f}')} "
            f"({p['error_pct']:+.2f}%, inside: {_yes(p['inside'])})")
    lines.append(s)
  return lines


def format_target(t):
  """One line: the compute-optimal target run at a budget."""
  ci = t.get("ci") or {}
  s = (f"target run at C = {t['flops']:.3g} ({t['approach']}): "
       f"N {t['N']:.4g} {fmt_ci(ci.get('N'))}, D {t['D']:.4g} {fmt_ci(ci.get('D'))}, tokens/param {t['tokens_per_param']:.1f}")
  if "loss" in t:
    which = "95% PI" if t.get("pi_loss") else "95% CI"
    s += (f", predicted loss {t['loss']:.4f} ({which} "
          f"{fmt_ci(t.get('pi_loss') or t.get('ci_loss'), '{:.4f}') or 'none'})")
  return s


def format_prediction(pred):
  """Console lines for predict()."""
  lines = [f"prediction at C = {pred['flops']:.3g} FLOPs:"]
  for name in ("approach1", "approach2", "approach3"):
    row = pred.get(name)
    if not row:
      continue
    ci = row.get("ci") or {}
    s = (f"  {name}: N_opt {row['N_opt']:.4g} {fmt_ci(ci.get('N_opt'))}, "
         f"D_opt {row['D_opt']:.4g} {fmt_ci(ci.get('D_opt'))}, "
         f"tokens/param {row['tokens_per_param']:.1f} "
         f"{fmt_ci(ci.get('tokens_per_param'), '{:.1f}')}")
    if "loss" in row:
      s += f", loss {row['loss']:.4f} {fmt_ci(ci.get('loss'), '{:.4f}')}"
    lines.append(s)
  return "\n".join(lines)
