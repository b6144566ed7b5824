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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import add_reps_argument, interleaved, ratio_cell, stat  # noqa: E402

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
    add_reps_argument(p)
    p.add_argument("--quick", action="store_true", help="4 prompts, 8 new tokens, batch sizes 1 and 4, 2 reps")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.new_tokens, args.batch_sizes, args.reps = 4, 8, "1,4", 2
    import torch

    from mova.inference.generation import generate_answers
    from mova.model.policy import load_policy

    model, processor = load_policy(args.model)
    model.eval()
    conversations = [[{"role": "user", "content": q}] for q in prompts(args.prompts)]
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(f"model {args.model}: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M parameters, fp32, "
          f"{torch.get_num_threads()} thread(s); {args.prompts} prompts, greedy, up to {args.new_tokens} new tokens; "
          f"batch sizes in turns, {args.reps} runs each: median (min-max), ratios of medians (range of per-run ratios)")

    def run(name: str, _rep: int) -> tuple[float, float, list[str], int]:
        wall, cpu = time.perf_counter(), time.process_time()
        gens = generate_answers(model, processor, conversations, batch_size=int(name), max_new_tokens=args.new_tokens,
                                return_details=True, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return wall, cpu, [g.text for g in gens], sum(g.num_tokens for g in gens)

    runs = interleaved([str(bs) for bs in sizes], args.reps, run)
    first = runs[str(sizes[0])][0][2]
    base = stat([r[3] / r[0] for r in runs[str(sizes[0])]])
    print("| batch size | tokens | wall s | CPU s | tokens/s | speed-up vs the first | answers equal to batch 1 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for bs in sizes:
        rs = runs[str(bs)]
        rate = stat([r[3] / r[0] for r in rs])
        same = min(sum(a == b for a, b in zip(r[2], first, strict=True)) for r in rs)
        print(f"| {bs} | {rs[0][3]} | {stat([r[0] for r in rs]).cell('.1f')} | {stat([r[1] for r in rs]).cell('.1f')} "
              f"| {rate.cell('.1f')} | {ratio_cell(rate, base)} | {same}/{len(first)} |", flush=True)
    print(f"example: {conversations[0][0]['content']!r} -> {first[0]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
