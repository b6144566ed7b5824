"""Preference records and the dataset every source becomes (:class:`PreferenceDataset`), with the row checks
all sources share. The constants of the package's sources live here too, as its lowest module."""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image
from torch.utils.data import Dataset

from mova.errors import DataError
from mova.model.templates import IMAGE_PLACEHOLDER

logger = logging.getLogger(__name__)

SPAVL_HUB_ID = "sqrti/SPA-VL"
#: Parquet files per config and split, as the hub dataset card's ``configs:`` block declares them; used
#: for a local copy that has no card (e.g. only the parquet folders were copied).
SPAVL_LAYOUT: dict[str, dict[str, str]] = {
    "default": {"train": "data/train-*"},
    "validation": {"validation": "validation/validation-*"},
    "test": {"harm": "test/harm-*", "help": "test/help-*"},
}
DEFAULT_SPLITS = {"default": "train", "validation": "validation", "test": "harm"}
CLASS_COLUMNS = ("class1", "class2", "class3")
VERIFY_MODES = ("header", "full", "none")
TEXT_SUFFIXES = (".jsonl", ".json")
#: Message roles of text preference files, mapped to LLaVA's ``from`` values.
ROLE_TO_FROM = {"user": "human", "human": "human", "assistant": "gpt", "gpt": "gpt", "system": "system"}



# --- records ------------------------------------------------------------------------------------------
@dataclass
class PreferencePair:
    """One preference: the answer ``chosen`` is preferred to ``rejected`` after ``prompt``."""

    id: str  # image_name when the source has one, else f"{source_name}:{index}"
    index: int  # row index in the source split (for error messages)
    prompt: list[dict[str, str]]  # LLaVA turns before the answer; the last one is "human"
    chosen: str
    rejected: str
    image: Image.Image | None  # decoded RGB image, None for text-only
    meta: dict[str, Any] = field(default_factory=dict)

    def conversation(self, which: str = "chosen") -> list[dict[str, str]]:
        """``prompt`` followed by the chosen (or rejected) answer as a ``gpt`` turn: a LLaVA conversation
        that :func:`mova.model.templates.render` turns into label-masked segments."""
        if which not in ("chosen", "rejected"):
            raise ValueError(f"which must be 'chosen' or 'rejected', got {which!r}")
        return [*self.prompt, {"from": "gpt", "value": getattr(self, which)}]


@dataclass
class SafetyQuestion:
    """A question of the SPA-VL test config (split ``harm`` or ``help``), to be answered and judged."""

    id: str
    index: int
    question: str
    image: Image.Image | None
    split: str
    meta: dict[str, Any] = field(default_factory=dict)  # class1..3, source, ...

    def prompt(self) -> list[dict[str, str]]:
        """The question as one LLaVA ``human`` turn, with the ``<image>`` placeholder when there is an image."""
        has_placeholder = IMAGE_PLACEHOLDER in self.question
        value = (
            f"{IMAGE_PLACEHOLDER}\n{self.question}" if self.image is not None and not has_placeholder else self.question
        )
        return [{"from": "human", "value": value}]


class SkippedRow(NamedTuple):
    index: int
    id: str
    reason: str  # a short category ("empty chosen", "undecodable image", ...); details go to the log


class InvalidRowError(DataError):
    """One row of a preference source is malformed; ``source``, ``index``, ``id`` and ``reason`` name it."""

    def __init__(self, message: str, source: str = "", index: int = -1, row_id: str = "", reason: str = ""):
        super().__init__(message)
        self.source, self.index, self.id, self.reason = source, index, row_id, reason


