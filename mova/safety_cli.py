"""``mova eval safety``: the SPA-VL safety evaluation (registered in :data:`mova.cli.EVALS`).

    mova eval safety --model runs/dpo/final --data sqrti/SPA-VL --judge keyword \\
        --base-model runs/sft/final --out-dir runs/eval/safety-dpo
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mova.cli import register_eval
from mova.errors import ConfigError


# --- mova eval safety ------------------------------------------------------------------------------
def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs with YAML-typed values (``threshold=0.3`` is a float, ``unsafe_label=1`` an int)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"judge option {item!r} is not KEY=VALUE")
        options[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return options


def add_safety_args(p: argparse.ArgumentParser) -> None:
    """The arguments of ``mova eval safety`` (also used by ``eval/safety.py``)."""
    p.add_argument("--model", required=True, help="checkpoint folder (a Mova model, or a plain causal LM: text-only)")
    p.add_argument("--data", default="sqrti/SPA-VL", help="sqrti/SPA-VL or a local folder in its layout")
    p.add_argument("--cache-dir", default=None, help="where datasets caches the data (default: its own cache)")
    p.add_argument("--splits", default="harm,help", help="comma-separated test splits (default: harm,help)")
    p.add_argument("--judge", default="keyword", help="keyword | classifier | llm | reward (default: keyword)")
    p.add_argument("--judge-model", help="the judge's model folder (classifier, llm, reward)")
    p.add_argument("--judge-option", action="append", metavar="KEY=VALUE",
                   help="a judge option, repeatable: threshold=0.3, unsafe_label=unsafe, tie_tolerance=0.1, ...")
    p.add_argument("--help-judge", help="judge for the help comparison (default: the judge when it can compare, "
                                        "else the keyword rule)")
    p.add_argument("--help-judge-model", help="the help judge's model folder")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--base-model", help="base checkpoint whose help answers ours are compared with")
    base.add_argument("--base-answers", help="a previous run's answers.jsonl / base_answers.jsonl to compare with")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--template", default=None, help="chat template (default: the model's)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: the checkpoint's)")
    p.add_argument("--name", default=None, help="the run's column name in results.md (default: the model folder)")
    p.add_argument("--out-dir", required=True, help="where answers.jsonl, results.json and results.md go")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_safety(args: argparse.Namespace) -> int:
    """Run :func:`mova.evaluation.safety.evaluate_safety` from parsed arguments and print the table."""
    from mova.evaluation.safety import evaluate_safety, format_safety_table
    from mova.model.checkpoints import resolve_checkpoint

    # the model folders first: a wrong path is named before any data is read
    for flag, ref in (("--model", args.model), ("--base-model", args.base_model), ("--judge-model", args.judge_model),
                      ("--help-judge-model", args.help_judge_model)):
        if ref:
            resolve_checkpoint(ref, flag)
    judge_options = parse_options(args.judge_option)
    if args.judge_model:
        judge_options["path"] = args.judge_model
    if args.device and args.judge != "keyword":
        judge_options.setdefault("device", args.device)
    help_options: dict[str, Any] = {}
    if args.help_judge_model:
        help_options["path"] = args.help_judge_model
    if args.device and args.help_judge not in (None, "keyword"):
        help_options.setdefault("device", args.device)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    results = evaluate_safety(args.model, args.data, out_dir=args.out_dir, splits=splits, judge=args.judge,
                              judge_options=judge_options, help_judge=args.help_judge,
                              help_judge_options=help_options, base_answers=args.base_answers,
                              base_model=args.base_model, limit=args.limit, batch_size=args.batch_size,
                              max_new_tokens=args.max_new_tokens, template=args.template, device=args.device,
                              dtype=args.dtype, cache_dir=args.cache_dir, name=args.name, progress=not args.no_progress)
    print(format_safety_table({results["name"]: results}))
    print(json.dumps({"out_dir": args.out_dir, "seconds": results["seconds"]}))
    return 0


register_eval("safety", "SPA-VL safety: unsafe rate on harm, win/tie/lose vs a base on help", add_safety_args,
              run_safety)
