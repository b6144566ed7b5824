"""Interleaved repetitions, medians and spreads: how every benchmark here compares variants.

Why: the machines these benchmarks run on are shared. Another tenant's job can halve a variant's speed
for a minute, and if variant A runs its repetitions first and B afterwards, that minute lands on one of
them only and the printed speed-up is the load's, not the code's. Running the variants in turns
(A B, B A, A B, ...: the order rotates so that neither always goes first) spreads any drift over all of
them; the median of the repetitions drops the odd disturbed one, and the spread (min-max) printed beside
it says how much to trust the median. A ratio between variants is the ratio of their medians.

Every benchmark that prints a speed-up or a ratio uses this module (``--reps``, default 3). Peak memory
over a block is measured here too (:class:`PeakMemory`), one way for every benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import statistics
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_REPS = 3


def add_reps_argument(parser: argparse.ArgumentParser, default: int = DEFAULT_REPS) -> None:
    """``--reps N``: repetitions of every variant, run in turns (see the module docstring)."""
    parser.add_argument("--reps", type=int, default=default,
                        help=f"repetitions of each variant, run in turns (A B, B A, ...); medians and min-max are "
                             f"printed (default {default})")


def interleaved(variants: Sequence[str], reps: int, run: Callable[[str, int], T],
                on_result: Callable[[str, int, T], Any] | None = None) -> dict[str, list[T]]:
    """``run(variant, rep)`` for every variant and ``rep in range(reps)``, in turns whose order rotates.

    Returns each variant's results in repetition order. ``on_result`` (if given) sees each result as it
    comes, for progress lines.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    names = list(variants)
    out: dict[str, list[T]] = {name: [] for name in names}
    for rep in range(reps):
        k = rep % len(names) if names else 0
        for name in names[k:] + names[:k]:
            result = run(name, rep)
            out[name].append(result)
            if on_result is not None:
                on_result(name, rep, result)
    return out


@dataclass
class Stat:
    """Repeated measurements of one quantity: their median and min-max."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def cell(self, fmt: str = ".2f") -> str:
        """``median (min-max)``, or the value alone when there is one."""
        if len(self.values) == 1:
            return f"{self.median:{fmt}}"
        return f"{self.median:{fmt}} ({self.lo:{fmt}}-{self.hi:{fmt}})"


def stat(values: Sequence[float]) -> Stat:
    return Stat([float(v) for v in values])


def ratio(num: Stat, den: Stat) -> float:
    """The ratio of medians ``num / den``."""
    return num.median / den.median


def ratio_cell(num: Stat, den: Stat, fmt: str = ".2f") -> str:
    """``r.rrx`` (ratio of medians) and, with several repetitions, the range of the per-repetition ratios
    (repetition i of ``num`` over repetition i of ``den``, which ran side by side)."""
    r = ratio(num, den)
    pairs = [a / b for a, b in zip(num.values, den.values, strict=False) if b]
    if len(pairs) < 2:
        return f"{r:{fmt}}x"
    return f"{r:{fmt}}x ({min(pairs):{fmt}}-{max(pairs):{fmt}})"


def trim_heap() -> None:
    """Hand freed heap back to the OS so that RSS shows the next block's own working set (glibc only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory over a ``with`` block, in bytes: the CUDA allocator's peak on a GPU; on a CPU the process's
    resident set size, sampled every ``interval`` seconds by a thread (a step's transient activations live for
    milliseconds, so a coarse interval misses them).

    ``start`` is the memory at entry (allocated bytes on a GPU, RSS on a CPU), so ``peak - start`` is what the
    block added; ``trim=True`` first returns freed heap to the OS, so that ``start`` is not inflated by what an
    earlier block freed but the allocator kept.
    """

    def __init__(self, device: Any, interval: float = 0.002, trim: bool = True):
        self.device, self.interval, self.trim = device, interval, trim
        self.peak = self.start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        import psutil

        if self.trim:
            trim_heap()
        proc = psutil.Process()
        self.peak = self.start = proc.memory_info().rss

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            import torch

            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


__all__ = ["DEFAULT_REPS", "PeakMemory", "Stat", "add_reps_argument", "interleaved", "ratio", "ratio_cell", "stat",
           "trim_heap"]
