"""GRPO against PPO: train-step memory and step time on the same base (measures; asserts nothing).

  JAX_PLATFORMS=cpu PYTHONPATH=. python -m benchmarks.bench_rl [--json benchmarks/results/rl.json]
      [--models S-L2-d64,M-L4-d128,L-L4-d256] [--peft none,lora] [--prompts 8] [--group 4]
      [--rounds 5] [--calls 3]

Per base size and post.peft kind (--peft), in one process, both methods are
built as `python -m train.post` builds them (train/post.py's _start_state,
make_train_step and the methods' streams): GRPO's policy and frozen reference;
PPO's policy, critic (a full copy of the policy with a scalar head), frozen
reference and reward model (a ScalarModel of the base; its weights do not
matter here). Both see the same rows a step: --prompts prompts x --group
answers, sampled by the KV-cache sampler, rows of --seq-len tokens. The base
is randomly initialised: memory and time do not depend on the weights.

* memory: the compiled train step's `memory_analysis()` (train.cost.memory_of:
  arguments, outputs, aliased, temporaries, peak_estimate, bytes on one device),
  and `train.ppo.resident_memory`: the bytes each method keeps on the device
  between steps (policy, critic, optimizer state, reference, reward model);
* update step time: one optimizer step on one sampled batch (the batch's
  advantages already computed), `--rounds` rounds that alternate the two
  methods, each round the median of `--calls` calls after a warm-up call
  (benchmarks.bench_step.median_call_seconds); the median of the round medians;
* rollout time: one sampling cycle (generation, the log-probability passes,
  GRPO's group advantages or PPO's critic values, reward-model scores and GAE),
  the median of `--rounds` alternating cycles after one warm-up cycle each.
"""

import argparse
import json
import statistics
import time

import jax
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from benchmarks import bench_step
from configs import base
from model import sharding
from model.counts import param_counts
from model.transformer import Transformer
from train import cost, objectives, optim, peft, post, ppo
from train.tokenizer import ByteTokenizer

MODELS = {  # name -> model overrides (vocabulary 257: the byte tokenizer's).
    'S-L2-d64': dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128),
    'M-L4-d128': dict(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4, d_ff=512),
    'L-L4-d256': dict(n_layers=4, d_model=256, n_heads=4, n_kv_heads=4, d_ff=1024),
}
METHODS = ('grpo', 'ppo')


def base_config(name: str, seq_len: int) -> ml_collections.ConfigDict:
  c = base.get_config()
  c.model.update(vocab_size=257, **MODELS[name])
  c.data.update(seq_len=seq_len, tokenizer='byte')
  c.mesh = ml_collections.ConfigDict({a: 1 for a in sharding.MESH_AXES})  # One device.
  return c


def post_block(method: str, kind: str, args) -> ml_collections.ConfigDict:
  p = base.get_config().post
  p.update(method=method, tasks='copying,sorting', difficulty=args.difficulty,
           batch_size=args.prompts, group_size=args.group, seq_len=args.seq_len, peft=kind,
           reward_model='(built in process)')
  return p


class Method:
  """One method's state, step, stream and one sampled batch, as train/post.py builds them."""

  def __init__(self, method: str, kind: str, args, cfg, replicated):
    p = post_block(method, kind, args)
    self.name, self.config = method, post.run_config(p, cfg)
    lm = Transformer(cfg.model, rngs=nnx.Rngs(0))
    reward = None
    if method == 'ppo':
      reward = ppo.Reward(*nnx.split(ppo.ScalarModel(ppo.copy_of(lm))), {})
      reward.state = jax.device_put(reward.state, replicated)
    (self.graphdef, self.state, ref_graphdef, self.ref_state,
     _) = post._start_state(self.config, ppo.wrap(p, lm), replicated)
    self.reward_state = reward.state if reward else None
    self.stream = post._stream(p, ByteTokenizer(), args.seq_len, self.graphdef, ref_graphdef,
                               reward)
    self.step = post.make_train_step(self.graphdef, objectives.make_loss(p, ref_graphdef),
                                     optim.schedule(self.config), replicated,
                                     peft.trainable(p.peft))

  def memory(self) -> dict:
    compiled = self.step.lower(self.state, self.ref_state, self.stream.spec()).compile()
    model, opt = nnx.merge(self.graphdef, self.state)
    return {'train_step': cost.memory_of(compiled),
            'resident': ppo.resident_memory(model, opt, self.ref_state, self.reward_state)}

  def sample(self) -> float:
    """Seconds of one sampling cycle (a new cycle each call); keeps the batch."""
    jax.block_until_ready(self.state)
    t = time.perf_counter()
    self.batch = self.stream.draw(self.state, self.ref_state)  # μ = 1: a new cycle each draw.
    return time.perf_counter() - t

  def update_seconds(self, calls: int) -> float:
    fn = lambda s, b: self.step(s, self.ref_state, b)  # noqa: E731
    seconds, self.state = bench_step.median_call_seconds(fn, self.state, self.batch, calls)
    return seconds


