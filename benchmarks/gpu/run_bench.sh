#!/usr/bin/env bash
# benchmarks/bench_shape.py at full shape (the `bench` preset) on one fresh GPU machine, in under 10 minutes,
# with results written under $OUT (default runs/bench-gpu). The machine needs only this repository and the
# wheels of benchmarks/gpu/fetch_wheels.sh (runs/gpu-wheels, 24 MB; the tree travels under the 64 MiB cap).
#
#   here:   bash benchmarks/gpu/fetch_wheels.sh
#   there:  bash benchmarks/gpu/run_bench.sh          (device call: carry ["runs/gpu-wheels"], timeout_s 600)
#
# Output (at most 8 files, flat): env.txt (GPU, versions), sft.md (tokens/s, MFU, packing, cached features,
# activation checkpointing, profiler top ops), dpo.md (pair-shared vs padded), rl.md (PPO / GRPO time split),
# memory.md (peak memory per stage and option), run.log (everything printed). Each section runs in its own
# process under a share of a 570 s budget, so a section that fails or overruns leaves the others' results.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/bench-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
BUDGET=${BUDGET:-570}
SHAPE=${SHAPE:-full}  # SHAPE=quick checks the plumbing on a CPU in a minute
start=$(date +%s)
log() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/run.log"; }

# 1. packages the stock image lacks, at the versions the CPU suite runs (installed beside, not over, the image's)
if compgen -G "runs/gpu-wheels/*.whl" > /dev/null; then
  for w in runs/gpu-wheels/*.whl; do  # one by one: a wheel for another Python version must not stop the rest
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$w" \
      >> "$OUT/run.log" 2>&1 || log "not installed: $(basename "$w") (see run.log)"
  done
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
  log "no runs/gpu-wheels: using the image's packages"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 - <<'PY'
import importlib.metadata as md, torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU visible")
for name in ("transformers", "huggingface_hub", "tokenizers", "accelerate", "peft", "open_clip_torch",
             "segment_anything", "timm", "flash_attn"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
import mova.trainers.stages, mova.trainers.dpo, mova.trainers.grpo, open_clip, segment_anything  # noqa: E401,F401
print("imports ok")
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$OUT/run.log"
grep -q "imports ok" "$OUT/env.txt" || { log "imports failed: see env.txt"; exit 1; }

# 2. the sections, each with a cap and never past the budget
run() {  # run NAME CAP ARGS...
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - start) ))
  local t=$(( cap < left ? cap : left ))
  if (( t < 20 )); then log "$name: skipped, budget spent"; return; fi
  log "$name: up to $t s"
  timeout --signal=INT --kill-after=10 "$t" python3 benchmarks/bench_shape.py --shape "$SHAPE" --out "$OUT/$name.md" \
    "$@" >> "$OUT/run.log" 2>&1
  log "$name: exit $?"
}
run sft 200 --sections sft --profile
run dpo 90 --sections dpo
run rl 150 --sections rl
run memory 200 --sections none --memory --deadline 130
log "done"
