"""Scoring a model on a task's split: batched greedy generation from the raw prompts, then the task's metric.

TRACE prompts are complete instructions (they end with e.g. "Answer:"), so they are fed as they are, with no
chat template, exactly as the training samples of :mod:`mova.trainers.text_sft` begin. A model trained on
reasoning-first targets (RCL) writes "<reasoning> Answer: <answer>": with ``answer_marker`` set, the text after
the last marker is scored (the whole output when the marker is missing, which then rarely matches).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mova.data.trace import references_of, source_of
from mova.metrics.text import score

GenerateFn = Callable[[list[str], int], list[str]]


def extract_answer(text: str, marker: str | None) -> str:
    """The text after the last ``marker`` (first line of it), stripped; ``text`` itself without a marker."""
    if not marker or marker not in text:
        return text.strip()
    tail = text.rsplit(marker, 1)[1].strip()
    return tail.split("\n", 1)[0].strip()


def model_generate_fn(model: Any, tokenizer: Any, batch_size: int = 16) -> GenerateFn:
    """``fn(prompts, max_new_tokens) -> texts``: greedy, batched, left-padded (:mod:`mova.inference`)."""
    from mova.inference.generation import generate_from_prompts

    def generate(prompts: list[str], max_new_tokens: int) -> list[str]:
        return generate_from_prompts(model, tokenizer, prompts, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, progress=False)  # type: ignore[return-value]

    return generate


def evaluate_records(generate: GenerateFn, records: Sequence[dict[str, Any]], metric: str, *,
                     max_new_tokens: int = 64, answer_marker: str | None = None,
                     out_path: str | Path | None = None) -> float:
    """Score in [0, 1] of the model behind ``generate`` on ``records``; per-sample outputs to ``out_path``."""
    if not records:
        return 0.0
    outputs = generate([r["prompt"] for r in records], max_new_tokens)
    predictions = [extract_answer(o, answer_marker) for o in outputs]
    value = score(metric, predictions, [references_of(r) for r in records], [source_of(r) for r in records])
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with out_path.open("w") as f:
            for r, o, p in zip(records, outputs, predictions):
                f.write(json.dumps({"prompt": r["prompt"], "answer": r["answer"], "output": o,
                                    "prediction": p}) + "\n")
    return value


__all__ = ["GenerateFn", "evaluate_records", "extract_answer", "model_generate_fn"]
