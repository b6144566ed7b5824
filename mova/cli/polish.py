"""``mova polish``: Self-Polish a checkpoint on a maths word-problem file and report accuracy with and without.

    mova polish --checkpoint runs/sft/final --data gsm8k_test.jsonl --max-rounds 2 --final vote \\
        --answer-style cot --out-dir runs/polish/sft

Writes ``polish.jsonl`` (every version, raw answer and cleaned answer of each problem), ``results.json``
(the summary with the resolved settings, seed, versions and checkpoint) and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mova.cli.command import Command


def add_polish_args(p: argparse.ArgumentParser) -> None:
    from mova.data.polish_problems import PROBLEM_FORMATS
    from mova.evaluation.self_polish import ANSWER_STYLES, FINAL_RULES

    p.add_argument("--checkpoint", "--model", dest="checkpoint", required=True,
                   help="checkpoint folder or hub id (a Mova model or a plain causal LM)")
    p.add_argument("--data", required=True, help="problems: a JSON list or JSONL (GSM8K, SVAMP, MultiArith, AQuA)")
    p.add_argument("--format", default="auto", choices=["auto", *PROBLEM_FORMATS],
                   help="the data's record shape (default: from its keys)")
    p.add_argument("--max-rounds", type=int, default=2, help="rewrites at most (default 2; 0: no polishing)")
    p.add_argument("--final", default="vote", choices=FINAL_RULES,
                   help="final answer when the answers never agree (default: vote)")
    p.add_argument("--answer-style", default="cot", choices=ANSWER_STYLES, help="few-shot answer prompt style")
    p.add_argument("--answer-prompt", default=None, help="a prompt JSON file (or shipped name) for answering")
    p.add_argument("--rewrite-prompt", default="rewrite", help="a prompt JSON file (or shipped name) for rewriting")
    p.add_argument("--shots", type=int, default=None, help="few-shot examples to use (default: all in the file)")
    p.add_argument("--chat", action="store_true", help="send each prompt as a user turn of the chat template")
    p.add_argument("--answer-max-new-tokens", type=int, default=256)
    p.add_argument("--rewrite-max-new-tokens", type=int, default=200)
    p.add_argument("--limit", type=int, default=None, help="first N problems")
    p.add_argument("--backend", default="transformers", help="transformers | vllm (text models)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--no-progress", action="store_true")


def run_polish(args: argparse.Namespace) -> int:
    from mova.data.polish_problems import load_problems
    from mova.evaluation.provenance import run_provenance
    from mova.evaluation.self_polish import PolishConfig, SelfPolish, format_polish_table, summarize_polish
    from mova.inference.backends import load_backend
    from mova.inference.sharding import init_distributed, is_main_process, local_device, sharded_generation

    init_distributed()
    config = PolishConfig(max_rounds=args.max_rounds, final=args.final, answer_style=args.answer_style,
                          answer_prompt=args.answer_prompt, rewrite_prompt=args.rewrite_prompt, shots=args.shots,
                          chat=args.chat, answer_max_new_tokens=args.answer_max_new_tokens,
                          rewrite_max_new_tokens=args.rewrite_max_new_tokens, seed=args.seed)
    problems, fmt = load_problems(args.data, args.format, args.limit)
    options: dict[str, Any] = {"progress": not args.no_progress, "dtype": args.dtype}
    if args.backend == "transformers":
        options.update(batch_size=args.batch_size, device=args.device or local_device())
    backend = load_backend(args.checkpoint, args.backend, **options)
    t0 = time.perf_counter()
    with sharded_generation():
        results = SelfPolish(backend, config).run(problems)
    summary = summarize_polish(results, config.final)
    if not is_main_process():
        return 0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "polish.jsonl").open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    record = {"summary": summary, "data": str(args.data), "format": fmt, "backend": args.backend,
              "config": asdict(config), "seconds": round(time.perf_counter() - t0, 2),
              **run_provenance(args.checkpoint, seed=args.seed, argv=vars(args))}
    (out / "results.json").write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    table = format_polish_table({Path(str(args.checkpoint)).name or str(args.checkpoint): summary})
    (out / "results.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


COMMAND = Command("polish", "Self-Polish: rewrite maths problems before answering; accuracy with and without",
                  add_polish_args, run_polish)
