"""Exact-match VQA accuracy of a saved Mova checkpoint, per question type.

    python eval/vqa.py --model CKPT_DIR --data data/synthetic/test.json [--image-root DIR] [--out results.json]

``--image-root`` defaults to the data file's folder (where the synthetic generator puts ``images/``).
Prints the accuracy table; ``--out`` writes the full result, every prediction included, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import mova  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mova.metrics.vqa import evaluate_vqa, format_accuracy_table  # noqa: E402
from mova.model.builder import load_pretrained  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a folder saved by save_pretrained (model + processor)")
    p.add_argument("--data", required=True, help="LLaVA QA records (a JSON list), e.g. the synthetic test.json")
    p.add_argument("--image-root", default=None, help="folder the records' image paths are relative to")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: enough for the longest gold answer")
    p.add_argument("--template", default=None, help="chat template (default: the model's)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N records")
    p.add_argument("--name", default="accuracy", help="the table's column name")
    p.add_argument("--device", default=None, help="e.g. cuda; default: cuda when available, else cpu")
    p.add_argument("--out", default=None, help="write the result (with predictions) to this JSON file")
    args = p.parse_args(argv)

    import torch

    data = Path(args.data)
    records = json.loads(data.read_text())[: args.limit]
    model, processor = load_pretrained(args.model)
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = evaluate_vqa(model, processor, records, args.image_root or data.parent, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, template=args.template)
    print(format_accuracy_table({args.name: result}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
