"""``mova train ppo``: PPO / PPO-max from a stage recipe (``ppo:`` section, see mova.trainers.ppo_config)."""

from __future__ import annotations

from typing import Any

from mova.cli import register_train_stage


def _run_ppo(config: str | None, overrides: list[str]) -> dict[str, Any]:
    from mova.config import load_run_config
    from mova.trainers.ppo import run_ppo

    summary = run_ppo(load_run_config(config, overrides, stage="ppo"))
    last = summary["last_metrics"]
    return {"stage": "ppo", "iterations": summary["iterations"], "train_runtime_s": summary["train_runtime_s"],
            **{k: last.get(k) for k in ("objective/reward", "objective/kl", "objective/ppl", "response_length")},
            "collapse_warnings": len(summary["collapse_warnings"]), "final_model": summary["final_model"]}


register_train_stage("ppo", "PPO / PPO-max against a reward model or a reward function (text or VLM)", _run_ppo)
