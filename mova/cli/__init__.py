"""The ``mova`` command line: one module per command group, listed in :data:`COMMAND_MODULES`.

Each module (``mova/cli/train.py``, ``eval.py``, ...) declares ``COMMAND``, a :class:`~mova.cli.command.Command`;
a group's own sub-commands (``mova train STAGE``, ``mova eval NAME``) are a registry inside its module. A new
command is a new module added to the list: nothing registers itself by being imported, and the library
below never imports the command line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mova.cli.command import Command
from mova.errors import MovaError

#: the command modules, in the order ``mova -h`` lists them.
COMMAND_MODULES = ("model_info", "fetch_model", "demo", "train", "eval", "cache", "export", "polish", "rm_strength")


def commands() -> dict[str, Command]:
    """Every top-level command, by name."""
    found = [importlib.import_module(f"mova.cli.{name}").COMMAND for name in COMMAND_MODULES]
    return {c.name: c for c in found}


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
    """Run ``mova ARGS``; returns the exit status (2 for a Mova error, printed as one line)."""
    configure_logging()
    table = commands()
    parser = argparse.ArgumentParser(prog="mova", description="Poly-visual-expert VLM training and alignment")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in table.values():
        command.add_to(sub)
    # key=value overrides may come before or after options (``train sft --config X a=1``).
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if "=" not in e or e.startswith("-")]
    if unknown or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return table[args.command].run(args)
    except MovaError as e:
        print(f"mova {args.command}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["COMMAND_MODULES", "Command", "commands", "configure_logging", "main"]
