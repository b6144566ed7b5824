"""R3 start states and the schedules that feed them to an RL trainer.

R3 (reverse curriculum RL) turns one outcome reward into step-level signal: from a correct demonstration
with M steps, start state k (k = 0..M-1) is the prompt followed by the first k gold steps, and the policy
writes the rest. Near the end (k = M-1) the policy only has to write the last step, so a random policy
already finds the reward; sliding the start backwards makes each stage a small step from one already
solved. k = 0 is the plain problem (what outcome-reward PPO trains on).

API (what ``train/r3.py`` calls)
--------------------------------
``split_steps(rationale, kind="cot" | "program") -> list[str]``
    CoT: the non-empty lines of the rationale, the final ``#### value`` line included (so the last step
    the policy writes always holds the answer). Program: the function's body lines under its header
    (``def solution():`` and a docstring, if any, are the header and always in the prompt), blank lines
    dropped, indentation kept.
``start_states(record, kind, prompt=DEFAULT_PROMPTS[kind]) -> list[StartState]``
    The M start states of one :class:`~mova.data.reasoning.ReasoningRecord`. ``prompt`` is a
    ``str.format`` template with ``{question}`` or a callable ``question -> str`` (e.g. one that renders a
    chat template with its generation prompt). Invariant, for every k:
    ``state.prompt + state.gold_remaining == states[0].prompt + states[0].gold_remaining``.
``build_start_states(records, kind, prompt=...) -> list[list[StartState]]``
    Per record, its start states (records that cannot be split raise, naming the record).
``build_schedule(name, states_by_record, **options) -> Schedule``   (registry :data:`SCHEDULES`)
    ``"mixed"`` (the released R3 setting): every (record, k) in one pool, visited in a shuffled order,
    reshuffled each epoch.
    ``"staged"``: stage s holds, for each record, k = max(M - 1 - s, 0): from the last step back to the
    whole problem. Advances when the mean reward of the last ``window`` updates reaches ``threshold``
    or after ``stage_steps`` updates in a stage (a budget; ``None`` = no budget); the last stage (all k = 0)
    is kept for good.
    ``"none"``: k = 0 only -- the plain outcome-reward PPO baseline from the same command.
Every schedule has ``sample(n) -> list[StartState]`` (the next n states of its shuffled order; the trainer
generates from ``state.prompt`` and scores with ``state.answer``), ``current_pool()``,
``update(mean_reward, step) -> bool`` (True when the stage advanced), ``metrics() -> dict`` (for the
logger: ``curriculum/stage``, ``curriculum/pool_size``, ``curriculum/mean_k``), ``state_dict()`` /
``load_state_dict(d)`` (plain JSON-able dicts, for resume: the order is rebuilt from seed and epoch).
:class:`~mova.trainers.r3_config.CurriculumConfig` (config section ``curriculum``) carries the options in a stage YAML.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mova.data.reasoning import ReasoningRecord
from mova.errors import ConfigError, DataError
from mova.registry import Registry

KINDS = ("cot", "program")

#: the default prompt of each kind; the program one ends where the function header goes.
DEFAULT_PROMPTS: dict[str, str] = {
    "cot": "Question: {question}\nAnswer:\n",
    "program": "Question: {question}\n",
}

PromptArg = str | Callable[[str], str]


@dataclass(frozen=True)
class StartState:
    """One R3 start state: ``prompt`` (the problem and the first ``k`` gold steps) is what the policy
    continues; ``gold_remaining`` is the demonstration's rest (for SFT-style checks, never the reward);
    ``answer`` is the gold value the reward compares with."""

    record_id: str
    k: int
    num_steps: int
    kind: str
    prompt: str
    gold_remaining: str
    answer: str

    def columns(self) -> dict[str, Any]:
        """The reward-function columns of this state (``answer``, plus ``k`` for per-stage logging)."""
        return {"answer": self.answer, "k": self.k}


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"unknown CoT kind {kind!r}; known: {', '.join(KINDS)}")


_DEF = re.compile(r"^(\s*)def\s+\w+\s*\(.*\)\s*(->.*)?:\s*$")


def split_program(program: str) -> tuple[str, list[str]]:
    """``(header, body_lines)`` of a program CoT: the header is the ``def`` line plus a leading docstring
    (with a trailing newline); the body lines keep their indentation; blank lines are dropped."""
    lines = program.strip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if _DEF.match(line)), None)
    if start is None:
        raise DataError(f"program has no one-line 'def name(...):' header: {program[:80]!r}")
    header = lines[:start + 1]
    rest = lines[start + 1:]
    if rest and rest[0].strip()[:3] in ('"""', "'''"):
        quote = rest[0].strip()[:3]
        end = 0 if rest[0].strip().count(quote) >= 2 and len(rest[0].strip()) > 3 else None
        if end is None:
            end = next((i for i in range(1, len(rest)) if quote in rest[i]), None)
            if end is None:
                raise DataError(f"program docstring is not closed: {program[:80]!r}")
        header += rest[:end + 1]
        rest = rest[end + 1:]
    return "\n".join(header) + "\n", [line for line in rest if line.strip()]


