"""What a run reports: TensorBoard scalars, the loss curve, summary.json, the console.

Only process 0 writes. Files that other tools read (`curve.json`,
`summary.json`) are written to a temporary name and renamed, so a reader never
sees half a file.
"""

import glob
import json
import os
import struct
import time

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX import summary as tb_summary
from tensorboardX.record_writer import masked_crc32c
from tensorboardX.proto import event_pb2

from train import files


def write_json_atomic(path: str, obj) -> None:
  files.write_json_atomic(path, obj, indent=2, default=_jsonable)


def _jsonable(x):
  if hasattr(x, 'item'):
    return x.item()
  if hasattr(x, 'to_dict'):
    return x.to_dict()
  return str(x)


COMPUTE_TAGS = ('vs_tokens/', 'vs_MFLOPs/')  # Tags whose step is tokens or MFLOPs, not the step.


def _records(path: str):
  """The records of a TFRecord file (TensorBoard's event file framing), stopping at a torn tail."""
  with open(path, 'rb') as f:
    while header := f.read(12):
      if len(header) < 12:
        return
      (n,) = struct.unpack('Q', header[:8])
      data = f.read(n + 4)
      if len(data) < n + 4:
        return
      yield data[:n]


def prune_events(workdir: str, step: int, compute_limits: tuple[int, int]) -> None:
  """Drop events a resumed run logs again: steps after `step` (and the step-0 metadata).

  After a kill, a run resumes from checkpoint `step` and logs everything after
  it once more; its old event files are rewritten (atomically) without those
  events, so TensorBoard shows exactly the rows of an uninterrupted run. The
  compute-axis tags keep the steps up to `compute_limits` (tokens, MFLOPs) at
  `step`. A new run (no event files) has nothing to prune.
  """
  tokens, mflops = compute_limits
  for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
    kept = []
    for data in _records(path):
      event = event_pb2.Event.FromString(data)
      if event.HasField('summary') and event.summary.value:
        tag = event.summary.value[0].tag
        limit = (tokens if tag.startswith(COMPUTE_TAGS[0]) else
                 mflops if tag.startswith(COMPUTE_TAGS[1]) else step)
        if not 0 < event.step <= limit:
          continue
      kept.append(data)
    with files.atomic_open(path, 'wb') as f:
      for data in kept:
        header = struct.pack('Q', len(data))
        f.write(header + struct.pack('I', masked_crc32c(header)) + data
                + struct.pack('I', masked_crc32c(data)))


class Reporter:
  """TensorBoard (tensorboardX) events, curve.json rows and console lines, from process 0."""

  def __init__(self, workdir: str, resume_step: int = 0, parent: str | None = None,
               compute_limits: tuple[int, int] = (0, 0), events: bool = True, prefix: str = ''):
    """`parent`: a cooldown branch's parent run, whose curve up to `resume_step` starts this one.

    `compute_limits`: (tokens, MFLOPs) at `resume_step`, the last kept steps of the
    compute-axis tags when old events are pruned on resume. `events=False`: console
    lines only (the group of train.replicas, whose replicas each write their own);
    `prefix` starts each console line (a replica's name).
    """
    self.compute_limits = compute_limits
    self.prefix = prefix
    self.console_enabled = jax.process_index() == 0
    self.enabled = self.console_enabled and events
    self.curve_path = os.path.join(workdir, 'curve.json')
    self.curve = []
    self.writer = None
    if self.enabled:
      prune_events(workdir, resume_step, self.compute_limits)
      self.writer = SummaryWriter(logdir=workdir, flush_secs=10)
      source = self.curve_path
      if not os.path.exists(source) and parent:  # A new branch: the parent's rows up to the branch.
        source = os.path.join(parent, 'curve.json')
      if os.path.exists(source):  # Resumed: keep rows up to the restored step.
        with open(source) as f:
          self.curve = [r for r in json.load(f) if r['step'] <= resume_step]

  def text(self, tag: str, text: str) -> None:
    if self.enabled:
      self.writer.add_text(tag, text, 0)

  def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
    if self.enabled:
      for k, v in values.items():
        if v is not None:
          self.writer.add_scalar(f'{prefix}/{k}', float(v), step)

  def index_histograms(self, step: int, vectors: dict, prefix: str) -> None:
    """Each vector v as a TensorBoard histogram over its index: bucket i holds v[i].

    For the per-expert load (fractions of the assignments): one bar per expert, as
    high as its share; a balanced router is flat at 1/E.
    """
    if self.enabled:
      for k, v in vectors.items():
        v = np.asarray(v, np.float64)
        i = np.arange(v.size, dtype=np.float64)
        self.writer.add_histogram_raw(
            f'{prefix}/{k}', min=0.0, max=float(v.size - 1), num=float(v.sum()),
            sum=float(i @ v), sum_squares=float((i * i) @ v), bucket_limits=(i + 0.5).tolist(),
            bucket_counts=v.tolist(), global_step=step)

  def compute_axes(self, values: dict[str, float], tokens: int, flops: float) -> None:
    """The same values against cumulative tokens and model FLOPs (in MFLOPs: integral steps), so
    every run of a sweep overlays on the compute axis (tags vs_tokens/..., vs_MFLOPs/...)."""
    if self.enabled:
      for k, v in values.items():
        if v is not None:
          self.writer.add_scalar(f'vs_tokens/{k}', float(v), int(tokens))
          self.writer.add_scalar(f'vs_MFLOPs/{k}', float(v), int(round(flops / 1e6)))

  def hparams(self, params: dict, metrics: dict) -> None:
    """One HParams trial for this run, in its own event file (linked to its curves, no sub-run)."""
    if self.enabled:
      exp, ssi, sei = tb_summary.hparams(params, metrics)
      for summary in (exp, ssi, sei):
        self.writer.file_writer.add_summary(summary)
      for k, v in metrics.items():
        if v is not None:
          self.writer.add_scalar(k, float(v), 0)

  def curve_row(self, row: dict) -> None:
    if self.enabled:
      self.curve.append(row)

  def flush(self) -> None:
    if self.enabled:
      write_json_atomic(self.curve_path, self.curve)
      self.writer.flush()

  def console(self, line: str) -> None:
    if self.console_enabled:
      print(f'[{time.strftime("%H:%M:%S")}] {self.prefix}{line}', flush=True)

  def close(self) -> None:
    if self.enabled:
      self.flush()
      self.writer.close()
