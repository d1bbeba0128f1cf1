"""fit.json and the console tables of a scaling.fit result (pure Python)."""

import json
import math
import os

import numpy as np


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