def split_steps(rationale: str, kind: str = "cot") -> list[str]:
    """The demonstration's steps (see the module docstring)."""
    _check_kind(kind)
    if kind == "program":
        return split_program(rationale)[1]
    return [line.strip() for line in rationale.splitlines() if line.strip()]


def _render(prompt: PromptArg, question: str) -> str:
    return prompt(question) if callable(prompt) else prompt.format(question=question)


def start_states(record: ReasoningRecord, kind: str = "cot", prompt: PromptArg | None = None) -> list[StartState]:
    """The M start states of ``record`` (k = 0..M-1) for ``kind``."""
    _check_kind(kind)
    prompt = DEFAULT_PROMPTS[kind] if prompt is None else prompt
    base = _render(prompt, record.question)
    if kind == "program":
        if not record.program:
            raise DataError(f"record {record.id!r} has no program for program CoT")
        header, steps = split_program(record.program)
        base += header
    else:
        steps = split_steps(record.gsm8k_answer(), "cot")
    if not steps:
        raise DataError(f"record {record.id!r} has an empty {kind} demonstration")
    lines = [s + "\n" for s in steps]
    return [StartState(record.id, k, len(steps), kind, base + "".join(lines[:k]), "".join(lines[k:]), record.answer)
            for k in range(len(steps))]


def build_start_states(records: Sequence[ReasoningRecord], kind: str = "cot",
                       prompt: PromptArg | None = None) -> list[list[StartState]]:
    return [start_states(r, kind, prompt) for r in records]


