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
    PreferenceDataset,
    PreferencePair,
    SafetyQuestion,
    SkippedRow,
)
from mova.data.preference.spavl import load_spavl, load_spavl_split, load_spavl_test
from mova.data.preference.text import load_text_preferences
from mova.errors import DataError


# --- dispatch -----------------------------------------------------------------------------------------
def load_preferences(source: str | Path, **kwargs: Any) -> PreferenceDataset:
    """A ``.jsonl`` / ``.json`` file -> :func:`load_text_preferences`; anything else (a hub id or a local
    folder) -> :func:`load_spavl`. Keyword arguments go to the chosen loader."""
    if Path(source).suffix.lower() in TEXT_SUFFIXES:
        return load_text_preferences(source, **kwargs)
    return load_spavl(str(source), **kwargs)


def load_pair_source(source: str, *, spavl_config: str = "default", split: str | None = None,
                     class1: Sequence[str] | None = None, class2: Sequence[str] | None = None,
                     class3: Sequence[str] | None = None, limit: int | None = None,
                     skip_invalid: bool = False) -> PreferenceDataset:
    """Pairs from a JSONL / JSON file of text pairs, or a SPA-VL source (hub id or local folder)."""
    if not source:
        raise DataError("data.data_path is required (sqrti/SPA-VL, a local SPA-VL folder, or a JSONL file)")
    if Path(source).suffix.lower() in TEXT_SUFFIXES:
        return load_text_preferences(source, skip_invalid=skip_invalid, limit=limit)
    return load_spavl(source, spavl_config, split, class1=class1 or None, class2=class2 or None,
                      class3=class3 or None, limit=limit, skip_invalid=skip_invalid)


def load_pairs(data: Any, held_out: bool = False) -> PreferenceDataset:
    """The pairs a run's ``data:`` section names (``data_path`` and its subset), or with ``held_out`` its
    evaluation pairs (``eval_data_path``, ``eval_spavl_config`` / ``eval_split`` / ``eval_limit``): the one
    reader DPO, reward models, their strength estimates and PPO's prompts share."""
    if held_out:
        return load_pair_source(data.eval_data_path, spavl_config=data.eval_spavl_config, split=data.eval_split,
                                limit=data.eval_limit, skip_invalid=data.skip_bad_records)
    return load_pair_source(data.data_path, spavl_config=data.spavl_config, split=data.split, class1=data.class1,
                            class2=data.class2, class3=data.class3, limit=data.limit,
                            skip_invalid=data.skip_bad_records)


__all__ = ["CLASS_COLUMNS", "SPAVL_HUB_ID", "TEXT_SUFFIXES", "InvalidRowError", "PreferenceDataset", "PreferencePair",
           "SafetyQuestion", "SkippedRow", "load_pair_source", "load_pairs", "load_preferences", "load_spavl",
           "load_spavl_split", "load_spavl_test", "load_text_preferences"]
