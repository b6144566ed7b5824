"""GSM8K-style evaluation of a checkpoint: accuracy of the final number, chain of thought or program answers.

    python eval/gsm8k.py --model CKPT_DIR [--data openai/gsm8k | FILE.jsonl | FOLDER] [--kind cot|program] \
        [--shots 8] [--fewshot FILE] [--limit N] --out-dir DIR

The same as ``mova eval gsm8k``; see docs/r3.md. Writes samples.jsonl and results.json to ``--out-dir``.
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
    """``mova eval gsm8k ARGS``: the same options, the same clean errors (exit status 2) for bad paths or options."""
    return mova_main(["eval", "gsm8k", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
