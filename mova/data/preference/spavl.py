"""SPA-VL from the hub or a local copy of its parquet layout: training / validation pairs and the test
questions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mova.data.preference.dataset import (
    CLASS_COLUMNS,
    DEFAULT_SPLITS,
    SPAVL_HUB_ID,
    SPAVL_LAYOUT,
    TEXT_SUFFIXES,
    PreferenceDataset,
    SafetyQuestion,
    _as_values,
    _check_limit,
    _check_pair,
    _check_verify_mode,
    _decode_image,
    _human_turn,
    _Invalid,
    _Record,
    _Rows,
    _text_field,
    _verify_image,
    _warn_duplicate_ids,
)
from mova.data.sources import card_data_files
from mova.errors import DataError

logger = logging.getLogger(__name__)


# --- SPA-VL -------------------------------------------------------------------------------------------
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
            layout = card_data_files(folder) or SPAVL_LAYOUT
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
