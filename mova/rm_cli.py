"""``mova train rm`` (reward-model training) and ``mova rm-strength`` (preference strength from M models).

    mova train rm --config train/configs/tiny_rm.yaml
    mova rm-strength --config train/configs/tiny_rm.yaml --models 3 --out-dir runs/rm-strength
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from mova.cli import register_command, register_train_stage


def _run_rm(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.rm import run_rm

    return run_rm(load_run_config(config, overrides, stage="rm"))


register_train_stage("rm", "reward model (Bradley-Terry; flip / smoothing / margin / contrastive / MetaRM options)",
                     _run_rm)


def _strength_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="an rm stage YAML (train/configs/tiny_rm.yaml)")
    p.add_argument("--models", type=int, default=3, help="how many reward models (seeds train.seed + m); default 3")
    p.add_argument("--out-dir", required=True, help="where the models, strength.jsonl and the annotated data go")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--holdout", type=float, default=0.0,
                   help="share of the pairs each model leaves out (scored only by models that did not train on "
                        "them); 0: every model trains on everything, as in the paper")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=200")


def _strength_run(args: argparse.Namespace) -> int:
    from mova.config import load_run_config
    from mova.rl.strength import compute_strength

    cfg = load_run_config(args.config, list(args.overrides), stage="rm")
    result = compute_strength(cfg, args.models, args.out_dir, args.batch_size, args.holdout)
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))
    return 0


register_command("rm-strength", "train M reward models and write each pair's preference strength (mean, std)",
                 _strength_args, _strength_run)
