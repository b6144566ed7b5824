"""Reading records, and the images they name: one reader for every ``.json`` / ``.jsonl`` source Mova takes
(LLaVA data, prompt sets, reasoning problems, Self-Polish problems, VQA questions) and one resolver for every
image path a record gives (training, feature caching, evaluation, preference data).

The reader makes them all accept the same shapes and fail the same way: a missing file, a bad JSONL line (by
line number) or a top level that is not a list is a :class:`~mova.errors.DataError` naming the file. The
resolver confines a record's image to its folder: a shared data file must not make a command read
arbitrary files (absolute paths, ``..`` escapes and symlinks out of the folder are refused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mova.errors import DataError


def read_json_records(path: str | Path, what: str = "data") -> list[Any]:
    """The records of a ``.jsonl`` file (one JSON value per non-empty line) or a ``.json`` file holding a
    list (or ``{"data": [...]}``, as some hub exports do). ``what`` names the file in errors."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return data


class RecordProblem(DataError):
    """Why a record cannot be used: ``kind`` is a short, stable name (the key of ``skipped_by_reason`` in a
    run's summary), the message says what exactly is wrong with this record."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def resolve_image_path(folder: Path | None, rel: Any) -> Path:
    """``folder / rel``, refusing absolute paths and ``..`` escapes (a shared data file must not make
    the trainer read arbitrary files)."""
    if not isinstance(rel, str) or not rel:
        raise RecordProblem("bad image path", f"image path must be a non-empty string, got {rel!r}")
    if folder is None:
        raise RecordProblem("no image folder", "record has an image but no image_folder is configured")
    if Path(rel).is_absolute():
        raise RecordProblem("image outside the folder",
                            f"absolute image path {rel!r} refused: paths must be relative to the image folder")
    root = folder.resolve()
    path = (root / rel).resolve()
    if root != path and root not in path.parents:
        raise RecordProblem("image outside the folder", f"image path {rel!r} escapes the image folder {root}")
    return path
