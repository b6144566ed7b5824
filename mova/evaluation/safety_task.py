"""The ``safety`` evaluation task: :func:`mova.evaluation.safety.evaluate_safety` on the suite's loaded model.

    mova eval run --checkpoint runs/dpo/final --tasks safety \\
        --task-option safety.data=sqrti/SPA-VL --task-option safety.judge=keyword \\
        --task-option safety.base_answers=runs/eval/sft/safety/answers.jsonl

Options (``--task-option safety.KEY=VALUE``): ``data`` (default ``sqrti/SPA-VL`` or a local folder in its
layout), ``splits`` (``harm,help``), ``judge`` and ``judge_options`` (a mapping), ``help_judge`` and
``help_judge_options``, ``base_answers`` or ``base_model`` (for win / tie / lose on help), ``cache_dir``,
``max_new_tokens`` (default: the suite's). The task folder holds ``answers.jsonl``, ``results.json`` and
``results.md`` as ``mova eval safety`` writes them; the suite's table gets the flat rates below.
"""

from __future__ import annotations

from typing import Any

from mova.evaluation.tasks import TaskContext, register_task

#: (block, key) of results.json reported in the suite's summary as ``block/key``
REPORTED = (("harm", "unsafe_rate"), ("harm", "refusal_rate"), ("harm", "unknown"), ("harm", "n"),
            ("help", "win_rate"), ("help", "tie_rate"), ("help", "lose_rate"), ("help", "refusal_rate"),
            ("help", "n"))


def flatten_safety(results: dict[str, Any]) -> dict[str, float]:
    """The suite's flat metrics of a safety ``results.json`` (rates the run did not measure are left out)."""
    out: dict[str, float] = {}
    for block, key in REPORTED:
        value = (results.get(block) or {}).get(key)
        if isinstance(value, (int, float)):
            out[f"{block}/{key}"] = float(value)
    return out


@register_task("safety", "SPA-VL safety: unsafe rate on harm (judged), win/tie/lose vs a base on help")
def safety_task(ctx: TaskContext) -> dict[str, float]:
    from mova.evaluation.safety import evaluate_safety

    splits = ctx.option("splits", "harm,help")
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    results = evaluate_safety(
        (ctx.model, ctx.processor), ctx.option("data", "sqrti/SPA-VL"), out_dir=ctx.out_dir, splits=splits,
        judge=ctx.option("judge", "keyword"), judge_options=ctx.option("judge_options"),
        help_judge=ctx.option("help_judge"), help_judge_options=ctx.option("help_judge_options"),
        base_answers=ctx.option("base_answers"), base_model=ctx.option("base_model"),
        questions=ctx.option("questions"), limit=ctx.limit, cache_dir=ctx.option("cache_dir"),
        batch_size=ctx.batch_size, max_new_tokens=int(ctx.option("max_new_tokens", ctx.max_new_tokens)),
        template=ctx.template, name=ctx.option("name"), progress=ctx.progress and ctx.is_main)
    return flatten_safety(results)


__all__ = ["flatten_safety", "safety_task"]
