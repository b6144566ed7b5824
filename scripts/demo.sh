#!/usr/bin/env bash
# The quickstart: generate synthetic image data, train the tiny model (align, then sft) on CPU, and
# print held-out accuracy per question type next to the same recipe with the images blanked.
# Extra arguments go to `mova demo` (e.g. --sft-steps 400 --no-blanked).
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# One OpenMP thread: the measured timings in the README used it (tiny models, 2 cores, OCR beside them).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m mova.cli demo "$@"
