#!/usr/bin/env bash
# Launch a stage with the deepspeed launcher; HOSTFILE (optional) lists the nodes ("host slots=8" per line).
#   bash scripts/train_deepspeed.sh sft --config train/configs/mova7b_sft.yaml train.deepspeed=scripts/zero3.json
#   HOSTFILE=scripts/hostfile.example bash scripts/train_deepspeed.sh sft --config ...
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
args=()
if [ -n "${HOSTFILE:-}" ]; then args+=(--hostfile "$HOSTFILE"); fi
if [ -n "${NUM_GPUS:-}" ]; then args+=(--num_gpus "$NUM_GPUS"); fi
exec deepspeed "${args[@]}" --module mova.cli train "$@"
