"""What the post-training studies (configs/sweeps/post_*.py) share: 3 tiny byte-level bases, the
tasks, the seeds, and `arm`, the helper that writes one arm of a study.

  python -m launch.post_study --study lora_rank --workdir runs/post/lora_rank --bases runs/post/bases

Bases: 2-layer byte-level models (vocabulary 257) of d_model 32, 64 and 128
(35k, 123k and 460k parameters with head), each pre-trained 600 steps of 32 x
64 tokens (1.2M tokens) on the built-in English corpus with configs/tiny_cpu.py's
settings; 10 s to 70 s each on 2 CPU cores. Studies that share --bases share
these runs (each is pre-trained once). Post-training: train/tasks.py's four
tasks at difficulty 3, scored on 256 held-out prompts by greedy decoding.

A study's keys (launch/post_study.py reads them):
  name         the study (`--study NAME` loads configs/sweeps/post_NAME.py)
  question     the claim it measures, one line (study.md's heading)
  base_config  run config file of the bases (`python -m train --config`)
  base_overrides  fields set on every base (nested like the run config)
  sizes        the base sizes: a tuple of {'name', and model.* fields}
  post_config  config file of every `python -m train.post --config` (its post block only)
  post         post.* fields every post-training run gets
  seeds        post.seed values: each arm runs once per size and seed
  arms         a tuple of `arm(...)` dicts, in table order
  teacher      optional: {'size', 'seed', 'post'}: one post-training run of that base,
               the post.teacher of every arm made with teacher=True
  metrics      summary.json keys tabulated (mean and sd over seeds, per arm and size)
  baseline     the arm the others are compared with, paired by size and seed ('' = none)
"""

import ml_collections

SIZES = (  # 2 layers each; head size 16; SwiGLU d_ff = 3 x d_model.
    {'name': 'd32', 'd_model': 32, 'n_heads': 2, 'n_kv_heads': 2, 'd_ff': 96},
    {'name': 'd64', 'd_model': 64, 'n_heads': 4, 'n_kv_heads': 4, 'd_ff': 192},
    {'name': 'd128', 'd_model': 128, 'n_heads': 8, 'n_kv_heads': 8, 'd_ff': 384},
)
SFT_STEPS = 400  # Supervised fine-tuning steps of a study's SFT stage (16 windows of 64 tokens).
SFT_LR = 3e-3  # Its peak LR (one for every size: not tuned per size).
MORE_STEPS = 100  # Steps of a second stage (preference losses, GRPO, more SFT) from the SFT run.
MORE_LR = 1e-4  # Its peak LR.


def arm(name: str, start: str = 'base', teacher: bool = False, **post) -> dict:
  """One arm: post-train from `start` ('base', or an earlier arm of the same size and seed)
  with these post.* fields; teacher=True sets post.teacher to the study's teacher run."""
  return {'name': name, 'start': start, 'teacher': teacher, 'post': post}


def from_base(name: str = 'sft', teacher: bool = False, **post) -> dict:
  """An arm from the base: SFT_STEPS of SFT at SFT_LR unless `post` says otherwise."""
  return arm(name, teacher=teacher, **{'method': 'sft', 'steps': SFT_STEPS, 'lr': SFT_LR, **post})


def from_sft(name: str, method: str, **post) -> dict:
  """A second-stage arm from the `sft` arm: MORE_STEPS of `method` at MORE_LR."""
  return arm(name, start='sft', **{'method': method, 'steps': MORE_STEPS, 'lr': MORE_LR, **post})


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = ''  # Set by each study.
  c.question = ''  # Set by each study.
  c.base_config = 'configs/tiny_cpu.py'  # Run config file of the bases (repo-relative).
  c.base_overrides = ml_collections.ConfigDict({  # Fields set on every base.
      'data': {'tokenizer': 'byte', 'seq_len': 64, 'global_batch_size': 32},
      'model': {'vocab_size': 257, 'n_layers': 2},
      'optim': {'lr': 3e-3, 'b2': 0.99},  # b2 0.99 at small batch (Porian et al.).
      'train': {'steps': 600, 'eval_every': 600, 'eval_batches': 4, 'log_every': 100,
                'checkpoint_every': 600, 'peak_flops': 1.7e11},  # Fixed CPU peak: no start-up benchmark.
  })
  c.sizes = SIZES  # The base sizes (model.* fields; 'name' names the run base_<name>).
  c.post_config = 'configs/base.py'  # Config file of the post-training runs (only post.* is read).
  c.post = ml_collections.ConfigDict({  # post.* of every post-training run.
      'difficulty': 3, 'eval_prompts': 256, 'batch_size': 16, 'log_every': 50})
  c.seeds = (0, 1, 2)  # post.seed values (task draws, held-out set, adapter init).
  c.arms = ()  # Set by each study: arm(...) dicts in table order.
  c.metrics = ('exact_match', 'mean_reward')  # summary.json keys tabulated.
  c.baseline = ''  # Arm the others are compared with ('' = no comparison table).
  return c