class _Invalid(Exception):
    """Internal: why a row is rejected (``reason`` is the category counted in summaries)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class _Record:
    """A validated pair without its decoded image (``image_ref`` is fetched and decoded on access)."""

    id: str
    index: int
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    image_ref: Any
    meta: dict[str, Any]


class _Rows:
    """Collects the verdicts on a source's rows: raises on the first bad one, or logs and counts it."""

    def __init__(self, source: str, skip_invalid: bool):
        self.source, self.skip_invalid = source, skip_invalid
        self.skipped: list[SkippedRow] = []

    def message(self, index: int, row_id: str, err: _Invalid) -> str:
        detail = f": {err.detail}" if err.detail else ""
        return f"{self.source}: row {index} (id {row_id!r}): {err.reason}{detail}"

    def error(self, index: int, row_id: str, err: _Invalid, hint: str = "") -> InvalidRowError:
        return InvalidRowError(self.message(index, row_id, err) + hint, self.source, index, row_id, err.reason)

    def bad(self, index: int, row_id: str, err: _Invalid) -> None:
        if not self.skip_invalid:
            raise self.error(index, row_id, err, " (pass skip_invalid=True to skip malformed rows)") from err
        logger.warning("skipping %s", self.message(index, row_id, err))
        self.skipped.append(SkippedRow(index, row_id, err.reason))

    def finish(self, records: list[_Record], limit: int | None) -> None:
        """No pair left is an error: a trainer given an empty dataset fails later and less clearly."""
        if not records and limit != 0:
            raise DataError(f"{self.source}: no usable preference pairs ({len(self.skipped)} rows skipped)")


class _PairSequence(Dataset):
    """What every pair collection shares, read from its ``records`` (one ``_Record`` per pair, in order)."""

    records: list[_Record]

    def __iter__(self) -> Iterator[PreferencePair]:
        for i in range(len(self)):
            yield self[i]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def has_image(self) -> list[bool]:
        return [r.image_ref is not None for r in self.records]


class PreferenceDataset(_PairSequence):
    """Validated preference pairs; ``ds[i]`` is a :class:`PreferencePair` with its image decoded.

    ``skipped`` lists the rows left out by ``skip_invalid`` as (index, id, reason); ``summary()`` counts
    them. ``fetch_image`` maps a record's ``image_ref`` to image bytes or a file path.
    """

    def __init__(
        self,
        records: list[_Record],
        *,
        source: str,
        rows: int,
        skipped: list[SkippedRow],
        fetch_image: Callable[[Any], bytes | Path] | None = None,
        filtered_out: int = 0,
        info: dict[str, Any] | None = None,
    ):
        self.records = records
        self.source = source
        self.rows = rows
        self.skipped = skipped
        self.filtered_out = filtered_out
        self.info = dict(info or {})
        self._fetch_image = fetch_image

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> PreferencePair:
        rec = self.records[i]
        image = None
        if rec.image_ref is not None:
            try:
                image = _decode_image(self._fetch_image(rec.image_ref) if self._fetch_image else rec.image_ref)
            except _Invalid as e:
                # Only reachable when verify_images was "header" or "none": the load could not skip it.
                raise InvalidRowError(
                    f"{self.source}: row {rec.index} (id {rec.id!r}): {e.reason}: {e.detail} "
                    "(load with verify_images='full' to find such rows up front)",
                    self.source,
                    rec.index,
                    rec.id,
                    e.reason,
                ) from e
        return PreferencePair(
            rec.id, rec.index, [dict(t) for t in rec.prompt], rec.chosen, rec.rejected, image, dict(rec.meta)
        )

    def without_image(self, i: int) -> PreferencePair:
        """Pair ``i`` with ``image=None`` and nothing decoded (``has_image[i]`` says whether it has one)."""
        rec = self.records[i]
        return PreferencePair(
            rec.id, rec.index, [dict(t) for t in rec.prompt], rec.chosen, rec.rejected, None, dict(rec.meta)
        )

    def summary(self) -> dict[str, Any]:
        """Counts for logs and run summaries: ``rows`` in the source, ``filtered_out`` by the class
        filters, ``kept``, ``skipped`` and ``skipped_by_reason`` (a ``limit`` may stop before the end)."""
        return {
            "source": self.source,
            **self.info,
            "rows": self.rows,
            "filtered_out": self.filtered_out,
            "kept": len(self.records),
            "skipped": len(self.skipped),
            "skipped_by_reason": dict(Counter(s.reason for s in self.skipped)),
        }

    def __repr__(self) -> str:
        return f"PreferenceDataset({self.source}, {len(self)} pairs, {len(self.skipped)} skipped)"