def measure(name: str, kind: str, args) -> dict:
  cfg = base_config(name, args.seq_len)
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
  replicated = NamedSharding(mesh, PartitionSpec())
  with sharding.use_mesh(mesh):
    methods = [Method(m, kind, args, cfg, replicated) for m in METHODS]
    out = {'model': name, 'peft': kind, 'params': param_counts(cfg.model).total,
           'rows': args.prompts * args.group, 'seq_len': args.seq_len}
    for m in methods:
      out[m.name] = {'memory': m.memory()}
      m.sample()  # Warm-up: compiles the sampler and the scoring passes.
    rollouts = {m.name: [] for m in methods}
    updates = {m.name: [] for m in methods}
    for _ in range(args.rounds):  # The two methods alternate: same machine state for both.
      for m in methods:
        rollouts[m.name].append(m.sample())
        updates[m.name].append(m.update_seconds(args.calls))
  for m in methods:
    out[m.name]['update_seconds_median'] = statistics.median(updates[m.name])
    out[m.name]['rollout_seconds_median'] = statistics.median(rollouts[m.name])
  g, p = out['grpo'], out['ppo']
  out['ppo_over_grpo'] = {
      'train_step_peak': p['memory']['train_step']['peak_estimate'] /
                         g['memory']['train_step']['peak_estimate'],
      'resident_total': p['memory']['resident']['total_bytes'] /
                        g['memory']['resident']['total_bytes'],
      'update_seconds': p['update_seconds_median'] / g['update_seconds_median'],
      'rollout_seconds': p['rollout_seconds_median'] / g['rollout_seconds_median']}
  return out


def format_row(r: dict) -> str:
  def mb(x):
    return f'{x / 1e6:.2f}'
  lines = []
  for m in METHODS:
    mem = r[m]['memory']
    res = mem['resident']
    lines.append(f'{r["model"]:<10} {r["peft"]:<5} {r["params"]:>10,} {m:<5} '
                 f'{mb(mem["train_step"]["peak_estimate"]):>9} {mb(res["total_bytes"]):>9} '
                 f'{mb(res["critic_bytes"]):>7} {mb(res["reward_model_bytes"]):>7} '
                 f'{1e3 * r[m]["update_seconds_median"]:>10.1f} '
                 f'{1e3 * r[m]["rollout_seconds_median"]:>10.1f}')
  ratio = r['ppo_over_grpo']
  lines.append(f'{"":<10} {"":<5} {"":>10} ratio {ratio["train_step_peak"]:>9.2f} '
               f'{ratio["resident_total"]:>9.2f} {"":>7} {"":>7} {ratio["update_seconds"]:>10.2f} '
               f'{ratio["rollout_seconds"]:>10.2f}')
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--models', default=','.join(MODELS))
  ap.add_argument('--prompts', type=int, default=8)
  ap.add_argument('--group', type=int, default=4)
  ap.add_argument('--seq-len', type=int, default=32)
  ap.add_argument('--difficulty', type=int, default=4)
  ap.add_argument('--peft', default='none,lora')
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--calls', type=int, default=3)
  ap.add_argument('--json', default='')
  args = ap.parse_args()
  results = []
  print(f'{"model":<10} {"peft":<5} {"params":>10} {"":<5} {"step MB":>9} {"held MB":>9} '
        f'{"critic":>7} {"RM":>7} {"update ms":>10} {"rollout ms":>10}')
  for name in args.models.split(','):
    for kind in args.peft.split(','):
      results.append(measure(name, kind, args))
      print(format_row(results[-1]), flush=True)
  out = {'device': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
         'jax': jax.__version__, 'args': vars(args), 'results': results}
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(out, f, indent=1)


if __name__ == '__main__':
  main()
