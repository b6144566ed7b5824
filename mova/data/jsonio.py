"""Reading record files: one reader for every ``.json`` / ``.jsonl`` source Mova takes (LLaVA data, prompt
sets, reasoning problems, Self-Polish problems), so that they all accept the same shapes and fail the same
way: a missing file, a bad JSONL line (by line number) or a top level that is not a list is a
:class:`~mova.errors.DataError` naming the file.
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
