"""RCL's data step: teacher reasoning paths, verified against the gold answer, as reasoning-first targets.

For each training example of a task the teacher (any local causal LM or Mova checkpoint) sees a few-shot
prompt::

    <instruction>

    <demo prompt> <demo reasoning>
    Answer: <demo answer>

    <example prompt>

and continues it with "<reasoning>\\nAnswer: <answer>". The demonstrations come from the task folder's
``rcl_demos.json`` (``{"prompt", "reasoning", "answer"}``), written once per task by the user. A path is
kept only when its final answer matches the gold one under the task's metric (an exact match by default);
the student then trains on ``prompt -> "<reasoning>\\nAnswer: <gold answer>"``.

Generation is batched and resumable: each finished example is appended to ``paths.jsonl`` (flushed per
batch) with its index, so a killed run restarts with the examples not yet written; ``meta.json`` beside it
records the teacher and the task size and a mismatch is an error rather than a silent mix of two teachers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mova.continual.config import RclOptions
from mova.continual.evaluate import extract_answer
from mova.data.trace import TraceTask, references_of, source_of
from mova.errors import DataError
from mova.metrics.text import score

logger = logging.getLogger(__name__)

#: ``fn(prompts) -> texts`` for the teacher (tests pass a counting fake).
TeacherFn = Callable[[list[str]], list[str]]


def load_demos(task: TraceTask, opts: RclOptions) -> list[dict[str, str]]:
    """The task's demonstrations (at most ``num_demos``); none when the file is missing."""
    path = task.folder / opts.demos_file
    if not path.is_file() or opts.num_demos <= 0:
        return []
    demos = json.loads(path.read_text())
    for i, d in enumerate(demos):
        if not all(isinstance(d.get(k), str) for k in ("prompt", "reasoning", "answer")):
            raise DataError(f"{path}: demonstration {i} needs string 'prompt', 'reasoning' and 'answer'")
    return demos[:opts.num_demos]


def reasoning_target(reasoning: str, answer: str, marker: str) -> str:
    """The student's (and the demonstrations') target: reasoning first, then the answer."""
    return f"{reasoning.strip()}\n{marker} {answer}"


def teacher_prompt(task: TraceTask, prompt: str, demos: Sequence[dict[str, str]], opts: RclOptions) -> str:
    custom = task.folder / "rcl_prompt.txt"
    instruction = custom.read_text().strip() if custom.is_file() else opts.instruction
    shots = [f"{d['prompt']} {reasoning_target(d['reasoning'], d['answer'], opts.answer_marker)}" for d in demos]
    return "\n\n".join([instruction, *shots, prompt])


def split_path(output: str, marker: str) -> tuple[str, str | None]:
    """(reasoning, answer) of a teacher output; the output is cut at the first blank line (a base LM goes on
    to invent the next demonstration); answer is None when the marker is missing."""
    text = output.split("\n\n", 1)[0].strip()
    if marker not in text:
        return text, None
    reasoning = text.rsplit(marker, 1)[0].strip()
    return reasoning, extract_answer(text, marker)


def _read_done(path: Path) -> dict[int, dict[str, Any]]:
    done: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return done
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut by a kill: everything after it is regenerated
            done[int(row["index"])] = row
    return done


