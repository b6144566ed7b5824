"""CPU-scale R3 experiment: SFT a tiny model on generated arithmetic, then plain PPO vs R3 for the same
number of samples; prints held-out accuracy for SFT, PPO and R3 (greedy, zero-shot, ``#### value``).

    python benchmarks/r3_arith.py --out runs/r3_arith --seeds 0 1

Every number comes from this script's run; the README quotes one run with its seeds. Both RL runs start
from the same SFT checkpoint, see the same rollout batch size, iterations, optimiser and KL settings, and
differ only in ``curriculum.schedule`` (``none``: k = 0 only, vs ``mixed``: R3's start states).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def sft(data: Path, out: Path, steps: int, seed: int, layers: int, width: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mova.config import TrainConfig
    from mova.data.reasoning import load_reasoning
    from mova.model.tiny import tiny_text_lm
    from mova.rl.curriculum import DEFAULT_PROMPTS
    from mova.trainers.text_sft import train_prompt_answer

    final = out / "final"
    if (final / "config.json").is_file():
        return final
    tiny_text_lm(out / "init", seed=seed, layers=layers, width=width)
    model = AutoModelForCausalLM.from_pretrained(out / "init", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out / "init")
    records = [{"prompt": DEFAULT_PROMPTS["cot"].format(question=r.question), "answer": r.gsm8k_answer()}
               for r in load_reasoning(data, split="train")]
    cfg = TrainConfig(max_steps=steps, per_device_train_batch_size=32, learning_rate=3e-3, warmup_ratio=0.05,
                      logging_steps=max(steps // 10, 1), save_steps=10 * steps, report_to=[], seed=seed)
    train_prompt_answer(model, tok, records, cfg, out / "run", separator="")
    model.save_pretrained(final)
    tok.save_pretrained(final)
    return final


def evaluate(model_dir: Path, data: Path, out: Path, limit: int | None) -> float:
    from mova.data.reasoning import load_reasoning
    from mova.evaluation.gsm8k import Gsm8kConfig, backend_generate, evaluate_gsm8k
    from mova.inference.backends import load_backend

    backend = load_backend(model_dir, batch_size=64, progress=False)
    records = load_reasoning(data, split="test", limit=limit)
    config = Gsm8kConfig(data=str(data), shots=0, fewshot="none", max_new_tokens=64, limit=limit)
    metrics = evaluate_gsm8k(backend_generate(backend), records, config, out / "samples.jsonl")
    return float(metrics["accuracy"])


def rl(schedule: str, policy: Path, data: Path, out: Path, iterations: int, batch: int, seed: int, lr: float,
       kl: float) -> dict:
    from mova.config import load_run_config
    from mova.trainers.r3 import run_r3

    cfg = load_run_config(None, [
        f"init_from={policy}", f"data.data_path={data}", f"train.output_dir={out}", f"train.max_steps={iterations}",
        f"train.learning_rate={lr}", "train.report_to=[]", "train.save_steps=0", f"train.seed={seed}",
        "ppo.preset=ppo_max", "ppo.critic_pretrain_iterations=2", f"ppo.kl_coef={kl}",
        f"ppo.rollout_batch_size={batch}",
        f"ppo.mini_batch_size={batch // 2}", "ppo.max_new_tokens=48", "ppo.temperature=1.0",
        f"curriculum.schedule={schedule}", f"curriculum.seed={seed}"], stage="r3")
    return run_r3(cfg)


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
    args = p.parse_args(argv)

    from mova.data.arith_mini import write_arith_mini

    out = Path(args.out)
    data = write_arith_mini(out / "data", n_train=args.train, n_test=args.test, seed=0)
    rows = []
    for seed in args.seeds:
        t0 = time.time()
        policy = sft(data, out / f"sft-{seed}", args.sft_steps, seed, args.layers, args.width)
        row = {"seed": seed, "sft_s": round(time.time() - t0, 1)}
        row["sft"] = evaluate(policy, data, out / f"sft-{seed}" / "eval", None)
        for name, schedule in (("ppo", "none"), ("r3", "mixed")):
            t0 = time.time()
            summary = rl(schedule, policy, data, out / f"{name}-{seed}", args.iterations, args.rollout_batch, seed,
                         args.lr, args.kl)
            row[f"{name}_s"] = round(time.time() - t0, 1)
            row[f"{name}_train_reward"] = round(summary["last_metrics"]["objective/reward"], 3)
            row[name] = evaluate(Path(summary["final_model"]), data, out / f"{name}-{seed}" / "eval", None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    samples = args.iterations * args.rollout_batch
    print(f"\nheld-out accuracy on {args.test} generated problems (greedy, zero-shot); RL: {args.iterations} "
          f"iterations x {args.rollout_batch} samples = {samples} samples each\n")
    print("| seed | SFT | PPO (k=0) | R3 (mixed) |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['sft']:.1%} | {r['ppo']:.1%} | {r['r3']:.1%} |")
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
