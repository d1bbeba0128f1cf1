"""orbax checkpoints of (model + optimizer state, grain iterator state).

Steps are written to a temporary folder and renamed when complete (orbax), so
a crash mid-save never leaves a checkpoint that `latest_step` would pick.
Restoring targets ShapeDtypeStructs carrying the *current* mesh's shardings,
so a run can resume on a different mesh shape.
"""

import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir: str, keep: int):
    self.dir = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iter) -> None:
    """Save asynchronously; refuses a state with a non-finite parameter (nothing is written)."""
    bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(state)
           if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) and not _all_finite(x)]
    if bad:
      raise FloatingPointError(f'not checkpointing step {step}: non-finite values in {bad[:3]}')
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)))

  def restore(self, step: int, abstract_state, data_iter):
    """Restore `step` into the shardings of `abstract_state`; the iterator is restored in place."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter)))
    return out['state']

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _all_finite(x) -> bool:
  return bool(np.all(jax.device_get(jax.numpy.isfinite(x).all())))
