"""``mova eval vqa``: exact-match VQA accuracy of a saved Mova checkpoint, per question type.

    mova eval vqa --model CKPT_DIR --data data/synthetic/test.json [--image-root DIR] [--out results.json]

Records are LLaVA-format QA records (a JSON list); a record's ``type`` field (e.g. ``"color"``) groups the
per-type rows of the table, and records without one count only in the overall row. ``--image-root``
defaults to the data file's folder (where the synthetic generator puts ``images/``). ``--out`` writes the
full result, every prediction included, as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mova.cli import register_eval


def add_vqa_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a folder saved by save_pretrained (model + processor)")
    p.add_argument("--data", required=True, help="LLaVA QA records (a JSON list), e.g. the synthetic test.json; "
                                                 "an optional per-record `type` field groups the table's rows")
    p.add_argument("--image-root", default=None, help="folder the records' image paths are relative to")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: enough for the longest gold answer")
    p.add_argument("--template", default=None, help="chat template (default: the model's)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N records")
    p.add_argument("--name", default="accuracy", help="the table's column name")
    p.add_argument("--device", default=None, help="e.g. cuda; default: cuda when available, else cpu")
    p.add_argument("--out", default=None, help="write the result (with predictions) to this JSON file")


def run_vqa(args: argparse.Namespace) -> int:
    import torch

    from mova.data.jsonio import read_json_records
    from mova.metrics.vqa import evaluate_vqa, format_accuracy_table
    from mova.model.builder import load_pretrained

    data = Path(args.data)
    records = read_json_records(data)[: args.limit]
    model, processor = load_pretrained(args.model, what="--model")
    model.to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result = evaluate_vqa(model, processor, records, args.image_root or data.parent, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, template=args.template)
    print(format_accuracy_table({args.name: result}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


register_eval("vqa", "exact-match VQA accuracy per question type (LLaVA-format QA records)", add_vqa_args, run_vqa)
