"""The ``mova`` command line.

Three registries keep it open for extension without an if-chain:

* :data:`COMMANDS` -- top-level sub-commands (``model-info``, ``demo``, ``train``, ``eval``, ...);
* :data:`TRAIN_STAGES` -- what ``mova train STAGE`` can run (``align``, ``sft``, ``dpo``, ...);
* :data:`EVALS` -- what ``mova eval NAME`` can run (``safety``, ...).

A module that adds to them lives beside its library code as ``mova/<name>_cli.py``; every such module is
imported when the command line starts (:func:`_register_plugins`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable
from typing import Any

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
    p.add_argument("--no-export", action="store_true", help="skip the final export + evaluation of the exported copy")


def _demo_run(args: argparse.Namespace) -> int:
    from mova.demo import run_demo

    given = {"align_steps": args.align_steps, "sft_steps": args.sft_steps, "n_train_images": args.train_images,
             "n_test_images": args.test_images, "dpo_steps": args.dpo_steps}
    run_demo(args.config, out_dir=args.out_dir, blanked_control=not args.no_blanked, parallel=not args.sequential,
             export=not args.no_export, **{k: v for k, v in given.items() if v is not None})
    return 0


register_command("demo", "train the tiny model on synthetic data and report held-out accuracy vs blanked images",
                 _demo_args, _demo_run)


#: ``mova train STAGE``: name -> (help line, runner). A runner takes the stage YAML (or None) and the
#: ``key=value`` overrides, trains, and returns a summary dict (printed as JSON).
TRAIN_STAGES: dict[str, tuple[str, Callable[[str | None, list[str]], dict[str, Any]]]] = {}

#: summary keys ``mova train`` prints when a runner returns them.
SUMMARY_KEYS = ("stage", "global_step", "first_loss", "last_loss", "train_runtime_s", "tokens_per_second",
                "nonfinite_steps_skipped", "data", "final_model", "results")


def register_train_stage(name: str, help_text: str, run: Callable[[str | None, list[str]], dict[str, Any]]) -> None:
    """Add ``mova train NAME``: ``run(config_path, overrides)`` trains and returns a summary dict."""
    TRAIN_STAGES[name] = (help_text, run)


def _run_base_stage(stage: str) -> Callable[[str | None, list[str]], dict[str, Any]]:
    def run(config: str | None, overrides: list[str]) -> dict[str, Any]:
        from mova.config import load_run_config
        from mova.trainers.stages import run_stage

        return run_stage(load_run_config(config, overrides, stage=stage))

    return run


def _run_dpo(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.dpo import run_dpo

    return run_dpo(load_run_config(config, overrides, stage="dpo"))


register_train_stage("align", "train the fusion network on caption data (LLM and experts frozen)",
                     _run_base_stage("align"))
register_train_stage("sft", "fine-tune the fusion network and the LLM on instruction data", _run_base_stage("sft"))
register_train_stage("dpo", "preference optimisation on SPA-VL or text pairs", _run_dpo)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=sorted(TRAIN_STAGES), metavar="STAGE",
                   help=" | ".join(f"{k}: {v[0]}" for k, v in sorted(TRAIN_STAGES.items())))
    p.add_argument("--config", help="a stage YAML (train/configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=50")


def _train_run(args: argparse.Namespace) -> int:
    import json

    summary = TRAIN_STAGES[args.stage][1](args.config, list(args.overrides))
    # the usual keys, plus any other scalar a stage reports (PPO's objective/reward, ...)
    shown = {k: v for k, v in summary.items() if k in SUMMARY_KEYS or isinstance(v, (int, float, str, type(None)))}
    print(json.dumps(shown, indent=2, default=str))
    return 0


register_command("train", "train a stage from a YAML recipe with key=value overrides", _train_args, _train_run)


#: ``mova eval NAME``: name -> (help line, argument filler, runner returning an exit code).
EVALS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def register_eval(name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None],
                  run: Callable[[argparse.Namespace], int]) -> None:
    """Add ``mova eval NAME``: ``add_args`` fills its parser, ``run`` executes it and returns an exit code."""
    EVALS[name] = (help_text, add_args, run)


def _eval_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="eval_name", required=True, metavar="EVAL")
    for name, (help_text, add_args, _) in sorted(EVALS.items()):
        add_args(sub.add_parser(name, help=help_text, description=help_text))


def _eval_run(args: argparse.Namespace) -> int:
    return EVALS[args.eval_name][2](args)


register_command("eval", "evaluate a checkpoint (mova eval NAME ...; see mova eval -h)", _eval_args, _eval_run)


def _register_plugins() -> None:
    """Import every ``mova/*_cli.py`` module: each registers its commands, train stages or evaluations."""
    import mova

    for info in sorted(pkgutil.iter_modules(mova.__path__), key=lambda m: m.name):
        if info.name.endswith("_cli"):
            importlib.import_module(f"mova.{info.name}")


def configure_logging() -> None:
    """Show Mova's own INFO lines (feature cache in use, resumed runs, records left out, ...) on stderr.

    ``MOVA_LOG_LEVEL`` (``WARNING``, ``DEBUG``, ...) changes the level. Only the ``mova`` logger is touched, so
    a program that imports Mova as a library keeps its own logging setup.
    """
    import logging
    import os

    class StderrHandler(logging.StreamHandler):
        """Writes to whatever ``sys.stderr`` is at the time (a test's or a notebook's capture included)."""

        def emit(self, record: logging.LogRecord) -> None:
            self.stream = sys.stderr
            super().emit(record)

    log = logging.getLogger("mova")
    if not log.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("[mova] %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(os.environ.get("MOVA_LOG_LEVEL", "INFO").upper())


def main(argv: list[str] | None = None) -> int:
    configure_logging()
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
