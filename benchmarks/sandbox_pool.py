"""Throughput of the program sandbox pool: GSM8K-style programs per second through ``run_programs``.

    python benchmarks/sandbox_pool.py            # 96 programs per cell, 3 repeats
    python benchmarks/sandbox_pool.py --quick    # a few seconds (the test suite runs this)

The cells (backend x workers) run in turns, ``--repeats`` times each (A B, B A, ...; ``benchmarks/_timing.py``
says why), and each prints its median programs/s with the min-max, and its speed against the first cell (ratio
of medians). Each cell runs the same batch of small programs (a few lines of arithmetic calling ``math``, like
the programs a policy writes for GSM8K) through the pool and reports programs per second (best, and median
with min-max, of the repeats) and the mean time one program takes from start to answer. Backends: ``bwrap``
(the default: bubblewrap namespaces + seccomp + rlimits + guard) and ``rlimits`` (the unisolated opt-out: the
sandbox as it was before issue 14, plus the seccomp filter). To measure the code before issue 14 itself, run
this script with ``PYTHONPATH`` pointing at a checkout of it (``git worktree add /tmp/before f22141e``); it
reports that as ``legacy``. Workers: the pool's default (min(8, CPUs)) and 8. Every program must return its
right answer, or the script fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from mova.rl import sandbox
from mova.rl.sandbox import SandboxConfig, run_programs

#: the sandbox before issue 14 had no backends; pointed at such a checkout (PYTHONPATH), this script
#: measures it as "legacy", the "before" row.
LEGACY = "backend" not in SandboxConfig.__dataclass_fields__
SandboxUnavailable = getattr(sandbox, "SandboxUnavailable", RuntimeError)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, ratio_cell, stat  # noqa: E402


def programs(n: int) -> list[str]:
    return [f"def solution():\n    apples = {12 + i}\n    eaten = 5\n    left = apples - eaten\n"
            f"    return math.floor(left * 1.0)\n" for i in range(n)]


def run_once(config: SandboxConfig, sources: list[str], workers: int) -> tuple[float, float]:
    """One pass over ``sources``: (programs per second, mean seconds one program took); every answer checked."""
    start = time.monotonic()
    results = run_programs(sources, config, max_workers=workers)
    elapsed = time.monotonic() - start
    wrong = [i for i, r in enumerate(results) if not r.ok or r.answer != str(12 + i - 5)]
    if wrong:
        r = results[wrong[0]]
        raise SystemExit(f"program {wrong[0]} failed: {r.error} {r.stderr[-500:]}")
    return len(sources) / elapsed, statistics.mean(r.seconds for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 programs, 2 repeats, bwrap only")
    parser.add_argument("--programs", type=int, default=96)
    parser.add_argument("--repeats", "--reps", dest="repeats", type=int, default=3,
                        help="passes per cell, cells in turns (default 3)")
    parser.add_argument("--backends", nargs="+", default=["bwrap", "rlimits"], choices=["bwrap", "rlimits"])
    args = parser.parse_args(argv)
    n, repeats, backends = args.programs, args.repeats, args.backends
    if args.quick:
        n, repeats, backends = 16, 2, ["bwrap"]
    default_workers = min(8, os.cpu_count() or 1)
    worker_counts = [default_workers] if args.quick else sorted({default_workers, 8})
    sources = programs(n)
    print(f"{n} programs per run, {repeats} repeat(s), {os.cpu_count()} CPUs, uid {os.getuid()}")
    print(f"{'backend':<10} {'workers':>7} {'programs/s (best)':>18} {'programs/s (median)':>20} "
          f"{'ms/program':>11} {'vs first cell':>14}")
    if LEGACY:
        backends = ["legacy"]
    cells: dict[str, tuple[SandboxConfig, int]] = {}
    for backend in backends:
        config = SandboxConfig() if LEGACY else SandboxConfig(backend=backend, allow_unisolated=backend == "rlimits")
        for workers in worker_counts:
            try:
                run_programs(sources[:workers], config, max_workers=workers)  # warm: backend check, page cache
            except SandboxUnavailable as exc:
                print(f"{backend:<10} {workers:>7}  unavailable: {exc}")
                continue
            cells[f"{backend} {workers}"] = (config, workers)
    runs = interleaved(list(cells), repeats, lambda cell, _rep: run_once(cells[cell][0], sources, cells[cell][1]))
    first = stat([r[0] for r in runs[next(iter(cells))]]) if cells else None
    for cell, results in runs.items():
        backend, workers = cell.split()
        rates = stat([r[0] for r in results])
        latency = 1000 * statistics.mean(r[1] for r in results)
        print(f"{backend:<10} {workers:>7} {max(rates.values):>18.1f} {rates.cell('.1f'):>20} {latency:>11.1f} "
              f"{ratio_cell(rates, first):>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
