"""The ``mova`` command line: ``mova model-info CONFIG`` and ``mova demo``.

Later stages (training, evaluation, release) add their sub-commands to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mova.errors import MovaError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def register_command(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None],
                     run: Callable[[argparse.Namespace], int]) -> None:
    """Add a sub-command: ``add_args`` fills its parser, ``run`` executes it and returns an exit code."""
    COMMANDS[name] = (help_text, add_args, run)


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a preset name (tiny) or a model YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. experts.1.position_scheme=share_all")


def _info_run(args: argparse.Namespace) -> int:
    from mova.config import load_model_config
    from mova.model.info import format_info, model_info

    print(format_info(model_info(load_model_config(args.config, args.overrides))))
    return 0


register_command("model-info", "print each expert's tokens, positions and parameters", _info_args, _info_run)


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="tiny", help="preset name or model YAML (default: tiny)")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--align-steps", type=int, default=None)
    p.add_argument("--sft-steps", type=int, default=None)
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--no-blanked", action="store_true", help="skip the blanked-images control run")
    p.add_argument("--sequential", action="store_true", help="run the blanked control after, not beside, the main run")
    p.add_argument("--dpo-steps", type=int, default=None, help="DPO steps on the mini SPA-VL (0: no safety stage)")


def _demo_run(args: argparse.Namespace) -> int:
    from mova.demo import run_demo

    given = {"align_steps": args.align_steps, "sft_steps": args.sft_steps, "n_train_images": args.train_images,
             "n_test_images": args.test_images, "dpo_steps": args.dpo_steps}
    run_demo(args.config, out_dir=args.out_dir, blanked_control=not args.no_blanked, parallel=not args.sequential,
             **{k: v for k, v in given.items() if v is not None})
    return 0


register_command("demo", "train the tiny model on synthetic data and report held-out accuracy vs blanked images",
                 _demo_args, _demo_run)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", help="align | sft | dpo")
    p.add_argument("--config", help="a stage YAML (train/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50")


def _train_run(args: argparse.Namespace) -> int:
    import json

    from mova.config import load_run_config
    from mova.trainers.stages import run_stage

    cfg = load_run_config(args.config, args.overrides, stage=args.stage)
    if args.stage == "dpo":
        from mova.trainers.dpo import run_dpo

        summary = run_dpo(cfg)
    else:
        summary = run_stage(cfg)
    keys = ("stage", "global_step", "first_loss", "last_loss", "train_runtime_s", "tokens_per_second",
            "nonfinite_steps_skipped", "data", "final_model")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    return 0


register_command("train", "train a stage (align | sft) from a YAML recipe with key=value overrides",
                 _train_args, _train_run)


def _register_plugins() -> None:
    """Sub-commands that live beside their library code."""
    import mova.cache_cli  # noqa: F401  (mova cache-features)
    import mova.safety_cli  # noqa: F401  (mova eval safety)


def main(argv: list[str] | None = None) -> int:
    _register_plugins()
    parser = argparse.ArgumentParser(prog="mova", description="Poly-visual-expert VLM training and alignment")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    # key=value overrides may come before or after options (``train sft --config X a=1``).
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return COMMANDS[args.command][2](args)
    except MovaError as e:
        print(f"mova {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the importable module's main, not this __main__ copy: plugins register into `mova.cli`.
    from mova.cli import main as _main

    sys.exit(_main())
