"""The ``curriculum:`` section of an R3 recipe (``mova train r3``); the optimiser's options are ``ppo:``'s or
``grpo:``'s (``curriculum.optimizer``) and the program sandbox's limits ``sandbox:``'s
(:class:`mova.rl.sandbox.SandboxConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mova.config import bounded


@dataclass
class CurriculumConfig:
    """Which start states R3 trains from, and in what order (:mod:`mova.rl.curriculum`)."""

    #: mixed (R3's released setting: every start state in one shuffled pool) | staged (from the last gold
    #: step back to the prompt) | none (plain outcome-reward RL: k = 0 only).
    schedule: Literal["mixed", "staged", "none"] = "mixed"
    #: cot (natural-language steps) | program (code lines of ``def solution():``, run in the sandbox).
    kind: Literal["cot", "program"] = "cot"
    #: ppo (PPO with a critic; options in ``ppo:``) | grpo (critic-free group baseline; options in ``grpo:``).
    optimizer: Literal["ppo", "grpo"] = "ppo"
    seed: int = 0
    #: staged: advance when the mean reward of the last ``window`` updates reaches this.
    threshold: float = 0.7
    window: int = bounded(1, ge=1)
    #: staged: or after this many updates in a stage (null: no budget).
    stage_steps: int | None = bounded(None, ge=1)
    #: prompt template with {question} (null: the kind's default).
    prompt: str | None = None
    #: put the problem to the policy as a user turn of its tokenizer's chat template, the gold steps of a start
    #: state following as the start of the assistant's answer (instruct models).
    chat_template: bool = False

    def schedule_options(self) -> dict[str, Any]:
        if self.schedule == "staged":
            return {"seed": self.seed, "threshold": self.threshold, "window": self.window,
                    "stage_steps": self.stage_steps}
        return {"seed": self.seed}
