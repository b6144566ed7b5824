"""The continual loop: train tasks 1..T in order, checkpoint after each, score every seen task, resume.

Per strategy, under ``output_dir/<strategy>/``::

    state.json                 the commit record: R rows, baseline, probes, notes (rewritten atomically)
    baseline/<task>.jsonl      the starting model's outputs (FWT's b_i)
    tasks/NN-<task>/model/     the model after task NN (the next task starts from it)
    tasks/NN-<task>/train/     the trainer's run folder (summary.json, loss curve)
    tasks/NN-<task>/eval/      per-sample outputs of every task scored after task NN

A task counts as done only once its row is in ``state.json``, which is written after its checkpoint and the
strategy's own state (EWC's Fisher): a run killed anywhere restarts at the first task without a row, from
the last finished task's checkpoint, with the earlier rows untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mova.config import TrainConfig
from mova.continual.config import ContinualConfig
from mova.continual.evaluate import evaluate_records, model_generate_fn
from mova.continual.scores import summarize
from mova.continual.strategies import Strategy, build_strategy
from mova.data.trace import TraceTask, read_split, task_order

logger = logging.getLogger(__name__)

#: called after each finished task as ``fn(strategy_name, t, state)`` (tests raise from it to simulate a kill).
TaskHook = Callable[[str, int, dict[str, Any]], None]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def task_dir(run_dir: Path, t: int, task: TraceTask) -> Path:
    return run_dir / "tasks" / f"{t:02d}-{task.name}"


def _max_new_tokens(cfg: ContinualConfig, task: TraceTask, strategy: Strategy) -> int:
    base = int(task.options.get("max_new_tokens", cfg.eval.max_new_tokens))
    return base + (cfg.rcl.max_new_tokens if strategy.answer_marker else 0)


def _score_tasks(cfg: ContinualConfig, strategy: Strategy, tasks: list[TraceTask], which: list[int], model: Any,
                 tokenizer: Any, out: Path) -> list[float | None]:
    generate = model_generate_fn(model, tokenizer, cfg.eval.batch_size)
    row: list[float | None] = [None] * len(tasks)
    for i in which:
        task = tasks[i]
        row[i] = evaluate_records(generate, task.records(cfg.eval.split, cfg.eval.limit), task.metric,
                                  max_new_tokens=_max_new_tokens(cfg, task, strategy),
                                  answer_marker=strategy.answer_marker, out_path=out / f"{task.name}.jsonl")
    return row


def _score_probes(cfg: ContinualConfig, strategy: Strategy, model: Any, tokenizer: Any, out: Path
                  ) -> dict[str, float]:
    from mova.model.processing_text import as_processor
    from mova.model.templates import user_turn_prompt

    generate = model_generate_fn(model, tokenizer, cfg.eval.batch_size)
    scores = {}
    for p in cfg.probes():
        extra = cfg.rcl.max_new_tokens if strategy.answer_marker else 0
        records = read_split(Path(p.path), p.limit)
        if p.chat_template:
            tok = as_processor(tokenizer).tokenizer
            records = [{**r, "prompt": user_turn_prompt(tok, r["prompt"])} for r in records]
        scores[p.name] = evaluate_records(generate, records, p.metric,
                                          max_new_tokens=p.max_new_tokens + extra,
                                          answer_marker=strategy.answer_marker, out_path=out / f"probe_{p.name}.jsonl")
    return scores


def _task_train_config(cfg: ContinualConfig, strategy: Strategy, task: TraceTask) -> TrainConfig:
    import dataclasses

    base = dataclasses.replace(cfg.train, num_train_epochs=float(cfg.epochs.get(task.name, cfg.train.num_train_epochs)))
    return strategy.train_config(base)


def _save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def run_strategy(cfg: ContinualConfig, name: str, tasks: list[TraceTask] | None = None,
                 on_task_end: TaskHook | None = None) -> dict[str, Any]:
    """Run (or resume) one strategy over the task sequence; returns its results (R, OP, BWT, FWT, ...)."""
    from mova.inference.generation import load_model
    from mova.trainers.text_sft import train_prompt_answer

    tasks = tasks or task_order(cfg.tasks_dir, cfg.order or None)
    names = [t.name for t in tasks]
    run_dir = Path(cfg.output_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state and state.get("tasks") != names:
        raise RuntimeError(f"{run_dir}: the run there used tasks {state.get('tasks')}, this config {names}; "
                           "use another output_dir")
    state.setdefault("tasks", names)
    state.setdefault("strategy", name)
    state.setdefault("R", [])
    state.setdefault("notes", {})
    state.setdefault("train", [])
    strategy = build_strategy(name, cfg, tasks, run_dir)
    done = len(state["R"])
    if done:
        logger.info("%s: resuming after task %d (%s)", name, done, names[done - 1])
        strategy.load_state()
    start_model = str(task_dir(run_dir, done - 1, tasks[done - 1]) / "model") if done else cfg.model
    model, tokenizer = load_model(start_model, device=cfg.device)

    if "baseline" not in state:
        state["baseline"] = None
        if cfg.eval.baseline:
            state["baseline"] = _score_tasks(cfg, strategy, tasks, list(range(len(tasks))), model, tokenizer,
                                             run_dir / "baseline")
            if cfg.probes():
                state["probes_start"] = _score_probes(cfg, strategy, model, tokenizer, run_dir / "baseline")
        _write_json(state_path, state)

    last = len(tasks) if cfg.stop_after is None else min(len(tasks), cfg.stop_after)
    if done < last:
        strategy.before_run()
    for t in range(done, last):
        task = tasks[t]
        folder = task_dir(run_dir, t, task)
        started = time.perf_counter()
        records = strategy.records_for(t)
        summary = train_prompt_answer(model, tokenizer, records, _task_train_config(cfg, strategy, task),
                                      folder / "train", separator=cfg.separator, max_length=cfg.max_length,
                                      extra_loss=strategy.extra_loss(),
                                      summary_extra={"task": task.name, "strategy": name})
        strategy.after_task(t, model, tokenizer, records)
        _save_model(model, tokenizer, folder / "model")
        strategy.save_state()
        which = list(range(len(tasks))) if cfg.eval.all_tasks else list(range(t + 1))
        if cfg.eval.eval_next and t + 1 < len(tasks) and not cfg.eval.all_tasks:
            which.append(t + 1)
        row = _score_tasks(cfg, strategy, tasks, which, model, tokenizer, folder / "eval")
        if cfg.probes():
            state.setdefault("probes", []).append(_score_probes(cfg, strategy, model, tokenizer, folder / "eval"))
        state["R"].append(row)
        state["train"].append({"task": task.name, "samples": len(records), "steps": summary.get("global_step"),
                               "last_loss": summary.get("last_loss"),
                               "seconds": round(time.perf_counter() - started, 2)})
        state["notes"] = {**state["notes"], **json.loads(json.dumps(strategy.notes))}
        _write_json(state_path, state)
        if cfg.keep_checkpoints == "last" and t > 0:
            shutil.rmtree(task_dir(run_dir, t - 1, tasks[t - 1]) / "model", ignore_errors=True)
        logger.info("%s: after %s: %s", name, task.name, {n: v for n, v in zip(names, row) if v is not None})
        if on_task_end is not None:
            on_task_end(name, t, state)
    return results_of(state)


def results_of(state: dict[str, Any]) -> dict[str, Any]:
    """R, baseline, OP_t / BWT_t / OP / BWT / FWT and the probes' deltas from a strategy's state."""
    out = {"tasks": state["tasks"], "R": state["R"], "baseline": state.get("baseline"),
           **summarize(state["R"], state.get("baseline")), "train": state.get("train", []),
           "notes": state.get("notes", {}), "complete": len(state["R"]) == len(state["tasks"])}
    if state.get("probes_start") is not None and state.get("probes"):
        start = state["probes_start"]
        out["probes"] = {"start": start, "after_task": state["probes"],
                         "final_delta": {k: state["probes"][-1][k] - v for k, v in start.items()}}
    return out


def run_continual(cfg: ContinualConfig, on_task_end: TaskHook | None = None) -> dict[str, Any]:
    """Every strategy of ``cfg.strategies`` in turn, then the reports; returns the summary."""
    from mova.continual.report import markdown_table, write_reports

    tasks = task_order(cfg.tasks_dir, cfg.order or None)
    started = time.perf_counter()
    results = {name: run_strategy(cfg, name, tasks, on_task_end) for name in cfg.strategies}
    paths = write_reports(results, cfg.output_dir)
    table = markdown_table(results)
    return {"stage": "continual", "tasks": [t.name for t in tasks], "strategies": list(cfg.strategies),
            "table": table, "reports": paths, "runtime_s": round(time.perf_counter() - started, 1),
            "results": {k: {m: v[m] for m in ("OP", "BWT", "FWT", "complete")} for k, v in results.items()}}


__all__ = ["results_of", "run_continual", "run_strategy", "task_dir"]
