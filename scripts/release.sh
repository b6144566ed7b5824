#!/usr/bin/env bash
# Release a checkpoint: export it as a Hugging Face folder, check that it loads without Mova and gives
# Mova's logits, and (with --push-to-hub REPO) upload it. The token comes from `hf auth login` or HF_TOKEN
# and is never printed or written.
#
#   scripts/release.sh CHECKPOINT OUT_DIR [--push-to-hub REPO] [--private] [other `mova export` options]
#   e.g. scripts/release.sh runs/sft/final release/mova-7b --merge-lora --eval-dir eval/out --push-to-hub me/mova-7b
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
if [ $# -lt 2 ]; then
  sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
fi
CHECKPOINT="$1"; OUT="$2"; shift 2
REPO=""; PUSH_ARGS=(); EXPORT_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --push-to-hub) REPO="$2"; shift 2 ;;
    --private) PUSH_ARGS+=("--private"); shift ;;
    --revision) PUSH_ARGS+=("--revision" "$2"); shift 2 ;;
    *) EXPORT_ARGS+=("$1"); shift ;;
  esac
done
NAME_ARGS=()
[ -n "$REPO" ] && NAME_ARGS=(--name "$REPO")
# Export and verify offline (nothing is downloaded); the upload alone needs the network.
python -m mova.cli export "$CHECKPOINT" --out "$OUT" --verify "${NAME_ARGS[@]}" "${EXPORT_ARGS[@]}"
if [ -n "$REPO" ]; then
  HF_HUB_OFFLINE=0 python -m mova.cli export --push-only "$OUT" --push-to-hub "$REPO" "${PUSH_ARGS[@]}"
fi
