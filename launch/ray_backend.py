"""Sweep runs as Ray tasks (the ledger of their states: launch/ledger.py).

  python -m launch.sweep --config SWEEP --workdir DIR --backend ray [--ray-address ADDR]
  python -m launch.sweep --config SWEEP --workdir DIR --backend ray --dry-run  # + cluster configs

Each run is one Ray task holding `resources_per_run` ({'CPU': 1}, {'TPU': 4},
{'GPU': 1}, ...). The task starts the run's `python -m train ...` argv as a
subprocess, in the repository root of the node that holds it, with its
output appended to DIR/<run>/train.log. Every run is submitted at once and
Ray's scheduler packs them onto free resources (an autoscaler adds nodes).
Ray sets CUDA_VISIBLE_DEVICES / TPU_VISIBLE_CHIPS to the chips a task holds
and the subprocess inherits them, so runs can share a host (not tried here
on GPUs or TPUs: only on a CPU-only local cluster). The process dies
with its Ray worker (PR_SET_PDEATHSIG, Linux), so a requeued run never
shares its folder with what is left of the attempt before. DIR is one path
that every node sees (the driver's machine alone, or an NFS share), or a
bucket, gs://... (each run staged on its node: launch/remote.py).

A run of several hosts (hosts_per_run = H > 1, e.g. a v4-16 TPU slice of 2
hosts, or a group of GPU hosts) is one Ray task on the slice's first host,
which holds the slice's head resource (Ray gives worker 0 of a TPU slice
'TPU-<type>-head'; hosts of any other group are started with
--resources='{"slice-head": 1, "slice-NAME": 1}' on the first and
'{"slice-NAME": 1}' on the others). That task (`run_on_slice`) finds its
slice's name (the TPU pod name, or the node's 'slice-NAME' resource) and
starts H host tasks, one per host of that slice, each running the run's argv
plus --coordinator FIRST_HOST_IP:PORT --num_processes H --process_id i, so
jax.distributed.initialize() joins them. Host 0 logs to train.log, host i to
train.host<i>.log. When one host's process ends badly, the others are
stopped (a process whose peers are gone waits on collectives forever), and
the run's attempt ends with the first bad outcome: a lost host is a
preemption, exit 75 from any host is a preemption, another status is a
failure. Slices are packed like hosts: every run is submitted, and each
starts when a slice head is free.

Preemption is told apart from failure as launch/ledger.py says: a lost
node or worker (a Ray error of PREEMPTION_ERRORS) and exit status 75 are
preemptions, with their own budget; anything else is a failure.

The cluster configs and the commands that start a sweep on GCP are
launch/ray_cluster.py's. This module imports `ray` only inside the functions
that need it (an optional extra: pip install -e '.[ray]').
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time

from configs import load
from launch import ledger as ledger_lib
from launch import remote
from launch import runs

REPO_ROOT = load.REPO_ROOT
# Ray exceptions that mean the run's machine went away, not that the run failed (looked up by
# name: older Ray versions lack some).
PREEMPTION_ERRORS = ('NodeDiedError', 'WorkerCrashedError', 'ActorDiedError', 'LocalRayletDiedError',
                     'TaskUnschedulableError', 'ObjectLostError')
STOP_GRACE_S = 30.0  # Seconds a stopped run gets between SIGTERM and SIGKILL.

_PR_SET_PDEATHSIG = 1
try:
  _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith('linux') else None
  if _prctl is not None:
    _prctl.restype, _prctl.argtypes = ctypes.c_int, [ctypes.c_int] + [ctypes.c_ulong] * 4
except (OSError, AttributeError):
  _prctl = None


# ---------------------------------------------------------------------------- on the node


def _die_with_parent(parent_pid: int):
  """preexec_fn: SIGKILL this child when its parent (the Ray worker) dies, Linux only."""
  def preexec():
    if _prctl is not None:
      _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # The parent died before prctl took effect.
      os._exit(1)
  return preexec


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
  """SIGTERM (the training loop saves a checkpoint and exits), then SIGKILL after `grace_s`."""
  proc.terminate()
  try:
    proc.wait(timeout=grace_s)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def _wait(proc: subprocess.Popen, poll_s: float = 0.5, tick=None) -> int:
  """proc.wait(), in short waits: Ray delivers a cancellation between Python steps, not inside one.

  tick: called after each wait that did not see the process end.
  """
  while True:
    try:
      return proc.wait(timeout=poll_s)
    except subprocess.TimeoutExpired:
      if tick is not None:
        tick()


def run_on_node(argv: list, log_path: str) -> dict:
  """The body of a run's Ray task: `argv` from this node's repository root, output into log_path.

  Returns {'exit': status (127: could not start), 'seconds': wall time (s),
  'node': host name, 'tail': the last lines of this attempt's log}. If the
  task is cancelled (Ctrl-C on the driver) the run is stopped with `stop`.
  A log_path in a bucket (gs://...): the run trains in a staging folder on
  this node, copied from and to the bucket (launch/remote.py); argv's
  --workdir value is replaced by that folder.
  """
  t0 = time.perf_counter()
  sync = None
  if remote.is_remote(log_path):
    run_dir = os.path.dirname(log_path)
    staged = remote.staging_dir(run_dir)
    if run_dir not in argv:
      raise ValueError(f'the run\'s argv has no argument {run_dir!r} (its --workdir) to stage')
    sync = remote.Sync(staged, run_dir)
    sync.pull()
    argv = [staged if a == run_dir else a for a in argv]
    log_path = os.path.join(staged, os.path.basename(log_path))
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  try:
    with open(log_path, 'a') as f:
      f.write(ledger_lib.log_header(argv))
      f.flush()
      try:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env=runs.run_env(os.path.dirname(os.path.dirname(log_path))),
                                preexec_fn=_die_with_parent(os.getpid()))
      except OSError as e:
        f.write(f'cannot start {argv[0]} on {socket.gethostname()}: {e}\n')
        status = 127
      else:
        try:
          status = _wait(proc, tick=sync.maybe_push if sync is not None else None)
        except BaseException:
          stop(proc)
          raise
  finally:
    if sync is not None:
      sync.push()  # With any outcome, what the run wrote reaches the bucket.
  tail = ledger_lib.log_tail(log_path)
  if sync is not None and status == 0 and os.path.isfile(os.path.join(staged, 'summary.json')):
    remote.remove_staging(staged)  # Finished, and all of it in the bucket.
  return dict(exit=status, seconds=time.perf_counter() - t0, node=socket.gethostname(), tail=tail)


SLICE_HEAD = 'slice-head'  # Head resource of a slice of non-TPU hosts (TPU slices: 'TPU-<type>-head').
SLICE_PREFIX = 'slice-'  # Every host of the non-TPU slice NAME holds the resource 'slice-NAME'.


def host_log(log_path: str, host: int) -> str:
  """Host 0 of a multi-host run logs to train.log, host i to train.host<i>.log beside it."""
  return log_path if host == 0 else log_path[:-len('.log')] + f'.host{host}.log'


def slice_name(ray, head_resource: str) -> str:
  """The slice this task's node belongs to: its TPU pod's name, or its one 'slice-NAME' resource."""
  if head_resource.startswith('TPU-'):
    from ray.util import tpu as ray_tpu  # Local: ray is an optional extra.
    name = ray_tpu.get_current_pod_name()
    if name:
      return name
  node = ray.get_runtime_context().get_node_id()
  res = next((n['Resources'] for n in ray.nodes() if n['NodeID'] == node), {})
  names = sorted(k for k in res if k.startswith(SLICE_PREFIX) and k != SLICE_HEAD)
  if len(names) != 1:
    raise RuntimeError(f'the node holding {head_resource!r} has {len(names)} slice resources '
                       f'{names} (expected one {SLICE_PREFIX}NAME, shared by the hosts of its slice)')
  return names[0]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('', 0))
    return s.getsockname()[1]


def describe(ray, error: Exception) -> str:
  """'Type: first sentence' of a Ray error, or of the exception a task raised (RayTaskError.cause)."""
  if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, BaseException):
    error = error.cause
  first = (str(error).strip().splitlines() or [''])[0].split('. ')[0]
  return f'{type(error).__name__}: {first}'[:200]


def _host_outcome(ray, ref) -> tuple[dict | None, str, str]:
  """(run_on_node's result or None, why its host was lost or '', why its task broke or '').

  Lost: the host's node or worker died (PREEMPTION_ERRORS). Broke: any
  other error of the task ('cancelled' when this slice task stopped it).
  """
  try:
    return ray.get(ref), '', ''
  except ray.exceptions.TaskCancelledError:
    return None, '', 'cancelled'
  except Exception as e:  # pylint: disable=broad-except
    return (None, describe(ray, e), '') if _preemption(ray, e) else (None, '', describe(ray, e))


def _slice_outcome(outcomes: list, hosts: int) -> tuple[int, int | None, str, str]:
  """(host, exit status or None, lost, broke) that the run's attempt counts as.

  outcomes: (host, result, lost, broke) in the order the hosts ended. A lost
  host wins (a preemption, even when a peer exited first because its peer was
  gone), then exit 75 from any host, then the first other bad outcome; (0, 0,
  '', '') when every host exited 0. Hosts this task cancelled do not count.
  """
  lost = [o for o in outcomes if o[2]]
  if lost:
    return lost[0][0], None, f'host {lost[0][0]} of {hosts}: {lost[0][2]}', ''
  spot = [o for o in outcomes if o[1] is not None and o[1]['exit'] == ledger_lib.PREEMPTED_EXIT]
  if spot:
    return spot[0][0], ledger_lib.PREEMPTED_EXIT, '', ''
  for host, out, _, broke in outcomes:
    if broke and broke != 'cancelled':
      return host, None, '', broke
    if out is not None and out['exit'] != 0:
      return host, out['exit'], '', ''
  return 0, 0, '', ''


def run_on_slice(argv: list, log_path: str, hosts: int, host_resources: dict, head_resource: str,
                 poll_s: float = 0.5) -> dict:
  """The body of a multi-host run's Ray task, on its slice's first host: one process per host.

  Starts `hosts` run_on_node tasks, each holding host_resources and one unit
  of the slice's resource (so one lands on each host; host 0 on this node,
  where the coordinator listens), with argv + the jax.distributed flags: on
  a TPU slice --multihost (JAX reads the process ids from the TPU metadata),
  elsewhere --coordinator THIS_HOST:PORT --num_processes --process_id.
  When one ends badly the others are cancelled (their processes stopped), and
  all are waited for. Returns run_on_node's dict for the run, as
  `_slice_outcome` ranks the hosts: 'exit' (None when a host was lost or its
  task broke), 'lost' (a host's node or worker died: a preemption), 'seconds',
  'node' (this host) and 'tail' (the log tail of the host that counts, after
  a line naming it, plus why its task broke).
  """
  import ray  # Local: ray is an optional extra.
  from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
  t0 = time.perf_counter()
  name = slice_name(ray, head_resource)
  coordinator = f'{ray.util.get_node_ip_address()}:{_free_port()}'
  here = ray.get_runtime_context().get_node_id()
  refs = {}
  for i in range(hosts):
    opts = _task_options({**host_resources, name: 1.0})
    if i == 0:
      opts['scheduling_strategy'] = NodeAffinitySchedulingStrategy(here, soft=False)
    flags = ['--multihost'] if head_resource.startswith('TPU-') else [
        '--coordinator', coordinator, f'--num_processes={hosts}', f'--process_id={i}']
    refs[ray.remote(run_on_node).options(**opts).remote(argv + flags, host_log(log_path, i))] = i
  outcomes, stopping, pending = [], False, list(refs)
  while pending:
    done, pending = ray.wait(pending, num_returns=1, timeout=poll_s)
    for ref in done:
      out, lost, broke = _host_outcome(ray, ref)
      outcomes.append((refs[ref], out, lost, broke))
      if not stopping and (lost or broke or out['exit'] != 0):
        stopping = True
        for other in pending:
          ray.cancel(other)  # Raises KeyboardInterrupt in the task, which stops its process.
  host, status, lost, broke = _slice_outcome(outcomes, hosts)
  node, seconds = socket.gethostname(), time.perf_counter() - t0
  if (host, status, lost, broke) == (0, 0, '', ''):
    return dict(exit=0, lost='', seconds=seconds, node=node, tail=ledger_lib.log_tail(log_path))
  head = f'host {host} of {hosts}: ' + (lost.split(': ', 1)[1] if lost else broke or f'exit {status}')
  return dict(exit=status, lost=lost, seconds=seconds, node=node,
              tail=[head] + ledger_lib.log_tail(host_log(log_path, host)) + ([broke] if broke else []))


# ---------------------------------------------------------------------------- the driver


def parse_resources(text: str) -> dict:
  """'TPU=4,CPU=8' -> {'TPU': 4.0, 'CPU': 8.0}; '' -> {'CPU': 1.0}. ValueError names the bad item."""
  out = {}
  for item in filter(None, (s.strip() for s in text.split(','))):
    key, eq, value = item.partition('=')
    try:
      amount = float(value)
    except ValueError:
      amount = -1.0
    if not eq or not key.strip() or amount < 0:
      raise ValueError(f'resources: {item!r} is not NAME=AMOUNT (e.g. TPU=4, GPU=1, CPU=2)')
    out[key.strip()] = amount
  return out or {'CPU': 1.0}


def _task_options(resources: dict) -> dict:
  """Ray task options holding `resources`, never retried by Ray (the ledger decides)."""
  rest = dict(resources)
  opts = dict(num_cpus=rest.pop('CPU', 0.0 if rest else 1.0), max_retries=0, retry_exceptions=False)
  if 'GPU' in rest:
    opts['num_gpus'] = rest.pop('GPU')
  if rest:
    opts['resources'] = rest
  return opts


def _preemption(ray, error: Exception) -> bool:
  kinds = tuple(getattr(ray.exceptions, n) for n in PREEMPTION_ERRORS if hasattr(ray.exceptions, n))
  return isinstance(error, kinds)


def run_all_ray(commands: list, workdir: str, address: str | None = None, max_preemptions: int = 3,
                max_failures: int = 1, log=print, resources_per_run: dict | None = None,
                poll_seconds: float = 0.5, after: dict | None = None, hosts_per_run: int = 1,
                slice_head: str = SLICE_HEAD) -> dict:
  """Run (name, argv) pairs as Ray tasks, one per run, packed by Ray onto free resources.

  Same contract as `launch.sweep.run_all`: logs appended to DIR/<name>/train.log,
  finished runs (summary.json) skipped, unfinished ones resumed, failures
  recorded with their log tail, one status line per event, DIR/sweep_status.json.
  address: the Ray cluster ('auto', 'ray://HOST:10001', ...); None = RAY_ADDRESS,
  a running local cluster, or a new local one. Uses the connection of an
  already initialized Ray as it is. resources_per_run: Ray resources each run
  holds (default {'CPU': 1}). Returns {name: 'skipped' | 'ok' | 'failed' |
  'preempted-out'}. after: {branch: parent}, as `launch.ledger.Ledger` takes it (a branch is
  submitted once its parent finished). hosts_per_run > 1: each run is one
  process on every host of a slice (`run_on_slice`), the slice reserved
  through its head resource `slice_head` ('TPU-v4-16-head', or SLICE_HEAD
  for other host groups); resources_per_run is then what each host's process
  holds. Ctrl-C cancels the running tasks, which stop their runs.
  """
  import ray  # Local: ray is an optional extra (pip install -e '.[ray]'), only for --backend ray.
  ledger = ledger_lib.Ledger(commands, workdir, 'ray', max_preemptions, max_failures, log, after)
  if not ledger.waiting():
    return ledger.summary()
  started_ray = not ray.is_initialized()
  if started_ray:
    ray.init(address=address)
  resources = dict(resources_per_run or {'CPU': 1.0})
  if hosts_per_run > 1:
    slice_task = ray.remote(run_on_slice).options(num_cpus=0, resources={slice_head: 1.0}, max_retries=0,
                                                  retry_exceptions=False)
    submit = lambda rec: slice_task.remote(rec.argv, rec.log, hosts_per_run, resources, slice_head)
    each = f'{hosts_per_run} hosts of a slice ({slice_head}), each holding {resources}'
  else:
    task = ray.remote(run_on_node).options(**_task_options(resources))
    submit = lambda rec: task.remote(rec.argv, rec.log)
    each = str(resources)
  log(f'ray: {len(ray.nodes())} node(s), {ray.cluster_resources().get("CPU", 0):g} CPUs in the cluster; '
      f'each run holds {each}')
  active = {}  # ObjectRef -> (run name, submit time)
  try:
    while ledger.waiting() or active:
      while ledger.pending():  # Everything that can start is submitted; Ray starts what fits.
        rec = ledger.next('Ray task; ')
        active[submit(rec)] = (rec.name, time.perf_counter())
      done, _ = ray.wait(list(active), num_returns=1, timeout=poll_seconds)
      for ref in done:
        name, t0 = active.pop(ref)
        _finish_task(ray, ledger, name, ref, time.perf_counter() - t0)
  except KeyboardInterrupt:
    for ref in active:
      ray.cancel(ref)  # Raises KeyboardInterrupt in the task, which stops its run.
    if active:
      ray.wait(list(active), num_returns=len(active), timeout=STOP_GRACE_S + 5)
    log('interrupted: running tasks cancelled; rerun the same command to resume')
    raise
  finally:
    if started_ray:
      ray.shutdown()
  return ledger.summary()


def _finish_task(ray, ledger: ledger_lib.Ledger, name: str, ref, waited: float) -> None:
  """Hand a finished task's outcome to the ledger: its exit status, or why it has none."""
  try:
    out = ray.get(ref)
  except Exception as e:  # pylint: disable=broad-except
    detail = describe(ray, e)
    if _preemption(ray, e):
      ledger.finish(name, None, waited, lost=detail)
    else:  # The task itself broke (e.g. the log folder is not writable there): a failure.
      ledger.finish(name, None, waited, tail=ledger_lib.log_tail(ledger.records[name].log) + [detail])
    return
  ledger.finish(name, out['exit'], out['seconds'], node=out['node'], lost=out.get('lost', ''),
                tail=out['tail'])
