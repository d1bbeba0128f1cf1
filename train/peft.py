"""Parameter-efficient fine-tuning on a frozen base: LoRA, QLoRA, DoRA, (IA)³, bottleneck
adapters, prefix and prompt tuning (post.peft).

Where. The kernels that model/transformer.py multiplies through its `dense`:
grouped-query attention's q, k, v, o (wq_DHK, wk_DGK, wv_DGK, wo_HKD) and the
dense MLP's gate, up, down (gate_DF, up_DF, down_FD), in every stacked layer.
MLA attention and MoE experts (einsum kernels), the embedding, the head and
the norms are never adapted. A kernel W is read as a d x k matrix: d the
product of the axes its matmul contracts (D; H·K for wo), k of the others.

What. Each adapted kernel's nnx.Param is replaced by an `Adapted` module; model
code reads it as before (`self.wq_DHK[...]`) and gets a `Kernel`, which
`dense` multiplies (x @ kernel) *unmerged*, so the frozen W never gets a d x k
gradient:

  lora   y = x W + (α/r)·(x A) B                        A (d, r), B (r, k): r·(d+k) numbers
  qlora  the same on W = NF4-dequantized codes (QLoRA's 16-value code book, an
         absmax scale per block of post.qlora_block along d; qwix's numerics);
         every attention and MLP kernel of the base is stored so, targets or not
  dora   y = m ⊙ (x W + (α/r)·(x A) B) / ‖W + (α/r)·A B‖_c   m (k,): r·(d+k) + k numbers;
         ‖·‖_c the norm over d of each output column, without gradient (DoRA §4.3)
  ia3    keys and values y = (x W) ⊙ l (l: k numbers), the MLP's hidden units
         y = (h ⊙ l) W_down (l: F numbers); post.lora_targets is not used

Init: A ~ N(0, 1/d) (numpy, seeded by (post.seed, site)), B = 0, m = ‖W‖_c,
l = 1, so every adapted model starts as its base. r = post.lora_rank,
α = post.lora_alpha. Trainable numbers are `Adapter` Variables only:
post-training differentiates with respect to them (nnx.DiffState) and its
optimizer holds state for them alone (wrt=Adapter); the vector-like ones (m,
l) are named `scale`, so train.optim's mask spares them weight decay.
`merge` folds the adapters into plain kernels (W + (α/r)·A B, times the
scales): the model a plain run would hold.

Added modules (train/peft_hooks.py, in model/transformer.py's hooks; `merge`
keeps them, decoding goes through them):

  adapter  a bottleneck after each sublayer post.adapter_targets names ('attn,mlp':
           Houlsby et al. 2019; 'mlp': Pfeiffer et al.'s placement), width
           r = post.adapter_dim, with biases: 2·d·r + r + d numbers per adapter and layer
  prefix   P = post.prefix_len keys and values per kv head and layer: L·2·P·G·K
           numbers (GQA only: MLA caches a latent, not keys and values)
  prompt   P = post.prompt_len input embeddings: P·d numbers

`abstract_run` rebuilds a post.peft run's checkpointed state (train.generate).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import qwix
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from model import sharding, transformer
from train import optim
from train import peft_hooks
from train.peft_hooks import Adapter

KINDS = ('none', 'lora', 'qlora', 'dora', 'ia3', 'adapter', 'prefix', 'prompt')
LOW_RANK = ('lora', 'qlora', 'dora')  # With A and B: post.lora_rank, lora_alpha, lora_targets.
ADDED = ('adapter', 'prefix', 'prompt')  # Modules beside the base (train/peft_hooks.py).
ADAPTER_TARGETS = ('attn', 'mlp')  # post.adapter_targets: the sublayers an adapter follows.
# Each added kind's own post.* keys: integers >= 1, reported in summary.json's `trainable`.
SETTINGS = {'adapter': ('adapter_dim',), 'prefix': ('prefix_len',), 'prompt': ('prompt_len',)}
# Target name -> (module class, kernel attribute, axes its matmul contracts).
TARGETS = {
    'q': (transformer.Attention, 'wq_DHK', 1), 'k': (transformer.Attention, 'wk_DGK', 1),
    'v': (transformer.Attention, 'wv_DGK', 1), 'o': (transformer.Attention, 'wo_HKD', 2),
    'gate': (transformer.MLP, 'gate_DF', 1), 'up': (transformer.MLP, 'up_DF', 1),
    'down': (transformer.MLP, 'down_FD', 1),
}
GROUPS = {'attn': ('q', 'k', 'v', 'o'), 'mlp': ('gate', 'up', 'down')}
IA3 = {'k': 'out', 'v': 'out', 'down': 'in'}  # (IA)³'s rescaled vectors: output or input side.


class FrozenCodes(nnx.Variable):
  """A frozen base kernel's NF4 codes or their scales: never differentiated, never updated."""


