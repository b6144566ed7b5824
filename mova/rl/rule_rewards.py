"""Rule rewards for tests, demos and sanity checks of RL runs (registered in :mod:`mova.rl.rewards`).

A rule reward needs no model, so a PPO run with one isolates the optimiser from reward-model error: if
the mean reward does not rise on a rule a tiny model can satisfy, the loop is wrong, not the reward.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mova.rl.rewards import register_reward

_WORD = re.compile(r"[A-Za-z]+")


@register_reward("word_fraction")
def word_fraction(prompts: Sequence[str], completions: Sequence[str], words: Sequence[str] = ("red", "blue", "green"),
                  **columns: Any) -> list[float]:
    """The share of the completion's words that are in ``words`` (0 for a completion with no word)."""
    targets = {w.lower() for w in words}
    out = []
    for text in completions:
        found = [w.lower() for w in _WORD.findall(text)]
        out.append(sum(w in targets for w in found) / len(found) if found else 0.0)
    return out


@register_reward("contains_answer")
def contains_answer(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any] | None = None,
                    **columns: Any) -> list[float]:
    """1 when the completion contains the row's ``answer`` column as a whole word, else 0."""
    if answer is None:
        raise ValueError("contains_answer needs an 'answer' column in the prompt records")
    out = []
    for text, gold in zip(completions, answer):
        out.append(float(gold is not None and re.search(rf"(?<!\w){re.escape(str(gold))}(?!\w)", text) is not None))
    return out
