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

Images are decoded lazily (in ``__getitem__``): SPA-VL's 93k training images take gigabytes as JPEG and
far more decoded. At load time each image is checked by ``verify_images``: ``"header"`` (default; PIL's
``verify``, which reads the header only: catches missing, non-image and truncated-PNG bytes),
``"full"`` (decode every image once: catches everything, costs a full decoding pass) or ``"none"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mova.data.preference.dataset import (
    CLASS_COLUMNS,
    SPAVL_HUB_ID,
    TEXT_SUFFIXES,
    InvalidRowError,
    PairSelection,
    PreferenceDataset,
    PreferencePair,
    SafetyQuestion,
    SkippedRow,
)
from mova.data.preference.spavl import load_spavl, load_spavl_split, load_spavl_test
from mova.data.preference.text import load_preference_rows, load_text_preferences
from mova.errors import DataError


# --- dispatch -----------------------------------------------------------------------------------------
def load_preferences(source: str | Path, **kwargs: Any) -> PreferenceDataset:
    """A ``.jsonl`` / ``.json`` file -> :func:`load_text_preferences`; anything else (a hub id or a local
    folder) -> :func:`load_spavl`. Keyword arguments go to the chosen loader."""
    if Path(source).suffix.lower() in TEXT_SUFFIXES:
        return load_text_preferences(source, **kwargs)
    return load_spavl(str(source), **kwargs)


def is_spavl_source(source: str, split: str | None = None) -> bool:
    """Whether ``source`` is SPA-VL (its hub id, or a local folder whose rows have SPA-VL's ``question``
    column rather than a ``prompt``); other folders and hub ids hold generic preference rows."""
    if source == SPAVL_HUB_ID:
        return True
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return False
    from mova.data.sources import folder_files

    try:
        files = [f for f in folder_files(folder, None, split or "train") if f.suffix == ".parquet"]
    except DataError:
        return True  # not laid out by the Hub's conventions: SPA-VL's own layout (or its error) decides
    if not files:
        return False
    import pyarrow.parquet as pq

    names = set(pq.read_schema(files[0]).names)
    return "question" in names and "prompt" not in names


def load_pair_source(source: str, *, spavl_config: str = "default", split: str | None = None,
                     class1: Sequence[str] | None = None, class2: Sequence[str] | None = None,
                     class3: Sequence[str] | None = None, limit: int | None = None,
                     skip_invalid: bool = False, name: str | None = None,
                     columns: dict[str, str] | None = None) -> PreferenceDataset:
    """Pairs from a JSONL / JSON file of text pairs, a SPA-VL source (hub id or local folder), or any other Hub
    dataset id / local folder / parquet file of ``prompt`` / ``chosen`` / ``rejected`` rows."""
    if not source:
        raise DataError("data.data_path is required (sqrti/SPA-VL, a local SPA-VL folder, or a JSONL file)")
    if Path(source).suffix.lower() in TEXT_SUFFIXES:
        return load_text_preferences(source, skip_invalid=skip_invalid, limit=limit)
    if is_spavl_source(source, split):
        return load_spavl(source, spavl_config, split, class1=class1 or None, class2=class2 or None,
                          class3=class3 or None, limit=limit, skip_invalid=skip_invalid)
    return load_preference_rows(source, name=name, split=split or "train", limit=limit, skip_invalid=skip_invalid,
                                columns=columns)


def load_pairs_with_eval(data: Any, seed: int = 0) -> tuple[Any, Any]:
    """The training pairs ``data:`` names (``data_path``, or ``sources`` mixed by ratio) and the held-out pairs
    (``eval_data_path``, each source's ``eval_split``, or ``eval_size`` pairs held out of the training ones;
    None when there are none)."""
    from mova.data.sources import held_out as hold_out

    pairs = load_pairs(data, seed=seed)
    if data.eval_size and (data.eval_data_path or (data.eval_split and data.sources)):
        raise DataError("data.eval_size and data.eval_data_path / eval_split both name held-out pairs; set one")
    if data.eval_size:
        keep, held = hold_out(len(pairs), data.eval_size, seed)
        picks = _picks(pairs)
        return (PairSelection([picks[i] for i in keep], f"{pairs.source} (training part)"),
                PairSelection([picks[i] for i in held], f"{pairs.source} (held out)"))
    if data.eval_data_path:
        return pairs, load_pairs(data, held_out=True)
    if data.eval_split and data.sources:
        evals = [load_pair_source(s.path, split=data.eval_split, name=s.name, columns=s.columns,
                                  skip_invalid=data.skip_bad_records, limit=data.eval_limit) for s in data.sources]
        return pairs, _mix(evals, None, seed, "first_exhausted", "held-out sources")
    return pairs, None


