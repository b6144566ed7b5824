"""Continual-learning scores of a score matrix ``R`` (``R[t][i]``: score on task ``i`` after training task
``t``; tasks counted from 0 here, from 1 in the papers).

* ``OP_t = mean_{i <= t} R[t][i]`` -- overall performance after task ``t`` (TRACE's OP);
* ``BWT_t = mean_{i < t} (R[t][i] - R[i][i])`` -- backward transfer: how much training the later tasks
  changed the earlier ones (negative = forgetting); undefined (``None``) after the first task;
* ``FWT = mean_{i >= 1} (R[i-1][i] - b_i)`` -- forward transfer (Lopez-Paz & Ranzato, 2017, "Gradient
  Episodic Memory"): the score on task ``i`` just *before* training it, relative to the starting model's
  score ``b_i``. It needs the entry one right of the diagonal, so the loop evaluates the next task too
  (``eval.eval_next``), and the baseline row ``b`` (``eval.baseline``).

Missing entries are ``None``; a score that needs one returns ``None`` rather than guessing.
"""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def op(R: Matrix, t: int) -> float | None:
    """Mean of ``R[t][0..t]``."""
    row = [R[t][i] for i in range(t + 1)]
    return None if any(v is None for v in row) else _mean(row)  # type: ignore[arg-type]


def bwt(R: Matrix, t: int) -> float | None:
    """Mean over ``i < t`` of ``R[t][i] - R[i][i]`` (None for ``t == 0`` or a missing entry)."""
    diffs = []
    for i in range(t):
        if R[t][i] is None or R[i][i] is None:
            return None
        diffs.append(R[t][i] - R[i][i])  # type: ignore[operator]
    return _mean(diffs)


def fwt(R: Matrix, baseline: Sequence[float | None] | None) -> float | None:
    """Mean over ``i >= 1`` (with a row ``i-1``) of ``R[i-1][i] - b_i``; None without the needed entries."""
    if baseline is None:
        return None
    diffs = []
    for i in range(1, min(len(R) + 1, len(baseline))):
        before = R[i - 1][i] if i < len(R[i - 1]) else None
        if before is None or baseline[i] is None:
            return None
        diffs.append(before - baseline[i])  # type: ignore[operator]
    return _mean(diffs)


def summarize(R: Matrix, baseline: Sequence[float | None] | None = None) -> dict[str, object]:
    """OP_t and BWT_t for every completed row, the final OP / BWT, and FWT."""
    rows = len(R)
    ops = [op(R, t) for t in range(rows)]
    bwts = [bwt(R, t) for t in range(rows)]
    return {"OP_t": ops, "BWT_t": bwts, "OP": ops[-1] if ops else None, "BWT": bwts[-1] if bwts else None,
            "FWT": fwt(R, baseline)}


__all__ = ["bwt", "fwt", "op", "summarize"]