def target_names(spec: str) -> tuple[str, ...]:
  """'attn,mlp' or 'q,v,down' -> the target names, in TARGETS order; ValueError if unknown."""
  names = set()
  for part in (s.strip() for s in spec.split(',') if s.strip()):
    if part not in GROUPS and part not in TARGETS:
      raise ValueError(f'unknown target {part!r}: use {", ".join(GROUPS)} or '
                       f'{", ".join(TARGETS)}')
    names.update(GROUPS.get(part, (part,)))
  return tuple(t for t in TARGETS if t in names)


@dataclasses.dataclass(frozen=True)
class Kernel:
  """What an adapted kernel gives model code: a stand-in for W that `x @ kernel` multiplies.

  w (*lead, *own): the frozen kernel, leading stacked axes allowed; own its
  own axes, of which the first n_in are contracted (d = their product, k =
  the rest's). a (*lead, d, r), b (*lead, r, k), s = α/r; col (*lead, k)
  scales the output, row (*lead, d) the input. `dense` calls astype, shape,
  reshape to (d, k) and then x @ kernel; `merged` is the plain kernel of the same product.
  """
  w: jax.Array
  own: tuple[int, ...]
  n_in: int
  a: jax.Array | None = None
  b: jax.Array | None = None
  s: float = 1.0
  col: jax.Array | None = None
  row: jax.Array | None = None
  dtype: jnp.dtype = jnp.dtype(jnp.float32)

  @property
  def shape(self) -> tuple[int, ...]:
    return self.w.shape

  @property
  def ndim(self) -> int:
    return self.w.ndim

  def dk(self) -> tuple[int, int]:
    """(d, k): the contracted and the output sizes."""
    return math.prod(self.own[:self.n_in]), math.prod(self.own[self.n_in:])

  def astype(self, dtype) -> 'Kernel':
    return dataclasses.replace(self, dtype=jnp.dtype(dtype))

  def reshape(self, *shape) -> 'Kernel':
    """The (d, k) matrix that `dense` asks for (of an unstacked kernel; no other reshape)."""
    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple) else shape
    if shape != self.dk() or self.w.ndim != len(self.own):
      raise ValueError(f'an adapted kernel of shape {self.shape} reshapes only to {self.dk()}')
    return dataclasses.replace(self, w=self.w.reshape(shape), own=shape, n_in=1)

  def __rmatmul__(self, x):
    """x (..., d) @ the adapted (d, k) matrix, unmerged: -> (..., k) in self.dtype."""
    dt, (d, k) = self.dtype, self.dk()
    if self.row is not None:
      x = x * self.row.astype(dt)
    y = x @ self.w.reshape(d, k).astype(dt)
    if self.a is not None:
      y = y + self.s * ((x @ self.a.astype(dt)) @ self.b.astype(dt))
    return y * self.col.astype(dt) if self.col is not None else y

  def merged(self) -> jax.Array:
    """The plain kernel of the same product, w's shape: row ⊙ (W + s·A B) ⊙ col (float32)."""
    lead = self.w.shape[:self.w.ndim - len(self.own)]
    w = self.w.reshape(*lead, *self.dk()).astype(jnp.float32)
    if self.a is not None:
      w = w + self.s * jnp.matmul(self.a, self.b)
    if self.row is not None:
      w = w * self.row[..., :, None]
    if self.col is not None:
      w = w * self.col[..., None, :]
    return w.reshape(self.w.shape)


