"""SPA-VL safety evaluation of a checkpoint: unsafe rate on harm, win / tie / lose against a base on help.

    python eval/safety.py --model CKPT_DIR --data sqrti/SPA-VL [--judge keyword|classifier|llm|reward] \
        [--judge-model PATH] [--base-model PATH | --base-answers FILE] [--limit N] --out-dir DIR

The same as ``mova eval safety``; see docs/safety_eval.md. Writes answers.jsonl, results.json and results.md
to ``--out-dir`` and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import mova  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mova.safety_cli import add_safety_args, run_safety  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_safety_args(parser)
    return run_safety(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
