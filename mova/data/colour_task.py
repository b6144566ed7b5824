"""A task small enough to watch RL work on a CPU: "name some colours".

The start policy (:mod:`mova.trainers.colour_policy`) is a tiny random Llama given a short SFT on answers
that mix colour words with other words (about a third colours), so it samples colours some of the time. The rule reward
``word_fraction`` (share of colour words in the answer) then has room to rise, and a correct PPO raises
it within a few dozen iterations while the KL to the SFT policy stays bounded. Tests, the PPO benchmark
and the README's examples use it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = ["red", "blue", "green", "white", "pink", "brown"]
OTHERS = ["cat", "dog", "tree", "house", "the", "small", "big", "one", "two", "square", "circle", "star"]
QUESTIONS = ["name some colours", "say a few colours", "list colours", "which colours do you know",
             "tell me colours", "give colours"]


def write_colour_task(folder: str | Path, n_prompts: int = 64, n_sft: int = 256, colour_share: float = 0.35,
                      seed: int = 0) -> dict[str, Path]:
    """``prompts.jsonl`` (PPO prompts) and ``sft.jsonl`` (``{"prompt", "answer"}`` with the chat template's
    rendering of the question as the prompt) in ``folder``."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prompts = folder / "prompts.jsonl"
    with prompts.open("w") as f:
        for i in range(n_prompts):
            f.write(json.dumps({"id": f"colour-{i}", "prompt": rng.choice(QUESTIONS)}) + "\n")
    sft = folder / "sft.jsonl"
    with sft.open("w") as f:
        for _ in range(n_sft):
            words = [rng.choice(COLOURS) if rng.random() < colour_share else rng.choice(OTHERS)
                     for _ in range(rng.randint(3, 7))]
            f.write(json.dumps({"prompt": f"USER: {rng.choice(QUESTIONS)}\nASSISTANT:",
                                "answer": " ".join(words)}) + "\n")
    return {"prompts": prompts, "sft": sft}
