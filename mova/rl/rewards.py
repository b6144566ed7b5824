"""The registry of Python reward functions that RL trainers (PPO, R3) score completions with.

A reward function takes the rendered prompts, the generated completions (text after the prompt) and the
dataset's other columns for the same rows (e.g. ``answer`` for a reasoning task), and returns one float per
completion. It must not raise on a malformed completion: a completion that cannot be scored gets the
function's lowest reward, so one bad sample never stops a run.

    @register_reward("contains_yes")
    def contains_yes(prompts, completions, **columns):
        return [float("yes" in c.lower()) for c in completions]

Trainers look functions up by name from their config (``ppo.reward_fn: contains_yes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from mova.errors import ConfigError
from mova.registry import Registry


class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]) -> list[float]:
        ...


REWARD_FUNCTIONS: Registry[RewardFn] = Registry("reward function")
#: decorator: add a reward function under a name (a second, different function under it is refused).
register_reward = REWARD_FUNCTIONS.register


def get_reward(name: str) -> RewardFn:
    """The reward function registered as ``name`` (modules that define rewards are imported first)."""
    _import_reward_modules()
    return REWARD_FUNCTIONS[name]


def score(name: str, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]) -> list[float]:
    """Call reward ``name`` and check it returned one finite float per completion."""
    import math

    values = list(get_reward(name)(prompts, completions, **columns))
    if len(values) != len(completions):
        raise ConfigError(f"reward {name!r} returned {len(values)} values for {len(completions)} completions")
    out = [float(v) for v in values]
    bad = [i for i, v in enumerate(out) if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"reward {name!r} returned a non-finite value for completion {bad[0]}: {out[bad[0]]}")
    return out


#: modules whose import registers reward functions (each ``register_reward`` call runs at import).
REWARD_MODULES: list[str] = ["mova.rl.rule_rewards", "mova.rl.reasoning_rewards"]


def _import_reward_modules() -> None:
    import importlib
    import importlib.util

    for module in REWARD_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
