"""A task small enough to watch RL work on a CPU: "name some colours".

The start policy is a tiny random Llama given a short SFT on answers that mix colour words with other
words (about a third colours), so it samples colours some of the time. The rule reward
``word_fraction`` (share of colour words in the answer) then has room to rise, and a correct PPO raises
it within a few dozen iterations while the KL to the SFT policy stays bounded. Tests, the PPO benchmark
and the README's examples use it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

COLOURS = ["red", "blue", "green", "white", "pink", "brown"]
OTHERS = ["cat", "dog", "tree", "house", "the", "small", "big", "one", "two", "square", "circle", "star"]
QUESTIONS = ["name some colours", "say a few colours", "list colours", "which colours do you know",
             "tell me colours", "give colours"]


def tiny_text_lm(folder: str | Path, seed: int = 0, layers: int = 2, width: int = 64) -> Any:
    """A small random Llama with the repository's tiny tokenizer, saved to ``folder``; returns the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mova.presets import TINY_TOKENIZER

    tok = PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.1, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return tok


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


def make_colour_policy(folder: str | Path, data: dict[str, Path], steps: int = 60, seed: int = 0) -> Path:
    """A tiny Llama fine-tuned on ``sft.jsonl`` (the start policy for PPO), saved to ``folder/final``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mova.config import TrainConfig
    from mova.trainers.text_sft import train_prompt_answer

    folder = Path(folder)
    tiny_text_lm(folder / "init", seed=seed)
    model = AutoModelForCausalLM.from_pretrained(folder / "init", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder / "init")
    records = [json.loads(line) for line in Path(data["sft"]).read_text().splitlines() if line.strip()]
    cfg = TrainConfig(max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3, warmup_ratio=0.0,
                      logging_steps=steps, save_steps=10 * steps, report_to=[], seed=seed, lr_scheduler_type="constant")
    train_prompt_answer(model, tok, records, cfg, folder / "sft_run")
    final = folder / "final"
    model.save_pretrained(final)
    tok.save_pretrained(final)
    return final


def main(argv: list[str] | None = None) -> None:
    """``python -m mova.rl.toy_task OUT``: the colour task's prompts and its SFT start policy under OUT."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("out")
    p.add_argument("--sft-steps", type=int, default=60)
    args = p.parse_args(argv)
    out = Path(args.out)
    data = write_colour_task(out / "data")
    policy = make_colour_policy(out / "policy", data, steps=args.sft_steps)
    print(json.dumps({"prompts": str(data["prompts"]), "policy": str(policy)}))


if __name__ == "__main__":
    main()
