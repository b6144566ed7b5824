# Sourced by the other scripts: make sure .venv exists with Mova and its dependencies installed.
# Re-installs when setup.py changes (a stamp file records the hash of the install inputs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
STAMP="$VENV/.mova-install-$(cat setup.py | sha1sum | cut -c1-12)"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[mova] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[mova] installing Mova and its dependencies into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  rm -f "$VENV"/.mova-install-*
  touch "$STAMP"
fi
# lm-evaluation-harness is the reference the GSM8K answer extraction is tested against; only its filters are
# used, so it goes in without its ~27 dependencies (scipy, scikit-learn, evaluate, ...).
if ! "$VENV/bin/python" -c "import lm_eval.filters.extraction" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet --no-deps "lm-eval==0.4.13"
fi
export PATH="$VENV/bin:$PATH"
# Nothing is ever downloaded at run time: a hidden hub download fails loudly instead.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
