"""``mova eval run`` (the evaluation suite), ``mova eval compare`` and ``mova eval tasks``.

    mova eval run --checkpoint runs/sft/final --tasks vqa,safety \\
        --task-option vqa.questions=data/synthetic/test.json --out-dir runs/eval
    torchrun --nproc_per_node 8 -m mova.cli eval run --checkpoint A --checkpoint B --tasks vqa,gsm8k
    mova eval compare runs/eval/*
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from typing import Any

from mova.cli import register_eval
from mova.errors import ConfigError


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


def add_tasks_args(p: argparse.ArgumentParser) -> None:
    pass


def run_tasks(args: argparse.Namespace) -> int:
    from mova.evaluation.tasks import load_tasks

    for name, (help_text, _) in sorted(load_tasks().items()):
        print(f"{name:12s} {help_text}")
    return 0


register_eval("run", "run evaluation tasks on one or more checkpoints (reproducible, one table)", add_run_args,
              run_eval_suite)
register_eval("compare", "one table from several `mova eval run` folders", add_compare_args, run_compare)
register_eval("tasks", "list the registered evaluation tasks", add_tasks_args, run_tasks)
