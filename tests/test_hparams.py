"""Tests for scaling.hparams: a known synthetic LR law and batch law recovered from sweep folders."""
import json
import os

import numpy as np
import pytest

from scaling import hparams
from scaling import points as points_lib

K_LR, P_LR = 2.0, -0.15  # synthetic eta_opt = K C^P (not DeepSeek's, so the comparison can differ)
K_B, P_B = 0.29, 0.3271  # synthetic B_opt in tokens (DeepSeek's)
SEQ = 128
BUDGETS = (1e15, 5e15, 4e16, 1e17, 6e17)  # uneven: 0.7, 0.9, 0.4, 0.8 dex apart


def write_grid_sweep(root, seed, budgets=BUDGETS, off_grid=(6e17,), noise=0.002,
                     batches=(0.5, 1, 2)):
  """Per budget one model on an (LR, batch) grid; loss = L0(C) + quadratic bowls in ln LR, ln B.

  LR grid: 7 values over ±0.9 dex around eta_opt(C), shifted by up to ±0.15 dex so it is not
  centred on the truth; a budget in off_grid gets 5 LRs 1.6x..25x above eta_opt (its minimum
  lies outside the grid). Batch: `batches` × B_opt(C) tokens, rounded to whole sequences.
  """
  rng = np.random.default_rng(seed)
  for C in budgets:
    n = 0.1 * C ** 0.5
    eta, b_opt = K_LR * C ** P_LR, K_B * C ** P_B
    lrs = eta * np.logspace(-0.9, 0.9, 7) * 10 ** rng.uniform(-0.15, 0.15)
    if C in off_grid:
      lrs = eta * np.logspace(0.2, 1.4, 5)
    for bs in np.unique(np.round(b_opt / SEQ * np.array(batches))).astype(int):
      for lr in lrs:
        loss = (2.0 + 30 * C ** -0.08 + 0.02 * np.log(lr / eta) ** 2
                + 0.01 * np.log(bs * SEQ / b_opt) ** 2 + noise * rng.standard_normal())
        run = os.path.join(root, f"c{C:.0e}_lr{lr:.4g}_b{bs}")
        os.makedirs(run)
        with open(os.path.join(run, "summary.json"), "w") as f:
          json.dump({"params_with_head": n, "tokens": C / (6 * n), "flops_6nd": C,
                     "eval_loss": float(loss),
                     "config": {"optim": {"lr": float(lr)},
                                "data": {"global_batch_size": int(bs), "seq_len": SEQ}}}, f)


def test_recovers_a_known_lr_law_and_batch_law(tmp_path):
  """Measured over sweep seeds 0-19 (this test's settings): the 95% interval of p held the true
  exponent 20/20 times for both laws, and excluded DeepSeek's -0.125 20/20 times; LR p = -0.1499
  (sd 0.003) vs -0.15, k = 2.00 (sd 0.23) vs 2.0; batch p = 0.329 (sd 0.026) vs 0.3271 (3 batch
  sizes per grid make the batch law the noisier one)."""
  write_grid_sweep(str(tmp_path), seed=0)
  res = hparams.fit_hparams(points_lib.load_runs(str(tmp_path), warn=lambda m: None),
                            n_boot=100, seed=0)
  lr = res["lr"]
  assert lr["ci"]["p"][0] <= P_LR <= lr["ci"]["p"][1]
  assert lr["p"] == pytest.approx(P_LR, abs=0.01) and lr["k"] == pytest.approx(K_LR, rel=0.3)
  assert lr["n_groups"] == 4
  (dropped,) = lr["dropped"]
  assert dropped["flops"] == pytest.approx(6e17)
  assert "outside the sampled learning rates" in dropped["reason"]
  for g in lr["groups"]:
    assert g["ci_opt"][0] <= g["opt"] <= g["ci_opt"][1]
    assert g["opt"] == pytest.approx(K_LR * g["flops"] ** P_LR, rel=0.1)
    assert g["deepseek"] == pytest.approx(0.3118 * g["flops"] ** -0.125)
  assert lr["deepseek"]["p"] == -0.125 and lr["deepseek"]["p_in_ci"] is False  # -0.15 is not
  b = res["batch"]
  assert b["ci"]["p"][0] <= P_B <= b["ci"]["p"][1] and b["p"] == pytest.approx(P_B, abs=0.08)
  assert b["n_groups"] == 5 and b["deepseek"]["p_in_ci"] is True  # the off-LR-grid budget counts
  text = hparams.format_table(res)
  assert "DeepSeek LLM: 0.3118 C^-0.125" in text and "dropped C=6e+17" in text


def test_one_batch_size_and_a_downward_parabola_are_reported(tmp_path):
  write_grid_sweep(str(tmp_path), seed=1, budgets=(1e15, 1e16, 1e17), off_grid=(), batches=(1,))
  hill = tmp_path / "c1e+16_hill"
  for lr, loss in ((1e-3, 3.0), (3e-3, 3.2), (1e-2, 3.0)):  # at 1e16 a hill, on its own size
    run = hill.parent / f"{hill.name}_{lr:g}"
    os.makedirs(run)
    json.dump({"params_with_head": 777.0, "tokens": 1e16 / 4662, "flops_6nd": 1e16,
               "eval_loss": loss, "config": {"optim": {"lr": lr},
                                             "data": {"global_batch_size": 8, "seq_len": SEQ}}},
              open(run / "summary.json", "w"))
  res = hparams.fit_hparams(points_lib.load_runs(str(tmp_path), warn=lambda m: None), n_boot=20)
  assert res["lr"]["n_groups"] == 3
  assert any(d["N"] == 777.0 and "opens downward" in d["reason"] for d in res["lr"]["dropped"])
  assert "batch" not in res and "fewer than 3 distinct batch sizes (1)" in res["skipped"]["batch"]


def test_runs_without_lr_config_are_skipped_with_the_reason(tmp_path):
  os.makedirs(tmp_path / "r")
  json.dump({"params_with_head": 1e6, "tokens": 1e8, "eval_loss": 3.0},
            open(tmp_path / "r" / "summary.json", "w"))
  res = hparams.fit_hparams(points_lib.load_runs(str(tmp_path), warn=lambda m: None), n_boot=0)
  assert "config.optim.lr" in res["skipped"]["lr"] and "config.optim.lr" in res["skipped"]["batch"]


def test_cli_writes_hparams_json_and_table(tmp_path, capsys):
  write_grid_sweep(str(tmp_path / "runs"), seed=2)
  out = tmp_path / "out"
  assert hparams.main(["--runs", str(tmp_path / "runs"), "--out", str(out),
                       "--bootstrap", "20"]) == 0
  text = capsys.readouterr().out
  assert "lr_opt(C) =" in text and "B_opt(C) =" in text and "hparams.json" in text
  res = json.load(open(out / "hparams.json"))
  assert res["lr"]["bootstrap"] == {"n": 20, "n_ok": 20, "seed": 0}
  assert "_samples" not in res["lr"] and res["input"]["n_runs"] == 99
  assert hparams.main(["--runs", str(tmp_path / "runs"), "--out", str(out),
                       "--bootstrap", "5", "--json"]) == 0
  assert json.loads(capsys.readouterr().out)["lr"]["p"] == pytest.approx(res["lr"]["p"], abs=0.01)
  assert hparams.main(["--runs", str(tmp_path / "none"), "--out", str(out)]) == 2
  assert "no such sweep folder" in capsys.readouterr().err
