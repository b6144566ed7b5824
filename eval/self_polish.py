"""Self-Polish on a maths word-problem file: accuracy with and without polishing in one report.

    python eval/self_polish.py --checkpoint CKPT --data gsm8k_test.jsonl --max-rounds 2 --final vote \
        --answer-style cot --out-dir runs/polish/ckpt

The same as ``mova polish``; see docs/evaluation.md. GSM8K, SVAMP, MultiArith and AQuA files are read as
released (``--format auto``).
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
    """``mova polish ARGS``: the same options, the same clean errors (exit status 2) for bad paths or options."""
    return mova_main(["polish", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
