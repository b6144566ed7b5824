"""The start policy of the colour task (:mod:`mova.data.colour_task`): a tiny Llama given a short SFT.

    python -m mova.trainers.colour_policy OUT    # prompts and the SFT policy under OUT
"""

from __future__ import annotations

import json
from pathlib import Path

from mova.data.colour_task import write_colour_task
from mova.model.tiny import tiny_text_lm


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
    """``python -m mova.trainers.colour_policy OUT``: the colour task's prompts and its SFT start policy under OUT."""
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