def generate_paths(task: TraceTask, records: Sequence[dict[str, Any]], teacher: TeacherFn, opts: RclOptions,
                   out_dir: str | Path, *, teacher_name: str = "", progress: bool = True) -> list[dict[str, Any]]:
    """One row per record (``index``, ``output``, ``reasoning``, ``prediction``, ``kept``), in record order.

    Rows already in ``out_dir/paths.jsonl`` are reused; the rest are generated ``opts.batch_size`` at a time
    and appended as each batch finishes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"task": task.name, "teacher": teacher_name, "num_records": len(records),
            "answer_marker": opts.answer_marker}
    meta_path = out_dir / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old != meta:
            raise DataError(f"{out_dir}: holds paths from another setting ({old}); now {meta}. "
                            "Delete the folder or set rcl.paths_dir elsewhere")
    else:
        meta_path.write_text(json.dumps(meta) + "\n")
    paths_file = out_dir / "paths.jsonl"
    done = _read_done(paths_file)
    if done and len(done) != sum(1 for _ in paths_file.open() if _.strip()):
        # a torn last line: rewrite the file with the complete rows only
        paths_file.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)))
    demos = load_demos(task, opts)
    metric = opts.match_metric or task.metric
    todo = [i for i in range(len(records)) if i not in done]
    if todo:
        logger.info("RCL %s: %d of %d paths to generate (%d done)", task.name, len(todo), len(records), len(done))
    with paths_file.open("a") as f, tqdm(total=len(todo), desc=f"rcl paths {task.name}", disable=not progress) as bar:
        for start in range(0, len(todo), opts.batch_size):
            idx = todo[start:start + opts.batch_size]
            outputs = teacher([teacher_prompt(task, records[i]["prompt"], demos, opts) for i in idx])
            if len(outputs) != len(idx):
                raise RuntimeError(f"teacher returned {len(outputs)} outputs for {len(idx)} prompts")
            for i, out in zip(idx, outputs):
                r = records[i]
                reasoning, prediction = split_path(out, opts.answer_marker)
                ok = bool(reasoning) and prediction is not None and score(
                    metric, [prediction], [references_of(r)], [source_of(r)]) >= opts.min_score
                row = {"index": i, "output": out, "reasoning": reasoning, "prediction": prediction, "kept": ok}
                done[i] = row
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(idx))
    return [done[i] for i in range(len(records))]


def rcl_records(records: Sequence[dict[str, Any]], paths: Sequence[dict[str, Any]], opts: RclOptions
                ) -> tuple[list[dict[str, str]], dict[str, int]]:
    """The student's training records and the counts (kept / dropped / answer-only)."""
    out: list[dict[str, str]] = []
    kept = 0
    for r, p in zip(records, paths):
        if p["kept"]:
            kept += 1
            out.append({"prompt": r["prompt"], "answer": reasoning_target(p["reasoning"], r["answer"],
                                                                             opts.answer_marker)})
        elif opts.unverified == "answer":
            out.append({"prompt": r["prompt"], "answer": r["answer"]})
    counts = {"total": len(records), "kept": kept, "not_kept": len(records) - kept,
              "answer_only": len(records) - kept if opts.unverified == "answer" else 0}
    return out, counts


def teacher_training_records(task: TraceTask, records: Sequence[dict[str, Any]], opts: RclOptions
                             ) -> list[dict[str, str]]:
    """Few-shot teacher prompts -> gold reasoning targets, from records that carry ``reasoning`` (the mini
    TRACE's train split): how the demo trains a tiny teacher that writes paths in the expected format."""
    demos = load_demos(task, opts)
    missing = [i for i, r in enumerate(records) if not isinstance(r.get("reasoning"), str)]
    if missing:
        raise DataError(f"task {task.name}: records {missing[:5]} have no 'reasoning' to train a teacher on")
    return [{"prompt": teacher_prompt(task, r["prompt"], demos, opts),
             "answer": reasoning_target(r["reasoning"], r["answer"], opts.answer_marker)} for r in records]


__all__ = ["TeacherFn", "generate_paths", "load_demos", "rcl_records", "reasoning_target", "split_path",
           "teacher_prompt", "teacher_training_records"]


def train_teacher(tasks: Sequence[TraceTask], base_model: str | Path, out_dir: str | Path, train_cfg: Any,
                  opts: RclOptions, *, limit: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Fine-tune ``base_model`` on every task's gold reasoning (records with ``reasoning``, as in the mini
    TRACE), in the teacher's few-shot prompt format, and save it to ``out_dir`` (a stand-in teacher for
    tests and the CPU demo; a real RCL run names a capable LLM instead)."""
    import random

    from mova.inference.generation import load_model
    from mova.trainers.text_sft import train_prompt_answer

    records: list[dict[str, str]] = []
    for task in tasks:
        records += teacher_training_records(task, task.records("train", limit), opts)
    random.Random(0).shuffle(records)
    model, tokenizer = load_model(str(base_model), device=device)
    out_dir = Path(out_dir)
    summary = train_prompt_answer(model, tokenizer, records, train_cfg, out_dir / "train",
                                  summary_extra={"teacher_tasks": [t.name for t in tasks]})
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return summary
