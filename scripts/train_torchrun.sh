#!/usr/bin/env bash
# Launch a stage with torchrun (DDP, or DeepSpeed when the recipe / overrides name a config).
#   NPROC=8 bash scripts/train_torchrun.sh sft --config train/configs/mova7b_sft.yaml train.deepspeed=scripts/zero3.json
# Several nodes: set NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on each node (see docs/distributed.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec torchrun \
  --nproc_per_node "${NPROC:-$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')}" \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m mova.cli train "$@"
