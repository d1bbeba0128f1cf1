"""Every invalid config stops before compiling, with one message naming the key."""

import subprocess
import sys

import pytest

from configs import base
from train.config_check import ConfigError, validate


def cfg(**overrides):
  c = base.get_config()
  for dotted, v in overrides.items():
    section, key = dotted.split('__')
    c[section][key] = v
  return c


@pytest.mark.parametrize('overrides,message', [
    (dict(model__n_heads=3), 'model.n_heads=3 does not divide model.d_model=128'),
    (dict(model__n_kv_heads=3), 'model.n_kv_heads=3 does not divide model.n_heads=4'),
    (dict(model__d_model=0), 'model.d_model=0: must be a positive integer'),
    (dict(model__n_layers=-2), 'model.n_layers=-2: must be a positive integer'),
    (dict(model__vocab_size=0), 'model.vocab_size=0'),
    (dict(model__d_model=120, model__n_heads=8), 'head size must be even'),
    (dict(model__remat='sometimes'), "model.remat='sometimes'"),
    (dict(model__compute_dtype='float8'), "model.compute_dtype='float8'"),
    (dict(model__fp8=True, model__qat='int8'), "model.fp8=True with model.qat='int8': choose one"),
    (dict(data__seq_len=0), 'data.seq_len=0'),
    (dict(data__global_batch_size=12, mesh__data=8), 'data.global_batch_size=12 is not divisible'),
    (dict(data__source='web'), "data.source='web'"),
    (dict(data__source='files'), 'data.paths is empty'),
    (dict(data__val_fraction=1.5), 'data.val_fraction=1.5'),
    (dict(optim__lr=0.0), 'optim.lr=0.0'),
    (dict(optim__b2=1.0), 'optim.b2=1.0: must be < 1'),
    (dict(train__tokens=1000), 'set exactly one of them'),
    (dict(train__steps=0), 'set exactly one of them'),
    (dict(mesh__data=3), 'mesh: data=3 x fsdp=1 x tensor=1 x expert=1 has 3 devices but 8'),
    (dict(mesh__data=-1, mesh__fsdp=-1), 'only one axis may be -1'),
    (dict(mesh__fsdp=0), 'mesh.fsdp=0'),
    (dict(mesh__data=1, mesh__fsdp=8, model__d_model=132, model__n_heads=2, model__n_kv_heads=2),
     'dimension of size 132 sharded over mesh axes fsdp (size 8)'),
    (dict(optim__warmup_steps=300), 'optim.warmup_steps=300 is not below the 300 planned steps'),
    (dict(mesh__data=1, mesh__tensor=8, model__n_kv_heads=2),
     'sharded over mesh axes tensor (size 8)'),
])
def test_invalid_config_names_the_key(overrides, message):
  with pytest.raises(ConfigError) as e:
    validate(cfg(**overrides), n_devices=8)
  assert message in str(e.value)


@pytest.mark.parametrize('overrides,message', [
    (dict(model__moe_num_experts=4, model__moe_top_k=5), 'model.moe_top_k=5'),
    (dict(model__moe_num_experts=6, mesh__data=2, mesh__expert=4), 'moe_num_experts=6'),
    (dict(model__moe_num_experts=4, model__moe_granularity=3), 'model.moe_granularity=3'),
    (dict(model__moe_num_experts=4, model__moe_dispatch='capacity', model__moe_capacity_factor=0.0),
     'model.moe_capacity_factor=0.0'),
])
def test_invalid_moe_config_names_the_key(overrides, message):
  with pytest.raises(ConfigError) as e:
    validate(cfg(**overrides), n_devices=8)
  assert message in str(e.value)


def test_valid_config_resolves_the_mesh():
  assert validate(cfg(mesh__fsdp=2), n_devices=8) == dict(data=4, fsdp=2, tensor=1, expert=1)


def test_batch_axes_must_cover_every_process():
  with pytest.raises(ConfigError, match='must be a multiple of the 2 processes'):
    validate(cfg(mesh__data=1, mesh__tensor=8, model__n_kv_heads=8, model__n_heads=8), 8,
             n_processes=2)


def test_all_problems_reported_at_once():
  with pytest.raises(ConfigError) as e:
    validate(cfg(model__n_heads=3, optim__lr=-1.0, mesh__data=3), n_devices=8)
  assert all(k in str(e.value) for k in ('model.n_heads', 'optim.lr', 'mesh:'))


@pytest.mark.parametrize('flag,message', [
    ('--config.model.not_a_key=3', 'unknown config key in --config.model.not_a_key'),
    ('--config.model.n_heads=abc', '--config.model.n_heads=abc'),
    ('--config.model.n_heads=3', 'model.n_heads=3 does not divide'),
])
def test_command_line_errors_are_one_message_without_traceback(flag, message, tmp_path):
  p = subprocess.run([sys.executable, '-m', 'train', '--config', 'configs/tiny_cpu.py',
                      '--workdir', str(tmp_path), flag], capture_output=True, text=True,
                     timeout=120)
  assert p.returncode == 2
  assert message in p.stderr
  assert 'Traceback' not in p.stderr
