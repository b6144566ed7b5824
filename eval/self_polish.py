"""Self-Polish on a maths word-problem file: accuracy with and without polishing in one report.

    python eval/self_polish.py --checkpoint CKPT --data gsm8k_test.jsonl --max-rounds 2 --final vote \
        --answer-style cot --out-dir runs/polish/ckpt

The same as ``mova polish``; see docs/evaluation.md. GSM8K, SVAMP, MultiArith and AQuA files are read as
released (``--format auto``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import mova  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mova.polish_cli import add_polish_args, run_polish  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_polish_args(parser)
    return run_polish(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
