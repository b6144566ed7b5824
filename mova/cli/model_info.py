"""``mova model-info CONFIG [key=value ...]``: each expert's tokens, positions and parameters, with no weights."""

from __future__ import annotations

import argparse

from mova.cli.command import Command


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a preset name (tiny) or a model YAML file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. experts.1.position_scheme=share_all")


def _run(args: argparse.Namespace) -> int:
    from mova.config import load_model_config
    from mova.model.info import format_info, model_info

    print(format_info(model_info(load_model_config(args.config, args.overrides))))
    return 0


COMMAND = Command("model-info", "print each expert's tokens, positions and parameters", _add_args, _run)
