"""The ``trace`` evaluation task: score a checkpoint on every task of a TRACE-layout folder.

    mova eval run --checkpoint runs/continual_tiny/seqft/tasks/04-simplify/model --tasks trace \\
        --task-option trace.tasks_dir=runs/trace_mini

Each task's split (``test`` by default) is answered from its raw prompts (no chat template, as in training,
see :mod:`mova.continual.evaluate`) and scored with the task's metric; ``<task>.jsonl`` in the task folder
keeps every output. Returns one score per task (0-1) and their mean (``average``: the OP of this checkpoint
over the tasks scored).

Options: ``tasks_dir`` (required), ``order`` (a list or comma-separated names; default all), ``split``,
``answer_marker`` (read the answer after it, for RCL-trained models, e.g. ``"Answer:"``), ``max_new_tokens``
(default: the suite's).
"""

from __future__ import annotations

from mova.continual.evaluate import evaluate_records
from mova.data.trace import task_order
from mova.evaluation.tasks import TaskContext, register_task


@register_task("trace", "TRACE-layout continual-learning tasks, each with its own metric (accuracy, ROUGE-L, "
                        "edit similarity, SARI)")
def trace_task(ctx: TaskContext) -> dict[str, float]:
    from mova.inference.sampling import SamplingParams

    order = ctx.option("order")
    if isinstance(order, str):
        order = [n.strip() for n in order.split(",") if n.strip()]
    tasks = task_order(ctx.option("tasks_dir", required=True), order or None)
    split = ctx.option("split", "test")
    marker = ctx.option("answer_marker")
    backend = ctx.backend()

    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        params = SamplingParams(max_new_tokens=max_new_tokens)
        return [g.text for g in backend.generate(prompts, params=params, desc="trace")]

    scores: dict[str, float] = {}
    for task in tasks:
        max_new = int(ctx.option("max_new_tokens", task.options.get("max_new_tokens", ctx.max_new_tokens)))
        out = ctx.out_dir / f"{task.name}.jsonl" if ctx.is_main else None
        scores[task.name] = evaluate_records(generate, task.records(split, ctx.limit), task.metric,
                                             max_new_tokens=max_new, answer_marker=marker, out_path=out)
    scores["average"] = sum(scores.values()) / len(scores) if scores else 0.0
    return scores
