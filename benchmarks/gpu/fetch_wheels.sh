#!/usr/bin/env bash
# Wheels for the GPU machine, which reaches no package index: the packages benchmarks/bench_shape.py needs beyond
# a stock PyTorch image, at the versions constraints.txt pins (the ones the CPU test suite runs). Run here, once;
# then name runs/gpu-wheels in the device call's carry (it travels with the working tree, 64 MiB in all).
#
#   bash benchmarks/gpu/fetch_wheels.sh            # -> runs/gpu-wheels/*.whl
#
# run_bench.sh installs from them only what the machine lacks or has too old (see NEEDED there).
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=runs/gpu-wheels
mkdir -p "$dest"
# what the machine's image did not list (open_clip, SAM, ftfy + wcwidth) and the Hugging Face stack Mova needs at
# its own versions (an image's older transformers 4.x cannot run Mova). `datasets` stays behind: the benchmark
# runs without it (transformers imports it only when installed), and the image has none.
packages=(open_clip_torch segment-anything ftfy wcwidth transformers huggingface_hub
          tokenizers safetensors accelerate peft httpx2 httpcore2 truststore kernels)
pins=()
for p in "${packages[@]}"; do
  pin=$(grep -i -E "^${p//-/[-_]}==" constraints.txt | head -1)
  [ -n "$pin" ] || { echo "no pin for $p in constraints.txt" >&2; exit 1; }
  pins+=("$pin")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$dest" "${pins[@]}"
du -sh "$dest"
