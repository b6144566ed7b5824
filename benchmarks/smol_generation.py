"""Batched generation on the real SmolLM2-135M-Instruct: tokens/s by batch size, and the same greedy answers.

Why: every evaluation generates through ``mova.inference.generation`` batched and left-padded; on a real
pretrained model (134.5M parameters, 49K vocabulary) batching is what makes an evaluation affordable on a CPU,
and it is only worth it if each answer is the one the sample gets alone. This prints, for the same prompts
(short questions in the model's chat template, greedy, ``--new-tokens`` per prompt), tokens/s at each batch
size (tokens counted as generated: an early EOS is not counted as work), wall and process CPU seconds, and how
many answers equal the batch-size-1 answers exactly.

    python benchmarks/smol_generation.py                 # 32 prompts, 32 new tokens, batch 1 / 8 / 32
    python benchmarks/smol_generation.py --quick         # 4 prompts, 8 new tokens, batch 1 / 4
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SUBJECTS = ["the sun", "a cat", "the ocean", "a tree", "winter", "a library", "the moon", "a river"]


def prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` short questions of varied length: arithmetic and one-line explanations."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % 2:
            out.append(f"What is {rng.randint(2, 99)} + {rng.randint(2, 99)}?")
        else:
            out.append(f"In one sentence, describe {rng.choice(SUBJECTS)} to a child.")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="a known model name or a causal-LM folder")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--quick", action="store_true", help="4 prompts, 8 new tokens, batch sizes 1 and 4")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.batch_sizes = 4, 8, "1,4"
    import torch

    from mova.inference.generation import generate_answers
    from mova.model.policy import load_policy

    model, processor = load_policy(args.model)
    model.eval()
    conversations = [[{"role": "user", "content": q}] for q in prompts(args.prompts)]
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(f"model {args.model}: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M parameters, fp32, "
          f"{torch.get_num_threads()} thread(s); {args.prompts} prompts, greedy, up to {args.new_tokens} new tokens")
    print("| batch size | tokens | wall s | CPU s | tokens/s | answers equal to batch 1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    first = None
    for bs in sizes:
        wall, cpu = time.perf_counter(), time.process_time()
        gens = generate_answers(model, processor, conversations, batch_size=bs, max_new_tokens=args.new_tokens,
                                return_details=True, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        texts = [g.text for g in gens]
        first = first or texts
        tokens = sum(g.num_tokens for g in gens)
        same = sum(a == b for a, b in zip(texts, first))
        print(f"| {bs} | {tokens} | {wall:.1f} | {cpu:.1f} | {tokens / wall:.1f} | {same}/{len(texts)} |", flush=True)
    print(f"example: {conversations[0][0]['content']!r} -> {first[0]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
