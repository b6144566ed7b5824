"""``mova eval NAME``: evaluate checkpoints. :data:`EVALS` maps each name to its sub-command.

    mova eval safety --model runs/dpo/final --data sqrti/SPA-VL --judge keyword --base-model runs/sft/final \\
        --out-dir runs/eval/safety-dpo
    mova eval gsm8k --model runs/r3/final --data openai/gsm8k --kind cot --shots 8 --out-dir runs/eval/gsm8k
    mova eval vqa --model runs/sft/final --data data/synthetic/test.json
    mova eval run --checkpoint runs/sft/final --tasks vqa,safety \\
        --task-option vqa.questions=data/synthetic/test.json --out-dir runs/eval
    torchrun --nproc_per_node 8 -m mova.cli eval run --checkpoint A --checkpoint B --tasks vqa,gsm8k
    mova eval compare runs/eval/*
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from mova.cli.command import Command
from mova.errors import ConfigError
from mova.registry import Registry


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


# --- mova eval gsm8k ----------------------------------------------------------------------------------
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
    p.add_argument("--chat-template", action="store_true",
                   help="put each prompt to the model as one user turn of its chat template (instruct models)")
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
                         extract=args.extract, template=args.template, chat_template=args.chat_template,
                         max_new_tokens=args.max_new_tokens,
                         stop=args.stop or ["Question:"], limit=args.limit, program_timeout_s=args.program_timeout)
    records = load_reasoning(config.data, split=config.split, limit=config.limit)
    start = time.monotonic()
    model, processor = load_model(args.model, device=args.device, dtype=args.dtype, what="--model")
    backend = TransformersBackend(model, processor, batch_size=args.batch_size, progress=not args.no_progress)
    out_dir = Path(args.out_dir)
    metrics = evaluate_gsm8k(backend_generate(backend, chat_template=config.chat_template), records, config,
                             out_dir / "samples.jsonl")
    results = {"model": args.model, "data": args.data, "split": args.split, "kind": args.kind,
               "shots": args.shots, "metrics": metrics, "seconds": round(time.monotonic() - start, 2)}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


# --- mova eval vqa ------------------------------------------------------------------------------------
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

    from mova.data.records import read_json_records
    from mova.evaluation.vqa import evaluate_vqa
    from mova.metrics.vqa import format_accuracy_table
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


# --- mova eval run / compare / tasks ----------------------------------------------------------------
def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "--model", dest="checkpoints", action="append", default=None,
                   help="checkpoint folder (repeat for a comparison): a Mova model or a plain causal LM")
    p.add_argument("--name", dest="names", action="append", default=None,
                   help="run name per checkpoint, in order (default: the folder name)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (mova eval tasks lists them)")
    p.add_argument("--task-option", action="append", metavar="TASK.KEY=VALUE", default=None,
                   help="a task option, repeatable: vqa.questions=q.jsonl, safety.judge=keyword, ...")
    p.add_argument("--config", default=None, help="a YAML file with any of these settings (the flags win)")
    p.add_argument("--out-dir", default=None, help="default runs/eval; one folder per checkpoint inside")
    p.add_argument("--batch-size", type=int, default=None, help="default 16")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 256 (tasks may set their own)")
    p.add_argument("--limit", type=int, default=None, help="first N samples of each task")
    p.add_argument("--seed", type=int, default=None, help="default 0; reset before every task")
    p.add_argument("--device", default=None, help="default: this process's GPU, else cpu")
    p.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: the checkpoint's)")
    p.add_argument("--template", default=None, help="chat template (default: the model's)")
    p.add_argument("--no-progress", action="store_true")


def build_config(args: argparse.Namespace) -> Any:
    """The :class:`SuiteConfig` of a YAML file (``--config``) overridden by the flags given."""
    from mova.config import load_yaml
    from mova.evaluation.suite import SuiteConfig, parse_task_options

    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    allowed = {f.name for f in fields(SuiteConfig)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{args.config}: unknown suite setting(s) {unknown}; known: {sorted(allowed)}")
    if isinstance(data.get("tasks"), str):
        data["tasks"] = [t.strip() for t in data["tasks"].split(",") if t.strip()]
    if isinstance(data.get("checkpoints"), str):
        data["checkpoints"] = [data["checkpoints"]]
    flags = {"checkpoints": args.checkpoints, "names": args.names, "out_dir": args.out_dir,
             "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens, "limit": args.limit,
             "seed": args.seed, "device": args.device, "dtype": args.dtype, "template": args.template}
    data.update({k: v for k, v in flags.items() if v is not None})
    if args.tasks:
        data["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
    options = {k: dict(v) for k, v in (data.get("task_options") or {}).items()}
    for task, opts in parse_task_options(args.task_option).items():
        options.setdefault(task, {}).update(opts)
    data["task_options"] = options
    if args.no_progress:
        data["progress"] = False
    data.setdefault("checkpoints", [])
    data.setdefault("tasks", [])
    return SuiteConfig(**data)


def run_eval_suite(args: argparse.Namespace) -> int:
    from mova.evaluation.suite import format_comparison, run_suite
    from mova.inference.sharding import init_distributed, is_main_process

    init_distributed()
    config = build_config(args)
    summaries = run_suite(config)
    if is_main_process():
        print(format_comparison(summaries))
        print(json.dumps({"out_dir": config.out_dir, "runs": list(summaries)}))
    return 0


def add_compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run folders written by mova eval run (or their summary.json)")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")


def run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mova.evaluation.suite import compare_runs

    table, _ = compare_runs(args.runs)
    print(table)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return 0


def run_tasks(args: argparse.Namespace) -> int:
    from mova.evaluation.tasks import load_tasks

    for name, (help_text, _) in sorted(load_tasks().items()):
        print(f"{name:12s} {help_text}")
    return 0


def add_tasks_args(p: argparse.ArgumentParser) -> None:
    """``mova eval tasks`` takes no options."""


#: ``mova eval NAME`` -> its sub-command.
EVALS: Registry[Command] = Registry("evaluation")
for _command in (
    Command("safety", "SPA-VL safety: unsafe rate on harm, win/tie/lose vs a base on help", add_safety_args,
            run_safety),
    Command("gsm8k", "GSM8K-style maths: accuracy of the final number (chain of thought or program)", add_gsm8k_args,
            run_gsm8k),
    Command("vqa", "exact-match VQA accuracy per question type (LLaVA-format QA records)", add_vqa_args, run_vqa),
    Command("run", "run evaluation tasks on one or more checkpoints (reproducible, one table)", add_run_args,
            run_eval_suite),
    Command("compare", "one table from several `mova eval run` folders", add_compare_args, run_compare),
    Command("tasks", "list the registered evaluation tasks", add_tasks_args, run_tasks),
):
    EVALS.register(_command.name, _command)


def _add_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_name", required=True, metavar="EVAL")
    for command in sorted(EVALS.values(), key=lambda c: c.name):
        command.add_to(sub)


def _run(args: argparse.Namespace) -> int:
    return EVALS[args.eval_name].run(args)


COMMAND = Command("eval", "evaluate a checkpoint (mova eval NAME ...; see mova eval -h)", _add_args, _run)
