"""Exact-match VQA accuracy, overall and per question type, as pure functions of predictions and gold answers
(generating the predictions is :func:`mova.evaluation.vqa.evaluate_vqa`'s job).

The synthetic dataset (:mod:`mova.data.synthetic`) has one-word answers from closed sets, so exact
match after a light normalisation (case, punctuation, a leading article, digits as words) is a fair
score: a model either read the answer off the image or it did not. The same normalisation is applied to
the prediction and to the gold answer, so ``"Circle."`` matches ``circle`` and ``"3"`` matches ``three``.
"""

from __future__ import annotations

import re
from typing import Any

from mova.model.templates import IMAGE_PLACEHOLDER

ARTICLES = frozenset({"a", "an", "the"})
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_WORD = re.compile(r"[^\W_]+")


def normalize_answer(text: str) -> str:
    """The first word of ``text``, lowercased, without punctuation, a leading article or digits.

    ``"  The Circle."`` -> ``"circle"``; ``"3 shapes"`` -> ``"three"``; ``"don't"`` -> ``"dont"``;
    text with no word gives ``""`` (which never matches a gold answer).
    """
    words = _WORD.findall(text.lower().replace("'", "").replace("\u2019", ""))
    while len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    if not words:
        return ""
    word = words[0]
    if word.isdigit() and int(word) < len(NUMBER_WORDS):
        word = NUMBER_WORDS[int(word)]
    return word


def score_answer(prediction: str, gold: str) -> bool:
    """Exact match of the normalised first words; an empty gold answer never matches."""
    norm = normalize_answer(gold)
    return bool(norm) and normalize_answer(prediction) == norm


def record_qa(record: dict[str, Any]) -> tuple[str, str]:
    """The first human turn (the question, with ``<image>`` when the record has an image) and its answer."""
    turns = record["conversations"]
    human = next(t for t in turns if t.get("from", t.get("role")) in ("human", "user"))
    idx = turns.index(human)
    gold = next(t for t in turns[idx + 1:] if t.get("from", t.get("role")) in ("gpt", "assistant"))
    question = human.get("value", human.get("content"))
    if record.get("image") and IMAGE_PLACEHOLDER not in question:
        question = f"{IMAGE_PLACEHOLDER}\n{question}"
    return question, gold.get("value", gold.get("content"))


def summarize(predictions: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall and per-type accuracy of scored predictions (each with ``type`` and ``correct``)."""
    per_type: dict[str, list[bool]] = {}
    for p in predictions:
        per_type.setdefault(p["type"], []).append(bool(p["correct"]))
    n = len(predictions)
    return {
        "overall": sum(p["correct"] for p in predictions) / n if n else 0.0,
        "per_type": {t: sum(v) / len(v) for t, v in per_type.items()},
        "n": n,
        "n_per_type": {t: len(v) for t, v in per_type.items()},
        "predictions": predictions,
    }


def format_accuracy_table(results: dict[str, dict[str, Any]]) -> str:
    """A text table: one row per question type plus ``overall``, one column per run, accuracies in percent.

    ``results`` maps a run name (e.g. ``"images"``, ``"blanked"``) to an :func:`evaluate_vqa` result. A
    type a run did not see shows ``-``; the ``n`` column is the largest count any run had for the row.
    """
    runs = list(results)
    types: list[str] = []
    for res in results.values():
        types += [t for t in res.get("per_type", {}) if t not in types]
    rows = []
    for t in types:
        n = max(res.get("n_per_type", {}).get(t, 0) for res in results.values())
        cells = [f"{100 * results[r]['per_type'][t]:.1f}" if t in results[r].get("per_type", {}) else "-"
                 for r in runs]
        rows.append([t, str(n), *cells])
    rows.append(["overall", str(max((res.get("n", 0) for res in results.values()), default=0)),
                 *[f"{100 * results[r].get('overall', 0.0):.1f}" for r in runs]])
    header = ["type", "n", *runs]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first, *rest]).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in rows[:-1]), sep, line(rows[-1])])
