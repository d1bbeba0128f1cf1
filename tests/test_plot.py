"""Tests for scaling.plot: PNGs and TensorBoard events from a fit on a synthetic sweep."""
import glob
import os

import numpy as np
import pytest

from scaling import fit

plot = pytest.importorskip("scaling.plot")


def test_write_all_pngs_and_tensorboard(tmp_path):
  from test_fit import LAWS, _make_sweep  # same synthetic sweep as the fit tests
  law = LAWS["chinchilla"]
  _make_sweep(str(tmp_path / "sweep"), law)
  out = str(tmp_path / "out")
  rc = fit.main(["--runs", str(tmp_path / "sweep"), "--out", out, "--bootstrap", "8"])
  assert rc == 0
  for name in ("optimal", "envelope", "isoflop", "contours", "residuals"):
    path = os.path.join(out, f"{name}.png")
    assert os.path.getsize(path) > 5000, name
  from tensorboardX.proto import event_pb2
  events = glob.glob(os.path.join(out, "events.out.tfevents.*"))
  assert len(events) == 1
  tags = set()
  for ev in _read_events(events[0], event_pb2):
    for v in ev.summary.value:
      tags.add(v.tag)
  assert {"scaling/optimal", "scaling/contours", "approach3/alpha"} <= tags
  assert any(t.startswith("scaling/summary") for t in tags)
  hp = glob.glob(os.path.join(out, "hparams", "*", "events.out.tfevents.*"))
  assert len(hp) == 15  # one HParams session per finished run


def _read_events(path, event_pb2):
  """Parse a TFRecord event file without TensorFlow."""
  import struct
  with open(path, "rb") as f:
    data = f.read()
  i = 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    ev = event_pb2.Event()
    ev.ParseFromString(data[i + 12:i + 12 + n])
    yield ev
    i += 12 + n + 4


def test_plot_functions_handle_a_csv_fit(tmp_path):
  from test_fit import LAWS, _points, _subgrid, synthetic
  N, D, L = synthetic(LAWS["epoch"], 0, noise=0.01)
  points = _points(N, D, L)
  res = fit.fit_all(points, n_boot=5, starts=_subgrid()[::6], log=lambda m: None)
  paths = plot.write_all(points, res, str(tmp_path), tensorboard=False)
  assert sorted(os.path.basename(p) for p in paths) == [
    "contours.png", "isoflop.png", "optimal.png", "residuals.png"]
  img = plot._save(plot.plot_residuals(points, res["approach3"]), str(tmp_path / "r.png"))
  assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8
