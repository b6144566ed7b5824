#!/usr/bin/env bash
# Record the versions in .venv as constraints.txt (run after `bash scripts/test.sh` passed on them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
{
  echo "# Exact versions the test suite last passed with (Python $(.venv/bin/python -c 'import platform; print(platform.python_version())'), $(uname -m); $(date +%F))."
  echo "# scripts/_env.sh installs through this file; MOVA_DEPS=latest bash scripts/test.sh runs the suite against"
  echo "# the newest releases instead (in .venv-latest). Regenerate after a green run: bash scripts/pin.sh"
  .venv/bin/python -m pip freeze --exclude-editable | grep -v '^-e '
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
