"""The loss law L(N, D) = E + A/N^alpha + B/D^beta: its frontier, its predictions, the named laws, fit.json.

Units: N parameters, D tokens, C training FLOPs (C = 6 N D), loss in nats/token.

  * Efficient frontier (Hoffmann et al. 2022): N_opt(C) = G (C/6)^a,
    D_opt(C) = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta).
  * The functions here take any mapping with E, A, B, alpha, beta (a fit's
    approach-3 block, or a `Law`); `Law` adds the fixed-ratio rule (20x) and
    names its source.
  * `read_fit` is the one reader of a scaling.fit `fit.json`.
  * `percentile_interval` is the one 95% bootstrap interval of every
    prediction (scaling.fit, scaling.ladder, scaling.hparams).
"""

import dataclasses
import json
import math
import os

import numpy as np

FLOPS_PER_PARAM_TOKEN = 6.0  # C = 6 N D.
FIT_KEYS = ('E', 'A', 'B', 'alpha', 'beta')


def _exp(x: float) -> float:
  """math.exp that gives inf instead of raising OverflowError (a diverged fit's log A)."""
  return math.exp(x) if x < 709.0 else math.inf


def law_from_params(x5):
  """Dict of the law from (log_A, log_B, log_E, alpha, beta), with frontier."""
  la, lb, le, al, be = (float(v) for v in x5)
  law = {"E": _exp(le), "A": _exp(la), "B": _exp(lb), "alpha": al,
         "beta": be, "log_E": le, "log_A": la, "log_B": lb}
  law.update(frontier_constants(law))
  return law


def frontier_constants(law):
  """G, a, b of the efficient frontier N_opt = G (C/6)^a, D_opt = (C/6)^b / G.

  G is computed from log A and log B, so a law whose A or B overflows a float
  still has a finite frontier when the ratio is finite.
  """
  al, be = law["alpha"], law["beta"]
  if al <= 0 or be <= 0:
    return {"G": float("nan"), "a": float("nan"), "b": float("nan")}
  la = law.get("log_A", math.log(law["A"]) if law["A"] > 0 else -math.inf)
  lb = law.get("log_B", math.log(law["B"]) if law["B"] > 0 else -math.inf)
  G = _exp((math.log(al) + la - math.log(be) - lb) / (al + be))
  return {"G": G, "a": be / (al + be), "b": al / (al + be)}


def frontier(law, C):
  """(N_opt, D_opt) in parameters and tokens at FLOPs C (C = 6 N D)."""
  k = frontier_constants(law)
  C = np.asarray(C, float)
  return k["G"] * (C / 6) ** k["a"], (C / 6) ** k["b"] / k["G"]


def predict_loss(law, N, D):
  """L(N, D) = E + A/N^alpha + B/D^beta in nats/token."""
  return law["E"] + law["A"] / np.asarray(N, float) ** law["alpha"] \
    + law["B"] / np.asarray(D, float) ** law["beta"]


def percentile_interval(samples, level=95.0):
  """Percentile interval [lo, hi] of bootstrap samples (None if fewer than 2).

  level in percent (95: the 2.5th and 97.5th percentiles). NaN samples are
  dropped; infinite ones (a resample whose fit diverged, e.g. A overflowing)
  stay in: if more than (100 - level)/2 % of them are infinite, the interval
  is honestly unbounded.
  """
  s = np.asarray(samples, float).ravel()
  s = s[~np.isnan(s)]
  if len(s) < 2:
    return None
  tail = (100.0 - level) / 2
  q = np.percentile(s, [tail, 100.0 - tail], method="inverted_cdf")
  return [float(q[0]), float(q[1])]


