"""MMBench's circular evaluation (Liu et al. 2023), as pure functions.

A question with ``n`` options is asked ``n`` times, the options rotated one place each time (the answer's
letter moving with its option); the model passes the question only if it picks the right option every time.
This removes the gain of a model that favours one letter. MMBench's release TSV may already hold the rotated
copies (indices ``index + k * 1e6``, grouped by ``index % 1e6``); :func:`circular_passes` builds them for a
TSV that does not.

Answers are read as option letters only (:func:`mova.metrics.answers.extract_choice`); MMBench's own
pipeline falls back to a GPT matcher for answers that name an option's text, which this does not do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

LETTERS = "ABCDEFGHI"
#: the index offset of MMBench's rotated copies (``g_index = index % CIRCULAR_OFFSET``).
CIRCULAR_OFFSET = 1_000_000


def circular_passes(index: int, options: Sequence[str], answer: str) -> list[dict[str, Any]]:
    """The ``len(options)`` passes of one question: ``{"index", "g_index", "options", "answer"}`` with the
    options rotated by ``k`` (pass ``k`` shows option ``(i + k) % n`` as letter ``i``)."""
    n = len(options)
    gold = LETTERS.index(answer.strip().upper()[:1])
    passes = []
    for k in range(n):
        rotated = [options[(i + k) % n] for i in range(n)]
        passes.append({"index": index + k * CIRCULAR_OFFSET, "g_index": index, "options": rotated,
                       "answer": LETTERS[(gold - k) % n]})
    return passes


def circular_accuracy(results: Iterable[dict[str, Any]]) -> dict[str, float]:
    """``circular`` (share of questions right in every pass), ``vanilla`` (share of first passes right) and
    the per-``category`` circular accuracy, from results ``{"g_index", "index", "correct", "category"?}``."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(int(r["g_index"]), []).append(r)
    if not groups:
        return {"circular": 0.0, "vanilla": 0.0, "n": 0.0}
    passed = {g: all(bool(r["correct"]) for r in rs) for g, rs in groups.items()}
    first = {g: bool(min(rs, key=lambda r: int(r["index"]))["correct"]) for g, rs in groups.items()}
    out = {"circular": sum(passed.values()) / len(passed), "vanilla": sum(first.values()) / len(first),
           "n": float(len(groups))}
    categories: dict[str, list[bool]] = {}
    for g, rs in groups.items():
        if rs[0].get("category") is not None:
            categories.setdefault(str(rs[0]["category"]), []).append(passed[g])
    for category, values in sorted(categories.items()):
        out[f"circular/{category}"] = sum(values) / len(values)
    return out
