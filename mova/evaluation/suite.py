"""The evaluation suite: several registered tasks on one or more checkpoints, reproducibly, in one table.

    mova eval run --checkpoint runs/sft/final --checkpoint runs/dpo/final --tasks vqa,safety,gsm8k \\
        --task-option vqa.questions=data/synthetic/test.json --out-dir runs/eval
    mova eval compare runs/eval/*

For each checkpoint the model is loaded once and every task (:mod:`mova.evaluation.tasks`) runs on it with
the same seed, reset before each task so that a task's result does not depend on which tasks ran before
it. The run folder ``OUT/<name>/`` holds one folder per task (the task's per-sample JSONL), ``summary.json``
(every task's metrics, its time, the fully resolved :class:`SuiteConfig`, and the provenance: checkpoint
fingerprint, seed, library versions, git commit, command line) and ``results.md``; with several checkpoints
``OUT/comparison.md`` / ``comparison.json`` put them side by side. :func:`compare_runs` builds the same
table later from any run folders.

Under ``torchrun`` every process loads the model on its own device, generation is sharded and merged by
:mod:`mova.inference`, and only rank 0 writes the run folder (other ranks write to a scratch folder that
is deleted).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mova.errors import ConfigError
from mova.evaluation.tasks import TaskContext, get_task, load_tasks

SUMMARY_FILE, TABLE_FILE = "summary.json", "results.md"


@dataclass
class SuiteConfig:
    """Everything a suite run depends on; written, resolved, into every ``summary.json``."""

    checkpoints: list[str]
    tasks: list[str]
    out_dir: str = "runs/eval"
    names: list[str] = field(default_factory=list)
    batch_size: int = 16
    max_new_tokens: int = 256
    limit: int | None = None
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    template: str | None = None
    progress: bool = True
    #: task name -> that task's options
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.checkpoints:
            raise ConfigError("give at least one checkpoint")
        if not self.tasks:
            raise ConfigError("give at least one task (--tasks a,b,c)")
        if self.names and len(self.names) != len(self.checkpoints):
            raise ConfigError(f"{len(self.names)} run names for {len(self.checkpoints)} checkpoints")
        known = load_tasks()
        unknown = [t for t in self.tasks if t not in known]
        if unknown:
            raise ConfigError(f"unknown evaluation task(s) {unknown}; registered: {sorted(known)}")
        stray = [t for t in self.task_options if t not in self.tasks]
        if stray:
            raise ConfigError(f"options given for task(s) {stray} that are not in --tasks {self.tasks}")

    def run_names(self) -> list[str]:
        if self.names:
            return list(self.names)
        names: list[str] = []
        for c in self.checkpoints:
            p = Path(c)
            base = p.name if p.name not in ("final", "") else f"{p.parent.name}-{p.name}"
            name, k = base, 2
            while name in names:
                name, k = f"{base}-{k}", k + 1
            names.append(name)
        return names


def parse_task_options(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``TASK.KEY=VALUE`` items (YAML-typed values) as ``{task: {key: value}}``."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        task, dot, name = key.partition(".")
        if not sep or not dot or not task or not name:
            raise ConfigError(f"task option {item!r} is not TASK.KEY=VALUE (e.g. vqa.questions=q.jsonl)")
        out.setdefault(task.strip(), {})[name.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices) from one seed."""
    from transformers import set_seed

    set_seed(seed)


def run_checkpoint(config: SuiteConfig, checkpoint: str, name: str, *, model_and_processor: Any = None
                   ) -> dict[str, Any]:
    """Every task of ``config`` on one checkpoint; returns (and on rank 0 writes) its summary."""
    from mova.evaluation.provenance import run_provenance
    from mova.inference.generation import load_model
    from mova.inference.sharding import local_device, rank_and_world, sharded_generation

    rank, world = rank_and_world()
    run_dir = Path(config.out_dir) / name
    scratch = None
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        task_root = run_dir
    else:
        scratch = Path(tempfile.mkdtemp(prefix=f"mova-eval-rank{rank}-"))
        task_root = scratch
    t0 = time.perf_counter()
    if model_and_processor is None:
        try:
            model, processor = load_model(checkpoint, device=config.device or local_device(), dtype=config.dtype)
        except OSError as e:  # a missing folder, a hub id offline, a folder without weights
            raise ConfigError(f"cannot load checkpoint {checkpoint!r}: {str(e).splitlines()[0]}") from e
    else:
        model, processor = model_and_processor
    load_s = time.perf_counter() - t0
    tasks: dict[str, Any] = {}
    try:
        for task in config.tasks:
            seed_everything(config.seed)
            ctx = TaskContext(model=model, processor=processor, model_path=str(checkpoint), out_dir=task_root / task,
                              batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
                              limit=config.limit, seed=config.seed, progress=config.progress and rank == 0,
                              options=dict(config.task_options.get(task, {})), template=config.template,
                              rank=rank, world_size=world, task=task)
            ctx.out_dir.mkdir(parents=True, exist_ok=True)
            t1 = time.perf_counter()
            with sharded_generation():
                metrics = get_task(task)(ctx)
            tasks[task] = {"metrics": {k: _number(v) for k, v in metrics.items()},
                           "seconds": round(time.perf_counter() - t1, 2), "out_dir": str(run_dir / task)}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    summary = {"name": name, "checkpoint": str(checkpoint), "tasks": tasks,
               "load_seconds": round(load_s, 2), "config": asdict(config),
               **run_provenance(checkpoint, seed=config.seed)}
    if rank == 0:
        (run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str) + "\n", encoding="utf-8")
        (run_dir / TABLE_FILE).write_text(format_comparison({name: summary}), encoding="utf-8")
    return summary


