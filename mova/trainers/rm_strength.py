"""``mova rm-strength``: train M reward models on the same pairs and write each pair's preference strength
(the columns and file format are :mod:`mova.data.strength`'s)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from mova.config import RunConfig
from mova.data.strength import annotate_text_source, holdout_folds, strength_columns, write_strength
from mova.errors import ConfigError


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
