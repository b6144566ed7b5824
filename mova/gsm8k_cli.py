"""``mova eval gsm8k``: GSM8K-style maths evaluation of one checkpoint (registered in :data:`mova.cli.EVALS`).

    mova eval gsm8k --model runs/r3/final --data openai/gsm8k --kind cot --shots 8 --out-dir runs/eval/gsm8k
    mova eval gsm8k --model runs/sft/final --data data/arith_mini --shots 0 --kind program --out-dir runs/eval/p

Writes ``samples.jsonl`` (one line per question) and ``results.json`` to ``--out-dir`` and prints the metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mova.cli import register_eval


def add_gsm8k_args(p: argparse.ArgumentParser) -> None:
    """The arguments of ``mova eval gsm8k`` (also used by ``eval/gsm8k.py``)."""
    p.add_argument("--model", required=True, help="checkpoint folder (a Mova model or a plain causal LM)")
    p.add_argument("--data", default="openai/gsm8k",
                   help="a .jsonl/.json file, a folder with SPLIT.jsonl, or a hub dataset (default: openai/gsm8k)")
    p.add_argument("--split", default="test")
    p.add_argument("--kind", default="cot", choices=["cot", "program"],
                   help="cot: read '#### value'; program: run the written solution() in the sandbox")
    p.add_argument("--fewshot", default="default",
                   help="few-shot file (default: mova/assets/fewshot/gsm8k.jsonl; 'none': zero-shot)")
    p.add_argument("--shots", type=int, default=8, help="number of few-shot examples (0: zero-shot)")
    p.add_argument("--extract", default="gsm8k", help="cot answer extraction: gsm8k | strict | flexible | answer_is")
    p.add_argument("--template", default=None, help="prompt template with {question} (default: the R3 format)")
    p.add_argument("--limit", type=int, default=None, help="first N questions")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--stop", action="append", default=None, help="stop string, repeatable (default: 'Question:')")
    p.add_argument("--program-timeout", type=float, default=5.0, help="seconds per program (--kind program)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: the checkpoint's)")
    p.add_argument("--out-dir", required=True, help="where samples.jsonl and results.json go")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_gsm8k(args: argparse.Namespace) -> int:
    from mova.data.reasoning import load_reasoning
    from mova.evaluation.gsm8k import Gsm8kConfig, backend_generate, evaluate_gsm8k
    from mova.inference.backends import TransformersBackend
    from mova.inference.generation import load_model

    config = Gsm8kConfig(data=args.data, split=args.split, kind=args.kind, fewshot=args.fewshot, shots=args.shots,
                         extract=args.extract, template=args.template, max_new_tokens=args.max_new_tokens,
                         stop=args.stop or ["Question:"], limit=args.limit, program_timeout_s=args.program_timeout)
    records = load_reasoning(config.data, split=config.split, limit=config.limit)
    start = time.monotonic()
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype, what="--model")
    backend = TransformersBackend(model, processor, batch_size=args.batch_size, progress=not args.no_progress)
    out_dir = Path(args.out_dir)
    metrics = evaluate_gsm8k(backend_generate(backend), records, config, out_dir / "samples.jsonl")
    results = {"model": args.model, "data": args.data, "split": args.split, "kind": args.kind,
               "shots": args.shots, "metrics": metrics, "seconds": round(time.monotonic() - start, 2)}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


register_eval("gsm8k", "GSM8K-style maths: accuracy of the final number (chain of thought or program)",
              add_gsm8k_args, run_gsm8k)