# --- shared checks ------------------------------------------------------------------------------------
def _decode_image(data: bytes | Path | None) -> Image.Image:
    """Bytes or a file path -> RGB PIL image, every failure as ``_Invalid("undecodable image")``."""
    if data is None:
        raise _Invalid("missing field 'image'", "no image bytes")
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for corrupt data
        raise _Invalid("undecodable image", f"{type(e).__name__}: {e}") from e


def _verify_image(data: bytes | Path | None, mode: str) -> None:
    if data is None or (isinstance(data, bytes) and not data):
        raise _Invalid("missing field 'image'", "no image bytes")
    if mode == "full":
        _decode_image(data)
    elif mode == "header":
        try:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                im.verify()
        except Exception as e:
            raise _Invalid("undecodable image", f"{type(e).__name__}: {e}") from e


def _check_verify_mode(mode: str) -> None:
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify_images must be one of {VERIFY_MODES}, got {mode!r}")


def _text_field(value: Any, name: str) -> str:
    """A required string field: missing (None) or non-string -> "missing field", blank -> "empty"."""
    if value is None:
        raise _Invalid(f"missing field {name!r}")
    if not isinstance(value, str):
        raise _Invalid(f"missing field {name!r}", f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _Invalid(f"empty {name}", "blank or whitespace only")
    return value


def _check_pair(chosen: str, rejected: str) -> None:
    if chosen.strip() == rejected.strip():
        raise _Invalid("chosen == rejected", "the two answers are identical, so the pair prefers nothing")


def _human_turn(question: str, with_image: bool) -> dict[str, str]:
    if with_image and IMAGE_PLACEHOLDER not in question:
        question = f"{IMAGE_PLACEHOLDER}\n{question}"
    return {"from": "human", "value": question}


def _as_values(name: str, value: str | Sequence[str] | None) -> list[str] | None:
    """A class filter as a list; a bare string is one value (not a sequence of characters)."""
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name} filter must be a string or a non-empty list of strings, got {value!r}")
    return values


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")


def _warn_duplicate_ids(records: list[_Record], label: str) -> None:
    counts = Counter(r.id for r in records)
    dupes = [i for i, n in counts.items() if n > 1]
    if dupes:
        logger.warning(
            "%s: %d id(s) occur more than once (e.g. %r); ids are not unique keys here", label, len(dupes), dupes[0]
        )


class PairSelection(_PairSequence):
    """Chosen positions of one or more preference datasets, as one dataset: a mixture of sources (a position
    may repeat when a source is oversampled) or a held-out split. Offers what the trainers read of a
    :class:`PreferenceDataset`: pairs with their images decoded on access, ``without_image``, ``has_image``,
    ``records`` (metadata), ``skipped`` and ``summary()``."""

    def __init__(self, picks: list[tuple[PreferenceDataset, int]], source: str, info: dict[str, Any] | None = None):
        self.picks = picks
        self.source = source
        self.info = dict(info or {})
        self.records = [ds.records[i] for ds, i in picks]
        seen: dict[int, PreferenceDataset] = {id(ds): ds for ds, _ in picks}
        self.skipped = [s for ds in seen.values() for s in ds.skipped]

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, i: int) -> PreferencePair:
        ds, j = self.picks[i]
        return ds[j]

    def without_image(self, i: int) -> PreferencePair:
        ds, j = self.picks[i]
        return ds.without_image(j)

    def summary(self) -> dict[str, Any]:
        return {"source": self.source, **self.info, "kept": len(self.picks), "skipped": len(self.skipped),
                "skipped_by_reason": dict(Counter(s.reason for s in self.skipped))}
