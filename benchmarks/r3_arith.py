"""CPU-scale R3 experiment: SFT a tiny model on generated arithmetic, then plain PPO vs R3 for the same
number of samples; prints held-out accuracy for SFT, PPO and R3 (greedy, zero-shot, ``#### value``) per seed
and their mean.

    python benchmarks/r3_arith.py --out runs/r3_arith --seeds 0 1
    python benchmarks/r3_arith.py --sft-only --layers 2 --width 64                 # can a tiny model learn it?
    python benchmarks/r3_arith.py --sft-only --layers 2 --width 64 --kind program --max-new-tokens 150
    python benchmarks/r3_arith.py --quick --out /tmp/r3-quick                      # smoke run, seconds

Every number comes from this script's run; the README quotes one run with its seeds. Both RL runs start
from the same SFT checkpoint, see the same rollout batch size, iterations, optimiser and KL settings, and
differ only in ``curriculum.schedule`` (``none``: k = 0 only, vs ``mixed``: R3's start states).

``--sft-only`` stops after SFT and also scores the first ``--test`` training problems and, for chain of
thought, counts the outputs holding a false ``a op b = c`` line (what RL would have to fix). The SFT
checkpoint is reused only when it was built with the same arguments (``mova.artifacts``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sft(data: Path, out: Path, steps: int, seed: int, layers: int, width: int, kind: str = "cot",
        data_key: dict | None = None) -> Path:
    """Train (or reuse, when built with the same arguments) the SFT policy in ``out``; returns ``out/final``."""
    from mova.artifacts import build_once

    key = {"data": data_key or str(data), "steps": steps, "seed": seed, "layers": layers, "width": width,
           "kind": kind, "batch": 32, "lr": 3e-3, "warmup_ratio": 0.05}
    build_once(out, key, lambda: _train_sft(data, out, steps, seed, layers, width, kind), marker="final/config.json")
    return out / "final"


def _train_sft(data: Path, out: Path, steps: int, seed: int, layers: int, width: int, kind: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mova.config import TrainConfig
    from mova.data.reasoning import load_reasoning
    from mova.model.tiny import tiny_text_lm
    from mova.rl.curriculum import DEFAULT_PROMPTS, start_states
    from mova.trainers.text_sft import train_prompt_answer

    final = out / "final"
    tiny_text_lm(out / "init", seed=seed, layers=layers, width=width)
    model = AutoModelForCausalLM.from_pretrained(out / "init", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out / "init")
    if kind == "cot":
        records = [{"prompt": DEFAULT_PROMPTS["cot"].format(question=r.question), "answer": r.gsm8k_answer()}
                   for r in load_reasoning(data, split="train")]
    else:  # start state k = 0: the question and the function header; the body lines are the target
        records = [{"prompt": s.prompt, "answer": s.gold_remaining}
                   for s in (start_states(r, "program")[0] for r in load_reasoning(data, split="train"))]
    cfg = TrainConfig(max_steps=steps, per_device_train_batch_size=32, learning_rate=3e-3, warmup_ratio=0.05,
                      logging_steps=max(steps // 10, 1), save_steps=10 * steps, report_to=[], seed=seed)
    train_prompt_answer(model, tok, records, cfg, out / "run", separator="")
    model.save_pretrained(final)
    tok.save_pretrained(final)


def evaluate(model_dir: Path, data: Path, out: Path, limit: int | None, kind: str = "cot", split: str = "test",
             max_new_tokens: int = 64) -> dict[str, float]:
    """Greedy zero-shot scores (``accuracy``, ``well_formed``, ...) of ``model_dir`` on a split; samples to
    ``out/samples.jsonl``."""
    from mova.data.reasoning import load_reasoning
    from mova.evaluation.gsm8k import Gsm8kConfig, backend_generate, evaluate_gsm8k
    from mova.inference.backends import load_backend

    backend = load_backend(model_dir, batch_size=64, progress=False)
    records = load_reasoning(data, split=split, limit=limit)
    config = Gsm8kConfig(data=str(data), kind=kind, shots=0, fewshot="none", max_new_tokens=max_new_tokens,
                         limit=limit)
    return evaluate_gsm8k(backend_generate(backend), records, config, out / "samples.jsonl")


_EQUATION = re.compile(r"(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)")


def false_lines(samples_path: Path) -> dict[str, int]:
    """Outputs holding an ``a op b = c`` line whose arithmetic is wrong, and those whose first line is one."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
           "/": lambda a, b: a / b if b else None}
    n = any_false = first_false = 0
    for line in samples_path.read_text().splitlines():
        output = json.loads(line)["output"]
        n += 1
        wrong = []
        for text in [x for x in output.splitlines() if x.strip()]:
            m = _EQUATION.search(text)
            wrong.append(bool(m) and ops[m[2]](int(m[1]), int(m[3])) != int(m[4]))
        any_false += any(wrong)
        first_false += bool(wrong) and wrong[0]
    return {"outputs": n, "with_false_line": any_false, "first_line_false": first_false}