def column_norm(w_DK: jax.Array) -> jax.Array:
  """‖W‖_c: the norm over d (axis -2) of each output column of (..., d, k) -> (..., k)."""
  return jnp.sqrt(jnp.sum(jnp.square(w_DK.astype(jnp.float32)), axis=-2))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _nf4(w_LDK: jax.Array, n_lead: int, block: int) -> tuple[jax.Array, jax.Array]:
  """(codes uint8, scales float32): NF4 of (*lead, d, k), an absmax scale per `block` weights
  along d (qwix's numerics), as one program.

  The 4-bit codes are held one per uint8 (0..15; JAX on CPU gives a uint4 a byte too):
  train.checkpoint's digest reads no sub-byte dtype.
  """
  q = qwix.quantize(w_LDK, 'nf4', channelwise_axes=(*range(n_lead), n_lead + 1),
                    tiled_axes={n_lead: block})
  return q.qvalue.astype(jnp.uint8), q.scale


class Adapted(nnx.Module):
  """One stacked kernel with its adapters; `self[...]` is the `Kernel` model code multiplies.

  Built from the base kernel's Param (*lead, *own): the n_lead stacked layers'
  axes, then the kernel's own axes (n_in contracted, then the outputs).
  kind: a post.peft kind, or 'nf4' (stored as NF4, no adapter); `role` is
  (IA)³'s side ('in' or 'out'); p the post block; rng draws A (numpy: no
  compile per shape).
  """

  def __init__(self, w: nnx.Param, n_lead: int, n_in: int, kind: str, role: str, p,
               rng: np.random.Generator):
    lead, own = tuple(w.shape[:n_lead]), tuple(w.shape[n_lead:])
    d, k = math.prod(own[:n_in]), math.prod(own[n_in:])
    self.kind, self.own, self.n_in, self.role = kind, own, n_in, role
    self.s = p.lora_alpha / p.lora_rank if kind in LOW_RANK else 1.0
    quantized = kind in ('qlora', 'nf4')
    codes, scales = (_nf4(w[...].reshape(*lead, d, k), n_lead, p.qlora_block) if quantized
                     else (None, None))
    # Each attribute is set once (flax fixes whether it is data at its first assignment).
    self.kernel = None if quantized else w  # The base's own Param, frozen: never updated.
    self.codes = FrozenCodes(codes) if quantized else None
    self.scales = FrozenCodes(scales) if quantized else None
    low_rank = kind in LOW_RANK
    r = p.lora_rank
    self.lora_a = (Adapter(jnp.asarray(rng.normal(0, d ** -0.5, (*lead, d, r)), jnp.float32))
                   if low_rank else None)
    self.lora_b = Adapter(jnp.asarray(np.zeros((*lead, r, k), np.float32))) if low_rank else None
    if kind == 'dora':
      self.scale = Adapter(column_norm(w[...].reshape(*lead, d, k)))
    elif kind == 'ia3':
      self.scale = Adapter(jnp.asarray(np.ones((*lead, d if role == 'in' else k), np.float32)))
    else:
      self.scale = None

  def base(self) -> jax.Array:
    """The frozen kernel W (*lead, *own) as the model reads it (NF4: dequantized, float32)."""
    if self.kernel is not None:
      return self.kernel[...]
    codes = self.codes[...].astype(jnp.uint4)
    w = qwix.dequantize(qwix.QArray(qvalue=codes, scale=self.scales[...], qtype='nf4'))
    return w.reshape(*w.shape[:-2], *self.own)

  def __getitem__(self, index) -> Kernel:
    if index is not Ellipsis:
      raise TypeError('an adapted kernel is read whole: kernel[...]')
    w = self.base()
    a = b = col = row = None
    if self.lora_a is not None:
      a, b = self.lora_a[...], self.lora_b[...]
    if self.kind == 'dora':
      lead = w.shape[:w.ndim - len(self.own)]
      d = math.prod(self.own[:self.n_in])
      norm = column_norm(w.reshape(*lead, d, -1) + self.s * jnp.matmul(a, b))
      col = self.scale[...] / jax.lax.stop_gradient(norm)
    elif self.kind == 'ia3':
      row, col = (self.scale[...], None) if self.role == 'in' else (None, self.scale[...])
    return Kernel(w, self.own, self.n_in, a, b, self.s, col, row)


