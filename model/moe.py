"""Mixture-of-Experts feed-forward layer in Flax NNX: a float32 router and E SwiGLU experts.

Each token picks its top-k routed experts (softmax with renormalised weights,
or sigmoid scores with a selection-only bias for aux-loss-free balancing); the
output is the weighted sum of those experts plus optional always-on shared
experts (DeepSeek style). Five dispatch paths compute the same function where
no assignment is dropped:
- 'dropless': sort the token-expert assignments by expert, grouped matmuls
  (`jax.lax.ragged_dot`), unsort.
- 'blocked': dropless too, for CPUs: the same sort, each expert's rows padded to
  whole blocks of M rows, one batched matmul over the blocks with each block's
  expert weights gathered (megablox's layout in plain jnp). On CPU, jax lowers
  ragged_dot to a dense dot over all E groups (E times the routed FLOPs); blocks
  cost about (A + E*M)/A times them (padding).
- 'capacity': each expert takes at most C = min(T, ceil(capacity_factor * T * K / E))
  assignments per sequence, earlier tokens first; the rest are dropped (the
  residual carries those tokens). Dispatch and combine are einsums over a
  (B, T, E, C) one-hot mask.
- 'dense': every expert on every token, weighted by the (mostly zero) router
  weights; a reference for tests and tiny models.
- 'alltoall': dropless with explicit expert parallelism (`alltoall_dispatch`):
  under `jax.shard_map`, each device sorts its own tokens' assignments, sends
  each expert owner its rows with `jax.lax.all_to_all`, runs its E/G local
  experts, and gets the results back with the reverse all-to-all. Without an
  `expert` mesh axis (size 1) it is 'dropless' itself.

Shape suffixes: B batch, T sequence, D d_model, E routed experts, F expert
width, K top-k slots, N tokens (B*T), A assignments (N*K), C capacity per expert
per sequence, S shared-expert width (moe_shared_experts * F), J blocks of M rows
(the blocked path); per device on the all-to-all path: G expert-group size
(mesh.expert), L = E/G local experts, n local tokens, a = n*K local
assignments, R = G*a rows received.
"""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from model.counts import expert_width, moe_layers, num_experts  # The layout: plain, jax-free.
from model.sharding import logical_to_spec

ROUTINGS = ('softmax', 'sigmoid')
DISPATCHES = ('dropless', 'capacity', 'dense', 'blocked', 'alltoall')
BLOCK_ROWS = 128  # M: rows per block of the blocked path (each block is one expert's).


def capacity(seq_len: int, top_k: int, n_experts: int, factor: float) -> int:
  """Assignments an expert takes per sequence on the capacity path: ceil(factor*T*K/E) in [1, T]."""
  return max(1, min(seq_len, math.ceil(factor * seq_len * top_k / n_experts)))


def _int_at_least(m, key: str, lo: int, errors: list[str]):
  v = m[key]
  if not isinstance(v, int) or isinstance(v, bool) or v < lo:
    errors.append(f'model.{key}={v!r}: must be an integer >= {lo}')
    return False
  return True


