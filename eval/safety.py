"""SPA-VL safety evaluation of a checkpoint: unsafe rate on harm, win / tie / lose against a base on help.

    python eval/safety.py --model CKPT_DIR --data sqrti/SPA-VL [--judge keyword|classifier|llm|reward] \
        [--judge-model PATH] [--base-model PATH | --base-answers FILE] [--limit N] --out-dir DIR

The same as ``mova eval safety``; see docs/safety_eval.md. Writes answers.jsonl, results.json and results.md
to ``--out-dir`` and prints the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import mova  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mova.cli import main as mova_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """``mova eval safety ARGS``: the same options, the same clean errors (exit status 2) for bad paths or options."""
    return mova_main(["eval", "safety", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
