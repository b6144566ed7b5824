"""Text preference files: JSONL / JSON rows of ``{"prompt", "chosen", "rejected"}`` (plain or TRL's
conversational form), with an optional image beside the file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mova.data.preference.dataset import (
    ROLE_TO_FROM,
    PreferenceDataset,
    _check_limit,
    _check_pair,
    _check_verify_mode,
    _human_turn,
    _Invalid,
    _Record,
    _Rows,
    _text_field,
    _verify_image,
    _warn_duplicate_ids,
)
from mova.data.records import resolve_image_path
from mova.errors import DataError
from mova.model.templates import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

# --- text preference files ----------------------------------------------------------------------------
def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts as TRL / transformers write multimodal
    messages (``{"type": "text", "text": ...}``, ``{"type": "image"}`` -> ``<image>``), joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif kind == "image":
                parts.append(IMAGE_PLACEHOLDER)
            else:
                raise ValueError(f"unsupported content part {p!r}")
        return "\n".join(parts)
    raise ValueError(f"content must be a string or a list of parts, got {type(content).__name__}")


def _turn(message: Any) -> dict[str, str]:
    """A role/content (or LLaVA from/value) message as a LLaVA turn; raises ValueError if malformed."""
    if not isinstance(message, dict):
        raise ValueError(f"a message must be an object, got {type(message).__name__}")
    role = message.get("role", message.get("from"))
    if role not in ROLE_TO_FROM:
        raise ValueError(f"unknown role {role!r} (known: {sorted(ROLE_TO_FROM)})")
    return {"from": ROLE_TO_FROM[role], "value": _content_text(message.get("content", message.get("value")))}


def _prompt_turns(value: Any) -> list[dict[str, str]]:
    """The ``prompt`` field as LLaVA turns. A leading system message stays a ``system`` turn (Mova's
    chat templates render it as the system prompt); anywhere else it is refused, as the templates could
    not place it. The last turn must be the user's."""
    if value is None:
        raise _Invalid("missing field 'prompt'")
    if isinstance(value, str):
        turns = [{"from": "human", "value": value}]
    elif isinstance(value, list) and value:
        try:
            turns = [_turn(m) for m in value]
        except ValueError as e:
            raise _Invalid("malformed prompt", str(e)) from e
    else:
        raise _Invalid("malformed prompt", "expected a string or a non-empty list of messages")
    if any(t["from"] == "system" for t in turns[1:]):
        raise _Invalid("malformed prompt", "a system message is only allowed as the first message")
    if turns[-1]["from"] != "human":
        raise _Invalid("malformed prompt", f"the last prompt message must be the user's, not {turns[-1]['from']!r}")
    if not turns[-1]["value"].strip():
        raise _Invalid("empty prompt", "the last user message is blank")
    return turns


def _response_text(value: Any, name: str) -> str:
    """``chosen`` / ``rejected``: a string, or one assistant message (TRL's conversational format)."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        if len(value) != 1:
            raise _Invalid(f"malformed {name}", f"expected one assistant message, got {len(value)} messages")
        try:
            turn = _turn(value[0])
        except ValueError as e:
            raise _Invalid(f"malformed {name}", str(e)) from e
        if turn["from"] != "gpt":
            raise _Invalid(f"malformed {name}", f"the message's role must be assistant, not {value[0].get('role')!r}")
        value = turn["value"]
    return _text_field(value, name)


def _read_text_rows(path: Path) -> Iterator[tuple[int, int, Any]]:
    """(index, line, row) per record of a JSONL file (blank lines skipped; a line that is not JSON is
    yielded as an ``_Invalid``) or of a JSON list."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of preference objects, got {type(data).__name__}")
        for i, row in enumerate(data):
            yield i, 0, row
        return
    index = 0
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row: Any = json.loads(line)
            except json.JSONDecodeError as e:
                row = _Invalid("invalid JSON", str(e))
            yield index, line_no, row
            index += 1


