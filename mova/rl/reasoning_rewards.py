"""Outcome rewards for maths reasoning (R3, PPO): 1 for a correct final answer, 0.2 for a well-formed wrong
one, 0 when no answer can be read or the program fails.

The 0.2 for a wrong-but-readable answer (the R3 paper's setting) keeps the policy writing in the answer
format while it cannot yet solve a problem, so that format collapse never masquerades as "all wrong".

Registered rewards (look up with :func:`mova.rl.rewards.get_reward`):

``gsm8k_cot``
    Chain of thought ending in ``#### value`` (falls back to "The answer is X"). Gold: the ``answer``
    column, either a GSM8K rationale ending in ``#### value`` or a bare number.
``answer_is_cot``
    Chain of thought ending in "The answer is X" (falls back to ``#### value``).
``program_cot``
    Program chain of thought: the text from the last ``def solution(`` in ``prompt + completion`` (so the
    prompt may hold the function header and the first k gold lines, as R3's start states do) to the end of
    that function is run in :mod:`mova.rl.sandbox`; its return value is the answer (what it prints is not).
    A completion whose first line lost its indentation to a stripping decoder is re-indented
    (:func:`join_program`).
    Never runs model code in the calling process.

All take ``(prompts, completions, answer=[...], **other_columns)`` and never raise on a malformed completion.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mova.errors import ConfigError
from mova.metrics.answers import extract_answer, normalize_number, numbers_match
from mova.rl.rewards import register_reward
from mova.rl.sandbox import SandboxConfig, run_programs

CORRECT, WELL_FORMED, UNREADABLE = 1.0, 0.2, 0.0


def gold_value(answer: Any) -> float | None:
    """The gold number of a record's ``answer``: a GSM8K rationale (``... #### 72``) or a bare value."""
    if isinstance(answer, str) and "####" in answer:
        return normalize_number(extract_answer(answer, "gsm8k"))
    return normalize_number(answer)


def outcome_reward(predicted: str | None, gold: Any) -> float:
    """1 when ``predicted`` equals ``gold`` numerically, 0.2 when it is a number but wrong, else 0."""
    if normalize_number(predicted) is None:
        return UNREADABLE
    return CORRECT if numbers_match(predicted, gold_value(gold)) else WELL_FORMED


def _gold_column(columns: dict[str, Sequence[Any]], n: int, reward: str) -> Sequence[Any]:
    if "answer" not in columns:
        raise ConfigError(f"reward {reward!r} needs an 'answer' column with the gold answers; "
                          f"got columns {sorted(columns)}")
    gold = columns["answer"]
    if len(gold) != n:
        raise ConfigError(f"reward {reward!r}: {len(gold)} gold answers for {n} completions")
    return gold


def _first_readable(text: str, modes: Sequence[str]) -> str | None:
    for mode in modes:
        value = extract_answer(text, mode) if isinstance(text, str) else None
        if value is not None:
            return value
    return None


@register_reward("gsm8k_cot")
def gsm8k_cot(prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]) -> list[float]:
    gold = _gold_column(columns, len(completions), "gsm8k_cot")
    return [outcome_reward(_first_readable(c, ("gsm8k", "answer_is")), g) for c, g in zip(completions, gold)]


@register_reward("answer_is_cot")
def answer_is_cot(prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]) -> list[float]:
    gold = _gold_column(columns, len(completions), "answer_is_cot")
    return [outcome_reward(_first_readable(c, ("answer_is", "gsm8k")), g) for c, g in zip(completions, gold)]


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_+-]*\s*$")


def extract_program(text: str, entry: str = "solution") -> str | None:
    """The function ``entry`` as last defined in ``text``: from its ``def`` line to the first non-indented,
    non-blank line after it (Markdown fences dropped). ``None`` when ``text`` defines no such function.

    Lines after the function (``print(solution())``, a next few-shot question) are not run: the sandbox
    calls the entry function itself.
    """
    if not isinstance(text, str):
        return None
    lines = text.splitlines()
    header = re.compile(rf"def\s+{re.escape(entry)}\s*\(")
    starts = [(i, m) for i, line in enumerate(lines) if (m := header.search(line))]
    if not starts:
        return None
    start, match = starts[-1]
    first = lines[start]
    # "    def solution():" keeps its indentation as the function's; "ANSWER: def solution():" starts at 0
    indent = match.start() if not first[:match.start()].strip() else 0
    body = [first[match.start():]]
    for line in lines[start + 1:]:
        if _FENCE.match(line):
            break
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line[indent:] if line[:indent].strip() == "" else line)
    return "\n".join(body) + "\n"


def join_program(prompt: str, completion: str, entry: str = "solution") -> str:
    """``prompt + completion`` for a completion that continues a function the prompt opened.

    Decoders often strip the generated text (Mova's generation does), which takes the indentation off the
    first line the model wrote after ``def solution():\n`` or after the gold lines of an R3 start state;
    that line would then end the function. When the prompt ends inside the function and the completion's
    first line is not indented, it gets the indentation of the completion's next indented line (else of the
    prompt's last body line, else four spaces).
    """
    prompt = prompt if isinstance(prompt, str) else ""
    completion = completion if isinstance(completion, str) else ""
    if extract_program(prompt, entry) is None or not prompt.endswith("\n"):
        return prompt + completion
    last = prompt.rstrip("\n").splitlines()[-1] if prompt.strip() else ""
    inside = re.search(rf"def\s+{re.escape(entry)}\s*\(", last) or (last[:1].isspace() and last.strip())
    lines = completion.split("\n")
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if not inside or first is None or lines[first][:1].isspace() or lines[first].lstrip().startswith("def "):
        return prompt + completion
    hints = [line for line in lines[first + 1:] if line.strip() and line[:1].isspace()]
    if hints:
        pad = hints[0][:len(hints[0]) - len(hints[0].lstrip())]
    elif last[:1].isspace():
        pad = last[:len(last) - len(last.lstrip())]
    else:
        pad = "    "
    lines[first] = pad + lines[first]
    return prompt + "\n".join(lines)


#: the sandbox limits ``program_cot`` uses; replace with :func:`set_program_sandbox` (e.g. from a config).
PROGRAM_SANDBOX = SandboxConfig(timeout_s=5.0, cpu_seconds=5)


def set_program_sandbox(config: SandboxConfig) -> None:
    """Use ``config`` for every later ``program_cot`` call (the R3 trainer calls this from its YAML)."""
    global PROGRAM_SANDBOX
    PROGRAM_SANDBOX = config


def score_programs(programs: Sequence[str | None], gold: Sequence[Any],
                   config: SandboxConfig | None = None) -> list[float]:
    """Run the non-``None`` programs in the sandbox pool and score their answers against ``gold``."""
    config = config or PROGRAM_SANDBOX
    todo = [i for i, p in enumerate(programs) if p]
    results = run_programs([programs[i] for i in todo], config) if todo else []
    rewards = [UNREADABLE] * len(programs)
    for i, result in zip(todo, results):
        rewards[i] = outcome_reward(result.answer, gold[i]) if result.ok else UNREADABLE
    return rewards


@register_reward("program_cot")
def program_cot(prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]) -> list[float]:
    gold = _gold_column(columns, len(completions), "program_cot")
    entry = PROGRAM_SANDBOX.entry or "solution"
    programs = [extract_program(join_program(p, c, entry), entry) for p, c in zip(prompts, completions)]
    return score_programs(programs, gold)
