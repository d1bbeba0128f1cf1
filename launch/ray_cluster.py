"""Ray cluster configs for `ray up` on GCP, and the commands that start a sweep on them.

  python -m launch.sweep --config SWEEP --workdir DIR --backend ray --dry-run

prints two cluster configs as YAML, each with its `ray up` / `ray job submit`
commands: one of TPU VMs from the sweep config's `tpu` block (zone, project
and the optional keys of TPU_KEYS: accelerator_type, runtime_version, spot),
one of a group of GPU hosts. The sweep config's optional `ray` block
(`default_config`) shapes both. A multi-host TPU type (v4-16, v5litepod-16,
...) gives a cluster of slices: each run holds one slice, with one process on
every host of it (`launch.ray_backend.run_on_slice`). Nothing here needs
credentials or Ray: the configs are plain dicts; `ray up` reads them.
"""

import importlib.metadata
import os
import shlex

import ml_collections
import yaml  # PyYAML comes with ml_collections, flax and orbax.

from configs import load

REPO_ROOT = load.REPO_ROOT
# Optional keys of the sweep config's `tpu` block that the TPU cluster config reads, with defaults.
TPU_KEYS = {'accelerator_type': 'v4-8', 'runtime_version': 'tpu-ubuntu2204-base', 'spot': True}


def default_config() -> ml_collections.ConfigDict:
  """The optional `ray` block of a sweep config, with every field commented."""
  r = ml_collections.ConfigDict()
  r.cluster_name = 'chinchax'  # Ray cluster name (`ray up`/`ray down`); node names start with it.
  r.resources = ''  # Ray resources one run holds, 'TPU=4' or 'GPU=1,CPU=8'; '' = CPU=1 (--ray-resources wins).
  r.hosts_per_run = 0  # Hosts (processes) per run; 0 = the hosts of tpu.accelerator_type for TPU runs, else 1.
  r.slice_head = ''  # Resource of a slice's first host; '' = 'TPU-<accelerator_type>-head' for TPUs, else 'slice-head'.
  r.head_machine_type = 'n2-standard-8'  # GCE machine of the head node: runs the driver, never a run; not spot.
  r.max_tpu_hosts = 4  # Most TPU VMs (slices) the autoscaler keeps (one run per slice with the default resources).
  r.gpu_machine_type = 'a2-highgpu-1g'  # GCE machine of a GPU host.
  r.gpu_type = 'nvidia-tesla-a100'  # Its GPUs (GCE accelerator type).
  r.gpus_per_host = 1  # GPUs per GPU host.
  r.gpu_spot = True  # GPU hosts as spot VMs.
  r.gpu_image = 'projects/deeplearning-platform-release/global/images/family/common-cu124-debian-11'  # With NVIDIA drivers.
  r.max_gpu_hosts = 4  # Most GPU hosts the autoscaler keeps.
  r.nfs = ''  # 'HOST:/EXPORT' of an NFS share (e.g. Filestore) mounted at mount_dir on every node; '' = none.
  r.mount_dir = '/mnt/sweeps'  # Where every node mounts the share; the sweep's --workdir goes under it.
  r.repo_dir = '~/chinchax'  # Where `ray up` copies this checkout on every node (installed with pip -e).
  r.venv = '~/venv'  # Python 3.11 virtual environment on every node (made with uv).
  return r