def _number(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def run_suite(config: SuiteConfig) -> dict[str, dict[str, Any]]:
    """Run every checkpoint; returns ``{run name: summary}`` and writes the comparison when there are several."""
    from mova.inference.sharding import is_main_process

    summaries: dict[str, dict[str, Any]] = {}
    for checkpoint, name in zip(config.checkpoints, config.run_names()):
        summaries[name] = run_checkpoint(config, checkpoint, name)
        _release_memory()
    if len(summaries) > 1 and is_main_process():
        out = Path(config.out_dir)
        (out / "comparison.md").write_text(format_comparison(summaries), encoding="utf-8")
        (out / "comparison.json").write_text(json.dumps(comparison_rows(summaries), indent=1) + "\n",
                                             encoding="utf-8")
    return summaries


def _release_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def comparison_rows(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"task/metric": {run name: value}}`` over all runs (a metric a run lacks is absent for it)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, s in summaries.items():
        for task, block in s.get("tasks", {}).items():
            for metric, value in block.get("metrics", {}).items():
                rows.setdefault(f"{task}/{metric}", {})[name] = value
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):  # one format for every score (1.0 beside 0.25 reads 1.0000 beside 0.2500)
        return f"{v:.4f}"
    return str(v)


def format_comparison(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table: one row per ``task/metric``, one column per run; then each run's checkpoint, seed
    and commit, so a pasted table says what it compares."""
    runs = list(summaries)
    rows = comparison_rows(summaries)
    lines = ["| metric | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    for key, values in rows.items():
        lines.append(f"| {key} | " + " | ".join(_cell(values.get(r)) for r in runs) + " |")
    lines.append("")
    for r in runs:
        prov = summaries[r].get("provenance", {})
        ckpt = (prov.get("checkpoint") or {}).get("path", summaries[r].get("checkpoint"))
        lines.append(f"- {r}: `{ckpt}`, seed {prov.get('seed')}, commit {prov.get('git_commit')}")
    return "\n".join(lines) + "\n"


def load_summary(path: str | Path) -> dict[str, Any]:
    """A run's ``summary.json`` (``path`` is the file or its run folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / SUMMARY_FILE
    if not p.is_file():
        raise ConfigError(f"no {SUMMARY_FILE} at {path} (a run folder written by `mova eval run`)")
    return json.loads(p.read_text(encoding="utf-8"))


def compare_runs(paths: Sequence[str | Path]) -> tuple[str, dict[str, dict[str, Any]]]:
    """The comparison table of run folders. With several paths (``runs/eval/*``), those that are no run
    folder -- ``comparison.md`` beside the runs, a folder without a summary -- are skipped."""
    summaries: dict[str, dict[str, Any]] = {}
    for p in paths:
        q = Path(p)
        is_run = (q.is_dir() and (q / SUMMARY_FILE).is_file()) or q.name == SUMMARY_FILE
        if not is_run and len(paths) > 1:
            continue
        s = load_summary(p)
        name, k = s.get("name", Path(p).name), 2
        while name in summaries:
            name, k = f"{s.get('name')}-{k}", k + 1
        summaries[name] = s
    if not summaries:
        raise ConfigError(f"none of {list(map(str, paths))} holds a {SUMMARY_FILE}")
    return format_comparison(summaries), summaries


__all__ = ["SuiteConfig", "compare_runs", "comparison_rows", "format_comparison", "load_summary",
           "parse_task_options", "run_checkpoint", "run_suite", "seed_everything"]