def _picks(ds: Any) -> list[tuple[PreferenceDataset, int]]:
    return list(ds.picks) if isinstance(ds, PairSelection) else [(ds, i) for i in range(len(ds))]


def _mix(datasets: list[PreferenceDataset], ratios: list[float] | None, seed: int, stopping: str,
         label: str) -> Any:
    """Several preference datasets as one: concatenated, or mixed by ``ratios`` (:mod:`mova.data.sources`)."""
    import random

    from mova.data.sources import mixture_counts

    if len(datasets) == 1 and ratios is None:
        return datasets[0]
    sizes = [len(ds) for ds in datasets]
    counts = sizes if ratios is None else mixture_counts(sizes, ratios, stopping)
    picks: list[tuple[PreferenceDataset, int]] = []
    used = {}
    for k, (ds, n) in enumerate(zip(datasets, counts)):
        order = list(range(len(ds)))
        if ratios is not None:
            random.Random(f"{seed}-mix-{k}").shuffle(order)
        picks.extend((ds, order[i % len(order)]) for i in range(n))
        used[ds.source] = {"pairs": sizes[k], "used": n}
    return PairSelection(picks, label, {"sources": used})


def load_pairs(data: Any, held_out: bool = False, seed: int = 0) -> Any:
    """The pairs a run's ``data:`` section names (``data_path`` and its subset), or with ``held_out`` its
    evaluation pairs (``eval_data_path``, ``eval_spavl_config`` / ``eval_split`` / ``eval_limit``): the one
    reader DPO, reward models, their strength estimates and PPO's prompts share."""
    if held_out:
        return load_pair_source(data.eval_data_path, spavl_config=data.eval_spavl_config, split=data.eval_split,
                                limit=data.eval_limit, skip_invalid=data.skip_bad_records)
    sources = getattr(data, "sources", None)
    if sources:
        if data.data_path:
            raise DataError("set data.data_path or data.sources, not both")
        with_ratio = [s.ratio is not None for s in sources]
        if any(with_ratio) and not all(with_ratio):
            raise DataError("data.sources: give every source a ratio, or none (then they are concatenated)")
        loaded = [load_pair_source(s.path, split=s.split, name=s.name, columns=s.columns, limit=s.limit,
                                   skip_invalid=data.skip_bad_records) for s in sources]
        ratios = [s.ratio for s in sources] if all(with_ratio) and len(sources) > 1 else None
        mixed = _mix(loaded, ratios, seed, data.mix_stopping, "data.sources")
        if data.limit and len(mixed) > data.limit:
            mixed = PairSelection(_picks(mixed)[:data.limit], mixed.source, getattr(mixed, "info", {}))
        return mixed
    return load_pair_source(data.data_path, spavl_config=data.spavl_config, split=data.split, class1=data.class1,
                            class2=data.class2, class3=data.class3, limit=data.limit,
                            skip_invalid=data.skip_bad_records)


__all__ = ["CLASS_COLUMNS", "SPAVL_HUB_ID", "TEXT_SUFFIXES", "InvalidRowError", "PairSelection", "PreferenceDataset",
           "PreferencePair", "SafetyQuestion", "SkippedRow", "is_spavl_source", "load_pair_source", "load_pairs",
           "load_pairs_with_eval", "load_preference_rows", "load_preferences", "load_spavl",
           "load_spavl_split", "load_spavl_test", "load_text_preferences"]
