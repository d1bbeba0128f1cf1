"""The `tpu` block of a sweep config: where `launch.sweep --tpu` (gcloud) and `--backend ray` run."""

import ml_collections


def tpu_block(**fields) -> ml_collections.ConfigDict:
  """The block with every field commented; `fields` override the defaults."""
  t = ml_collections.ConfigDict()
  t.name = ''  # TPU VM (slice) name, as in `gcloud compute tpus tpu-vm list`.
  t.zone = ''  # Its zone, e.g. 'us-central2-b'.
  t.project = ''  # GCP project; '' = gcloud's default.
  t.repo_dir = '~/chinchax'  # Checkout of this repository on every worker.
  t.python = 'python3'  # Interpreter on the workers (with jax[tpu] installed).
  t.workdir = 'gs://BUCKET/sweeps/NAME'  # Sweep folder as the workers see it (shared: gs:// or a per-worker path).
  t.update(fields)
  return t