def tpu_hosts(accelerator_type: str) -> tuple[int, int]:
  """(hosts, chips per host) of a TPU VM type: 'v4-8' -> (1, 4), 'v5litepod-16' -> (4, 4).

  The number in v2, v3, v4 and v5p names counts TensorCores (2 per chip);
  in v5litepod / v5e / v6e names it counts chips. Hosts hold 4 chips, except
  single-host v5e/v6e slices of up to 8.
  """
  gen, _, count = accelerator_type.lower().partition('-')
  if not count.isdigit() or int(count) < 1:
    raise ValueError(f'tpu.accelerator_type={accelerator_type!r}: expected e.g. v4-8, v5p-8, '
                     'v5litepod-8 or v6e-8')
  one_core = gen in ('v5litepod', 'v5e', 'v6e')
  if not one_core and gen not in ('v2', 'v3', 'v4', 'v5p'):
    raise ValueError(f'tpu.accelerator_type={accelerator_type!r}: unknown TPU generation {gen!r}')
  chips = int(count) if one_core else max(1, int(count) // 2)
  per_host = chips if one_core and chips <= 8 else min(chips, 4)
  return -(-chips // per_host), per_host


def _region(zone: str) -> str:
  return zone.rsplit('-', 1)[0] if zone.count('-') >= 2 else zone


def _setup_commands(r, extras: str, also: str = '') -> list:
  """Node set-up: Python 3.11 (uv), then this checkout installed with pip -e and its extras."""
  ray_pin = ''
  try:
    ray_pin = f' "ray[default]=={importlib.metadata.version("ray")}"'  # Same Ray as the driver's.
  except importlib.metadata.PackageNotFoundError:
    pass
  return [
      'command -v uv || test -x ~/.local/bin/uv || curl -LsSf https://astral.sh/uv/install.sh | sh',
      f'test -x {r.venv}/bin/python || ~/.local/bin/uv venv --seed --python 3.11 {r.venv}',
      f"cd {r.repo_dir} && {r.venv}/bin/python -m pip install -e '.[{extras}]'{ray_pin}{also}",
  ]


def _cluster(r, zone: str, project: str, name: str, worker: str, worker_node: dict,
             worker_setup: list) -> dict:
  """A GCP cluster config: an on-demand CPU head node and one autoscaled type of worker node."""
  mount = []
  if r.nfs:
    mount = [f'sudo apt-get install -y nfs-common && sudo mkdir -p {r.mount_dir} && '
             f'(mountpoint -q {r.mount_dir} || sudo mount -t nfs {r.nfs} {r.mount_dir}) && '
             f'sudo chmod a+rwx {r.mount_dir}']
  ray_bin = f'{r.venv}/bin/ray'
  return dict(
      cluster_name=name,
      max_workers=worker_node['max_workers'],
      idle_timeout_minutes=10,
      provider=dict(type='gcp', region=_region(zone), availability_zone=zone, project_id=project),
      auth=dict(ssh_user='ubuntu'),
      available_node_types={'head': _head_node(r), worker: worker_node},
      head_node_type='head',
      file_mounts={r.repo_dir: REPO_ROOT},  # This checkout, copied to every node by `ray up`.
      rsync_exclude=['.venv', '.git', 'runs', '**/__pycache__', '*.egg-info'],
      initialization_commands=[],
      setup_commands=mount,
      head_setup_commands=_setup_commands(r, 'ray', ' "google-api-python-client>=2,<3"'),  # The autoscaler's.
      worker_setup_commands=worker_setup,
      head_start_ray_commands=[
          f'{ray_bin} stop',
          f'ulimit -n 65536; {ray_bin} start --head --port=6379 --num-cpus=0 '
          '--autoscaling-config=~/ray_bootstrap_config.yaml --dashboard-host=0.0.0.0'],
      worker_start_ray_commands=[
          f'{ray_bin} stop',
          f'ulimit -n 65536; {ray_bin} start --address=$RAY_HEAD_IP:6379'],
  )


def _head_node(r) -> dict:
  return dict(resources={'CPU': 0}, node_config=dict(
      machineType=r.head_machine_type,
      disks=[dict(boot=True, autoDelete=True, type='PERSISTENT', initializeParams=dict(
          diskSizeGb=100,
          sourceImage='projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts'))]))


def _tpu_fields(tpu) -> dict:
  """zone, project and TPU_KEYS from a `tpu` block (None or '' -> the default or a placeholder)."""
  t = dict(TPU_KEYS, zone='ZONE', project='PROJECT')
  for k in t:
    value = tpu.get(k, None) if tpu is not None else None
    if value not in ('', None):
      t[k] = value
  return t


def cluster_configs(tpu: ml_collections.ConfigDict | None, ray_cfg: ml_collections.ConfigDict | None
                    ) -> dict:
  """{'tpu': config, 'gpu': config}: Ray cluster configs (dicts for YAML) for `ray up` on GCP.

  tpu: the sweep config's `tpu` block (zone, project, and the TPU_KEYS);
  None gives placeholders. The head node is an on-demand CPU VM that runs
  the sweep's driver and no run (so it survives spot preemptions); workers
  are TPU VMs (or GPU hosts), each installing this checkout
  (copied by `ray up` to repo_dir) with `pip install -e` in a Python 3.11
  virtual environment. A multi-host TPU type (v4-16: 2 hosts) makes each
  autoscaled worker a slice; every host of it joins the cluster as a Ray
  node (Ray marks worker 0 with 'TPU-<type>-head'), and each run holds one
  slice (`launch.ray_backend.run_on_slice`). Not tried here against GCP.
  """
  t, r = _tpu_fields(tpu), ray_cfg if ray_cfg is not None else default_config()
  _, chips = tpu_hosts(t['accelerator_type'])
  tpu_cfg = _cluster(r, t['zone'], t['project'], f'{r.cluster_name}-tpu', 'tpu_worker', dict(
      min_workers=0, max_workers=r.max_tpu_hosts, resources={'TPU': chips},
      node_config=dict(acceleratorType=t['accelerator_type'], runtimeVersion=t['runtime_version'],
                       schedulingConfig=dict(spot=bool(t['spot'])))),
      _setup_commands(r, 'ray,gcs,tpu-aot'))  # tpu-aot = jax[tpu], with libtpu; gcs = gcsfs.
  scheduling = dict(onHostMaintenance='TERMINATE', automaticRestart=False)
  if r.gpu_spot:
    scheduling.update(provisioningModel='SPOT', instanceTerminationAction='DELETE')
  gpu_cfg = _cluster(r, t['zone'], t['project'], f'{r.cluster_name}-gpu', 'gpu_worker', dict(
      min_workers=0, max_workers=r.max_gpu_hosts, resources={'GPU': r.gpus_per_host},
      node_config=dict(
          machineType=r.gpu_machine_type,
          guestAccelerators=[dict(acceleratorType=r.gpu_type, acceleratorCount=r.gpus_per_host)],
          scheduling=scheduling,
          metadata=dict(items=[dict(key='install-nvidia-driver', value='True')]),
          disks=[dict(boot=True, autoDelete=True, type='PERSISTENT',
                      initializeParams=dict(diskSizeGb=200, sourceImage=r.gpu_image))])),
      _setup_commands(r, 'ray,gcs', ' "jax[cuda12]"'))
  return {'tpu': tpu_cfg, 'gpu': gpu_cfg}


def dry_run_text(tpu, ray_cfg, sweep_config: str, workdir: str, extra_flags: list) -> str:
  """The two cluster configs as YAML, and the commands that start the sweep on each cluster.

  sweep_config and workdir as given to launch.sweep; extra_flags: further
  launch.sweep flags for the driver on the head node (e.g. --max-preemptions 5).
  """
  r = ray_cfg if ray_cfg is not None else default_config()
  cfgs = cluster_configs(tpu, r)
  accelerator = _tpu_fields(tpu)['accelerator_type']
  hosts, chips = tpu_hosts(accelerator)
  resources = {'tpu': f'TPU={chips}', 'gpu': f'GPU={r.gpus_per_host}'}
  shape = f'slices of {hosts} hosts: each run one process per host' if hosts > 1 else 'single-host slices'

  bucket = '://' in workdir  # gs://...: every node reaches it; no share needed.
  remote_workdir = workdir if bucket or workdir.startswith(r.mount_dir + '/') else \
      f'{r.mount_dir}/{os.path.basename(workdir.rstrip("/"))}'
  config_rel = os.path.relpath(os.path.abspath(sweep_config), REPO_ROOT)
  out = []
  for kind, what in (('tpu', f'GCP TPU VMs ({accelerator}, {shape})'), ('gpu', 'a group of GCP GPU hosts')):
    path = f'ray_{kind}.yaml'
    # The venv path stays unquoted so that the head node's shell expands its ~.
    driver = f'{r.venv}/bin/python ' + shlex.join(
        ['-m', 'launch.sweep', '--config', config_rel, '--workdir', remote_workdir, '--backend', 'ray',
         '--ray-address', 'auto', '--ray-resources', resources[kind], *extra_flags])
    out += [f'# ---- Ray cluster config for {what}: save as {path}',
            yaml.safe_dump(cfgs[kind], sort_keys=False, default_flow_style=False, width=1000).rstrip(),
            f'# ---- commands ({kind}): start the cluster, forward its dashboard, submit the sweep, follow it',
            f'ray up -y {path}',
            f'ray dashboard {path} &  # forwards localhost:8265 to the head node',
            'ray job submit --address http://127.0.0.1:8265 --no-wait -- '
            + shlex.quote(f'cd {r.repo_dir} && {driver}'),
            'ray job logs --address http://127.0.0.1:8265 --follow JOB_ID  # the status lines',
            (f'gcloud storage cp -r {workdir} .  # the runs, status file and fit' if bucket else
             f'ray rsync-down {path} {remote_workdir}/ {workdir}/  # the runs, status file and fit'),
            f'ray down -y {path}', '']
  if config_rel.startswith('..'):
    out.append(f'# note: the sweep config {sweep_config} is outside this checkout; ray up copies only the '
               f'checkout to {r.repo_dir}, so put the config in it.')
  if not r.nfs and not bucket:
    out.append(f'# note: ray.nfs is empty; with worker nodes, --workdir ({remote_workdir}) must be a '
               'share every node mounts: set ray.nfs to an NFS (Filestore) export, or use a bucket (gs://...).')
  return '\n'.join(out)
