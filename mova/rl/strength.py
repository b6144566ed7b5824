"""Preference strength: how strongly an ensemble of reward models agrees with each pair's label.

Train M reward models on the same pairs with different seeds (head initialisation and data order),
score every pair with each, and take ``d_m = r_c - r_r`` per model. A pair's strength is the mean of
``d_m`` over the models and its uncertainty their standard deviation (over M, not M - 1, as in Secrets
of RLHF part II). A strongly negative mean marks a pair the models collectively find mislabelled; a mean
near zero an ambiguous one. ``mova train rm`` reads these columns for label flipping, soft labels and
the adaptive margin.

Output: a JSONL with one row per pair of the source, in source order -- ``position`` (the pair's index
in the loaded source), ``id``, ``strength_mean``, ``strength_std`` and ``strength_diffs`` (the M values) --
and, for a text JSONL source, a copy of the source with the same columns added to each row.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from mova.config import RunConfig
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
    from mova.data.preference import _read_text_rows

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


def compute_strength(cfg: RunConfig, num_models: int, out_dir: str | Path, batch_size: int = 16,
                     holdout: float = 0.0) -> dict[str, Any]:
    """Train ``num_models`` reward models (seeds ``train.seed + m``), score every pair, write the columns.

    The models are plain reward models: the strength options of ``cfg.rm`` (flip, margin, soft labels,
    strength path) are switched off for them. With ``holdout`` = 0 (the paper's setting) every model
    trains on every pair and scores every pair. A model that memorises its training pairs then agrees with
    every label, wrong ones included; ``holdout`` > 0 makes each model leave out that share of the pairs
    (:func:`holdout_folds`) and a pair's strength comes only from models that never trained on it.
    Returns a summary with the output paths.
    """
    from mova.data.pairs import pair_collator
    from mova.data.preference import load_pairs
    from mova.rl.reward_model import load_reward_model
    from mova.trainers.rm import build_pair_dataset, run_rm, score_pair_dataset

    if num_models < 2:
        raise ConfigError(f"preference strength needs at least 2 reward models, got {num_models}")
    out_dir = Path(out_dir)
    opts = cfg.section("rm")
    pairs = load_pairs(cfg.data)
    diffs = torch.full((num_models, len(pairs)), float("nan"), dtype=torch.float64)
    folds = holdout_folds(len(pairs), num_models, holdout, cfg.train.seed) if holdout > 0 else None
    summaries = []
    for m in range(num_models):
        sub = copy.deepcopy(cfg)
        sub_opts = sub.section("rm")
        sub_opts.loss, sub_opts.flip_fraction, sub_opts.margin_scale, sub_opts.strength_path = "bt", 0.0, 0.0, None
        sub.data.eval_data_path = None
        sub.train.seed = cfg.train.seed + m
        sub.train.output_dir = str(out_dir / f"model-{m}")
        summary = run_rm(sub, folds[m] if folds is not None else None)
        summaries.append({"seed": sub.train.seed, "final_model": summary["final_model"],
                          "last_loss": summary.get("last_loss")})
        rm, processor = load_reward_model(summary["final_model"])
        template = json.loads((Path(summary["final_model"]) / "reward_model.json").read_text())["template"]
        dataset = build_pair_dataset(sub, processor, pairs, template)
        collator = pair_collator(opts.pair_encoding, processor.pad_token_id(), opts.max_tokens_per_row)
        device = "cuda" if torch.cuda.is_available() and not cfg.train.use_cpu else "cpu"
        r_c, r_r = score_pair_dataset(rm, dataset, collator, batch_size, device)
        scored = torch.tensor(dataset.keep)
        d = r_c - r_r
        if folds is not None:  # keep only the pairs this model never trained on
            trained = torch.zeros(len(pairs), dtype=torch.bool)
            trained[torch.tensor(folds[m], dtype=torch.long)] = True
            d = torch.where(trained[scored], float("nan"), d)
        diffs[m, scored] = d
        del rm
    ids = list(pairs.ids)
    path = write_strength(out_dir / "strength.jsonl", ids, diffs)
    result: dict[str, Any] = {"strength_path": str(path), "models": summaries, "pairs": len(ids),
                              "holdout": holdout}
    source = cfg.data.data_path
    if source.endswith((".jsonl", ".json")):
        annotated = out_dir / f"pairs_with_strength{Path(source).suffix}"
        result["annotated_data"] = str(annotate_text_source(source, annotated, pairs, diffs))
    mean, _ = strength_columns(diffs)
    finite = mean[torch.isfinite(mean)]
    result["negative_share"] = float((finite < 0).double().mean()) if finite.numel() else None
    (out_dir / "strength_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
