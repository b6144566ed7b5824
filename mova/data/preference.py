"""Preference pairs for DPO and reward modelling: SPA-VL (hub or local parquet folder) and text JSONL.

Every source becomes a :class:`PreferenceDataset` of :class:`PreferencePair` (a LLaVA-style prompt, a
chosen and a rejected answer, an optional RGB image and metadata), so one trainer serves the
multimodal SPA-VL alignment and the text-only preference sets alike. The SPA-VL test config (questions
only) becomes a list of :class:`SafetyQuestion` for the safety evaluation.

Every row is checked when the source is loaded, before any training step, and a malformed one -- a
missing field, an empty (or whitespace) chosen or rejected answer, both answers the same, an image that
does not decode, an image path that is absolute or leaves the data folder -- stops the load with a
:class:`~mova.errors.DataError` naming the source, the row's index and id and the reason. With
``skip_invalid=True`` such rows are logged, left out and counted in ``.skipped`` / ``.summary()``
instead: a long run should not die on row 80,000, but nothing is dropped silently either.

Images are decoded lazily (in ``__getitem__``): SPA-VL's 93k training images take ~3.5 GB as JPEG and
far more decoded. At load time each image is checked by ``verify_images``: ``"header"`` (default; PIL's
``verify``, which reads the header only: catches missing, non-image and truncated-PNG bytes),
``"full"`` (decode every image once: catches everything, costs a full decoding pass) or ``"none"``.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image
from torch.utils.data import Dataset

from mova.data.llava import resolve_image_path
from mova.data.templates import IMAGE_PLACEHOLDER
from mova.errors import DataError

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
        that :func:`mova.data.templates.render` turns into label-masked segments."""
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


class PreferenceDataset(Dataset):
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

    def __iter__(self) -> Iterator[PreferencePair]:
        for i in range(len(self)):
            yield self[i]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.records]

    @property
    def has_image(self) -> list[bool]:
        return [r.image_ref is not None for r in self.records]

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


