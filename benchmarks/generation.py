"""Generation throughput by batch size, and whether batching changes the answers.

Why: every evaluation generates through one backend (``mova.inference``), batched and left-padded. Batching
is only worth it if it is faster and gives the answers a sample would get alone. This prints, for a random
Llama with the repository's tiny tokenizer:

1. tokens/s by batch size for the same prompts (greedy, ``--new-tokens`` per prompt; tokens counted as
   generated, so an early EOS is not counted as work), with the process's CPU seconds beside the wall time
   (on a shared machine, wall time also measures the other tenants);
2. the largest difference between any answer step's logits batched (the largest batch size) and alone
   (batch size 1), greedy, in each ``--check-dtypes`` dtype;
3. how many seeded sampled answers are identical between the largest batch size and batch size 1 (each
   sample draws from its own generator, so they should all be, up to rounding in low precision).

    python benchmarks/generation.py                                   # CPU: 4 layers x 256, fp32
    python benchmarks/generation.py --device cuda --dtype bf16 --layers 12 --width 1024
    python benchmarks/generation.py --quick                           # smoke run, seconds
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import add_reps_argument, interleaved, ratio_cell, stat  # noqa: E402

WORDS = ("the model image safe answer question data red blue green house tree river city light paper stone "
         "music table window garden doctor market travel winter summer morning evening simple careful").split()


def random_llama(folder: Path, layers: int, width: int, seed: int = 0) -> Path:
    """A random ``layers`` x ``width`` Llama with the tiny tokenizer, saved to ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from mova.presets import TINY_TOKENIZER

    tok = PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER))
    heads = max(width // 64, 1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=int(width * 8 / 3) // 16 * 16,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=1024, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prompts_of(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 48))) for _ in range(n)]


def generate(model: Any, tok: Any, prompts: list[str], batch_size: int, new_tokens: int, **kw: Any) -> list[Any]:
    from mova.inference.generation import generate_from_prompts

    return generate_from_prompts(model, tok, prompts, batch_size=batch_size, max_new_tokens=new_tokens,
                                 progress=False, return_details=True, **kw)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batch-sizes", default="1,16,64")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="for the throughput table")
    p.add_argument("--check-dtypes", default="fp32,bf16", help="dtypes of the batched-vs-alone checks ('' : none)")
    p.add_argument("--check-prompts", type=int, default=8, help="prompts in the checks")
    add_reps_argument(p)
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny model, a few prompts and tokens, 2 reps")
    if p.parse_known_args(argv)[0].quick:  # quick sizes are defaults: explicit arguments still win
        p.set_defaults(layers=2, width=64, prompts=8, new_tokens=8, batch_sizes="1,4", check_prompts=4, reps=2)
    args = p.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_llama(Path(tmp) / "llama", args.layers, args.width)
        tok = AutoTokenizer.from_pretrained(folder)

        def load(dtype: str) -> Any:
            return LlamaForCausalLM.from_pretrained(folder, dtype=dtypes[dtype]).to(args.device).eval()

        model = load(args.dtype)
        prompts = prompts_of(args.prompts)
        generate(model, tok, prompts[:2], 2, 2)  # warm-up

        def run(name: str, _rep: int) -> tuple[float, float, int]:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            gens = generate(model, tok, prompts, int(name), args.new_tokens)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            tokens = sum(g.num_tokens for g in gens)
            print(f"batch size {name}: {tokens / seconds:.1f} tokens/s", file=sys.stderr, flush=True)
            return seconds, cpu, tokens

        # batch sizes in turns, --reps times each (benchmarks/_timing.py)
        runs = interleaved([str(bs) for bs in sizes], args.reps, run)
        rows = [(bs, stat([r[0] for r in runs[str(bs)]]), stat([r[1] for r in runs[str(bs)]]),
                 runs[str(bs)][0][2], stat([r[2] / r[0] for r in runs[str(bs)]])) for bs in sizes]
        checks = []
        big = max(sizes)
        for dtype in [d for d in args.check_dtypes.split(",") if d]:
            m = load(dtype)
            few = prompts[:args.check_prompts]
            alone = generate(m, tok, few, 1, args.new_tokens, return_step_logits=True)
            batched = generate(m, tok, few, big, args.new_tokens, return_step_logits=True)
            diff = 0.0
            for a, b in zip(alone, batched, strict=True):
                n = min(a.num_tokens, b.num_tokens)
                diff = max(diff, (a.step_logits[:n].float() - b.step_logits[:n].float()).abs().max().item())
            same_greedy = sum(a.text == b.text for a, b in zip(alone, batched, strict=True))
            kw = {"do_sample": True, "temperature": 1.0, "seed": 1}
            s1 = generate(m, tok, few, 1, args.new_tokens, **kw)
            sb = generate(m, tok, few, big, args.new_tokens, **kw)
            same_sampled = sum(a.text == b.text for a, b in zip(s1, sb, strict=True))
            checks.append((dtype, diff, same_greedy, same_sampled, len(few)))
    device = args.device + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else
                            f" ({torch.get_num_threads()} threads)")
    print(f"\ngeneration, random {args.layers}-layer {args.width}-wide Llama, {args.dtype}, {device}, torch "
          f"{torch.__version__}: {args.prompts} prompts x up to {args.new_tokens} new tokens, greedy; batch sizes in "
          f"turns, {args.reps} runs each: median (min-max), ratios of medians (range of per-run ratios)\n")
    print("| batch size | seconds | CPU seconds | tokens | tokens/s | speed-up vs batch size 1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    base = rows[0][4]
    for bs, seconds, cpu, tokens, rate in rows:
        print(f"| {bs} | {seconds.cell()} | {cpu.cell()} | {tokens} | {rate.cell(',.1f')} | {ratio_cell(rate, base)} |")
    if checks:
        print(f"\nbatch size {big} vs 1, {args.new_tokens} new tokens\n")
        print("| dtype | max abs step-logit difference (greedy) | greedy answers identical | "
              "seeded sampled answers identical |")
        print("|---|---:|---:|---:|")
        for dtype, diff, same_greedy, same_sampled, n in checks:
            print(f"| {dtype} | {diff:.2e} | {same_greedy} of {n} | {same_sampled} of {n} |")


if __name__ == "__main__":
    main()