def moe_errors(m) -> list[str]:
  """Problems with the MoE fields of the `model` block, one message per problem naming its key.

  A dense model (moe_num_experts == 0) has none: the other MoE fields are unused.
  """
  errors = []
  if not _int_at_least(m, 'moe_num_experts', 0, errors) or m.moe_num_experts == 0:
    return errors
  if _int_at_least(m, 'moe_top_k', 1, errors) and m.moe_top_k > m.moe_num_experts:
    errors.append(f'model.moe_top_k={m.moe_top_k} is greater than '
                  f'model.moe_num_experts={m.moe_num_experts}')
  if _int_at_least(m, 'moe_d_expert', 0, errors) and m.moe_d_expert == 0:
    if _int_at_least(m, 'moe_granularity', 1, errors) and m.d_ff % m.moe_granularity:
      errors.append(f'model.moe_granularity={m.moe_granularity} does not divide '
                    f'model.d_ff={m.d_ff} (the expert width is d_ff // moe_granularity)')
  _int_at_least(m, 'moe_shared_experts', 0, errors)
  layout_ok = [_int_at_least(m, 'moe_every', 1, errors),
               _int_at_least(m, 'moe_first_dense', 0, errors), isinstance(m.n_layers, int)]
  if all(layout_ok) and not moe_layers(m):
    errors.append(f'model.moe_first_dense={m.moe_first_dense} and model.moe_every={m.moe_every} '
                  f'leave no MoE layer among model.n_layers={m.n_layers}')
  for key, allowed in (('moe_routing', ROUTINGS), ('moe_dispatch', DISPATCHES)):
    if m[key] not in allowed:
      errors.append(f'model.{key}={m[key]!r}: must be one of {", ".join(map(repr, allowed))}')
  if m.moe_dispatch == 'capacity' and not m.moe_capacity_factor > 0:
    errors.append(f'model.moe_capacity_factor={m.moe_capacity_factor!r}: must be > 0 on the '
                  "capacity path (model.moe_dispatch='capacity')")
  for key in ('moe_load_balance_weight', 'moe_router_z_weight', 'moe_bias_update_rate'):
    if not m[key] >= 0:
      errors.append(f'model.{key}={m[key]!r}: must be >= 0')
  return errors


def expert_mesh_errors(m, mesh_sizes: dict[str, int]) -> list[str]:
  """A message when the routed experts cannot be split evenly over the `expert` mesh axis."""
  E, n = num_experts(m), mesh_sizes.get('expert', 1)
  if E and E % n:
    return [f'model.moe_num_experts={E} is not divisible by mesh.expert={n} '
            '(expert weights are sharded over the expert axis)']
  return []


def _param(rngs: nnx.Rngs, shape, names, std):
  init = jax.nn.initializers.normal(std)
  return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=names,
                   eager_sharding=False)


def _swiglu(x_xD, gate_DF, up_DF, down_FD):
  return (jax.nn.silu(x_xD @ gate_DF) * (x_xD @ up_DF)) @ down_FD


def combine_weights(idx_xK, w_xK, E: int) -> jax.Array:
  """Router weights scattered to all experts: (..., E), zero for experts not chosen."""
  return jnp.einsum('...k,...ke->...e', w_xK, jax.nn.one_hot(idx_xK, E, dtype=w_xK.dtype))


def dense_dispatch(x_ND, idx_NK, w_NK, gate_EDF, up_EDF, down_EFD) -> jax.Array:
  """Every expert on every token, weighted: E times the routed FLOPs. -> y_ND."""
  h_NEF = (jax.nn.silu(jnp.einsum('nd,edf->nef', x_ND, gate_EDF)) *
           jnp.einsum('nd,edf->nef', x_ND, up_EDF))
  y_NED = jnp.einsum('nef,efd->ned', h_NEF, down_EFD)
  return jnp.einsum('ne,ned->nd', combine_weights(idx_NK, w_NK, gate_EDF.shape[0]), y_NED)


def ragged_swiglu(xs_AD, sizes_E, gate_EDF, up_EDF, down_EFD) -> jax.Array:
  """SwiGLU of expert-sorted rows (sizes_E rows per expert) with ragged_dot. -> ys_AD."""
  h_AF = (jax.nn.silu(jax.lax.ragged_dot(xs_AD, gate_EDF, sizes_E)) *
          jax.lax.ragged_dot(xs_AD, up_EDF, sizes_E))
  return jax.lax.ragged_dot(h_AF, down_EFD, sizes_E)