# --- SPA-VL -------------------------------------------------------------------------------------------
def _card_data_files(folder: Path) -> dict[str, dict[str, str]] | None:
    """``{config: {split: pattern}}`` from the ``configs:`` block of ``folder/README.md``'s YAML header
    (how the hub maps configs to files), or ``None`` when the card has none."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8")
    if not text.startswith("---") or text.count("---") < 2:
        return None
    import yaml

    try:
        header = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError:
        return None
    if not isinstance(header, dict) or not isinstance(header.get("configs"), list):
        return None
    layout: dict[str, dict[str, str]] = {}
    for entry in header["configs"]:
        files = entry.get("data_files") if isinstance(entry, dict) else None
        if isinstance(files, str):
            files = [{"split": "train", "path": files}]
        for item in files or []:
            if isinstance(item, dict) and isinstance(item.get("path"), str):
                layout.setdefault(str(entry.get("config_name", "default")), {})[str(item.get("split", "train"))] = \
                    item["path"]
    return layout or None


def load_spavl_split(source: str, config: str, split: str, cache_dir: str | Path | None = None) -> Any:
    """SPA-VL's ``config`` / ``split`` as a ``datasets.Dataset``, from the hub id or a local folder.

    A local folder's files are found through its dataset card's ``configs:`` block when it has one,
    else by :data:`SPAVL_LAYOUT`. A hub id goes through ``datasets.load_dataset``, which offline
    (``HF_HUB_OFFLINE=1``) or without network fails unless the dataset is in the local cache: that
    error is re-raised as a :class:`DataError` that says to pass a local folder.
    """
    import datasets

    folder = Path(source).expanduser()
    label = f"{source} [{config}/{split}]"
    kw: dict[str, Any] = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
    if folder.is_dir():
        # Always the parquet builder with explicit files, never load_dataset(folder): offline,
        # `datasets` resolves a folder path like a hub name and can return another folder's cached
        # copy when the two share a basename (seen: a regenerated mini set came back with the rows of an
        # older one). File-based cache keys follow the files' paths and mtimes.
        try:
            layout = _card_data_files(folder) or SPAVL_LAYOUT
            if config not in layout or split not in layout[config]:
                known = ", ".join(f"{c}/{s}" for c, splits in layout.items() for s in splits)
                raise DataError(f"{label}: unknown SPA-VL config/split; known: {known}")
            pattern = layout[config][split]
            pattern = str(folder / pattern) + ("" if pattern.endswith(".parquet") else ".parquet")
            return datasets.load_dataset("parquet", data_files={split: pattern}, split=split, **kw)
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{label}: could not load the local folder: {type(e).__name__}: {e}") from e
    if Path(source).suffix in TEXT_SUFFIXES or folder.exists():
        raise DataError(
            f"{source!r} is not a folder: SPA-VL is read from a hub id or a local folder "
            "(use load_text_preferences for .jsonl/.json files)"
        )
    try:
        return datasets.load_dataset(source, config, split=split, **kw)
    except Exception as e:
        raise DataError(
            f"{label}: could not load {source!r} from the Hugging Face Hub ({type(e).__name__}: {e}). There is no "
            f"local folder named {source!r} either. Offline (HF_HUB_OFFLINE=1) or without network, download it "
            f"where there is network (`huggingface-cli download {source} --repo-type dataset --local-dir DIR`, "
            "or copy its data/, validation/ and test/ folders) and pass that folder as the source."
        ) from e


def _require_columns(ds: Any, needed: Sequence[str], label: str) -> None:
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(f"{label}: missing column(s) {missing}; the split has columns {ds.column_names}")


def _column(ds: Any, name: str) -> list[Any]:
    """A column as Python values, straight from Arrow (no image decoding, no per-row dicts)."""
    return ds.data.column(name).to_pylist()


def _select_rows(ds: Any, label: str, filters: dict[str, list[str] | None]) -> list[int]:
    """Indices of the rows whose class columns match the filters (any given value per column, all given
    columns). Filtering on a split without class columns is an error, not an empty result."""
    active = {c: v for c, v in filters.items() if v is not None}
    if not active:
        return list(range(ds.num_rows))
    missing = [c for c in active if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{label}: cannot filter on {', '.join(missing)}: the split has no such column (columns: "
            f"{ds.column_names}); SPA-VL's class labels are in the 'validation' and 'test' configs"
        )
    columns = {c: _column(ds, c) for c in active}
    for c, wanted in active.items():
        unknown = sorted(set(wanted) - set(columns[c]))
        if unknown:
            logger.warning(
                "%s: %s value(s) %s occur in no row; known: %s",
                label,
                c,
                unknown,
                sorted({v for v in columns[c] if v is not None}),
            )
    wanted_sets = {c: set(v) for c, v in active.items()}
    keep = [i for i in range(ds.num_rows) if all(columns[c][i] in wanted_sets[c] for c in active)]
    if not keep:
        known = {c: sorted({v for v in columns[c] if v is not None}) for c in active}
        raise DataError(f"{label}: no row matches {active}; known values: {known}")
    return keep


class _ArrowImages:
    """Fetches one row's image bytes from the memory-mapped Arrow table, so a dataset of 93k pairs holds
    no image in memory. The column handle is rebuilt after pickling (DataLoader workers)."""

    def __init__(self, ds: Any):
        self.ds = ds
        self._col: Any = None

    def __call__(self, index: int) -> bytes | None:
        if self._col is None:
            self._col = self.ds.data.column("image")
        value = self._col[index].as_py()
        return value.get("bytes") if value else None

    def __getstate__(self) -> dict[str, Any]:
        return {"ds": self.ds, "_col": None}


def _class_meta(columns: dict[str, list[Any]], i: int) -> dict[str, Any]:
    return {c: columns[c][i] for c in CLASS_COLUMNS if c in columns}


def load_spavl(
    source: str = SPAVL_HUB_ID,
    config: str = "default",
    split: str | None = None,
    *,
    class1: str | Sequence[str] | None = None,
    class2: str | Sequence[str] | None = None,
    class3: str | Sequence[str] | None = None,
    limit: int | None = None,
    skip_invalid: bool = False,
    verify_images: str = "header",
    cache_dir: str | Path | None = None,
) -> PreferenceDataset:
    """SPA-VL preference pairs (config ``default``, split ``train``, or ``validation``) from the hub id or
    a local folder with the hub's layout (such as :func:`mova.data.spavl_mini.write_spavl_mini` writes).

    Rows are filtered by ``class1``/``class2``/``class3`` (any of the given values) first, then checked;
    ``limit`` keeps the first ``limit`` valid pairs. Prompts are ``[{"from": "human", "value":
    "<image>\\n" + question}]``; ids are the row's ``image_name`` when it has one, else
    ``"spavl/{config}/{split}:{index}"``; ``meta`` holds the class labels, ``image_name``, source,
    config and split.
    """
    _check_verify_mode(verify_images)
    _check_limit(limit)
    if config == "test":
        raise DataError("SPA-VL config 'test' holds questions without answers; load it with load_spavl_test")
    split = split or DEFAULT_SPLITS.get(config)
    if split is None:
        raise DataError(f"no default split for SPA-VL config {config!r}; pass split=")
    filters = {
        "class1": _as_values("class1", class1),
        "class2": _as_values("class2", class2),
        "class3": _as_values("class3", class3),
    }
    ds = load_spavl_split(source, config, split, cache_dir)
    label = f"{source} [{config}/{split}]"
    _require_columns(ds, ("image", "question", "chosen", "rejected"), label)
    selected = _select_rows(ds, label, filters)
    names = ["question", "chosen", "rejected", *(c for c in ("image_name", *CLASS_COLUMNS) if c in ds.column_names)]
    columns = {c: _column(ds, c) for c in names}
    images = _ArrowImages(ds)
    rows = _Rows(label, skip_invalid)
    records: list[_Record] = []
    image_names = columns.get("image_name")
    for i in selected:
        if limit is not None and len(records) >= limit:
            break
        name = image_names[i] if image_names is not None else None
        row_id = name if isinstance(name, str) and name.strip() else f"spavl/{config}/{split}:{i}"
        try:
            question = _text_field(columns["question"][i], "question")
            chosen = _text_field(columns["chosen"][i], "chosen")
            rejected = _text_field(columns["rejected"][i], "rejected")
            _check_pair(chosen, rejected)
            _verify_image(images(i), verify_images)
        except _Invalid as e:
            rows.bad(i, row_id, e)
            continue
        meta = {**_class_meta(columns, i), "source": source, "config": config, "split": split}
        if image_names is not None:
            meta["image_name"] = name
        records.append(_Record(row_id, i, [_human_turn(question, True)], chosen, rejected, i, meta))
    rows.finish(records, limit)
    _warn_duplicate_ids(records, label)
    return PreferenceDataset(
        records,
        source=label,
        rows=ds.num_rows,
        skipped=rows.skipped,
        fetch_image=images,
        filtered_out=ds.num_rows - len(selected),
        info={
            "config": config,
            "split": split,
            "limit": limit,
            "filters": {c: v for c, v in filters.items() if v is not None},
        },
    )


def load_spavl_test(
    source: str = SPAVL_HUB_ID,
    split: str = "harm",
    *,
    class1: str | Sequence[str] | None = None,
    class2: str | Sequence[str] | None = None,
    class3: str | Sequence[str] | None = None,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
) -> list[SafetyQuestion]:
    """The SPA-VL test questions of split ``harm`` (judged for unsafe answers) or ``help`` (judged for
    helpfulness), images decoded (265 rows per split). An evaluation must not silently shrink, so any
    malformed row (no question, undecodable image) raises a :class:`DataError` naming it."""
    _check_limit(limit)
    if split not in SPAVL_LAYOUT["test"]:
        raise DataError(f"SPA-VL test split must be one of {sorted(SPAVL_LAYOUT['test'])}, got {split!r}")
    filters = {
        "class1": _as_values("class1", class1),
        "class2": _as_values("class2", class2),
        "class3": _as_values("class3", class3),
    }
    ds = load_spavl_split(source, "test", split, cache_dir)
    label = f"{source} [test/{split}]"
    _require_columns(ds, ("image", "question"), label)
    selected = _select_rows(ds, label, filters)
    columns = {c: _column(ds, c) for c in ("question", *CLASS_COLUMNS) if c in ds.column_names}
    images = _ArrowImages(ds)
    rows = _Rows(label, skip_invalid=False)
    out: list[SafetyQuestion] = []
    for i in selected[:limit] if limit is not None else selected:
        row_id = f"spavl/test/{split}:{i}"
        try:
            question = _text_field(columns["question"][i], "question")
            image = _decode_image(images(i))
        except _Invalid as e:
            raise rows.error(i, row_id, e) from e
        meta = {**_class_meta(columns, i), "source": source, "config": "test"}
        out.append(SafetyQuestion(row_id, i, question, image, split, meta))
    return out


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
    image_ref: Path | None = None
    placeholders = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in prompt)
    rel = row.get("image")
    if rel is not None:
        if not isinstance(rel, str):
            raise _Invalid("malformed image", f"expected one relative path, got {type(rel).__name__}")
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
    if rel is not None:
        meta["image_path"] = rel
    return _Record(row_id, index, prompt, chosen, rejected, image_ref, meta)


def _warn_duplicate_ids(records: list[_Record], label: str) -> None:
    counts = Counter(r.id for r in records)
    dupes = [i for i, n in counts.items() if n > 1]
    if dupes:
        logger.warning(
            "%s: %d id(s) occur more than once (e.g. %r); ids are not unique keys here", label, len(dupes), dupes[0]
        )


# --- dispatch -----------------------------------------------------------------------------------------
def load_preferences(source: str | Path, **kwargs: Any) -> PreferenceDataset:
    """A ``.jsonl`` / ``.json`` file -> :func:`load_text_preferences`; anything else (a hub id or a local
    folder) -> :func:`load_spavl`. Keyword arguments go to the chosen loader."""
    if Path(source).suffix.lower() in TEXT_SUFFIXES:
        return load_text_preferences(source, **kwargs)
    return load_spavl(str(source), **kwargs)
