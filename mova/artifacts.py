"""Reuse a built artefact (a checkpoint, a teacher, a run folder) only when it was built with the same arguments.

Benchmarks and demos skip work whose result is already on disk. Keying that on the result's existence alone
("``final/config.json`` is there") lets a rerun with other sizes silently evaluate a stale model. So every such
folder gets a record of the arguments that shaped it (:data:`RECORD`, JSON, beside the artefact); a rerun whose
arguments differ -- or a folder without a record, built before records existed -- is removed and rebuilt, with
a line on stderr that says why.

    key = {"layers": 2, "width": 64, "steps": 600, "seed": 0}
    build_once(out / "sft-0", key, lambda: train(out / "sft-0"), marker="final/config.json")

``claim`` is the half for folders that resume instead of being rebuilt (a continual run with its ``state.json``):
it empties a folder whose record differs and records the new arguments before the work starts.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

#: the file, inside the artefact's folder, that records the arguments it was built with.
RECORD = "build_args.json"


def _normalise(key: Mapping[str, Any]) -> dict[str, Any]:
    """The key as it reads back from JSON (tuples become lists, paths strings), so equal keys compare equal."""
    return json.loads(json.dumps(dict(key), sort_keys=True, default=str))


def recorded_args(folder: str | Path) -> dict[str, Any] | None:
    """The arguments recorded in ``folder``, or None when it has no (readable) record."""
    path = Path(folder) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stale_reason(folder: str | Path, key: Mapping[str, Any], marker: str | None = None) -> str | None:
    """None when ``folder`` holds an artefact built with ``key`` (and ``marker``, a file inside it that only a
    finished build leaves, exists); otherwise why it cannot be reused."""
    folder = Path(folder)
    if marker is not None and not (folder / marker).is_file():
        return f"{marker} is missing"
    old = recorded_args(folder)
    if old is None:
        return f"it has no {RECORD} recording the arguments it was built with"
    new = _normalise(key)
    if old == new:
        return None
    changed = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
               for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "built with other arguments (" + "; ".join(changed) + ")"


def _log(message: str) -> None:
    print(f"[artefact] {message}", file=sys.stderr, flush=True)


def _record(folder: Path, key: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps(_normalise(key), indent=1, sort_keys=True) + "\n")
    tmp.replace(folder / RECORD)


def claim(folder: str | Path, key: Mapping[str, Any]) -> bool:
    """Make ``folder`` belong to ``key``: remove it when it was built with other arguments (or has content but
    no record), then record ``key``. Returns True when something stale was removed. Resumable work keeps what a
    run with the same arguments left there."""
    folder = Path(folder)
    removed = False
    if folder.exists() and any(folder.iterdir()):
        reason = stale_reason(folder, key)
        if reason is not None:
            _log(f"rebuilding {folder}: {reason}")
            shutil.rmtree(folder)
            removed = True
    _record(folder, key)
    return removed


def build_once(folder: str | Path, key: Mapping[str, Any], build: Callable[[], Any],
               marker: str = "config.json") -> bool:
    """Run ``build`` (which must leave ``folder/marker``) unless ``folder`` already holds an artefact built with
    ``key``; a stale one is removed first. Returns True when it built, False when it reused."""
    folder = Path(folder)
    reason = stale_reason(folder, key, marker)
    if reason is None:
        _log(f"reusing {folder} (built with the same arguments)")
        return False
    if folder.exists():
        _log(f"rebuilding {folder}: {reason}")
        shutil.rmtree(folder)
    build()
    if not (folder / marker).is_file():
        raise RuntimeError(f"building {folder} did not write {marker}")
    _record(folder, key)
    return True
