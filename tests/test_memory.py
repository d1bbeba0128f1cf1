"""Analytic memory arithmetic: the guide's numbers and known model shapes."""

import pytest

from scaling import memory

GB = 1e9
# Llama-2 shapes (public configs): 7B is multi-head, 70B uses GQA with 8 KV heads.
LLAMA2_7B = memory.ModelShape(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=32, d_ff=11008,
                              vocab_size=32000)
LLAMA2_70B = memory.ModelShape(n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8, d_ff=28672,
                               vocab_size=32000)


def test_adam_state_is_16_bytes_and_made_of_five_parts():
  assert memory.adam_bytes_per_param() == 16
  assert memory.ADAM_MIXED_BYTES == {'weight_16bit': 2, 'grad_16bit': 2, 'master_fp32': 4,
                                     'adam_m_fp32': 4, 'adam_v_fp32': 4}


def test_guide_7b():
  assert memory.weight_bytes(7e9, 'bf16') == pytest.approx(14 * GB)
  assert memory.weight_bytes(7e9, 'int8') == pytest.approx(7 * GB)
  assert memory.weight_bytes(7e9, 'int4') == pytest.approx(3.5 * GB)
  assert memory.training_state_bytes(7e9) == pytest.approx(112 * GB)


def test_guide_70b_and_550b_inference():
  assert [memory.weight_bytes(70e9, p) / GB for p in ('fp16', 'int8', 'int4')] == pytest.approx([140, 70, 35])
  assert [memory.weight_bytes(550e9, p) / GB for p in ('fp16', 'int8', 'int4')] == pytest.approx([1100, 550, 275])


def test_qlora_70b_base_is_35_gb():
  b = memory.lora_bytes(70e9, 0, base_precision='nf4')
  assert b['base'] == pytest.approx(35 * GB)


def test_unknown_precision_lists_known():
  with pytest.raises(ValueError, match='int4'):
    memory.weight_bytes(1e9, 'fp8')


def test_fsdp_divides_and_devices_needed_rounds_up():
  total = memory.training_state_bytes(7e9)
  assert memory.sharded_bytes_per_device(total, 8) == pytest.approx(14 * GB)
  assert memory.devices_needed(total, 80 * GB) == 2
  assert memory.devices_needed(80 * GB, 80 * GB) == 1
  assert memory.devices_needed(80 * GB + 1, 80 * GB) == 2
  with pytest.raises(ValueError):
    memory.sharded_bytes_per_device(total, 0)


def test_param_count_matches_llama2():
  # Published counts: Llama-2-7B 6,738,415,616; Llama-2-70B 68,976,648,192 (untied head, SwiGLU, no biases).
  assert memory.shape_param_count(LLAMA2_7B) == 6_738_415_616
  assert memory.shape_param_count(LLAMA2_70B) == 68_976_648_192


def test_tied_embeddings_drop_the_head():
  tied = memory.ModelShape(32, 4096, 32, 32, 11008, vocab_size=32000, tie_embeddings=True)
  assert memory.shape_param_count(LLAMA2_7B) - memory.shape_param_count(tied) == 32000 * 4096


def test_lora_params_r_times_d_plus_k():
  # PEFT's well-known count for LLaMA-7B, r=8 on q_proj and v_proj: 4,194,304 trainable parameters.
  assert memory.lora_params(LLAMA2_7B, 8, ('q', 'v')) == 4_194_304
  # GQA: k and v map d_model -> n_kv_heads * head_dim = 1024 in Llama-2-70B.
  assert memory.lora_params(LLAMA2_70B, 1, ('k',)) == 80 * (8192 + 1024)
  assert memory.lora_adapter_count(LLAMA2_70B) == 80 * 7
  with pytest.raises(ValueError, match='unknown LoRA targets'):
    memory.lora_params(LLAMA2_7B, 8, ('qkv',))
  with pytest.raises(ValueError, match='rank'):
    memory.lora_params(LLAMA2_7B, 0)


def test_lora_bytes_frozen_base_plus_adam_adapters():
  n_lora = memory.lora_params(LLAMA2_7B, 16)
  b = memory.lora_bytes(7e9, n_lora)
  assert b['base'] == pytest.approx(14 * GB)
  assert b['adapters'] == pytest.approx(16 * n_lora)
  assert b['total'] == pytest.approx(b['base'] + b['adapters'])


def test_kv_cache_is_gqa_aware():
  # Llama-2-70B: 2 * 80 layers * 8 kv heads * 128 * 2 B = 320 KiB per token.
  assert memory.kv_cache_bytes_per_token(LLAMA2_70B) == 327_680
  mha = memory.ModelShape(80, 8192, 64, 64, 28672, vocab_size=32000)
  assert memory.kv_cache_bytes_per_token(mha) == 8 * 327_680
  assert memory.kv_cache_bytes(LLAMA2_70B, 4096, 8) == pytest.approx(327_680 * 4096 * 8)
  with pytest.raises(ValueError):
    memory.kv_cache_bytes(LLAMA2_70B, 0)