# ---- Applying, merging, counting.

@dataclasses.dataclass(frozen=True)
class Site:
  """One stacked kernel that post.peft changed, or one added module: path, target name, d, k
  (as `closed_form` reads them) and its layer count."""
  path: str
  name: str
  d: int
  k: int
  layers: int
  adapted: bool  # False: only stored as NF4 (qlora, not a target).


def _sites(model):
  """(path, module, attribute, target name) of every kernel `dense` reads, in model order."""
  for path, module in nnx.iter_modules(model):
    for name, (cls, attr, _) in TARGETS.items():
      if type(module) is cls:
        yield '/'.join(map(str, (*path, attr))), module, attr, name


def _wanted(p) -> tuple[str, ...]:
  return tuple(IA3) if p.peft == 'ia3' else target_names(p.lora_targets)


def _no_layer(p) -> str:
  if p.peft == 'ia3':
    return "post.peft='ia3': the model has no grouped-query attention or dense MLP to rescale"
  return (f'post.lora_targets={p.lora_targets!r} names no layer of this model (only '
          'grouped-query attention and dense MLP kernels are adapted, not MLA or MoE ones)')


def apply(model, p, seed: int) -> list[Site]:
  """Adapt `model` in place as post.peft says (module docstring); -> the changed sites, in order.

  Site i's A is drawn by numpy's generator seeded by (seed, i); the added
  modules' numbers (and the P token ids of the prefix and prompt inits) by one
  seeded by (seed, len(KINDS)).

  ValueError naming the post.* key when post.lora_targets names no kernel of
  this model, post.qlora_block does not divide a kernel's d, or a prefix has
  no grouped-query attention to go in.
  """
  if p.peft in ADDED:
    return _add_modules(model, p, np.random.default_rng([seed, len(KINDS)]))
  wanted, sites = _wanted(p), []
  found = list(_sites(model))
  if not any(name in wanted for *_, name in found):
    raise ValueError(_no_layer(p))
  for i, (path, module, attr, name) in enumerate(found):
    adapted = name in wanted
    if not adapted and p.peft != 'qlora':
      continue
    w, n_in = getattr(module, attr), TARGETS[name][2]
    n_lead = w.ndim - len(attr.rsplit('_', 1)[1])
    d, k = math.prod(w.shape[n_lead:n_lead + n_in]), math.prod(w.shape[n_lead + n_in:])
    if p.peft == 'qlora' and d % p.qlora_block:
      raise ValueError(f'post.qlora_block={p.qlora_block} does not divide the contraction size '
                       f'd = {d} of {path}')
    kind = p.peft if adapted else 'nf4'
    setattr(module, attr, Adapted(w, n_lead, n_in, kind, IA3.get(name, 'out'), p,
                                  np.random.default_rng([seed, i])))
    sites.append(Site(path, name, d, k, math.prod(w.shape[:n_lead]), adapted))
  return sites


def _add_modules(model, p, rng: np.random.Generator) -> list[Site]:
  """Put post.peft's added module in the model's hooks; -> the sites (module docstrings)."""
  cfg = model.cfg
  if p.peft == 'adapter':
    return _add_adapters(model, p, rng)
  n = p.prefix_len if p.peft == 'prefix' else p.prompt_len
  ids = rng.integers(0, cfg.vocab_size, n)  # The P tokens both inits read.
  if p.peft == 'prompt':
    model.prompt = nnx.data(peft_hooks.Prompt(model.embed_VD[...][ids]))
    model.n_virtual = n
    return [Site('prompt', 'prompt', n, cfg.d_model, 1, True)]
  found = [(path, m) for path, m in nnx.iter_modules(model) if type(m) is transformer.Attention]
  if not found:
    raise ValueError("post.peft='prefix': the model has no grouped-query attention (MLA caches "
                     "a latent, not keys and values); use post.peft='prompt'")
  layers = peft_hooks.layer_indices(model)
  base_kv = peft_hooks.base_keys_values(model, ids)  # Before any prefix is in place.
  sites = []
  for path, module in found:
    idx = layers[path[:-1]]
    module.prefix = nnx.data(peft_hooks.Prefix(base_kv['k'][idx], base_kv['v'][idx]))
    G, K = module.wk_DGK.shape[-2:]
    sites.append(Site('/'.join(map(str, (*path, 'prefix'))), 'prefix', n, G * K, idx.size, True))
  model.n_virtual = n
  return sites