def blocked_swiglu(xs_AD, sizes_E, gate_EDF, up_EDF, down_EFD, M: int = BLOCK_ROWS):
  """The same SwiGLU with each expert's rows padded to whole blocks of M rows. -> ys_AD.

  Block j holds rows of one expert only (zeros after the expert's last row); its
  expert's weights are gathered per block, so one batched matmul does the work.
  """
  A, E = xs_AD.shape[0], sizes_E.shape[0]
  J = -(-(A + E * (M - 1)) // M)  # Enough blocks for any split of the A rows.
  padded_E = -(-sizes_E // M) * M
  expert_A = jnp.repeat(jnp.arange(E), sizes_E, total_repeat_length=A)
  rank_A = jnp.arange(A) - (jnp.cumsum(sizes_E) - sizes_E)[expert_A]  # Row within its expert.
  row_A = (jnp.cumsum(padded_E) - padded_E)[expert_A] + rank_A  # Its row in the padded layout.
  x_JMD = jnp.zeros((J * M, xs_AD.shape[1]), xs_AD.dtype).at[row_A].set(xs_AD).reshape(J, M, -1)
  expert_J = jnp.minimum(jnp.searchsorted(jnp.cumsum(padded_E), jnp.arange(J) * M, side='right'),
                         E - 1)  # Trailing all-zero blocks borrow the last expert.
  h_JMF = (jax.nn.silu(jnp.einsum('jmd,jdf->jmf', x_JMD, gate_EDF[expert_J])) *
           jnp.einsum('jmd,jdf->jmf', x_JMD, up_EDF[expert_J]))
  y_JMD = jnp.einsum('jmf,jfd->jmd', h_JMF, down_EFD[expert_J])
  return y_JMD.reshape(J * M, -1)[row_A]


def dropless_dispatch(x_ND, idx_NK, w_NK, gate_EDF, up_EDF, down_EFD,
                      grouped=ragged_swiglu) -> jax.Array:
  """Assignments sorted by expert, grouped matmuls (`grouped`), unsorted, combined. -> y_ND."""
  (N, K), E = idx_NK.shape, gate_EDF.shape[0]
  expert_A = idx_NK.reshape(-1)  # Token-major: assignment a is token a // K, slot a % K.
  order_A = jnp.argsort(expert_A, stable=True)
  sizes_E = jnp.bincount(expert_A, length=E).astype(jnp.int32)
  ys_AD = grouped(x_ND[order_A // K], sizes_E, gate_EDF, up_EDF, down_EFD)
  inverse_A = jnp.zeros_like(order_A).at[order_A].set(jnp.arange(N * K, dtype=order_A.dtype))
  y_NKD = ys_AD[inverse_A].reshape(N, K, -1)
  return jnp.einsum('nkd,nk->nd', y_NKD, w_NK)


def _send_layout(expert_a, G: int, L: int):
  """Where each expert-sorted local row goes: -> (owner_a, slot_a, sizes_GL).

  `expert_a` is ascending (global expert ids); device g owns experts g*L..g*L+L-1,
  so each owner's rows are contiguous: slot_a is the row's place in its owner's
  block and sizes_GL[g, l] the rows this device sends to local expert l of g.
  """
  owner_a = expert_a // L
  counts_G = jnp.bincount(owner_a, length=G)
  slot_a = jnp.arange(expert_a.shape[0]) - (jnp.cumsum(counts_G) - counts_G)[owner_a]
  return owner_a, slot_a, jnp.bincount(expert_a, length=G * L).reshape(G, L).astype(jnp.int32)


def _local_experts(recv_GaD, sizes_GL, gate_LDF, up_LDF, down_LFD, grouped):
  """The L local experts on the rows received from each of G sources. -> (G, a, D), same layout.

  Source g's block holds sizes_GL[g].sum() real rows, sorted by local expert,
  then zero padding; the R = G*a rows are re-sorted by local expert (padding
  last, outside every group) for one grouped matmul.
  """
  G, a, D = recv_GaD.shape
  ends_GL = jnp.cumsum(sizes_GL, axis=1)
  expert_Ga = jax.vmap(lambda e_L: jnp.searchsorted(e_L, jnp.arange(a), side='right'))(ends_GL)
  order_R = jnp.argsort(expert_Ga.reshape(-1), stable=True)  # Local expert L marks padding.
  ys_RD = grouped(recv_GaD.reshape(G * a, D)[order_R], jnp.sum(sizes_GL, axis=0),
                  gate_LDF, up_LDF, down_LFD)
  inverse_R = jnp.zeros_like(order_R).at[order_R].set(jnp.arange(G * a, dtype=order_R.dtype))
  return ys_RD[inverse_R].reshape(G, a, D)


def _alltoall_shard(x_nD, idx_nK, w_nK, gate_LDF, up_LDF, down_LFD, G: int, grouped):
  """One device's part of `alltoall_dispatch` (inside shard_map over 'expert'). -> y_nD."""
  (n, K), L, D = idx_nK.shape, gate_LDF.shape[0], x_nD.shape[1]
  expert_a = idx_nK.reshape(-1)  # Token-major, as in dropless_dispatch.
  order_a = jnp.argsort(expert_a, stable=True)
  owner_a, slot_a, sizes_GL = _send_layout(expert_a[order_a], G, L)
  send_GaD = jnp.zeros((G, n * K, D), x_nD.dtype).at[owner_a, slot_a].set(x_nD[order_a // K])
  recv_GaD = jax.lax.all_to_all(send_GaD, 'expert', 0, 0)  # Block g: the rows from device g.
  recv_sizes_GL = jax.lax.all_to_all(sizes_GL, 'expert', 0, 0)
  out_GaD = _local_experts(recv_GaD, recv_sizes_GL, gate_LDF, up_LDF, down_LFD, grouped)
  ys_aD = jax.lax.all_to_all(out_GaD, 'expert', 0, 0)[owner_a, slot_a]  # Back to the sender.
  inverse_a = jnp.zeros_like(order_a).at[order_a].set(jnp.arange(n * K, dtype=order_a.dtype))
  return jnp.einsum('nkd,nk->nd', ys_aD[inverse_a].reshape(n, K, D), w_nK)


def alltoall_dispatch(x_ND, idx_NK, w_NK, gate_EDF, up_EDF, down_EFD,
                      grouped=ragged_swiglu) -> jax.Array:
  """Dropless dispatch with explicit expert parallelism over the `expert` mesh axis. -> y_ND.

  With the current mesh's `expert` axis of size G > 1, under `jax.shard_map`:
  tokens are split over the 'batch' axes (data, fsdp, expert), each device
  holds E/G whole experts, with their fsdp ('embed') and tensor ('mlp') shards
  gathered on entry (the partitioner all-gathers them; their gradients are
  summed over data and fsdp on the way back). Each device sorts its a = n*K
  assignments, sends each owner its rows (`jax.lax.all_to_all`), runs its
  experts with `grouped` on the R = G*a rows it received, and gets the results
  back by the reverse all-to-all. Nothing is dropped: each (source, owner)
  buffer holds all a rows, so the send, receive and return buffers are G*a*D
  each (G times the dropless sorted rows; the expert hidden is G*a*F). With
  tensor > 1 the tensor group repeats the same work (tokens are not split
  over it). Without an expert axis (G == 1): `dropless_dispatch`.
  """
  mesh = jax.sharding.get_abstract_mesh()
  G = 1 if mesh.empty else dict(mesh.shape).get('expert', 1)
  if G == 1:
    return dropless_dispatch(x_ND, idx_NK, w_NK, gate_EDF, up_EDF, down_EFD, grouped=grouped)
  tokens, experts = logical_to_spec(('batch', None)), logical_to_spec(('expert', None, None))
  shard = functools.partial(_alltoall_shard, G=G, grouped=grouped)
  return jax.shard_map(shard, mesh=mesh, in_specs=(tokens,) * 3 + (experts,) * 3,
                       out_specs=tokens)(x_ND, idx_NK, w_NK, gate_EDF, up_EDF, down_EFD)


def capacity_dispatch(x_BTD, idx_BTK, w_BTK, gate_EDF, up_EDF, down_EFD, C: int):
  """Capacity-limited dispatch per sequence, earlier tokens first. -> (y_BTD, kept_BTE).

  Expert e keeps token t of a sequence when fewer than C earlier tokens of that
  sequence chose e; `kept_BTE` marks the assignments that were computed.
  """
  E = gate_EDF.shape[0]
  chosen_BTE = jax.nn.one_hot(idx_BTK, E, dtype=jnp.int32).sum(axis=2)  # 0/1: top-k are distinct.
  position_BTE = jnp.cumsum(chosen_BTE, axis=1) - 1  # Place in the expert's queue.
  kept_BTE = (chosen_BTE > 0) & (position_BTE < C)
  dispatch_BTEC = jax.nn.one_hot(jnp.where(kept_BTE, position_BTE, -1), C, dtype=x_BTD.dtype)
  combine_BTEC = dispatch_BTEC * combine_weights(idx_BTK, w_BTK, E)[..., None]
  xe_BECD = jnp.einsum('btec,btd->becd', dispatch_BTEC, x_BTD)
  h_BECF = (jax.nn.silu(jnp.einsum('becd,edf->becf', xe_BECD, gate_EDF)) *
            jnp.einsum('becd,edf->becf', xe_BECD, up_EDF))
  ye_BECD = jnp.einsum('becf,efd->becd', h_BECF, down_EFD)
  return jnp.einsum('btec,becd->btd', combine_BTEC, ye_BECD), kept_BTE


class RouterBias(nnx.Variable):
  """Per-expert bias added to the router scores for expert selection only (sigmoid routing).

  Not an nnx.Param: it gets no gradient and the optimizer (wrt=nnx.Param) leaves
  it alone; `MoE.__call__` updates it in training mode.
  """


class MoE(nnx.Module):
  """x_BTD -> (y_BTD, aux): routed SwiGLU experts (+ shared experts), aux losses and metrics.

  aux (float32): 'moe_load_balance_loss' (Switch: E * sum_e f_e P_e; 1 for a
  uniform router), 'moe_router_z_loss' (mean logsumexp(logits)^2),
  'moe_dropped_fraction' (of the N*K assignments), 'moe_expert_load' (E,)
  (fraction f_e of assignments routed to each expert, before any drop),
  'moe_router_entropy' (mean over tokens, nats). P_e is the mean router
  probability (softmax routing) or normalised sigmoid score (sigmoid routing).

  Sigmoid routing, training mode (`deterministic=False`, the default; `.eval()`
  sets it): after routing a batch, bias_e += moe_bias_update_rate * sign(1/E - f_e),
  raising the bias of under-loaded experts (DeepSeek-V3's rule).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    D, E, F, std = cfg.d_model, cfg.moe_num_experts, expert_width(cfg), cfg.init_std
    self.router_DE = _param(rngs, (D, E), ('embed', None), std)
    self.gate_EDF = _param(rngs, (E, D, F), ('expert', 'embed', 'mlp'), std)
    self.up_EDF = _param(rngs, (E, D, F), ('expert', 'embed', 'mlp'), std)
    self.down_EFD = _param(rngs, (E, F, D), ('expert', 'mlp', 'embed'), std)
    S = cfg.moe_shared_experts * F  # n shared experts of width F act as one SwiGLU of width n*F.
    self.shared_gate_DS = _param(rngs, (D, S), ('embed', 'mlp'), std) if S else None
    self.shared_up_DS = _param(rngs, (D, S), ('embed', 'mlp'), std) if S else None
    self.shared_down_SD = _param(rngs, (S, D), ('mlp', 'embed'), std) if S else None
    sigmoid = cfg.moe_routing == 'sigmoid'
    self.bias_E = RouterBias(jnp.zeros((E,), jnp.float32), out_sharding=(None,),
                             eager_sharding=False) if sigmoid else None
    self.top_k, self.routing, self.dispatch = cfg.moe_top_k, cfg.moe_routing, cfg.moe_dispatch
    self.capacity_factor, self.bias_rate = cfg.moe_capacity_factor, cfg.moe_bias_update_rate
    self.deterministic = False

  def route(self, x_BTD):
    """Float32 routing: -> (logits_BTE, probs_BTE, idx_BTK, weights_BTK summing to 1 per token)."""
    logits_BTE = jnp.einsum('btd,de->bte', x_BTD.astype(jnp.float32), self.router_DE[...])
    if self.routing == 'softmax':
      probs_BTE = jax.nn.softmax(logits_BTE, axis=-1)
      _, idx_BTK = jax.lax.top_k(probs_BTE, self.top_k)
      w_BTK = jnp.take_along_axis(probs_BTE, idx_BTK, axis=-1)
    else:
      score_BTE = jax.nn.sigmoid(logits_BTE)
      _, idx_BTK = jax.lax.top_k(score_BTE + self.bias_E[...], self.top_k)  # Bias: selection only.
      w_BTK = jnp.take_along_axis(score_BTE, idx_BTK, axis=-1)
      probs_BTE = score_BTE / jnp.sum(score_BTE, axis=-1, keepdims=True)
    return logits_BTE, probs_BTE, idx_BTK, w_BTK / jnp.sum(w_BTK, axis=-1, keepdims=True)

  def __call__(self, x_BTD):
    B, T, D = x_BTD.shape
    dt, E, K = x_BTD.dtype, self.gate_EDF.shape[0], self.top_k
    logits_BTE, probs_BTE, idx_BTK, w_BTK = self.route(x_BTD)
    weights = [self.gate_EDF[...].astype(dt), self.up_EDF[...].astype(dt),
               self.down_EFD[...].astype(dt)]
    w_BTK = w_BTK.astype(dt)
    dropped = jnp.zeros((), jnp.float32)
    if self.dispatch == 'capacity':
      C = capacity(T, K, E, self.capacity_factor)
      y_BTD, kept_BTE = capacity_dispatch(x_BTD, idx_BTK, w_BTK, *weights, C)
      dropped = (B * T * K - jnp.sum(kept_BTE)).astype(jnp.float32) / (B * T * K)
    else:
      path = {'dropless': dropless_dispatch, 'dense': dense_dispatch,
              'blocked': functools.partial(dropless_dispatch, grouped=blocked_swiglu),
              'alltoall': alltoall_dispatch}
      y_BTD = path[self.dispatch](x_BTD.reshape(B * T, D), idx_BTK.reshape(B * T, K),
                                  w_BTK.reshape(B * T, K), *weights).reshape(B, T, D)
    if self.shared_gate_DS is not None:
      shared = (self.shared_gate_DS, self.shared_up_DS, self.shared_down_SD)
      y_BTD = y_BTD + _swiglu(x_BTD, *(w[...].astype(dt) for w in shared))

    load_E = jnp.sum(jax.nn.one_hot(idx_BTK, E, dtype=jnp.float32), axis=(0, 1, 2)) / (B * T * K)
    if self.bias_E is not None and not self.deterministic and self.bias_rate > 0:
      self.bias_E[...] = self.bias_E[...] + self.bias_rate * jnp.sign(1.0 / E - load_E)
    aux = {
        'moe_load_balance_loss': E * jnp.sum(load_E * jnp.mean(probs_BTE, axis=(0, 1))),
        'moe_router_z_loss': jnp.mean(jnp.square(jax.nn.logsumexp(logits_BTE, axis=-1))),
        'moe_dropped_fraction': dropped,
        'moe_expert_load': load_E,
        'moe_router_entropy': jnp.mean(jnp.sum(jax.scipy.special.entr(probs_BTE), axis=-1)),
    }
    return y_BTD, aux
