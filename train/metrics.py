"""What a run reports: TensorBoard scalars, the loss curve, summary.json, the console.

Only process 0 writes. Files that other tools read (`curve.json`,
`summary.json`) are written to a temporary name and renamed, so a reader never
sees half a file.
"""

import json
import os
import time

import jax

from train import files


def write_json_atomic(path: str, obj) -> None:
  files.write_json_atomic(path, obj, indent=2, default=_jsonable)


def _jsonable(x):
  if hasattr(x, 'item'):
    return x.item()
  if hasattr(x, 'to_dict'):
    return x.to_dict()
  return str(x)


class Reporter:
  """TensorBoard (tensorboardX) events, curve.json rows and console lines, from process 0."""

  def __init__(self, workdir: str, resume_step: int = 0, parent: str | None = None):
    """`parent`: a cooldown branch's parent run, whose curve up to `resume_step` starts this one."""
    self.enabled = jax.process_index() == 0
    self.curve_path = os.path.join(workdir, 'curve.json')
    self.curve = []
    self.writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # Local: only process 0 needs it.
      # Resumed at step c: TensorBoard hides the old events of steps > c (they are logged again).
      self.writer = SummaryWriter(logdir=workdir, flush_secs=10,
                                  purge_step=resume_step + 1 if resume_step else 0)
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

  def curve_row(self, row: dict) -> None:
    if self.enabled:
      self.curve.append(row)

  def flush(self) -> None:
    if self.enabled:
      write_json_atomic(self.curve_path, self.curve)
      self.writer.flush()

  def console(self, line: str) -> None:
    if self.enabled:
      print(f'[{time.strftime("%H:%M:%S")}] {line}', flush=True)

  def close(self) -> None:
    if self.enabled:
      self.flush()
      self.writer.close()