def _add_adapters(model, p, rng: np.random.Generator) -> list[Site]:
  """A Bottleneck after each sublayer post.adapter_targets names, in every block."""
  d, r, sites = model.cfg.d_model, p.adapter_dim, []
  targets = [t.strip() for t in p.adapter_targets.split(',') if t.strip()]
  for path, module in list(nnx.iter_modules(model)):
    if type(module) is transformer.Block:
      lead = module.attn_norm.scale.shape[:-1]
      for t in (t for t in ADAPTER_TARGETS if t in targets):
        setattr(module, f'{t}_adapter', nnx.data(peft_hooks.Bottleneck(lead, d, r, rng)))
        sites.append(Site('/'.join(map(str, (*path, f'{t}_adapter'))), t, d, r,
                          math.prod(lead), True))
  return sites


def adapt(model, config):
  """(optimizer, sites): `model` adapted in place as config.post says (under 'none' left as it
  is), and the run's AdamW (train.optim) over what trains."""
  p = config.post
  sites = apply(model, p, p.seed) if p.peft != 'none' else []
  return nnx.Optimizer(model, optim.optimizer(config), wrt=trainable(p.peft)), sites


def abstract_run(config, mesh):
  """(graphdef, abstract state) of a post.peft run's checkpoint as train.post saves it: the
  (adapted model, optimizer) of `adapt` on config.model, every array replicated on `mesh` (one
  device). Nothing is allocated."""
  def create():
    model = transformer.Transformer(config.model, rngs=nnx.Rngs(config.seed))
    return model, adapt(model, config)[0]

  with sharding.use_mesh(mesh):
    graphdef, abstract = nnx.split(nnx.eval_shape(create))
  replicated = NamedSharding(mesh, PartitionSpec())
  return graphdef, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)


def merge(model):
  """A copy of `model` with every Adapted kernel folded back into a plain nnx.Param (float32)."""
  model = nnx.clone(model)
  for _, module in list(nnx.iter_modules(model)):
    for attr, value in list(vars(module).items()):
      if isinstance(value, Adapted):
        setattr(module, attr, nnx.Param(value[...].merged()))
  return model


def closed_form(p, site: Site) -> int:
  """Trainable numbers of a site by formula: r·(d+k) per layer (dora + k; ia3 k, or d for down);
  an adapter (d, k = r) 2·d·r + r + d, a prefix (d = P, k = G·K) 2·P·G·K per layer, a prompt
  (d = P, k = D) P·D."""
  if not site.adapted:
    return 0
  if p.peft == 'adapter':
    per_layer = 2 * site.d * site.k + site.k + site.d
  elif p.peft in ('prefix', 'prompt'):
    per_layer = (2 if p.peft == 'prefix' else 1) * site.d * site.k
  elif p.peft == 'ia3':
    per_layer = site.d if IA3[site.name] == 'in' else site.k
  else:
    per_layer = p.lora_rank * (site.d + site.k) + (site.k if p.peft == 'dora' else 0)
  return per_layer * site.layers


def site_report(p, model, sites: list[Site]) -> list[dict]:
  """Per site: path, d, k, layers, adapted, and its trainable numbers measured and by formula."""
  flat = [('/'.join(map(str, path)), v) for path, v in nnx.to_flat_state(nnx.state(model, Adapter))]
  return [{**dataclasses.asdict(x),
           'params': sum(count(v) for path, v in flat if path.startswith(x.path + '/')),
           'closed_form': closed_form(p, x)} for x in sites]


