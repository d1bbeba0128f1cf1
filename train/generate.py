"""python -m train.generate --workdir RUN --prompt TEXT [--prompt TEXT ...] [--max-new-tokens N]
[--temperature T] [--top-p P] [--seed S]

Continues each prompt with a run's newest intact checkpoint and prints the completions.

- The model is the run's config.json (fields added to configs/base.py since
  the run keep their defaults), built by train.step.build on one device.
  A post.peft run (python -m train.post) is rebuilt as it trained: the base
  adapted by its `post` block (train.peft.abstract_run), then LoRA, QLoRA,
  DoRA and (IA)³ are folded into plain kernels (peft.merge), so decoding runs
  at the base's speed; adapters, prefixes and prompts decode through the
  model's hooks.
- The weights are the newest step that passes its checks
  (Checkpointer.restore_latest; as in training, bad steps are moved to
  checkpoints/corrupt/).
- The tokenizer is the one the run's data was tokenized with: summary.json's
  data manifest names it ('byte' or a cached BPE such as 'bpe-2048-1a2b3c4d');
  a byte-tokenizer run needs no summary.json.
- Each prompt is encoded after the tokenizer's eos id, which ends every document
  in training, so a prompt starts a document; a completion stops at the next
  eos. All prompts decode as one batch (model/decode.py); temperature 0 is greedy.

Bad input gets one line `error: ...` and exit status 2: a folder that is not a
run, a run without a checkpoint or a tokenizer (synthetic data), a checkpoint
that does not fit the config, an empty prompt, a sampling setting out of range.
"""

import argparse
import contextlib
import json
import math
import os
import sys

import jax
import ml_collections
from absl import logging
from flax import nnx

from configs import cli
from configs.load import ConfigError, with_defaults
from model import decode, sharding
from model.counts import param_counts
from train import checkpoint as ckpt_lib
from train import config_check
from train import peft
from train import step as step_lib
from train import tokenizer as tok_lib


class _NoData:
  """Stands in for the run's data iterator: generation needs the weights, not the data position."""

  def get_state(self) -> bytes:
    return b'{}'

  def set_state(self, state) -> None:
    del state

  def start_prefetch(self) -> None:
    pass


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json, missing fields filled from configs/base.py, on a one-device mesh."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.isdir(workdir):
    raise ConfigError(f'--workdir {workdir!r}: no such folder')
  if not os.path.isfile(path):
    raise ConfigError(f'--workdir {workdir!r} has no config.json: not a training run folder')
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(with_defaults(json.load(f)))
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} is unreadable: {e}') from None
  config.mesh = ml_collections.ConfigDict({a: 1 for a in sharding.MESH_AXES})  # One device.
  config_check.raise_if(config_check.model_errors(config.model))
  return config


def run_tokenizer(workdir: str, config):
  """The tokenizer the run's data was tokenized with (ConfigError when there is none to load)."""
  d = config.data
  if d.source == 'synthetic':
    raise ConfigError(f"{workdir} trained on synthetic tokens (data.source='synthetic'): there is "
                      'no tokenizer to encode a text prompt')
  name = None
  summary = os.path.join(workdir, 'summary.json')
  if os.path.isfile(summary):
    with open(summary) as f:
      name = (json.load(f).get('data') or {}).get('tokenizer')
  if name is None and d.tokenizer == 'byte' and d.source != 'arrayrecord':
    name = 'byte'
  if name is None:
    raise ConfigError(f'{workdir} has no summary.json naming its tokenizer '
                      f'(data.tokenizer={d.tokenizer!r}, data.source={d.source!r}); it is written '
                      'when the run finishes')
  try:
    tokenizer = tok_lib.load_tokenizer(name, d.cache_dir)
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(f'{workdir}: {e}') from None
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(f'tokenizer {name!r} has {tokenizer.vocab_size} ids but the run\'s '
                      f'model.vocab_size is {config.model.vocab_size}')
  return tokenizer


def restore_model(workdir: str, config):
  """(step, model) from the newest intact checkpoint of the run, on one device; a post.peft
  run's adapted model, with its LoRA-family adapters merged (module docstring)."""
  if config.post.peft == 'none':
    step, program, state = restore_state(workdir, config)
    graphdef = program.graphdef
  else:
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    graphdef, abstract = peft.abstract_run(config, mesh)
    step, state = restore_latest(workdir, abstract, mesh, config.train.keep_checkpoints)
  model, _ = nnx.merge(graphdef, state)
  return step, (model if config.post.peft == 'none' else peft.merge(model))


