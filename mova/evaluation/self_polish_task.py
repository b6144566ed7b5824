"""The suite's ``self_polish`` task: Self-Polish (:mod:`mova.evaluation.self_polish`) on a problem file, with
the accuracy without and with polishing in the suite's table.

    mova eval run --checkpoint runs/sft/final --tasks gsm8k,self_polish \\
        --task-option self_polish.data=gsm8k_test.jsonl --task-option self_polish.max_rounds=2

Options: ``data`` (required; GSM8K, SVAMP, MultiArith or AQuA records), ``format`` (``auto``), and any
:class:`~mova.evaluation.self_polish.PolishConfig` field (``max_rounds``, ``final``, ``answer_style``,
``shots``, ``chat``, ...). Writes ``polish.jsonl`` (every version and answer) to the task folder.
"""

from __future__ import annotations

import json
from dataclasses import fields

from mova.errors import ConfigError
from mova.evaluation.tasks import TaskContext, register_task


@register_task("self_polish", "Self-Polish on maths word problems: accuracy without and with problem rewriting")
def self_polish_task(ctx: TaskContext) -> dict[str, float]:
    from mova.data.polish_problems import load_problems
    from mova.evaluation.self_polish import PolishConfig, SelfPolish, summarize_polish

    allowed = {f.name for f in fields(PolishConfig)}
    settings = {k: v for k, v in ctx.options.items() if k not in ("data", "format")}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(f"unknown self_polish option(s) {unknown}; known: data, format, {', '.join(sorted(allowed))}")
    settings.setdefault("seed", ctx.seed)
    config = PolishConfig(**settings)
    problems, _ = load_problems(ctx.option("data", required=True), ctx.option("format", "auto"), ctx.limit)
    results = SelfPolish(ctx.backend(), config).run(problems)
    if ctx.is_main:
        with (ctx.out_dir / "polish.jsonl").open("w", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    s = summarize_polish(results, config.final)
    metrics = {"n": float(s["n"]), "converged_rate": s["converged_rate"], "mean_rewrites": s["mean_rewrites"]}
    if s["accuracy_original"] is not None:
        metrics.update(accuracy_original=s["accuracy_original"], accuracy_polished=s["accuracy_polished"],
                       **{f"accuracy_final_{rule}": v for rule, v in s["accuracy_by_rule"].items()})
    return metrics
