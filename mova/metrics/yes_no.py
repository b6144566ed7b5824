"""Yes/no benchmarks, as pure functions of answers: POPE (object hallucination) and MME.

**POPE** (Li et al. 2023, ``evaluate.py``): an answer is cut at its first period, commas are deleted, and it
reads "no" when one of its space-separated words is ``No``, ``no`` or ``not``, else "yes". Reported:
accuracy, precision, recall and F1 with "yes" as the positive class, and the yes-ratio (the share of "yes"
answers: 0.5 is the balanced ideal, far above it is the hallucinating model's habit).

**MME** (Fu et al. 2023, ``eval_tool/calculation.py``): an answer is "yes" or "no" when it is exactly that
(lower-cased), else by which of the two its first 4 characters contain, else "other" (always wrong). Each
image has two questions; per subtask ``acc`` is the share of right answers and ``acc+`` the share of images
with both right, and its score is ``100 * (acc + acc+)`` (at most 200). Perception sums 10 subtasks (at most
2000), cognition 4 (at most 800).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


# --- POPE --------------------------------------------------------------------------------------------------
def pope_answer(text: str) -> str:
    """``"yes"`` or ``"no"`` as POPE's evaluation reads a free-form answer."""
    text = str(text)
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 ("yes" positive) and yes-ratio of free-form ``predictions`` against
    ``yes``/``no`` ``labels``; an undefined ratio (no positive predicted or present) is 0."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    pred = [pope_answer(p) == "yes" for p in predictions]
    gold = [str(label).strip().lower() == "yes" for label in labels]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    tn = sum(not p and not g for p, g in zip(pred, gold))
    fn = sum(not p and g for p, g in zip(pred, gold))
    n = len(pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(pred) / n if n else 0.0, "n": float(n)}


# --- MME ---------------------------------------------------------------------------------------------------
def mme_answer(text: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` as MME's calculation script reads an answer."""
    text = str(text).lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_scores(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """MME scores from records ``{"category", "image", "answer", "prediction"}`` (one per question).

    Returns ``{category}/acc``, ``{category}/acc_plus``, ``{category}/score`` (percent, score up to 200) per
    subtask present, and ``perception`` / ``cognition`` (sums of the scores of the subtasks present in each).
    """
    by_category: dict[str, dict[str, list[bool]]] = {}
    for r in records:
        right = mme_answer(r["prediction"]) == str(r["answer"]).strip().lower()
        by_category.setdefault(str(r["category"]), {}).setdefault(str(r["image"]), []).append(right)
    out: dict[str, float] = {}
    for category, images in sorted(by_category.items()):
        answers = [a for per_image in images.values() for a in per_image]
        acc = 100 * sum(answers) / len(answers)
        acc_plus = 100 * sum(all(v) for v in images.values()) / len(images)
        out[f"{category}/acc"], out[f"{category}/acc_plus"] = acc, acc_plus
        out[f"{category}/score"] = acc + acc_plus
    for group, names in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [out[f"{c}/score"] for c in names if f"{c}/score" in out]
        if present:
            out[group] = sum(present)
    return out
