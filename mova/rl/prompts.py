"""Prompt sets for RL: the questions a policy answers during PPO (text or with images).

Sources:

* a ``.jsonl`` / ``.json`` file of records ``{"prompt": str | [messages], "image": path?, ...}``; the other
  keys travel with the record as columns that reward functions read (``answer`` for a maths task);
  ``messages`` may be role/content or LLaVA ``from``/``value`` turns and must end with the user's turn;
* anything else is read as SPA-VL (the hub id ``sqrti/SPA-VL`` or a local folder in its layout): each
  row's question with its image; ``chosen`` and ``class1..3`` become columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.data.records import read_json_records, resolve_image_path
from mova.errors import DataError
from mova.model.templates import normalize_messages


@dataclass
class PromptRecord:
    id: str
    #: the conversation so far, in role/content form, ending with the user's turn.
    messages: list[dict[str, str]]
    #: a PIL image or a path (None: text only).
    image: Any = None
    columns: dict[str, Any] = field(default_factory=dict)
    #: the prompt exactly as the model sees it (no chat template); set by trainers that build their own
    #: prompts, such as R3's start states. ``messages`` is then ignored.
    text: str | None = None


def _record(path: Path, index: int, row: Any, image_folder: Path | None) -> PromptRecord:
    where = f"{path} record {index}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    rid = str(row.get("id", index))
    raw = row.get("prompt", row.get("messages", row.get("conversations")))
    if raw is None:
        raise DataError(f"{where} (id {rid}): no 'prompt' (or 'messages') field")
    messages = [{"role": "user", "content": raw}] if isinstance(raw, str) else normalize_messages(raw)
    if not messages or messages[-1]["role"] != "user":
        raise DataError(f"{where} (id {rid}): the prompt must end with the user's turn")
    image = row.get("image")
    if image is not None:
        try:  # confined to the image folder, as training data is
            image_path = resolve_image_path(image_folder or path.parent, image)
        except ValueError as e:
            raise DataError(f"{where} (id {rid}): {e}") from None
        if not image_path.is_file():
            raise DataError(f"{where} (id {rid}): image {image_path} not found")
        image = image_path
    columns = {k: v for k, v in row.items() if k not in ("id", "prompt", "messages", "conversations", "image")}
    return PromptRecord(id=rid, messages=messages, image=image, columns=columns)


def load_prompts(source: str | Path, image_folder: str | Path | None = None, limit: int | None = None,
                 **spavl_kwargs: Any) -> list[PromptRecord]:
    """The prompts of ``source`` (see the module docstring); ``limit`` keeps the first N."""
    path = Path(source)
    if path.suffix in (".jsonl", ".json"):
        folder = Path(image_folder) if image_folder else None
        rows = read_json_records(path, "prompt")
        if limit is not None:
            rows = rows[:limit]
        records = [_record(path, i, row, folder) for i, row in enumerate(rows)]
    else:
        from mova.data.preference import load_spavl

        pairs = load_spavl(str(source), limit=limit, **spavl_kwargs)
        records = []
        for pair in pairs:
            columns = {"chosen": pair.chosen, **{k: v for k, v in pair.meta.items() if k.startswith("class")}}
            records.append(PromptRecord(id=pair.id, messages=normalize_messages(pair.prompt), image=pair.image,
                                        columns=columns))
    if not records:
        raise DataError(f"{source}: no prompts")
    return records
