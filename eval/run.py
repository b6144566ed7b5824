"""Evaluate one or more checkpoints on several registered tasks, reproducibly, in one table.

    python eval/run.py --checkpoint CKPT [--checkpoint CKPT2] --tasks vqa,safety,gsm8k \
        --task-option vqa.questions=data/synthetic/test.json --out-dir runs/eval
    torchrun --nproc_per_node 8 eval/run.py --checkpoint CKPT --tasks vqa

The same as ``mova eval run``; see docs/evaluation.md.
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
    """``mova eval run ARGS``: the same options, the same clean errors (exit status 2) for bad paths or options."""
    return mova_main(["eval", "run", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