@dataclasses.dataclass(frozen=True)
class Law:
  """A compute-optimal allocation rule, readable as a mapping (`law['alpha']`) by the functions above.

  Either a loss law L(N, D) = E + A/N^alpha + B/D^beta (A, B, E in natural
  units) whose efficient frontier gives N_opt(C), or a fixed ratio D = r N.
  """
  name: str
  E: float | None = None
  A: float | None = None
  B: float | None = None
  alpha: float | None = None
  beta: float | None = None
  tokens_per_param: float | None = None  # Set for a fixed-ratio law (e.g. 20x).
  source: str = ''
  ci: dict | None = None  # 95% intervals of a fitted law (from fit.json), if any.

  @property
  def is_loss_law(self) -> bool:
    return self.tokens_per_param is None

  def __getitem__(self, key):
    if key in FIT_KEYS or key == 'ci':
      return getattr(self, key)
    if key in ('G', 'a', 'b'):
      return frontier_constants(self)[key]
    raise KeyError(key)

  def get(self, key, default=None):
    try:
      return self[key]
    except KeyError:
      return default

  def frontier(self) -> tuple[float, float, float]:
    """(G, a, b) of the efficient frontier N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b."""
    if not self.is_loss_law:
      raise ValueError(f'law {self.name!r} is a fixed ratio, it has no loss frontier')
    k = frontier_constants(self)
    return k['G'], k['a'], k['b']

  def optimum(self, flops: float) -> tuple[float, float]:
    """(N_opt parameters, D_opt tokens) for a total training budget of `flops` FLOPs."""
    if not (math.isfinite(flops) and flops > 0):
      raise ValueError(f'--flops must be > 0, got {flops:g}')
    if not self.is_loss_law:
      n = math.sqrt(flops / (FLOPS_PER_PARAM_TOKEN * self.tokens_per_param))
      return n, self.tokens_per_param * n
    n_opt, d_opt = frontier(self, flops)
    return float(n_opt), float(d_opt)

  def tokens_for_params(self, n_params: float) -> float:
    """Compute-optimal tokens D for a model of `n_params` parameters (inverse frontier)."""
    if not self.is_loss_law:
      return self.tokens_per_param * n_params
    g, a, _ = self.frontier()
    return (n_params / g) ** (1.0 / a) / n_params  # C/6 = (N/G)^(1/a); D = (C/6)/N.

  def params_for_tokens(self, n_tokens: float) -> float:
    """Compute-optimal parameters N for a run of `n_tokens` tokens (inverse frontier)."""
    if not self.is_loss_law:
      return n_tokens / self.tokens_per_param
    g, _, b = self.frontier()
    return (n_tokens * g) ** (1.0 / b) / n_tokens  # C/6 = (D G)^(1/b); N = (C/6)/D.

  def loss(self, n_params: float, n_tokens: float) -> float | None:
    """Predicted final loss L(N, D) (nats per token), or None for a fixed-ratio law."""
    if not self.is_loss_law:
      return None
    return float(predict_loss(self, n_params, n_tokens))


CHINCHILLA = Law('chinchilla', E=math.exp(0.5267228), A=math.exp(6.0073404), B=math.exp(6.0179186),
                 alpha=0.33917084, beta=0.2849083,
                 source='Hoffmann et al. 2022 eq. 10, unrounded (ln A 6.0073404, ln B 6.0179186, ln E 0.5267228)')
EPOCH = Law('epoch', E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658,
            source='Besiroglu et al. 2024, maximum-likelihood fit')
TWENTY_X = Law('20x', tokens_per_param=20.0, source='20 tokens per parameter (Chinchilla rule of thumb)')
LAWS = {law.name: law for law in (CHINCHILLA, EPOCH, TWENTY_X)}


def read_fit(path: str, what: str = '--law') -> Law:
  """The approach-3 law of a scaling.fit `fit.json` (the file, or the folder holding it).

  Raises ValueError naming `what` and the path when the file is missing or
  unreadable, has no approach-3 block (quoting why the fit skipped it), or
  holds a parameter that is not a positive number.
  """
  if os.path.isdir(path):
    path = os.path.join(path, 'fit.json')
  if not os.path.isfile(path):
    raise ValueError(f'{what} {path!r}: not a known law ({", ".join(LAWS)}) and no such file')
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{what} {path!r} is not a fit: cannot read it as JSON ({e})') from None
  block = data.get('approach3') if isinstance(data, dict) else None
  if not isinstance(block, dict):
    found = ', '.join(map(str, data)) if isinstance(data, dict) else type(data).__name__
    skipped = data.get('skipped', {}).get('approach3') if isinstance(data, dict) else None
    raise ValueError(f'{what} {path!r} is not a fit: no "approach3" block with keys '
                     f'{", ".join(FIT_KEYS)} (found: {found or "nothing"})'
                     + (f'; approach 3 was skipped: {skipped}' if skipped else ''))
  missing = [k for k in FIT_KEYS if k not in block]
  if missing:
    raise ValueError(f'{what} {path!r} is not a fit: "approach3" lacks {", ".join(missing)}')
  values = {}
  for k in FIT_KEYS:
    v = block[k]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
      raise ValueError(f'{what} {path!r}: approach3.{k} must be a positive number, got {v!r}')
    values[k] = float(v)
  return Law(f'fit:{path}', source=f'approach3 of {path}', ci=block.get('ci'), **values)


def get_law(spec: 'str | Law') -> Law:
  """A Law from a name ('chinchilla', 'epoch', '20x'), a fit.json path, or a Law itself."""
  if isinstance(spec, Law):
    return spec
  key = spec.strip().lower()
  if key in LAWS:
    return LAWS[key]
  return read_fit(spec)
