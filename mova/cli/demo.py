"""``mova demo``: the quickstart (tiny model, synthetic images, align + sft, DPO, export) on CPU."""

from __future__ import annotations

import argparse

from mova.cli.command import Command


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="preset name or model YAML (default: tiny)")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--align-steps", type=int, default=None)
    p.add_argument("--sft-steps", type=int, default=None)
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--no-blanked", action="store_true", help="skip the blanked-images control run")
    p.add_argument("--sequential", action="store_true", help="run the blanked control after, not beside, the main run")
    p.add_argument("--dpo-steps", type=int, default=None, help="DPO steps on the mini SPA-VL (0: no safety stage)")
    p.add_argument("--no-export", action="store_true", help="skip the final export + evaluation of the exported copy")


def _run(args: argparse.Namespace) -> int:
    from mova.demo import run_demo

    given = {"align_steps": args.align_steps, "sft_steps": args.sft_steps, "n_train_images": args.train_images,
             "n_test_images": args.test_images, "dpo_steps": args.dpo_steps}
    run_demo(args.config, out_dir=args.out_dir, blanked_control=not args.no_blanked, parallel=not args.sequential,
             export=not args.no_export, **{k: v for k, v in given.items() if v is not None})
    return 0


COMMAND = Command("demo", "train the tiny model on synthetic data and report held-out accuracy vs blanked images",
                  _add_args, _run)
