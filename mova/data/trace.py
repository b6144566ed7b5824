"""TRACE-layout continual-learning data: one folder per task, each with ``train.json``, ``eval.json`` and
``test.json`` holding a list of ``{"prompt": str, "answer": str}`` records.

That is the layout of the released TRACE benchmark (``LLM-CL-Benchmark_5000`` / ``_500``: ``C-STANCE/``,
``FOMC/``, ``MeetingBank/``, ``Py150/``, ``ScienceQA/``, ``NumGLUE-cm/``, ``NumGLUE-ds/``, ``20Minuten/``),
so a user points ``tasks_dir`` at the unpacked benchmark and runs. Each task is scored with one metric from
:data:`mova.metrics.text.TEXT_METRICS`: the eight TRACE tasks have theirs in :data:`TRACE_METRICS`; any
other task folder says so in a ``task.json`` (``{"metric": "rouge_l"}``), which also overrides the table.

A record may carry ``"source"`` (the text a simplification rewrites, for SARI; defaults to the prompt) and
``"references"`` (several gold strings, for SARI/BLEU; defaults to ``[answer]``). Other keys are kept and
ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.errors import DataError
from mova.metrics.text import TEXT_METRICS

SPLITS = ("train", "eval", "test")

#: TRACE's task order in the paper and the metric each task is scored with.
TRACE_ORDER = ["C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA", "NumGLUE-cm", "NumGLUE-ds", "20Minuten"]
TRACE_METRICS: dict[str, str] = {
    "C-STANCE": "accuracy", "FOMC": "accuracy", "MeetingBank": "rouge_l", "Py150": "edit_similarity",
    "ScienceQA": "accuracy", "NumGLUE-cm": "accuracy", "NumGLUE-ds": "accuracy", "20Minuten": "sari",
}


@dataclass
class TraceTask:
    """One task folder: its name, metric and the path of each split (read lazily by :meth:`records`)."""

    name: str
    folder: Path
    metric: str
    #: extra per-task settings from ``task.json`` (e.g. ``max_new_tokens``).
    options: dict[str, Any] = field(default_factory=dict)

    def records(self, split: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The split's records, checked; ``limit`` keeps the first N."""
        if split not in SPLITS:
            raise DataError(f"task {self.name}: unknown split {split!r}; expected one of {SPLITS}")
        return read_split(self.folder / f"{split}.json", limit)


def read_split(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """A JSON list of ``{"prompt", "answer"}`` records; a bad record is reported by index."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (a TRACE task folder holds train.json, eval.json, test.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if limit is not None:
        data = data[:limit]
    for i, r in enumerate(data):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("answer"), str):
            raise DataError(f"{path}: record {i} must be an object with string 'prompt' and 'answer'; "
                            f"got {str(r)[:120]!r}")
    return data


def load_task(folder: str | Path) -> TraceTask:
    """Open one task folder; the metric comes from ``task.json`` or :data:`TRACE_METRICS`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"task folder not found: {folder}")
    meta: dict[str, Any] = {}
    meta_path = folder / "task.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    metric = meta.pop("metric", None) or TRACE_METRICS.get(folder.name)
    if metric is None:
        raise DataError(f"task {folder.name}: no metric known; write {meta_path} with "
                        f'{{"metric": one of {sorted(TEXT_METRICS)}}}')
    if metric not in TEXT_METRICS:
        raise DataError(f"task {folder.name}: unknown metric {metric!r}; known: {sorted(TEXT_METRICS)}")
    return TraceTask(name=folder.name, folder=folder, metric=metric, options=meta)


def task_order(tasks_dir: str | Path, order: list[str] | None = None) -> list[TraceTask]:
    """The tasks of ``tasks_dir`` in ``order``; without one, TRACE's order for TRACE folders, else
    ``order.json`` in ``tasks_dir`` (a list of names), else alphabetical."""
    root = Path(tasks_dir)
    if not root.is_dir():
        raise DataError(f"tasks_dir not found: {root}")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train.json").is_file())
    if not order:
        if (root / "order.json").is_file():
            order = json.loads((root / "order.json").read_text())
        elif set(present) >= set(TRACE_ORDER):
            order = list(TRACE_ORDER)
        else:
            order = present
    missing = [name for name in order if name not in present]
    if missing:
        raise DataError(f"tasks {missing} not found in {root}; present: {present}")
    if len(set(order)) != len(order):
        raise DataError(f"task order repeats a task: {order}")
    return [load_task(root / name) for name in order]


def references_of(record: dict[str, Any]) -> list[str]:
    refs = record.get("references")
    return list(refs) if refs else [record["answer"]]


def source_of(record: dict[str, Any]) -> str:
    return record.get("source", record["prompt"])


__all__ = ["SPLITS", "TRACE_METRICS", "TRACE_ORDER", "TraceTask", "load_task", "read_split", "references_of",
           "source_of", "task_order"]
