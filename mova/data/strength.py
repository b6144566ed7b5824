"""Preference strength files: each pair's strength from an ensemble of reward models, and the pure maths.

:mod:`mova.trainers.rm_strength` trains the ensemble. The method: train M reward models on the same pairs
with different seeds (head initialisation and data order), score every pair with each, and take
``d_m = r_c - r_r`` per model. A pair's strength is the mean of ``d_m`` over the models and its uncertainty
their standard deviation (over M, not M - 1, as in Secrets of RLHF part II). A strongly negative mean marks
a pair the models collectively find mislabelled; a mean near zero an ambiguous one. ``mova train rm`` reads
these columns for label flipping, soft labels and the adaptive margin.

Output: a JSONL with one row per pair of the source, in source order -- ``position`` (the pair's index
in the loaded source), ``id``, ``strength_mean``, ``strength_std`` and ``strength_diffs`` (the M values) --
and, for a text JSONL source, a copy of the source with the same columns added to each row.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from mova.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

COLUMNS = ("strength_mean", "strength_std")


def strength_columns(diffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) std over models of ``diffs`` ``[M, N]``: each ``[N]``.

    NaN entries (a model that did not score the pair: it trained on it, with ``holdout``) are left out;
    a pair no model scored gets NaN.
    """
    if diffs.ndim != 2 or diffs.shape[0] < 1:
        raise ValueError(f"diffs must be [num_models, num_pairs], got {tuple(diffs.shape)}")
    d = diffs.double()
    ok = torch.isfinite(d)
    count = ok.sum(0).double()
    mean = torch.where(ok, d, 0.0).sum(0) / count
    var = torch.where(ok, (d - mean) ** 2, 0.0).sum(0) / count
    return mean, var.sqrt()


def holdout_folds(num_pairs: int, num_models: int, holdout: float, seed: int) -> list[list[int]]:
    """Training positions per model: pairs go to ``num_models`` folds at random, and model ``m`` leaves out
    ``h = round(holdout * num_models)`` consecutive folds (``m .. m + h - 1``), so every pair is scored by
    exactly ``h`` models that never trained on it."""
    h = int(round(holdout * num_models))
    if not 1 <= h < num_models:
        raise ConfigError(f"holdout {holdout} with {num_models} models leaves out {h} folds; need 1..{num_models - 1}")
    g = torch.Generator().manual_seed(seed)
    fold = torch.randperm(num_pairs, generator=g) % num_models
    out = []
    for m in range(num_models):
        left_out = {(m + j) % num_models for j in range(h)}
        out.append([i for i in range(num_pairs) if int(fold[i]) not in left_out])
    return out


def write_strength(path: str | Path, ids: list[str], diffs: torch.Tensor) -> Path:
    """The strength JSONL (one row per pair; NaN columns become null for pairs that could not be scored)."""
    mean, std = strength_columns(diffs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for i, pair_id in enumerate(ids):
            col = diffs[:, i].double()
            ok = bool(torch.isfinite(mean[i]))
            row = {"position": i, "id": pair_id, "strength_mean": float(mean[i]) if ok else None,
                   "strength_std": float(std[i]) if ok else None,
                   "strength_diffs": [float(v) if math.isfinite(v) else None for v in col.tolist()]}
            f.write(json.dumps(row) + "\n")
    return path


def load_strength(path: str | Path, pairs: Any) -> dict[str, torch.Tensor]:
    """``{"strength_mean", "strength_std"}`` tensors aligned with ``pairs`` (checked by id, row by row)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"rm.strength_path: no file {path} (write it with `mova rm-strength`)")
    ids = list(pairs.ids) if hasattr(pairs, "ids") else [p.id for p in pairs]
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(rows) != len(ids):
        raise DataError(f"{path}: {len(rows)} strength rows for {len(ids)} pairs; was it computed on the same "
                        "data, filters and limit?")
    out = {c: torch.empty(len(ids), dtype=torch.float64) for c in COLUMNS}
    for i, (row, pair_id) in enumerate(zip(rows, ids)):
        if row.get("position") != i or str(row.get("id")) != str(pair_id):
            raise DataError(f"{path}: row {i} is for pair {row.get('position')} (id {row.get('id')!r}) but pair {i} "
                            f"has id {pair_id!r}; recompute the strength on this data")
        for c in COLUMNS:
            if row.get(c) is None:
                raise DataError(f"{path}: pair {i} (id {pair_id!r}) has no {c} (it could not be scored)")
            out[c][i] = float(row[c])
    return out


def annotate_text_source(source: str | Path, out: str | Path, pairs: Any, diffs: torch.Tensor) -> Path:
    """Copy a text JSONL / JSON source, adding ``strength_mean`` / ``strength_std`` to each loaded row."""
    from mova.data.preference.text import _read_text_rows

    mean, std = strength_columns(diffs)
    by_index = {r.index: k for k, r in enumerate(pairs.records)}
    rows = []
    for index, _, row in _read_text_rows(Path(source)):
        if isinstance(row, dict) and index in by_index:
            k = by_index[index]
            if bool(torch.isfinite(mean[k])):
                row = {**row, "strength_mean": float(mean[k]), "strength_std": float(std[k])}
        if isinstance(row, dict):
            rows.append(row)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        out.write_text(json.dumps(rows, indent=1) + "\n")
    else:
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