# --- schedules -------------------------------------------------------------------------------------------
class Schedule:
    """Common machinery: a pool of states per stage and a seeded, epoch-reshuffled order over it."""

    name = "base"

    def __init__(self, states_by_record: Sequence[Sequence[StartState]], seed: int = 0):
        if not states_by_record or any(not s for s in states_by_record):
            raise ConfigError(f"{self.name} schedule needs at least one record, each with a start state")
        self.states_by_record = [list(s) for s in states_by_record]
        self.seed = seed
        self.stage = 0
        self.epoch = 0
        self.position = 0
        self._order: list[int] | None = None

    # subclasses define the pool of the current stage
    def current_pool(self) -> list[StartState]:
        raise NotImplementedError

    def _shuffled(self) -> list[int]:
        if self._order is None:
            order = list(range(len(self.current_pool())))
            random.Random(f"{self.seed}/{self.stage}/{self.epoch}").shuffle(order)
            self._order = order
        return self._order

    def sample(self, n: int) -> list[StartState]:
        """The next ``n`` states in this stage's shuffled order (a new epoch reshuffles)."""
        pool = self.current_pool()
        out = []
        for _ in range(n):
            order = self._shuffled()
            if self.position >= len(order):
                self.epoch += 1
                self.position = 0
                self._order = None
                order = self._shuffled()
            out.append(pool[order[self.position]])
            self.position += 1
        return out

    def update(self, mean_reward: float, step: int) -> bool:
        """Report the mean reward of the last batch; True when this moved to a new stage."""
        return False

    def metrics(self) -> dict[str, float]:
        pool = self.current_pool()
        return {"curriculum/stage": float(self.stage), "curriculum/pool_size": float(len(pool)),
                "curriculum/mean_k": sum(s.k for s in pool) / len(pool)}

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "stage": self.stage, "epoch": self.epoch,
                "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ConfigError(f"cannot resume a {state.get('name')!r} curriculum as {self.name!r}")
        self.seed, self.stage = int(state["seed"]), int(state["stage"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = None


class MixedSchedule(Schedule):
    """All start states of all records in one shuffled pool (the released R3 setting)."""

    name = "mixed"

    def __init__(self, states_by_record: Sequence[Sequence[StartState]], seed: int = 0):
        super().__init__(states_by_record, seed)
        self._pool = [s for states in self.states_by_record for s in states]

    def current_pool(self) -> list[StartState]:
        return self._pool


class PlainSchedule(Schedule):
    """k = 0 only: every problem from its start, as plain outcome-reward PPO sees it."""

    name = "none"

    def __init__(self, states_by_record: Sequence[Sequence[StartState]], seed: int = 0):
        super().__init__(states_by_record, seed)
        self._pool = [next(s for s in states if s.k == 0) for states in self.states_by_record]

    def current_pool(self) -> list[StartState]:
        return self._pool


class StagedSchedule(Schedule):
    """Stage s: each record at k = max(M - 1 - s, 0); advance on a reward threshold or a step budget."""

    name = "staged"

    def __init__(self, states_by_record: Sequence[Sequence[StartState]], seed: int = 0, threshold: float = 0.7,
                 stage_steps: int | None = None, window: int = 1):
        super().__init__(states_by_record, seed)
        if window < 1:
            raise ConfigError(f"staged curriculum window must be >= 1, got {window}")
        if stage_steps is not None and stage_steps < 1:
            raise ConfigError(f"staged curriculum stage_steps must be >= 1 or null, got {stage_steps}")
        self.threshold, self.stage_steps, self.window = threshold, stage_steps, window
        self.num_stages = max(len(states) for states in self.states_by_record)
        self.steps_in_stage = 0
        self.recent: list[float] = []

    @property
    def final(self) -> bool:
        return self.stage >= self.num_stages - 1

    def current_pool(self) -> list[StartState]:
        return [states[max(len(states) - 1 - self.stage, 0)] for states in self.states_by_record]

    def update(self, mean_reward: float, step: int) -> bool:
        self.steps_in_stage += 1
        self.recent = (self.recent + [float(mean_reward)])[-self.window:]
        if self.final:
            return False
        reached = len(self.recent) == self.window and sum(self.recent) / self.window >= self.threshold
        spent = self.stage_steps is not None and self.steps_in_stage >= self.stage_steps
        if not (reached or spent):
            return False
        self.stage += 1
        self.steps_in_stage, self.recent = 0, []
        self.epoch, self.position, self._order = 0, 0, None
        return True

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "curriculum/steps_in_stage": float(self.steps_in_stage)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps_in_stage": self.steps_in_stage, "recent": list(self.recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps_in_stage = int(state["steps_in_stage"])
        self.recent = [float(x) for x in state["recent"]]


#: schedule name -> class; ``build_schedule(name, states, **options)`` passes the options to it.
SCHEDULES: Registry[type[Schedule]] = Registry("curriculum schedule")
register_schedule = SCHEDULES.register
for _name, _cls in (("mixed", MixedSchedule), ("staged", StagedSchedule), ("none", PlainSchedule)):
    register_schedule(_name, _cls)


def build_schedule(name: str, states_by_record: Sequence[Sequence[StartState]], **options: Any) -> Schedule:
    SCHEDULES[name]  # an unknown name raises, listing the schedules
    try:
        return SCHEDULES[name](states_by_record, **options)
    except TypeError as e:
        raise ConfigError(f"curriculum schedule {name!r}: bad options {sorted(options)} ({e})") from e


def schedule_from_config(config: Any, records: Sequence[ReasoningRecord]) -> Schedule:
    """Start states of ``records`` and the schedule an R3 recipe's ``curriculum:`` section names (a
    :class:`~mova.trainers.r3_config.CurriculumConfig`)."""
    states = build_start_states(records, config.kind, config.prompt)
    return build_schedule(config.schedule, states, **config.schedule_options())

