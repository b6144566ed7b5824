#!/usr/bin/env bash
# Lint and run the test suite (installs into .venv on first use). Extra args go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
echo "[mova] ruff check"
ruff check .
echo "[mova] pytest"
python -m pytest -q "$@"