def rl(schedule: str, policy: Path, data: Path, out: Path, iterations: int, batch: int, seed: int, lr: float,
       kl: float) -> dict:
    from mova.config import load_run_config
    from mova.trainers.r3 import run_r3

    cfg = load_run_config(None, [
        f"init_from={policy}", f"data.data_path={data}", f"train.output_dir={out}", f"train.max_steps={iterations}",
        f"train.learning_rate={lr}", "train.report_to=[]", "train.save_steps=0", f"train.seed={seed}",
        "train.lr_scheduler_type=constant", "train.warmup_ratio=0",
        "ppo.preset=ppo_max", "ppo.critic_pretrain_iterations=2", f"ppo.kl_coef={kl}",
        f"ppo.rollout_batch_size={batch}",
        f"ppo.mini_batch_size={batch // 2}", "ppo.max_new_tokens=48", "ppo.temperature=1.0",
        f"curriculum.schedule={schedule}", f"curriculum.seed={seed}"], stage="r3")
    return run_r3(cfg)


def comparison_table(rows: list[dict]) -> str:
    """The SFT / PPO / R3 accuracy table, one row per seed and, with several seeds, their mean."""
    lines = ["| seed | SFT | PPO (k=0) | R3 (mixed) |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['sft']:.1%} | {r['ppo']:.1%} | {r['r3']:.1%} |" for r in rows]
    if len(rows) > 1:
        means = [statistics.mean(r[k] for r in rows) for k in ("sft", "ppo", "r3")]
        lines.append("| mean | " + " | ".join(f"{m:.1%}" for m in means) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/r3_arith")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--sft-steps", type=int, default=600)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--rollout-batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-5, help="RL learning rate (policy and critic)")
    p.add_argument("--kl", type=float, default=0.05, help="KL coefficient")
    p.add_argument("--kind", default="cot", choices=["cot", "program"], help="program: with --sft-only")
    p.add_argument("--max-new-tokens", type=int, default=64, help="evaluation budget per answer")
    p.add_argument("--sft-only", action="store_true", help="stop after SFT; also score training problems")
    p.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: checks the script runs")
    if p.parse_known_args(argv)[0].quick:  # quick sizes are defaults: explicit arguments still win
        p.set_defaults(train=64, test=8, sft_steps=3, iterations=1, rollout_batch=4, layers=1, width=32)
    args = p.parse_args(argv)
    if args.kind == "program" and not args.sft_only:
        raise SystemExit("--kind program needs --sft-only (the RL comparison is chain of thought)")

    from mova.data.arith_mini import write_arith_mini

    out = Path(args.out)
    data = write_arith_mini(out / "data", n_train=args.train, n_test=args.test, seed=0)
    data_key = {"train": args.train, "test": args.test, "seed": 0}
    rows = []
    for seed in args.seeds:
        t0 = time.time()
        sft_dir = out / (f"sft-{seed}" if args.kind == "cot" else f"sft-{args.kind}-{seed}")
        policy = sft(data, sft_dir, args.sft_steps, seed, args.layers, args.width, args.kind, data_key)
        row: dict = {"seed": seed, "sft_s": round(time.time() - t0, 1)}
        scores = evaluate(policy, data, sft_dir / "eval", None, args.kind, max_new_tokens=args.max_new_tokens)
        row["sft"], row["sft_well_formed"] = scores["accuracy"], scores["well_formed"]
        if args.sft_only:
            train_scores = evaluate(policy, data, sft_dir / "eval-train", args.test, args.kind, split="train",
                                    max_new_tokens=args.max_new_tokens)
            row["sft_on_train"] = train_scores["accuracy"]
            if args.kind == "cot":
                row.update(false_lines(sft_dir / "eval" / "samples.jsonl"))
            rows.append(row)
            print(json.dumps(row), flush=True)
            continue
        for name, schedule in (("ppo", "none"), ("r3", "mixed")):
            t0 = time.time()
            summary = rl(schedule, policy, data, out / f"{name}-{seed}", args.iterations, args.rollout_batch, seed,
                         args.lr, args.kl)
            row[f"{name}_s"] = round(time.time() - t0, 1)
            row[f"{name}_train_reward"] = round(summary["last_metrics"]["objective/reward"], 3)
            row[name] = evaluate(Path(summary["final_model"]), data, out / f"{name}-{seed}" / "eval", None,
                                 max_new_tokens=args.max_new_tokens)["accuracy"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.sft_only:
        print(f"\n{args.kind} SFT ({args.layers} layers x {args.width}, {args.sft_steps} steps of 32 on {args.train} "
              f"problems), greedy, zero-shot, {args.max_new_tokens} new tokens\n")
        head = "| seed | test accuracy | well formed | accuracy on train problems |"
        if args.kind == "cot":
            head += " outputs with a false line | first line false |"
        print(head)
        print("|" + "---:|" * (head.count("|") - 1))
        for r in rows:
            line = f"| {r['seed']} | {r['sft']:.1%} | {r['sft_well_formed']:.1%} | {r['sft_on_train']:.1%} |"
            if args.kind == "cot":
                line += f" {r['with_false_line']} of {r['outputs']} | {r['first_line_false']} |"
            print(line)
    else:
        samples = args.iterations * args.rollout_batch
        print(f"\nheld-out accuracy on {args.test} generated problems (greedy, zero-shot); RL: {args.iterations} "
              f"iterations x {args.rollout_batch} samples = {samples} samples each\n")
        print(comparison_table(rows))
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
