"""VQA evaluation of a checkpoint: batched greedy answers to LLaVA-format QA records, scored by
:mod:`mova.metrics.vqa` (exact match after normalisation, overall and per question type)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mova.data.records import resolve_image_path
from mova.errors import DataError
from mova.inference.generation import generate_answers
from mova.metrics.vqa import record_qa, score_answer, summarize


def _max_answer_tokens(tokenizer: Any, answers: list[str]) -> int:
    """Tokens the longest gold answer needs (with or without a leading space), plus one for EOS."""
    longest = 1
    for a in set(answers):
        for text in (a, " " + a):
            longest = max(longest, len(tokenizer(text, add_special_tokens=False).input_ids))
    return longest + 1


def evaluate_vqa(
    model: Any,
    processor: Any,
    records: list[dict[str, Any]],
    image_root: str | Path,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    template: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Greedy-decode an answer for each record and score it against the record's gold answer.

    ``records`` are LLaVA QA records (``image`` relative to ``image_root``; text-only records have no
    ``image``); each record's ``type`` (default ``"all"``) groups the per-type accuracy.
    ``max_new_tokens=None`` allows as many tokens as the longest gold answer takes in this tokenizer
    (a tiny tokenizer may spell ``circle`` in five pieces, so a fixed small cap would cut answers).
    The model is put in eval mode for the run and its previous mode restored afterwards.

    Returns ``{"overall", "per_type", "n", "n_per_type", "predictions"}``; accuracies are in [0, 1] and
    ``predictions`` holds ``{"id", "type", "question", "answer", "prediction", "correct"}`` per record.
    """
    root = Path(image_root)
    tokenizer = processor.tokenizer
    items = [(r, *record_qa(r)) for r in records]
    if max_new_tokens is None:
        max_new_tokens = _max_answer_tokens(tokenizer, [gold for _, _, gold in items])
    images = []
    for i, (r, _, _) in enumerate(items):
        try:
            images.append(resolve_image_path(root, r["image"]) if r.get("image") else None)
        except DataError as e:
            raise DataError(f"record {i} (id {r.get('id', f'#{i}')!r}): {e}") from None
    texts = generate_answers(model, processor, [[{"role": "user", "content": q}] for _, q, _ in items], images,
                             batch_size=batch_size, max_new_tokens=max_new_tokens, template=template,
                             progress=progress, desc="vqa eval")
    predictions = [{"id": rec.get("id"), "type": rec.get("type", "all"), "question": question, "answer": gold,
                    "prediction": text, "correct": score_answer(text, gold)}
                   for (rec, question, gold), text in zip(items, texts)]
    return summarize(predictions)
