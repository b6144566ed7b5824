"""``mova train continual``: run a TRACE-style task sequence for one or more strategies and print OP/BWT/FWT."""

from __future__ import annotations

from typing import Any

from mova.cli import register_train_stage


def _run(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.continual.config import load_continual_config
    from mova.continual.loop import run_continual

    summary = run_continual(load_continual_config(config, overrides))
    print(summary["table"])
    return summary


register_train_stage("continual", "train tasks in sequence (TRACE; seqft / lora / replay / ewc / rcl) and "
                     "report the score matrix, OP, BWT and FWT", _run)
