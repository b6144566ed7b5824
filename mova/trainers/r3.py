"""R3 (reverse-curriculum RL) on the PPO trainer: ``mova train r3``.

The PPO loop is unchanged; only where prompts come from differs. Instead of a fixed prompt pool, each
iteration draws ``ppo.rollout_batch_size`` start states from the curriculum schedule
(:mod:`mova.rl.curriculum`): a problem followed by the first ``k`` steps of its gold rationale. The policy
writes the rest, the outcome reward (``gsm8k_cot`` / ``program_cot`` by default) scores the final answer,
and the token-level KL to the SFT reference is the optimiser's. After each iteration the schedule sees the
mean reward (the ``staged`` schedule advances on it). ``curriculum.schedule: none`` keeps k = 0, which is
plain outcome-reward RL on the same data: the baseline from the same command.

The optimiser is ``curriculum.optimizer``: ``ppo`` (PPO with its critic, options in ``ppo:``) or ``grpo``
(critic-free, each start state answered ``grpo.num_generations`` times, options in ``grpo:``); the curriculum
part is one mixin over either trainer (:data:`OPTIMIZERS`).

Recipe: ``data.data_path`` is reasoning data (GSM8K-format JSONL, a folder with ``train.jsonl``, or a
hub dataset; ``data.split`` / ``data.limit`` pick the rows), the ``curriculum:`` section picks the schedule,
CoT kind and optimiser, the ``ppo:`` or ``grpo:`` section the optimiser's options, and an optional
``sandbox:`` section the limits of the programs a ``kind: program`` policy writes.
"""

from __future__ import annotations

from typing import Any

from mova.data.reasoning import load_reasoning
from mova.errors import ConfigError
from mova.registry import Registry
from mova.rl.curriculum import DEFAULT_PROMPTS, Schedule, schedule_from_config
from mova.rl.prompts import PromptRecord
from mova.trainers.grpo import GrpoTrainer
from mova.trainers.ppo import PpoTrainer
from mova.trainers.r3_config import CurriculumConfig

#: the reward used for each CoT kind when ``ppo.reward_fn`` is not set.
DEFAULT_REWARDS = {"cot": "gsm8k_cot", "program": "program_cot"}


class R3Curriculum:
    """What R3 changes in an RL trainer (mixed in before it): prompts are start states drawn from a
    curriculum schedule, and the schedule sees each iteration's reward."""

    section: str
    ppo: Any
    rank: int
    world: int
    cfg: Any

    def __init__(self, cfg: Any):
        cur = cfg.section("curriculum")
        other = {"ppo", "grpo"} - {self.section}
        if other & set(cfg.sections):
            raise ConfigError(f"curriculum.optimizer is {cur.optimizer}: its options go in a {self.section}: "
                              f"section, not {', '.join(sorted(other & set(cfg.sections)))}:")
        ppo = cfg.section(self.section)
        kind = cur.kind
        if ppo.reward_fn is None and ppo.reward_model is None:
            if kind not in DEFAULT_REWARDS:
                raise ConfigError(f"curriculum.kind must be one of {sorted(DEFAULT_REWARDS)}, got {kind!r}")
            ppo.reward_fn = DEFAULT_REWARDS[kind]
        if "sandbox" in cfg.sections:  # the recipe's limits for the programs the policy writes (kind: program)
            from mova.rl.reasoning_rewards import set_program_sandbox

            set_program_sandbox(cfg.sections["sandbox"])
        super().__init__(cfg)  # type: ignore[call-arg]  # the RL trainer after this mixin

    def load_records(self) -> list[PromptRecord]:
        cur: CurriculumConfig = self.cfg.section("curriculum")
        self.reasoning = load_reasoning(self.cfg.data.data_path, split=self.cfg.data.split or "train",
                                        limit=self.cfg.data.limit)
        self.schedule: Schedule = schedule_from_config(cur, self.reasoning)
        # PromptRecords only size an epoch for the base class; prompts come from the schedule.
        return [PromptRecord(id=r.id, messages=[], text=r.question) for r in self.reasoning]

    def prompt_batch(self, iteration: int) -> list[PromptRecord]:
        """Every rank draws the same global batch from the schedule and keeps its own slice."""
        states = self.schedule.sample(self.ppo.rollout_batch_size)
        per_rank = self.ppo.rollout_batch_size // self.world
        mine = states[self.rank * per_rank:(self.rank + 1) * per_rank]
        return [PromptRecord(id=f"{s.record_id}/k{s.k}", messages=[], text=self.prompt_text(s), columns=s.columns())
                for s in mine]

    def prompt_text(self, state: Any) -> str:
        """The start state's prompt; with ``curriculum.chat_template`` the problem becomes a user turn of the
        tokenizer's chat template and the state's gold steps begin the assistant's answer."""
        cur: CurriculumConfig = self.cfg.section("curriculum")
        if not cur.chat_template:
            return state.prompt
        from mova.model.templates import user_turn_prompt

        if not hasattr(self, "_questions"):
            self._questions = {r.id: r.question for r in self.reasoning}
        head = (cur.prompt or DEFAULT_PROMPTS[state.kind]).format(question=self._questions[state.record_id])
        if not state.prompt.startswith(head):
            raise ConfigError(f"start state {state.record_id}/k{state.k} does not begin with its problem's prompt")
        return user_turn_prompt(self.processor.tokenizer, head.rstrip("\n")) + state.prompt[len(head):]

    def on_iteration_end(self, metrics: dict[str, float]) -> None:
        metrics["curriculum/advanced"] = float(self.schedule.update(metrics["objective/reward"], self.iteration))
        metrics.update(self.schedule.metrics())

    def extra_state(self) -> dict[str, Any]:
        return {"schedule": self.schedule.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])


class R3Trainer(R3Curriculum, PpoTrainer):
    """PPO whose prompts are R3 start states drawn from a curriculum schedule."""


class R3GrpoTrainer(R3Curriculum, GrpoTrainer):
    """GRPO whose prompts are R3 start states: each start state answered ``grpo.num_generations`` times."""


#: ``curriculum.optimizer`` -> the trainer R3 runs on.
OPTIMIZERS: Registry[type] = Registry("R3 optimiser")
OPTIMIZERS.register("ppo", R3Trainer)
OPTIMIZERS.register("grpo", R3GrpoTrainer)


def r3_trainer(cfg: Any) -> Any:
    """The R3 trainer on the optimiser ``curriculum.optimizer`` names."""
    return OPTIMIZERS[cfg.section("curriculum").optimizer](cfg)


def run_r3(cfg: Any) -> dict[str, Any]:
    """Train with R3 as ``cfg`` says (``curriculum:`` and ``ppo:`` / ``grpo:`` sections); returns the summary."""
    summary = r3_trainer(cfg).train()
    summary["stage"] = "r3"
    return summary
