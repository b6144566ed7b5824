"""``mova rm-strength``: preference strength of every pair from M reward models (Secrets of RLHF II).

    mova rm-strength --config train/configs/tiny_rm.yaml --models 3 --out-dir runs/rm-strength
"""

from __future__ import annotations

import argparse
import json

from mova.cli.command import Command


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
    from mova.trainers.rm_strength import compute_strength

    cfg = load_run_config(args.config, list(args.overrides), stage="rm")
    result = compute_strength(cfg, args.models, args.out_dir, args.batch_size, args.holdout)
    print(json.dumps({k: v for k, v in result.items() if k != "models"}, indent=2))
    return 0


COMMAND = Command("rm-strength", "train M reward models and write each pair's preference strength (mean, std)",
                  _strength_args, _strength_run)
