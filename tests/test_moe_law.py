"""Tests for scaling.moe_law: Ê, the Clark and joint laws recover synthetic laws, the multiplier,
the scaling.fit hook (fit.json's "moe" section, plot, TensorBoard scalars), the skipped paths."""
import json
import os

import numpy as np
import pytest

from scaling import fit, moe_law, plot
from scaling import points as points_lib

# A joint law (JOINT_X order) with the paper's shape: loss falls with N and D, experts help.
JOINT_TRUTH = dict(log_a=np.log(30.0), log_b=np.log(40.0), log_c=np.log(1.5), alpha=-0.25,
                   beta=-0.2, delta=0.2, gamma=-0.01, omega=-0.4, zeta=0.01)
X_TRUE = np.array([JOINT_TRUTH[k] for k in moe_law.JOINT_X])
DENSE = dict(E=1.7, A=400.0, B=1500.0, alpha=0.34, beta=0.3)  # A Chinchilla-shaped dense law.


def _grid(Ns, Ds, Es):
  N, D, E = np.meshgrid(Ns, Ds, Es, indexing="ij")
  return N.ravel(), D.ravel(), E.ravel().astype(float)


def _dense_loss(N, D):
  return DENSE["E"] + DENSE["A"] / N ** DENSE["alpha"] + DENSE["B"] / D ** DENSE["beta"]


def test_expert_hat_is_one_when_dense_grows_then_saturates():
  assert moe_law.expert_hat(1.0) == pytest.approx(1.0)
  e = moe_law.expert_hat([1, 2, 8, 64, 1e6])
  assert np.all(np.diff(e) > 0) and e[-1] < moe_law.E_MAX
  assert e[-1] == pytest.approx(moe_law.E_MAX, rel=1e-3)
  assert moe_law.expert_hat(8.0) == pytest.approx(8.0, rel=0.03)  # About E well below E_max.
  assert moe_law.expert_hat(1.0, e_start=2.0) == pytest.approx(2.0)


def test_joint_law_recovers_a_synthetic_law_within_its_intervals():
  N, D, E = _grid(np.logspace(6, 9, 4), np.logspace(8.5, 10.5, 3), [1, 2, 4, 8, 16])
  rng = np.random.default_rng(0)
  L = moe_law.predict_joint(X_TRUE, N, D, E) * np.exp(rng.normal(0, 0.002, N.size))
  r = moe_law.run_joint(N, D, E, L, n_boot=40, seed=1)
  assert r["form"].startswith("Ludziejewski et al. 2025")
  truth = moe_law.joint_params(X_TRUE)
  # Nine 95% intervals from 40 resamples at once: one or two may miss by a little (this draw:
  # alpha and delta, by under a tenth of their widths); a wrong fit misses by far more.
  inside = 0
  for k, v in truth.items():
    lo, hi = r["ci"][k]
    inside += lo <= v <= hi
    assert lo - (hi - lo) / 2 <= v <= hi + (hi - lo) / 2, (k, v, r["ci"][k])
  assert inside >= 7
  assert r["params"]["alpha"] == pytest.approx(truth["alpha"], abs=0.02)
  assert r["params"]["c"] == pytest.approx(truth["c"], rel=0.05)
  assert r["bootstrap"]["n_ok"] >= 38


def test_clark_law_recovers_a_synthetic_law_at_fixed_d():
  coef = np.array([-0.08, -0.1, 0.008, 1.0])  # a, b, c, d (log10)
  N, _, E = _grid(np.logspace(6, 9, 5), [1.0], [1, 2, 4, 8, 16, 32])
  D = np.full_like(N, 3e9)
  rng = np.random.default_rng(2)
  L = moe_law.predict_clark(coef, N, E) * np.exp(rng.normal(0, 0.002, N.size))
  # Runs at another D are left out of Clark's fixed-D form.
  N2, D2, E2 = np.array([1e7, 1e8]), np.array([1e10, 1e10]), np.array([1.0, 8.0])
  L2 = np.array([9.0, 9.0])
  r = moe_law.run_clark(np.r_[N, N2], np.r_[D, D2], np.r_[E, E2], np.r_[L, L2], n_boot=200)
  assert r["n_runs"] == len(N) and r["D"] == pytest.approx(3e9)
  for k, v in zip("abcd", coef):
    lo, hi = r["ci"][k]
    assert lo <= v <= hi, (k, v, r["ci"][k])
    assert r["params"][k] == pytest.approx(v, abs=0.01)


