#!/usr/bin/env bash
# Lint and run the test suite (installs into .venv on first use). Extra args go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
echo "[mova] ruff check"
ruff check .
# Tiny models gain nothing from intra-op threads, and the 2-process tests would oversubscribe 2 cores
# (measured: a tiny expert forward ran 20-100x slower with 2 OpenMP threads on a loaded 2-core box).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
echo "[mova] pytest"
python -m pytest -q "$@"