def test_shape_validation_names_the_flag():
  with pytest.raises(ValueError, match='--n-heads'):
    memory.ModelShape(2, 130, 4, 4, 512)
  with pytest.raises(ValueError, match='--n-kv-heads'):
    memory.ModelShape(2, 128, 4, 3, 512)
  with pytest.raises(ValueError, match='--d-ff'):
    memory.ModelShape(2, 128, 4, 4, 0)
  with pytest.raises(ValueError, match='vocab'):
    memory.shape_param_count(memory.ModelShape(2, 128, 4, 4, 512))


def test_from_config_reads_base():
  from configs import base
  cfg = base.get_config()
  shape = memory.ModelShape.from_config(cfg.model)
  assert (shape.n_layers, shape.d_model, shape.n_heads, shape.n_kv_heads, shape.d_ff, shape.vocab_size) == (
      cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.n_kv_heads, cfg.model.d_ff,
      cfg.model.vocab_size)


def test_memory_stages_rows():
  rows = memory.memory_stages(7e9, n_devices=8, device_bytes=80 * GB)
  by = {r['stage']: r for r in rows}
  assert not any('LoRA' in s or 'KV' in s for s in by)  # No shape: no LoRA or KV rows.
  dp = by['train (pre-training / full fine-tune), data parallel']
  assert dp['bytes_total'] == pytest.approx(112 * GB) and dp['bytes_per_device'] == pytest.approx(112 * GB)
  assert dp['devices_needed'] is None  # 112 GB replicated never fits on an 80 GB device.
  fsdp = by['train, FSDP over 8 devices']
  assert fsdp['bytes_per_device'] == pytest.approx(14 * GB) and fsdp['devices_needed'] == 2
  assert by['inference weights int4']['bytes_total'] == pytest.approx(3.5 * GB)

  rows = memory.memory_stages(memory.shape_param_count(LLAMA2_70B), n_devices=8, device_bytes=80 * GB,
                              shape=LLAMA2_70B, lora_rank=16, context=4096, batch=4)
  stages = [r['stage'] for r in rows]
  assert any(s.startswith('LoRA r=16') for s in stages) and any(s.startswith('QLoRA') for s in stages)
  kv = next(r for r in rows if r['stage'].startswith('KV cache'))
  assert kv['bytes_total'] == pytest.approx(327_680 * 4096 * 4)
  qlora = next(r for r in rows if r['stage'].startswith('QLoRA'))
  assert qlora['devices_needed'] == 1  # ~34.5 GB base + ~1.6 GB adapters+Adam on one 80 GB device.


def _tiny_model(**kw):
  from configs import base
  m = base.get_config().model
  for k, v in kw.items():
    m[k] = v
  return m


def test_training_memory_is_16_bytes_per_param_and_fsdp_tensor_divide_matrices():
  from model.counts import param_counts
  m = _tiny_model()
  one = memory.training_memory_per_device(m, 128, 16, {'data': 1, 'fsdp': 1, 'tensor': 1})
  n = param_counts(m).total
  assert one['params'] == 4 * n and one['grads'] == 4 * n and one['optimizer'] == 8 * n
  assert one['params'] + one['grads'] + one['optimizer'] == one['rule_16_bytes'] == 16 * n
  four = memory.training_memory_per_device(m, 128, 16, {'data': 2, 'fsdp': 2, 'tensor': 2})
  norms = m.n_layers * 2 * m.d_model + m.d_model  # Replicated: not divided.
  assert four['params_per_device'] == (n - norms) / 4 + norms
  assert four['tokens_per_device'] == 128 * 16 / 4  # The batch splits over data * fsdp.


def test_routed_experts_also_divide_by_the_expert_axis():
  from configs import mixtral_8x7b
  m = mixtral_8x7b.get_config().model
  one = memory.training_memory_per_device(m, 4096, 64, {'fsdp': 8, 'expert': 1})
  ep = memory.training_memory_per_device(m, 4096, 64, {'fsdp': 8, 'expert': 8})
  routed = 32 * 3 * 4096 * 14336 * 8  # The (E, D, F) kernels of 32 MoE layers.
  assert one['params_per_device'] - ep['params_per_device'] == pytest.approx(routed / 8 * (1 - 1 / 8))
  # scaling.aot compiled this config for v5p:4x4x4 (fsdp=8, expert=8): 10.12 GiB of params and
  # Adam moments per chip (README); the arithmetic agrees to 1%.
  assert ep['state'] / 2**30 == pytest.approx(10.12, rel=0.01)


def test_activation_memory_follows_remat_and_dtype():
  # 8 layers: with 2, full remat's one recomputed layer outweighs what it saves.
  act = {r: memory.training_memory_per_device(_tiny_model(remat=r, n_layers=8), 128, 16, {})['activations']
         for r in ('none', 'dots', 'dots_no_batch', 'full')}
  assert act['full'] < act['dots_no_batch'] < act['dots'] < act['none']
  bf16 = memory.training_memory_per_device(_tiny_model(compute_dtype='bfloat16', n_layers=8), 128, 16, {})
  assert bf16['activations'] < act['none']  # Logits stay float32: less than halved.
  assert bf16['activations'] > act['none'] / 2
  with pytest.raises(ValueError, match='remat'):
    memory.training_memory_per_device(_tiny_model(remat='some'), 128, 16, {})


def test_shape_param_count_is_model_counts():
  from configs import base
  from model.counts import param_counts
  m = base.get_config().model
  m.qk_norm = True
  assert memory.shape_param_count(memory.ModelShape.from_config(m)) == param_counts(m).total