def test_clark_needs_two_expert_counts():
  N, D, E = _grid(np.logspace(6, 9, 6), [3e9], [8])
  with pytest.raises(moe_law.MoEFitError, match="2 model sizes and 2 expert counts"):
    moe_law.run_clark(N, D, E, _dense_loss(N, D), n_boot=0)


def test_multiplier_of_an_exact_k_times_moe_is_k():
  law = {**DENSE}
  N, D = np.array([1e7, 3e7, 1e8]), np.array([1e9, 3e9, 1e10])
  k, ci = moe_law.effective_multiplier(N, D, _dense_loss(4.0 * N, D), law)
  np.testing.assert_allclose(k, 4.0, rtol=1e-9)
  assert ci == [None] * 3
  # A loss no dense size reaches at that D: infinite, not an error.
  k, _ = moe_law.effective_multiplier([1e7], [1e9], [DENSE["E"] + 0.5 * DENSE["B"] / 1e9 ** 0.3],
                                      law)
  assert np.isinf(k[0])


# ----------------------------------------------------------------------------
# The scaling.fit hook on a folder of fake run summaries


def _summary(name, n_act, d, loss, experts, top_k=2, granularity=1):
  return {"params_active": n_act, "params_with_head": n_act * max(1, experts // top_k),
          "params_total": 1.1 * n_act * max(1, experts // top_k), "tokens": d,
          "flops_6nd": 6 * n_act * d, "eval_loss": float(loss),
          "config": {"model": {"moe_num_experts": experts, "moe_top_k": top_k,
                               "moe_granularity": granularity}}}


def write_moe_sweep(root, k=3.0, experts=(8,), dense_grid=(4, 3), moe_grid=(3, 2)):
  """Dense runs from DENSE and MoE runs whose loss is DENSE at k·N_act: multiplier exactly k."""
  runs = []
  for n in np.logspace(6.5, 8, dense_grid[0]):
    for d in np.logspace(8.5, 10, dense_grid[1]):
      runs.append((f"dense_n{n:.2g}_d{d:.2g}", n, d, _dense_loss(n, d), 0))
  for e in experts:
    for n in np.logspace(6.5, 7.5, moe_grid[0]):
      for d in np.logspace(9, 10, moe_grid[1]):
        runs.append((f"moe{e}_n{n:.2g}_d{d:.2g}", n, d, _dense_loss(k * n, d), e))
  for name, n, d, loss, e in runs:
    os.makedirs(os.path.join(root, name))
    with open(os.path.join(root, name, "summary.json"), "w") as f:
      json.dump(_summary(name, n, d, loss, e), f)
  return runs


def test_load_runs_reads_expert_counts(tmp_path):
  write_moe_sweep(tmp_path, dense_grid=(2, 1), moe_grid=(1, 1))
  p = points_lib.load_runs(str(tmp_path))
  assert sorted(set(p.moe["experts"])) == [1.0, 8.0]
  moe = p.moe["experts"] == 8
  assert np.all(p.moe["top_k"][moe] == 2) and np.all(p.moe["top_k"][~moe] == 0)
  np.testing.assert_allclose(p.Ns["active"][moe], [10 ** 6.5])
  np.testing.assert_allclose(p.N[moe], [4 * 10 ** 6.5])  # N (with head) stores all 8 experts.
  assert np.all(p.Ns["active"][~moe] == p.N[~moe])  # Dense: active == with head.
  assert moe_law.several_experts(p)
  sub = p.subset(moe)
  assert list(sub.moe["experts"]) == [8.0] and not moe_law.several_experts(sub)


def test_fit_hook_writes_the_moe_section(tmp_path, capsys):
  runs, out = tmp_path / "runs", tmp_path / "out"
  write_moe_sweep(runs, k=3.0, experts=(4, 8))
  assert fit.main(["--runs", str(runs), "--out", str(out), "--bootstrap", "20",
                   "--no-plots"]) == 0
  with open(out / "fit.json") as f:
    moe = json.load(f)["moe"]
  assert moe["experts"] == [1.0, 4.0, 8.0] and moe["n_dense"] == 12 and moe["n_runs"] == 24
  assert moe["joint"]["form"].startswith("Ludziejewski") and "ci" in moe["joint"]
  assert set(moe["joint"]["params"]) == {"a", "b", "c", "alpha", "beta", "delta", "gamma",
                                         "omega", "zeta"}
  assert moe["clark"]["form"].startswith("Clark")  # 12 runs share D = 1e10.
  m = moe["multiplier"]
  assert m["reference"].startswith("approach 3 on the dense runs")
  assert len(m["runs"]) == 12
  for r in m["runs"]:
    assert r["multiplier"] == pytest.approx(3.0, rel=0.03)
    assert r["flops"] == pytest.approx(6 * r["N_active"] * r["D"])
    lo, hi = r["ci"]
    assert lo <= r["multiplier"] <= hi
  assert m["by_experts"]["8"]["geomean"] == pytest.approx(3.0, rel=0.03)
  printed = capsys.readouterr().out
  assert "effective parameter multiplier" in printed and "Ludziejewski" in printed


def test_moe_plot_and_tensorboard_scalars(tmp_path):
  write_moe_sweep(tmp_path, k=2.0, experts=(4, 8))
  points = points_lib.load_runs(str(tmp_path))
  result = {"moe": fit.moe_section(points, n_boot=0)}
  figs = plot.figures(points, result)
  assert "moe" in figs
  fig = figs["moe"]()
  assert len(fig.axes[0].lines) >= 3  # At least one law curve per expert count.
  plot.save(fig, tmp_path / "moe.png")
  assert os.path.getsize(tmp_path / "moe.png") > 0
  tags = [t for t in plot.scalars(points, result) if t.startswith("moe_step_100log10N/")]
  assert any("loss_E8_D_" in t for t in tags) and any("loss_E1_D_" in t for t in tags)
  assert not any("+" in t for t in tags)  # tensorboardX would rename such tags.


def test_law_curves_follow_isoflop_budgets():
  """Runs of one E at one C (varying D) get a curve at D = C/(6N) that passes through them."""
  N = np.array([1e6, 3e6, 1e7, 1e6, 3e6, 1e7])
  E = np.array([1.0, 1.0, 1.0, 8.0, 8.0, 8.0])
  D = 1e17 / (6 * N)
  L = moe_law.predict_joint(X_TRUE, N, D, E)
  pts = points_lib.Points([f"r{i}" for i in range(6)], N, D, 6 * N * D, L, "test", "active",
                          Ns={"active": N}, moe={"experts": E, "top_k": 2 * (E > 1),
                                                 "granularity": np.ones(6)})
  curves = moe_law.law_curves(pts, {"joint": {"x": X_TRUE.tolist()}})
  assert [(c["experts"], c["kind"]) for c in curves] == [(1.0, "C"), (8.0, "C")]
  for c in curves:
    np.testing.assert_allclose(6 * c["N"] * c["D"], 1e17)
    sel = E == c["experts"]
    np.testing.assert_allclose(np.interp(np.log(N[sel]), np.log(c["N"]), c["loss"]), L[sel],
                               rtol=1e-3)


def test_too_few_runs_give_a_skipped_reason(tmp_path):
  write_moe_sweep(tmp_path, dense_grid=(2, 2), moe_grid=(2, 1))  # 6 runs < 9 parameters.
  points = points_lib.load_runs(str(tmp_path))
  moe = fit.moe_section(points, n_boot=5)
  assert "joint" not in moe and "needs more runs" in moe["skipped"]["joint"]
  assert "dense_reference" in moe["skipped"]  # 4 dense runs cannot fit approach 3's 5 parameters.
  assert "multiplier" in moe["skipped"]


def test_one_expert_count_changes_nothing(tmp_path):
  write_moe_sweep(tmp_path, experts=())
  points = points_lib.load_runs(str(tmp_path))
  assert fit.moe_section(points) is None
  result = fit.fit_all(points, n_boot=0)
  assert "moe" not in result


def test_the_table_shows_unreachable_multipliers_and_bounds_as_inf():
  block = {"n_runs": 2, "n_dense": 1, "experts": [1, 8], "e_start": 1.0, "e_max": 300.0,
           "skipped": {"joint": "too few runs", "clark": "too few runs"},
           "multiplier": {"reference": "approach 3", "runs": [
               {"run": "moe_a", "experts": 8, "top_k": 2, "N_active": 1e4, "D": 1e6, "loss": 2.0,
                "multiplier": 3.9, "ci": [1.7, None]},
               {"run": "moe_b", "experts": 8, "top_k": 2, "N_active": 1e4, "D": 1e6, "loss": 1.0,
                "multiplier": None, "ci": None}]}}
  text = moe_law.format_moe(block)
  assert "[1.7, inf]" in text and text.splitlines()[-1].split()[-1] == "inf"
