"""What a command module of :mod:`mova.cli` declares: its name, its help line, how to fill its parser, how to run."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """``mova NAME``, or a sub-command of a group (``mova eval NAME``): ``run`` returns the exit status."""

    name: str
    help: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]

    def add_to(self, sub: argparse._SubParsersAction) -> None:
        self.add_args(sub.add_parser(self.name, help=self.help, description=self.help))