def restore_state(workdir: str, config):
  """(step, program, state) of the run's newest intact checkpoint, on one device.

  `state` is the (model, optimizer) nnx.State that `program.eval_step` takes.
  """
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  program = step_lib.build(config, mesh)
  step, state = restore_latest(workdir, program.abstract_state, mesh, config.train.keep_checkpoints)
  return step, program, state


def restore_latest(folder: str, abstract_state, mesh=None, keep=None, name: str = ''):
  """(step, state): the run's newest intact checkpoint restored into `abstract_state`.

  mesh: the mesh to restore under (None: as placed in abstract_state); keep:
  the Checkpointer's keep_checkpoints; name: how errors name the run (e.g.
  "post.reward_model='runs/rm'"; default the folder). ConfigError for no
  checkpoint or one of another config, cli.Stop for a storage error.
  """
  name = name or folder
  if not os.path.isdir(os.path.join(folder, 'checkpoints')):
    raise ConfigError(f'{name} has no checkpoints/ folder: the run saved no checkpoint '
                      '(train.checkpoint_every=0, or it stopped before its first save)')
  checkpointer = ckpt_lib.Checkpointer(folder, keep, create=False)
  try:
    with sharding.use_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      step, state = checkpointer.restore_latest(abstract_state, _NoData())
  except ckpt_lib.CheckpointMismatch as e:
    raise ConfigError(f'{name}: {e}: the checkpoint was saved with another config than '
                      f'{os.path.join(folder, "config.json")}') from None
  except ckpt_lib.CheckpointError as e:
    raise cli.Stop(str(e), cli.STORAGE_ERROR) from e
  finally:
    checkpointer.close()
  if not step:
    raise ConfigError(f'{name}: no intact checkpoint in {checkpointer.dir}')
  return step, state


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m train.generate',
                              description='Continue prompts with a run\'s newest checkpoint.')
  p.add_argument('--workdir', required=True,
                 help='run folder: config.json, checkpoints/, summary.json')
  p.add_argument('--prompt', action='append', required=True,
                 help='text to continue; repeat the flag for a batch of prompts')
  p.add_argument('--max-new-tokens', type=int, default=64,
                 help='tokens generated per prompt at most')
  p.add_argument('--temperature', type=float, default=0.0, help='0 = greedy (the default)')
  p.add_argument('--top-p', type=float, default=1.0, help='nucleus sampling mass in (0, 1]')
  p.add_argument('--seed', type=int, default=0, help='seed of the sampling draws')
  return p


def _check_args(args) -> None:
  if args.max_new_tokens < 1:
    raise ConfigError(f'--max-new-tokens={args.max_new_tokens}: must be >= 1')
  if not (math.isfinite(args.temperature) and args.temperature >= 0):
    raise ConfigError(f'--temperature={args.temperature}: must be >= 0 (0 = greedy)')
  if not 0 < args.top_p <= 1:
    raise ConfigError(f'--top-p={args.top_p}: must be in (0, 1]')
  empty = [i + 1 for i, p in enumerate(args.prompt) if not p]
  if empty:
    raise ConfigError(f'--prompt number {empty[0]} is empty: give text to continue')


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO.
  _check_args(args)
  config = load_run_config(args.workdir)
  tokenizer = run_tokenizer(args.workdir, config)
  prompts = [[tokenizer.eos_id] + tokenizer.encode(p) for p in args.prompt]
  step, model = restore_model(args.workdir, config)
  adapted = f' (post.peft={config.post.peft!r})' if config.post.peft != 'none' else ''
  print(f'{args.workdir}: step {step}, {param_counts(config.model).total:,} params{adapted}, '
        f'tokenizer {tokenizer.name}', file=sys.stderr)
  new = decode.Generator(model).generate(
      prompts, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
      seed=args.seed, eos_id=tokenizer.eos_id, vocab_limit=tokenizer.vocab_size)
  for i, (text, ids) in enumerate(zip(args.prompt, new)):
    ended = bool(ids) and ids[-1] == tokenizer.eos_id
    print(f'--- {i + 1}/{len(new)}: {len(ids)} new tokens{", ended at eos" if ended else ""}')
    print(text + tokenizer.decode(ids[:-1] if ended else ids))
  return 0


if __name__ == '__main__':
  cli.run_argparse(main)
