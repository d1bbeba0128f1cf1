"""Points for scaling-law fits: final (N, D, C, loss) per run, plus training curves, and their loaders.

Units: N in parameters (which count: `n_count`), D in tokens, C in FLOPs,
loss in nats/token.

Inputs
  * CSV with columns `params`, `tokens`, `loss` (optional `flops`; when
    `tokens` is missing D = flops / (6 N)). Common aliases are understood
    (Epoch's `Model Size` and `Training FLOP`); `--columns` maps others.
    Columns `params_with_head`, `params_non_embedding`, `params_total`, where
    present, give every N convention (`Points.Ns`).
  * A sweep folder `DIR/<run>/summary.json` (+ optional `curve.json`), as
    written by the training loop; runs without summary.json are reported and
    skipped. Every `params_<count>` key present in all runs goes into
    `Points.Ns`; `config.optim.lr` and `config.data.global_batch_size` ×
    `config.data.seq_len`, when every run has them, into `Points.hparams`;
    `config.model.moe_num_experts` (0, dense, counts as E = 1), `moe_top_k`
    and `moe_granularity`, when every run has a model config, into
    `Points.moe` (for `scaling.moe_law`).
"""

import csv
import dataclasses
import json
import math
import os

import numpy as np

N_COUNTS = ("with_head", "non_embedding", "total", "active")  # active: per token (MoE).
CSV_ALIASES = {
  "params": ("params", "n", "model size", "model_size", "parameters", "n_params"),
  "tokens": ("tokens", "d", "training tokens", "training_tokens", "n_tokens"),
  "flops": ("flops", "c", "training flop", "training flops", "training_flops",
            "compute", "flops_6nd"),
  "loss": ("loss", "eval_loss", "final_loss"),
}


@dataclasses.dataclass
class Points:
  """Final (N, D, loss) of each run, plus optional training curves.

  N: parameters (count given by n_count); D: tokens; C: FLOPs used to group
  budgets (input's own FLOP count, else 6ND); L: final loss in nats/token.
  curves: per run a dict of arrays {"flops", "tokens", "loss"} or None;
  curve_source says whether curves are eval loss or smoothed train loss.
  Ns: {count: parameters per run} for every N convention the input names
  (`with_head`, `non_embedding`, `total`, `active`; N is Ns[n_count] when present),
  or None. hparams: {"lr": peak learning rate, "batch_tokens": tokens per
  optimizer step} per run, or None. moe: {"experts": routed experts E (1
  for a dense run), "top_k": experts per token (0 for dense), "granularity":
  d_ff / d_expert (1 for dense)} per run, or None.
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
  Ns: dict = None
  hparams: dict = None
  moe: dict = None

  def subset(self, keep):
    """Points restricted to the boolean or index array keep."""
    idx = np.arange(len(self.N))[keep]
    curves = None if self.curves is None else [self.curves[i] for i in idx]

    def pick(arrays):
      return None if arrays is None else {k: v[idx] for k, v in arrays.items()}

    return dataclasses.replace(
      self, names=[self.names[i] for i in idx], N=self.N[idx], D=self.D[idx],
      C=self.C[idx], L=self.L[idx], curves=curves, Ns=pick(self.Ns),
      hparams=pick(self.hparams), moe=pick(self.moe))

  def with_count(self, n_count):
    """The same points with N counted as n_count (a key of Ns); C is kept.

    C stays the input's FLOP count (it labels the IsoFLOP budgets), so only N
    changes. Raises ValueError when the input does not name that count.
    """
    if not self.Ns or n_count not in self.Ns:
      have = ", ".join(sorted(self.Ns or {})) or "none"
      raise ValueError(f"input has no parameter count {n_count!r} (has: {have})")
    return dataclasses.replace(self, N=np.asarray(self.Ns[n_count], float), n_count=n_count)


def group_budgets(C, tol_dex=0.05):
  """Group indices by FLOP budget: sorted log10 C split where gaps exceed tol_dex.

  Returns a list of index arrays, smallest budget first.
  """
  logC = np.log10(C)
  order = np.argsort(logC)
  groups, cur = [], [order[0]]
  for prev, i in zip(order[:-1], order[1:]):
    if logC[i] - logC[prev] > tol_dex:
      groups.append(np.array(cur)); cur = []
    cur.append(i)
  groups.append(np.array(cur))
  return groups


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
  Ns = _csv_counts(header, rows, path)
  return Points(names, N, D, C, L, source=f"csv:{path}", n_count=n_count, Ns=Ns)


def _csv_counts(header, rows, path):
  """{count: N array} from the CSV's params_<count> columns (None when it has none)."""
  lower = {h.strip().lower(): h for h in header}
  Ns = {}
  for count in N_COUNTS:
    col = lower.get(f"params_{count}")
    if col is not None:
      Ns[count] = np.array([_positive(r.get(col), f"{path} row {i} column {col!r}")
                            for i, r in enumerate(rows, start=2)])
  return Ns or None


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


