#!/usr/bin/env bash
# The accelerator benchmark, ready for the day a GPU or TPU is lent (issue 12, item 8).
#
#   bash benchmarks/accelerator.sh [OUT_DIR]        # under 10 minutes on one H100/H200-class GPU
#
# On whatever accelerator JAX sees:
#   1. the bf16 step benchmark of gpt_125m and gpt_1b (benchmarks/bench_step.py): step time,
#      tokens/s, MFU against the published bf16 peak (configs/hardware.py), peak memory;
#   2. the compiled FLOPs against 6ND on that device (python -m scaling.flops);
#   3. a 2-minute smoke run of python -m train on gpt_125m (synthetic data: no download);
#   4. OUT_DIR/accelerator.json with everything, and each step's log beside it.
# It measures and asserts nothing. MFU targets to aim for: >= 45% (125M), >= 55% (1B) on
# H100/H200 (cuDNN attention, remat and batch are the knobs). No accelerator has been lent to
# this project yet: this script has not run on one.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/accelerator}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv .venv && PY=.venv/bin/python
  $PY -m pip install -q --upgrade pip
  if command -v nvidia-smi >/dev/null; then EXTRA="jax[cuda12]"; else EXTRA="jax[tpu]"; fi
  $PY -m pip install -q -e '.[test]' "$EXTRA"
fi
$PY -c 'import jax; d = jax.devices()[0]; print(f"{jax.device_count()} x {d.device_kind} ({d.platform}), jax {jax.__version__}")' | tee "$OUT/devices.txt"
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9

step() {  # step NAME TIMEOUT_S COMMAND...: run, log, keep going on failure.
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $? ($(tail -n 1 "$OUT/$name.log" | cut -c1-160))"
}

# bf16 steps; gpt_1b with dots_no_batch remat (its default); cuDNN attention on NVIDIA GPUs.
ATTN=$($PY -c 'import jax; print("cudnn" if jax.devices()[0].platform == "gpu" else "xla")')
step bench_gpt_125m 180 $PY -m benchmarks.bench_step --config configs/gpt_125m.py \
  --config.model.attention_impl=$ATTN --config.data.global_batch_size=32 --depths= \
  --steps 10 --json="$OUT/bench_gpt_125m.json"
step bench_gpt_1b 240 $PY -m benchmarks.bench_step --config configs/gpt_1b.py \
  --config.model.attention_impl=$ATTN --config.data.global_batch_size=8 --config.mesh.fsdp=-1 \
  --config.mesh.data=1 --depths= --steps 5 --json="$OUT/bench_gpt_1b.json"
step flops_gpt_125m 120 $PY -m scaling.flops --config configs/gpt_125m.py \
  --config.model.attention_impl=$ATTN --config.data.global_batch_size=32 --nomemory \
  --json="$OUT/flops_gpt_125m.json"
step smoke_gpt_125m 150 $PY -m train --config configs/gpt_125m.py --workdir "$OUT/smoke_gpt_125m" \
  --config.model.attention_impl=$ATTN --config.data.source=synthetic --config.data.tokenizer=byte \
  --config.model.vocab_size=32768 --config.data.global_batch_size=32 --config.train.tokens=0 \
  --config.train.steps=300 --config.train.eval_every=100 --config.train.log_every=20 \
  --config.train.checkpoint_every=300 --config.optim.warmup_steps=30 --config.train.steps_per_call=0

$PY - "$OUT" <<'PYEOF'
import glob, json, os, sys, time
out = sys.argv[1]
result = {'date': time.strftime('%Y-%m-%d'), 'devices': open(os.path.join(out, 'devices.txt')).read().strip()}
for path in sorted(glob.glob(os.path.join(out, '*.json'))):
  if not path.endswith('accelerator.json'):
    with open(path) as f:
      result[os.path.basename(path)[:-5]] = json.load(f)
smoke = os.path.join(out, 'smoke_gpt_125m', 'summary.json')
if os.path.exists(smoke):
  with open(smoke) as f:
    s = json.load(f)
  result['smoke_gpt_125m'] = {k: s.get(k) for k in ('eval_loss', 'tokens_per_sec', 'mfu', 'startup', 'steps')}
with open(os.path.join(out, 'accelerator.json'), 'w') as f:
  json.dump(result, f, indent=1, default=str)
for k, v in result.items():
  if isinstance(v, dict) and 'mfu' in v:
    pub = v.get('mfu_published_peak')
    print(f'{k:<20} MFU {100 * (pub if pub is not None else v["mfu"]):.1f}% '
          f'({"published" if pub is not None else "measured"} peak)  '
          f'tokens/s {v.get("tokens_per_sec") or 0:,.0f}')
print(f'wrote {os.path.join(out, "accelerator.json")}')
PYEOF
