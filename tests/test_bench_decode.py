"""The decode benchmark's byte arithmetic against the arrays a decode step actually reads."""

import jax
import numpy as np
import pytest
from flax import nnx

from benchmarks import bench_decode
from model import decode
from model.transformer import Transformer


def _param_bytes(cfg) -> dict[str, int]:
  """{parameter path: bytes} of the model's stored parameters (shapes only, nothing allocated)."""
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  return {'/'.join(map(str, p)): int(np.prod(v.shape)) * v.dtype.itemsize
          for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


@pytest.mark.parametrize('tie', [False, True])
@pytest.mark.parametrize('overrides', [dict(n_kv_heads=2), dict(attention='mla', mla_kv_rank=16,
                                                                 mla_rope_dim=4)])
def test_step_bytes_are_the_weights_and_cache_read(tie, overrides):
  cfg = bench_decode.model_config(vocab_size=300, d_model=64, n_layers=3, n_heads=4, d_ff=96,
                                  tie_embeddings=tie, **overrides)
  B, T = 5, 40
  params = _param_bytes(cfg)
  table = params['embed_VD']
  weights = sum(params.values()) - (0 if tie else table - B * 64 * 4)  # Untied: B rows of the table.
  cache = jax.eval_shape(lambda: decode.init_cache(cfg, B, T))
  kv = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(cache))
  got = bench_decode.step_bytes(cfg, B, T)
  assert got == {'weights': weights, 'kv': kv, 'total': weights + kv}


def test_the_bandwidth_is_the_one_measured_nearest_the_working_set():
  curve = {16: 20.0, 64: 12.0, 1024: 9.0}
  assert bench_decode.bandwidth_for(curve, 10) == 20.0
  assert bench_decode.bandwidth_for(curve, 25) == 20.0  # Nearer in log size: 25/16 < 64/25.
  assert bench_decode.bandwidth_for(curve, 40) == 12.0  # 64/40 < 40/16.
  assert bench_decode.bandwidth_for(curve, 5000) == 9.0