def load_text_preferences(
    path: str | Path, *, skip_invalid: bool = False, limit: int | None = None, verify_images: str = "header"
) -> PreferenceDataset:
    """Preference pairs from a JSONL file (one object per line) or a JSON list of objects.

    Each object is ``{"prompt": str, "chosen": str, "rejected": str}`` or TRL's conversational form
    ``{"prompt": [{"role": "user", "content": ...}, ...], "chosen": [{"role": "assistant", "content":
    ...}], "rejected": [...]}`` (roles user -> human, assistant -> gpt; a leading system message is kept as a
    ``system`` turn). Optional: ``"id"`` (else ``"{file stem}:{index}"``) and ``"image"``, a path relative
    to the file's folder (absolute paths and ``..`` escapes are refused) that gets an ``<image>``
    placeholder before the first user message unless the prompt has one. Other keys go to ``meta``.
    """
    _check_verify_mode(verify_images)
    _check_limit(limit)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference file not found: {path}")
    folder = path.parent
    rows = _Rows(str(path), skip_invalid)
    records: list[_Record] = []
    n_rows = 0
    for index, line_no, row in _read_text_rows(path):
        n_rows += 1
        if limit is not None and len(records) >= limit:
            continue  # keep counting rows for the summary
        row_id = f"{path.stem}:{index}"
        if isinstance(row, dict) and row.get("id") is not None:
            row_id = str(row["id"])
        try:
            rec = _text_record(row, index, row_id, folder, verify_images)
        except _Invalid as e:
            if line_no:
                e.detail = f"line {line_no}" + (f": {e.detail}" if e.detail else "")
            rows.bad(index, row_id, e)
            continue
        rec.meta["source"] = str(path)
        records.append(rec)
    rows.finish(records, limit)
    _warn_duplicate_ids(records, str(path))
    return PreferenceDataset(records, source=str(path), rows=n_rows, skipped=rows.skipped, info={"limit": limit})


def _text_record(row: Any, index: int, row_id: str, folder: Path, verify_images: str) -> _Record:
    if isinstance(row, _Invalid):
        raise row
    if not isinstance(row, dict):
        raise _Invalid("malformed row", f"expected a JSON object, got {type(row).__name__}")
    prompt = _prompt_turns(row.get("prompt"))
    if "chosen" not in row or row["chosen"] is None:
        raise _Invalid("missing field 'chosen'")
    if "rejected" not in row or row["rejected"] is None:
        raise _Invalid("missing field 'rejected'")
    chosen = _response_text(row["chosen"], "chosen")
    rejected = _response_text(row["rejected"], "rejected")
    _check_pair(chosen, rejected)
    image_ref: Path | bytes | None = None
    placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in prompt)
    rel = row.get("image")
    if rel is not None:
        if isinstance(rel, (bytes, bytearray)):  # embedded in the dataset (the Hub's Image feature)
            image_ref = bytes(rel)
        elif not isinstance(rel, str):
            raise _Invalid("malformed image", f"expected one relative path, got {type(rel).__name__}")
        else:
            try:
                image_ref = resolve_image_path(folder, rel)
            except ValueError as e:
                raise _Invalid("image path refused", str(e)) from e
            if not image_ref.is_file():
                raise _Invalid("missing image file", str(image_ref))
        _verify_image(image_ref, verify_images)
        if placeholders == 0:
            first = next(k for k, t in enumerate(prompt) if t["from"] == "human")
            prompt[first] = _human_turn(prompt[first]["value"], True)
        elif placeholders > 1:
            raise _Invalid("malformed prompt", f"{placeholders} {IMAGE_PLACEHOLDER} placeholders for one image")
    elif placeholders:
        raise _Invalid("malformed prompt", f"{IMAGE_PLACEHOLDER} placeholder but no 'image' field")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected", "id", "image")}
    if isinstance(rel, str):
        meta["image_path"] = rel
    return _Record(row_id, index, prompt, chosen, rejected, image_ref, meta)


def load_preference_rows(source: str, *, name: str | None = None, split: str = "train", limit: int | None = None,
                         skip_invalid: bool = False, verify_images: str = "header", image_folder: str | None = None,
                         columns: dict[str, str] | None = None) -> PreferenceDataset:
    """Preference pairs from a Hub dataset id, a local folder laid out like one, or a parquet file, whose rows
    have the fields :func:`load_text_preferences` reads (``prompt``, ``chosen``, ``rejected``, optional ``id``
    and ``image``: a path relative to the folder, or image bytes embedded in the dataset). ``columns`` renames
    a source's columns to these names (``{question: prompt}``)."""
    from mova.data.sources import read_source

    _check_verify_mode(verify_images)
    _check_limit(limit)
    data = read_source(source, name=name, split=split, image_folder=image_folder, columns=columns,
                       what="preference data")
    rows = _Rows(data.label, skip_invalid)
    records: list[_Record] = []
    for index, row in enumerate(data.records):
        if limit is not None and len(records) >= limit:
            break
        row_id = str(row["id"]) if isinstance(row, dict) and row.get("id") is not None else f"{data.label}:{index}"
        try:
            rec = _text_record(row, index, row_id, data.image_folder, verify_images)
        except _Invalid as e:
            rows.bad(index, row_id, e)
            continue
        rec.meta["source"] = source
        records.append(rec)
    rows.finish(records, limit)
    _warn_duplicate_ids(records, data.label)
    return PreferenceDataset(records, source=data.label, rows=len(data.records), skipped=rows.skipped,
                             info={"limit": limit, "split": split})