def trainable_report(p, model, opt, sites: list[Site], total: int) -> dict:
  """What trains under post block p: numbers measured and by closed form (`total`, the model's
  parameters, under 'none'), bytes of the trained, frozen and optimizer state, and the sites.
  """
  _, train_state, frozen_state = nnx.split(model, trainable(p.peft), ...)
  out = {'peft': p.peft, 'params': count(train_state),
         'params_closed_form': sum(closed_form(p, x) for x in sites) if sites else total,
         'optimizer_state_bytes': nbytes(nnx.state(opt)),
         'trainable_bytes': nbytes(train_state), 'frozen_bytes': nbytes(frozen_state)}
  out['fraction_of_params'] = out['params'] / total
  if p.peft in ADDED:
    out.update({k: p[k] for k in SETTINGS[p.peft]}, sites=site_report(p, model, sites))
    if p.peft == 'adapter':
      out['adapter_targets'] = p.adapter_targets
  elif p.peft != 'none':
    out.update(rank=p.lora_rank, alpha=p.lora_alpha, targets=p.lora_targets,
               sites=site_report(p, model, sites))
  return out


def trainable(kind: str):
  """The Variable filter post-training differentiates and updates: Adapter, or every Param."""
  return nnx.Param if kind == 'none' else Adapter


def count(state) -> int:
  """Numbers in an nnx State's array leaves."""
  return sum(x.size for x in jax.tree.leaves(state))


def nbytes(state) -> int:
  """Bytes of an nnx State's array leaves, as held in memory."""
  return sum(x.nbytes for x in jax.tree.leaves(state))


def base_errors(p, model_cfg) -> list[str]:
  """Problems of post.peft with the base's model config: model.qat fake-quantizes Params by name,
  model.fp8's matmul takes arrays (not the LoRA-family kernels), MLA has no keys to prefix."""
  qat = getattr(model_cfg, 'qat', 'none')
  if p.peft != 'none' and qat != 'none':
    return [f'post.peft={p.peft!r} with the base\'s model.qat={qat!r}: quantization-aware '
            'training has no rule for adapters; post-train that base with post.peft=\'none\'']
  if p.peft not in ('none',) + ADDED and model_cfg.get('fp8', False):
    return [f"post.peft={p.peft!r} with the base's model.fp8=True: the adapted kernels are "
            "multiplied by model.transformer.dense, not the FP8 matmul; use post.peft='adapter', "
            "'prefix' or 'prompt', or post-train without post.peft"]
  if p.peft == 'prefix' and getattr(model_cfg, 'attention', 'gqa') == 'mla':
    return ["post.peft='prefix' with the base's model.attention='mla': MLA caches one latent "
            "per token, not keys and values to prepend to; use post.peft='prompt' or 'adapter'"]
  return []


def peft_errors(p) -> list[str]:
  """Problems with post.peft and its fields (post.lora_* are unused under 'none' and 'ia3')."""
  if p.peft not in KINDS:
    return [f'post.peft={p.peft!r}: must be one of {", ".join(map(repr, KINDS))}']
  errors = []
  if p.peft in LOW_RANK:
    r, alpha = p.lora_rank, p.lora_alpha
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
      errors.append(f'post.lora_rank={r!r}: must be an integer >= 1 (the adapters\' rank)')
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
        math.isfinite(alpha) and alpha > 0):
      errors.append(f'post.lora_alpha={alpha!r}: must be > 0 (the update is scaled by α/r)')
    try:
      if not target_names(str(p.lora_targets)):
        errors.append(f'post.lora_targets={p.lora_targets!r}: names no kernel; use e.g. '
                      f'\'attn,mlp\' or \'q,v\'')
    except ValueError as e:
      errors.append(f'post.lora_targets={p.lora_targets!r}: {e}')
  for key in SETTINGS.get(p.peft, ()):
    v = p[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      errors.append(f'post.{key}={v!r}: must be an integer >= 1 with post.peft={p.peft!r}')
  if p.peft == 'adapter':
    named = [t.strip() for t in str(p.adapter_targets).split(',') if t.strip()]
    if not named or set(named) - set(ADAPTER_TARGETS):
      errors.append(f'post.adapter_targets={p.adapter_targets!r}: must name sublayers among '
                    f'{", ".join(map(repr, ADAPTER_TARGETS))}, e.g. \'attn,mlp\' (Houlsby) or '
                    '\'mlp\' (Pfeiffer)')
  if p.peft == 'qlora':
    b = p.qlora_block
    if not isinstance(b, int) or isinstance(b, bool) or b < 1:
      errors.append(f'post.qlora_block={b!r}: must be a positive integer (weights per NF4 scale)')
  return errors
