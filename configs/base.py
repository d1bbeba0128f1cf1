"""Every field of a chinchax run, each with a one-line comment.

Other config files call `get_config()` from here and override a few fields.
The whole config is validated once, before anything is compiled, by
`train.config_check.validate` (messages name the key).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init and the data order.
  c.init_seed = -1  # Seeds the parameter init alone; -1 = seed (train.replicas vary it over one data order).

  # ---- Model (decoder-only transformer; see model/transformer.py).
  m = c.model = ml_collections.ConfigDict()
  m.vocab_size = 2048  # Rows of the embedding table; must be >= the tokenizer's vocabulary.
  m.d_model = 128  # Residual stream width D.
  m.n_layers = 2  # Number of transformer blocks L (stacked with nnx.scan).
  m.n_heads = 4  # Query heads H; must divide d_model (head size = d_model // n_heads).
  m.n_kv_heads = 4  # Key/value heads for grouped-query attention; must divide n_heads.
  m.d_ff = 512  # Hidden width F of the SwiGLU MLP.
  m.rope_theta = 10_000.0  # RoPE base frequency.
  m.qk_norm = False  # RMSNorm on queries and keys before RoPE (stabilises large models).
  m.tie_embeddings = False  # Output head reuses the input embedding table.
  m.norm_eps = 1e-6  # Epsilon of every RMSNorm.
  m.init_std = 0.02  # Std of the normal init of embeddings and kernels.
  m.parameterization = 'sp'  # 'sp' (standard: one LR, every std init_std, attention 1/sqrt(K)) or 'mup' (µP relative to mup_base_width; model/transformer.py).
  m.mup_base_width = 128  # µP: d_model of the base model; m = d_model / this scales hidden init std (1/sqrt(m)), their Adam LR (1/m) and the logits (1/m).
  m.compute_dtype = 'float32'  # Activation/matmul dtype: 'float32' (CPU) or 'bfloat16' (TPU/GPU). Params stay float32.
  m.remat = 'none'  # Recompute policy per block: 'none', 'full', 'dots' (save matmul outputs), 'dots_no_batch'.
  m.scan_layers = True  # Stack layers with nnx.scan (compile time flat in depth); False unrolls (for FLOP checks).
  m.scan_unroll = 0  # Layers per scan iteration (jax.lax.scan's unroll): 0 = auto (CPU: no loop up to 16 layers, else 1; TPU/GPU: 1, compile time flat in depth); n >= 1: n.
  m.attention_impl = 'xla'  # jax.nn.dot_product_attention implementation: 'xla', 'cudnn' or None (let JAX pick).
  m.attention = 'gqa'  # 'gqa' (grouped-query; MHA when n_kv_heads == n_heads) or 'mla' (DeepSeek-V2 latent attention; n_kv_heads unused).
  m.mla_kv_rank = 64  # MLA: rank C of the joint key/value latent (cached per token and layer with the RoPE key).
  m.mla_q_rank = 0  # MLA: rank of the query latent; 0 = queries straight from the residual stream.
  m.mla_rope_dim = 16  # MLA: head size of the decoupled RoPE query/key part (one RoPE key per token, shared by the heads); even.
  m.fp8 = False  # FP8 training: the attention projections' and dense MLP's matmuls in FP8 (E4M3 inputs, E5M2 gradients, per-tensor current scaling; model/fp8.py). For H100/H200 and recent TPUs; on a CPU it emulates the numerics at float32 speed.
  m.qat = 'none'  # Quantization-aware training: 'none', 'int8' (per channel), 'int8-gG' or 'int4-gG' (G weights per scale): every weight fake-quantized in the forward, straight-through gradients (model/qat.py).
  # Mixture-of-Experts (model/moe.py); moe_num_experts = 0 keeps the dense SwiGLU MLP everywhere.
  m.moe_num_experts = 0  # Routed experts E per MoE layer; 0 = dense model.
  m.moe_top_k = 2  # Routed experts per token k (<= moe_num_experts).
  m.moe_d_expert = 0  # Hidden width of each expert; 0 = d_ff // moe_granularity.
  m.moe_granularity = 1  # G = d_ff / d_expert (Krajewski et al. 2024); used when moe_d_expert == 0, must divide d_ff.
  m.moe_shared_experts = 0  # Always-on shared experts (DeepSeek style), each of the expert width.
  m.moe_every = 1  # After the dense prefix, every moe_every-th layer is MoE (1 = all of them).
  m.moe_first_dense = 0  # The first n layers keep the dense MLP.
  m.moe_routing = 'softmax'  # 'softmax' (top-k, renormalised weights) or 'sigmoid' (aux-loss-free bias balancing).
  m.moe_dispatch = 'dropless'  # 'dropless' (sort + ragged_dot), 'blocked' (dropless in blocks: for CPUs), 'capacity' (drops over capacity), 'dense' (reference) or 'alltoall' (dropless, shard_map + all-to-all over mesh.expert).
  m.moe_capacity_factor = 1.25  # Capacity path: each expert takes ceil(factor * T * k / E) assignments per sequence.
  m.moe_load_balance_weight = 0.01  # Weight of the Switch load-balancing loss in the training loss.
  m.moe_router_z_weight = 0.001  # Weight of the router z-loss mean(logsumexp(router logits)^2).
  m.moe_bias_update_rate = 0.001  # Sigmoid routing: per-step bias change by the sign of each expert's load error.

  # ---- Data (see train/data.py and train/corpus.py).
  d = c.data = ml_collections.ConfigDict()
  d.source = 'synthetic'  # 'synthetic' (learnable random Markov text), 'builtin' (English corpus), 'files' (your own), 'arrayrecord' (pre-tokenized).
  d.builtin_sources = 'wiki,shakespeare,gutenberg,sotu'  # For source='builtin': sources to use ('bbc' adds BBC News, research use only).
  d.paths = ''  # For source='files': comma-separated files or globs (.txt, .jsonl with a 'text' field, .parquet); 'arrayrecord': training ArrayRecord files.
  d.val_paths = ''  # For source='arrayrecord': comma-separated validation ArrayRecord files or globs (local or gs://).
  d.tokenizer = 'byte'  # 'byte' (256 byte values, no training) or 'bpe' (sentencepiece, trained to model.vocab_size).
  d.cache_dir = ''  # Where corpora, tokenizers and token files are cached; '' = ~/.cache/chinchax.
  d.val_fraction = 0.02  # Fraction of documents held out for validation (split by document, fixed seed).
  d.seq_len = 128  # Tokens per training window T.
  d.global_batch_size = 16  # Windows per step across all processes B.
  d.synthetic_tokens = 2_000_000  # For source='synthetic': tokens generated (train; validation gets 5%).
  d.worker_count = 0  # grain worker processes (0 = in the main process).
  d.prefetch = 4  # Batches a background thread assembles ahead (grain's thread prefetch; checkpoints keep the consumed position); 0 = none.

  # ---- Optimisation (optax AdamW, warmup then cosine or warmup-stable-decay to min_lr_ratio * peak).
  o = c.optim = ml_collections.ConfigDict()
  o.lr = 3e-3  # Peak learning rate.
  o.schedule = 'cosine'  # 'cosine' (decay over the whole run) or 'wsd' (warmup, constant, then decay).
  o.decay_fraction = 0.2  # WSD: the final fraction of the steps that decays (Hägele et al.: 10-20%).
  o.decay_shape = '1-sqrt'  # WSD decay shape: 'linear', 'cosine' or '1-sqrt' (Hägele et al.'s best).
  o.warmup_steps = 0  # Linear warmup steps; 0 = use warmup_fraction.
  o.warmup_fraction = 0.05  # Warmup as a fraction of the planned steps (used when warmup_steps == 0).
  o.min_lr_ratio = 0.1  # Cosine decays to this fraction of the peak at the planned end (Chinchilla: 10x).
  o.b1 = 0.9  # Adam beta1.
  o.b2 = 0.95  # Adam beta2 (0.99-0.999 matters at small batch; Porian et al.).
  o.eps = 1e-8  # Adam epsilon.
  o.weight_decay = 0.1  # Decoupled weight decay (not applied to norms).
  o.grad_clip = 1.0  # Global gradient-norm clip; 0 disables.
  o.z_loss = 0.0  # Weight of the z-loss (log Z)^2 on the logits; 0 disables.

  # ---- Run length: exactly one of these three is > 0.
  t = c.train = ml_collections.ConfigDict()
  t.steps = 300  # Planned optimizer steps.
  t.tokens = 0  # Or: a token budget D; steps = ceil(D / (B * T)).
  t.flops = 0.0  # Or: a FLOP budget C; D = C / (6 N), N = params with head.
  t.eval_every = 100  # Steps between evaluations (and at the end).
  t.steps_per_call = 1  # Optimizer steps per jitted call (a lax.scan; K > 1 cuts dispatch); 0 = auto (>= 50 ms per call).
  t.eval_batches = 8  # Batches of validation windows per evaluation.
  t.log_every = 10  # Steps between console/TensorBoard train logs.
  t.checkpoint_every = 200  # Steps between orbax checkpoints (and at the end); 0 disables.
  t.keep_checkpoints = 2  # Most recent checkpoints kept.
  t.peak_flops = 0.0  # Peak FLOP/s per device for MFU; 0 = look up device_kind (CPU: measured at start).
  t.nonfinite = 'stop'  # A non-finite loss or gradient norm: 'stop' (keep the last good checkpoint) or 'skip' the update.
  t.max_skips = 10  # With nonfinite='skip': stop after this many skipped updates.
  t.poison_step = 0  # Test hook: make the gradients of this step NaN (0 = off).
  t.checkpoint_steps = ''  # Extra steps to checkpoint and keep, comma-separated (cooldown branch points).
  t.init_from = ''  # 'PARENT_WORKDIR:STEP': start from that run's checkpoint (a WSD cooldown branch).
  t.replicas = ''  # Vmapped copies in one program, e.g. 'optim.lr=1e-3,3e-3,1e-2' or 'init_seed=0,1;optim.lr=...' (train/replicas.py).

  # ---- Device mesh: product must equal the device count; -1 = "the rest".
  s = c.mesh = ml_collections.ConfigDict()
  s.data = -1  # Pure data parallelism (params replicated).
  s.fsdp = 1  # Data parallelism with params/optimizer sharded (ZeRO-3 style).
  s.tensor = 1  # Tensor (model) parallelism over heads and MLP width.
  s.expert = 1  # Expert parallelism (MoE configs).

  # ---- Post-training (python -m train.post; train/post.py): the model, tokenizer and other optim.* come from post.base.
  p = c.post = ml_collections.ConfigDict()
  p.base = ''  # The pre-trained run folder (config.json, checkpoints/) whose newest checkpoint is the start and the reference.
  p.method = 'sft'  # 'sft' (answer NLL), 'dpo', 'orpo', 'simpo' (pairs), 'kto' (thumbs up/down; train/prefs.py), 'grpo' (train/rl.py), 'rm' (a reward model), 'ppo' (with post.reward_model; train/ppo.py) or 'distill' (from post.teacher).
  p.tasks = 'addition,sorting,copying,recall'  # Comma-separated verifiable tasks (train/tasks.py), each example's drawn uniformly.
  p.difficulty = 3  # Task size n in [2, 26]: digits per addend, digits to sort or copy, key-value pairs to recall.
  p.steps = 100  # Optimizer steps.
  p.lr = 1e-3  # Peak LR: the base's AdamW settings, warmup optim.warmup_fraction of post.steps, cosine to optim.min_lr_ratio * lr.
  p.batch_size = 16  # Per step: packed windows (sft, distill), pairs (dpo/orpo/simpo/rm), labelled answers (kto) or prompts (grpo, ppo).
  p.seq_len = 0  # Tokens per row; 0 = the base run's data.seq_len.
  p.beta = 0.1  # DPO, KTO, GRPO and PPO: β, how strongly the policy is tied to the reference (the frozen starting policy); GRPO: the KL penalty's weight; PPO: the weight of the per-token KL penalty in the reward.
  p.simpo_beta = 2.0  # SimPO: β, the scale of the length-normalised reward.
  p.simpo_gamma = 0.5  # SimPO: γ, the target reward margin (nats per token times β).
  p.orpo_lambda = 0.1  # ORPO: λ, the weight of the log-odds-ratio term beside the chosen answers' NLL.
  p.kto_lambda_d = 1.0  # KTO: λ_D, the weight of desirable answers.
  p.kto_lambda_u = 1.0  # KTO: λ_U, the weight of undesirable answers.
  p.group_size = 4  # GRPO and PPO: G, answers sampled per prompt (a step has post.batch_size prompts x G rows); >= 2.
  p.grpo_epsilon = 0.2  # GRPO and PPO: ε, the clip range of the probability ratio π_θ/π_old.
  p.grpo_updates = 1  # GRPO and PPO: μ, optimizer steps per sampled batch (the clip acts from the second).
  p.temperature = 1.0  # GRPO and PPO: sampling temperature (top-p 1).
  p.max_new_tokens = 0  # GRPO and PPO: tokens sampled per answer at most; 0 = post.difficulty + 2.
  p.reward_model = ''  # ppo: the reward-model run folder (trained with post.method='rm'; the same tokenizer and vocab_size as post.base).
  p.rm_labels = 'truth'  # rm: who labels the preference pairs: 'truth' (the tasks' ground truth) or 'judge' (RLAIF: train/ppo.py's rule-based constitution judge).
  p.ppo_gamma = 1.0  # PPO: γ, the discount per answer token in GAE, in (0, 1].
  p.ppo_lambda = 0.95  # PPO: λ of GAE, in [0, 1] (0: one-step TD advantages, 1: Monte Carlo returns minus the value).
  p.ppo_value_coef = 0.5  # PPO: c_v, the weight of the critic's clipped value loss beside the policy loss.
  p.ppo_value_clip = 0.2  # PPO: ε_v, how far a value may move from its rollout value before its loss is clipped (reward units).
  p.ppo_critic_init = 'base'  # PPO: the critic starts as 'base' (a copy of post.base, head zero) or 'reward_model' (a copy of post.reward_model, head included, as InstructGPT; an rm run without post.peft).
  p.teacher = ''  # distill: the teacher run folder (the same tokenizer and vocab_size as post.base).
  p.distill_temperature = 2.0  # distill: τ of the softened distributions (the loss is scaled by τ²).
  p.distill_source = 'logits'  # distill: 'logits' (the teacher's distributions on the gold answers, forward KL) or 'text' (SFT on answers the teacher writes; train/distill.py).
  p.distill_text_temperature = 0.0  # distill, source 'text': the teacher's sampling temperature; 0 = greedy.
  p.eval_prompts = 64  # Held-out prompts decoded greedily for exact match and reward (before, at evals and after).
  p.eval_every = 0  # Steps between held-out evaluations; 0 = only before and after training.
  p.log_every = 10  # Steps between console/TensorBoard train logs.
  p.checkpoint_every = 0  # Steps between checkpoints; 0 = only at the end.
  p.seed = 0  # Seeds the task draws (training batches and the held-out set).
  p.peft = 'none'  # 'none' (every parameter trains), 'lora', 'qlora' (NF4 base), 'dora', 'ia3', 'adapter' (bottleneck), 'prefix' or 'prompt' tuning: on the frozen base (train/peft.py).
  p.lora_rank = 8  # LoRA/QLoRA/DoRA: r, the adapters' rank (r·(d+k) numbers per adapted d x k kernel and layer).
  p.lora_alpha = 16.0  # LoRA/QLoRA/DoRA: α; the update is (α/r)·A B.
  p.lora_targets = 'attn,mlp'  # LoRA/QLoRA/DoRA: kernels to adapt: 'attn' (q,k,v,o), 'mlp' (gate,up,down) or single names, comma-separated.
  p.qlora_block = 64  # QLoRA: weights per NF4 absmax scale, along each kernel's contraction dimension.
  p.adapter_dim = 16  # adapter: r, the bottleneck width (2·d·r + r + d numbers per adapter and layer, biases included).
  p.adapter_targets = 'attn,mlp'  # adapter: the sublayers an adapter follows: 'attn,mlp' (Houlsby) or 'mlp' (Pfeiffer).
  p.prefix_len = 8  # prefix: P, learned keys and values per layer and kv head (L·2·P·n_kv_heads·head_dim numbers; GQA only).
  p.prompt_len = 8  # prompt: P, learned input embeddings before the tokens (P·d numbers).
  return c
