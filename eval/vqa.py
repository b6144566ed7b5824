"""Exact-match VQA accuracy of a saved Mova checkpoint, per question type (the same as ``mova eval vqa``).

    python eval/vqa.py --model CKPT_DIR --data data/synthetic/test.json [--image-root DIR] [--out results.json]

A record's optional ``type`` field (e.g. ``"color"``) groups the per-type rows; records without one count in
the overall row only. ``--image-root`` defaults to the data file's folder (where the synthetic generator puts
``images/``). Prints the accuracy table; ``--out`` writes the full result, every prediction included, as JSON.
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
    """``mova eval vqa ARGS``: the same options, the same clean errors (exit status 2) for bad paths or options."""
    return mova_main(["eval", "vqa", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
