"""``mova train r3``: R3 reverse-curriculum RL (``curriculum:`` + ``ppo:`` sections; schedule none = plain PPO)."""

from __future__ import annotations

from typing import Any

from mova.cli import register_train_stage


def _run_r3(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.r3 import run_r3

    summary = run_r3(load_run_config(config, overrides, stage="r3"))
    last = summary["last_metrics"]
    return {"stage": "r3", "iterations": summary["iterations"], "train_runtime_s": summary["train_runtime_s"],
            **{k: last.get(k) for k in ("objective/reward", "objective/kl", "curriculum/stage", "curriculum/mean_k")},
            "final_model": summary["final_model"]}


register_train_stage("r3", "R3 reverse-curriculum RL for reasoning on the PPO trainer (schedule none: plain PPO)",
                     _run_r3)