def _run_hparams(s):
  """(peak LR, batch tokens) from a summary's config, or None when it lacks them."""
  cfg = s.get("config")
  try:
    lr = float(cfg["optim"]["lr"])
    batch = float(cfg["data"]["global_batch_size"]) * float(cfg["data"]["seq_len"])
  except (TypeError, KeyError, ValueError):
    return None
  if not (math.isfinite(lr) and lr > 0 and math.isfinite(batch) and batch > 0):
    return None
  return lr, batch


def _run_moe(s):
  """(E, top_k, granularity) from a summary's config (E = 1, top_k 0 when dense), or None."""
  cfg = s.get("config")
  model = cfg.get("model") if isinstance(cfg, dict) else None
  if not isinstance(model, dict):
    return None
  try:
    e = int(model.get("moe_num_experts") or 0)
    if e <= 0:
      return 1.0, 0.0, 1.0
    return float(e), float(model.get("moe_top_k", 1)), float(model.get("moe_granularity", 1))
  except (TypeError, ValueError):
    return None


def load_runs(root, n_count="with_head", warn=print):
  """Read a sweep folder DIR/<run>/summary.json (+ curve.json) into Points.

  N is summary['params_<n_count>'], D = summary['tokens'], loss =
  summary['eval_loss'], C = summary['flops_6nd'] when present else 6ND.
  Every other positive params_<count> key that all runs have goes into
  Points.Ns; the runs' peak LR and batch tokens into Points.hparams, and
  their expert counts into Points.moe, when all runs have them. Runs
  without summary.json or with a non-finite loss are listed in
  Points.excluded (and passed to warn), never used silently. A replica
  group (train.replicas: DIR/replicas.json) is read as its replicas' runs.
  """
  if n_count not in N_COUNTS:
    raise ValueError(f"n_count must be one of {N_COUNTS}, got {n_count!r}")
  if not os.path.isdir(root):
    raise ValueError(f"{root}: no such sweep folder")
  names, Ns, Ds, Cs, Ls, curves, sources, excluded = [], [], [], [], [], [], set(), []
  counts, hps, moes = {c: [] for c in N_COUNTS}, [], []
  group = os.path.isfile(os.path.join(root, "replicas.json"))
  for name in sorted(os.listdir(root)):
    run = os.path.join(root, name)
    if not os.path.isdir(run):
      continue
    spath = os.path.join(run, "summary.json")
    if not os.path.isfile(spath):
      if not (name == "checkpoints" and group):  # A replica group's stacked checkpoint: no run.
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
    for c in N_COUNTS:
      v = s.get(f"params_{c}")
      counts[c].append(float(v) if isinstance(v, (int, float)) and np.isfinite(v) and v > 0
                       else None)
    hps.append(_run_hparams(s))
    moes.append(_run_moe(s))
    if src:
      sources.add(src)
  for name, reason in excluded:
    warn(f"warning: run {name!r} skipped: {reason}")
  if not names:
    raise ValueError(f"{root}: no finished runs (no */summary.json with a finite eval_loss)")
  all_counts = {c: np.array(v) for c, v in counts.items() if None not in v}
  hparams = None
  if None not in hps:
    hparams = {"lr": np.array([h[0] for h in hps]), "batch_tokens": np.array([h[1] for h in hps])}
  moe = None
  if None not in moes:
    moe = dict(zip(("experts", "top_k", "granularity"), np.array(moes, float).T))
  pts = Points(names, np.array(Ns), np.array(Ds), np.array(Cs), np.array(Ls),
               source=f"runs:{root}", n_count=n_count, curves=curves,
               curve_source="+".join(sorted(sources)) or None, excluded=excluded,
               Ns=all_counts, hparams=hparams, moe=moe)
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
