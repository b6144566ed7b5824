"""DPO and PPO side by side on the mini SPA-VL: how much safety each buys, and what it costs in usefulness.

    python benchmarks/safety_pareto.py --out runs/safety_pareto            # the grid in the docs (CPU, ~1 h)
    python benchmarks/safety_pareto.py --quick --out /tmp/pareto-quick     # smoke run, a minute or two

From one image-grounded start model (the demo's recipe: align + sft on the synthetic VQA set), it trains
a reward model on the mini SPA-VL's training pairs, then aligns the start model with DPO (over ``--betas`` x
``--mixes`` x ``--dpo-steps``) and with PPO-max against that reward model (over ``--kls`` x ``--mixes`` x
``--ppo-iterations``), both with the same instruction data mixed in at weight ``mix`` (DPO: ``dpo.sft_data``;
PPO: ``ppo.ptx_data``, the same LLaVA records with their images). Every aligned model is scored on:

* harm: unsafe rate and refusal rate on the held-out harmful questions (keyword judge);
* help: refusal rate on the held-out benign questions, and the reward model's mean score gain of the
  model's answers over the start model's (a learned judge of helpfulness, not a keyword rule);
* VQA: held-out accuracy on the synthetic questions the start model was fine-tuned on (the alignment tax);
* wall time of the alignment run.

Built artefacts (start model, reward model) are reused only when built with the same arguments
(``mova.artifacts``). Every number the docs quote from this script is one of its printed rows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def start_model(out: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The demo's align + sft recipe at ``args``' sizes (reused when built with the same arguments)."""
    from mova.artifacts import build_once
    from mova.demo import DemoConfig, train_and_evaluate

    root = out / "start"
    demo = DemoConfig(out_dir=str(root), n_train_images=args.train_images, n_test_images=args.test_images,
                      align_steps=args.align_steps, sft_steps=args.sft_steps, batch_size=args.batch_size,
                      blanked_control=False, dpo_steps=0, export=False)
    key = {k: getattr(demo, k) for k in ("n_train_images", "n_test_images", "align_steps", "sft_steps",
                                         "batch_size", "align_lr", "sft_lr", "seed")}
    build_once(root, key, lambda: train_and_evaluate(demo, "images"), marker="images/sft/final/config.json")
    images = root / "images"
    return {"sft": images / "sft" / "final", "data": images / "data", "cache": images / "cache"}


def reward_model(out: Path, start: dict[str, Path], pairs: Path, args: argparse.Namespace) -> Path:
    """A reward model on the mini SPA-VL's training pairs, from the start model (fusion + LLM + head)."""
    from mova.artifacts import build_once
    from mova.config import DataConfig, RunConfig, TrainConfig
    from mova.trainers.rm import run_rm
    from mova.trainers.rm_config import RmConfig

    folder = out / "rm"
    key = {"start": str(start["sft"]), "pairs": str(pairs), "steps": args.rm_steps, "lr": 1e-3, "batch": 8}

    def build() -> None:
        cfg = RunConfig(stage="rm", init_from=str(start["sft"]),
                        data=DataConfig(data_path=str(pairs), eval_data_path=str(pairs)),
                        train=TrainConfig(output_dir=str(folder), max_steps=args.rm_steps,
                                          per_device_train_batch_size=8, learning_rate=1e-3, warmup_ratio=0.05,
                                          logging_steps=10, save_steps=0, report_to=[], seed=0),
                        sections={"rm": RmConfig(train_fusion=True)})
        summary = run_rm(cfg)
        print(f"[rm] held-out pairs: {json.dumps(summary.get('eval'))}", flush=True)

    build_once(folder, key, build, marker="final/reward_model.json")
    return folder / "final"


def score(model_dir: Path, start: dict[str, Path], pairs: Path, rm: Path, out: Path, base_answers: Path | None,
          limit: int | None) -> dict[str, Any]:
    """Safety (keyword judge on harm, reward-model judge on help) and held-out VQA of one model."""
    from mova.evaluation.safety import evaluate_safety
    from mova.evaluation.vqa import evaluate_vqa
    from mova.model.builder import load_pretrained

    res = evaluate_safety(str(model_dir), str(pairs), out_dir=out / "safety", name=model_dir.parent.name,
                          help_judge="reward", help_judge_options={"path": str(rm)}, base_answers=base_answers,
                          max_new_tokens=24, batch_size=32, progress=False, limit=limit)
    model, processor = load_pretrained(model_dir)
    records = json.loads((start["data"] / "test.json").read_text())[:limit]
    vqa = evaluate_vqa(model, processor, records, start["data"], batch_size=32, progress=False)
    return {"unsafe": res["harm"]["unsafe_rate"], "harm_refusal": res["harm"]["refusal_rate"],
            "help_refusal": res["help"]["refusal_rate"], "help_gain": res["help"].get("score_gain"),
            "vqa": vqa["overall"]}


def run_dpo_variant(out: Path, start: dict[str, Path], pairs: Path, beta: float, mix: float, steps: int,
                    args: argparse.Namespace) -> Path:
    from mova.config import DataConfig, RunConfig, TrainConfig
    from mova.trainers.dpo import run_dpo
    from mova.trainers.dpo_config import DpoConfig

    dpo = DpoConfig(beta=beta, rpo_alpha=1.0, train_fusion=True, sft_data=str(start["data"] / "sft.json") if mix
                    else None, sft_weight=mix or 1.0, sft_batch_size=args.mix_batch_size,
                    sft_feature_cache=str(start["cache"]))
    cfg = RunConfig(stage="dpo", init_from=str(start["sft"]), data=DataConfig(data_path=str(pairs)),
                    train=TrainConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8,
                                      learning_rate=args.dpo_lr, warmup_ratio=0.05, logging_steps=50, save_steps=0,
                                      report_to=[], seed=0),
                    sections={"dpo": dpo})
    return Path(run_dpo(cfg)["final_model"])


def chosen_sft(out: Path, start: dict[str, Path], pairs: Path, args: argparse.Namespace) -> Path:
    """The start model fine-tuned on the training pairs' chosen answers (with their images): a policy that can
    sample the preferred behaviour, as the usual SFT -> reward model -> PPO chain has. PPO only reinforces what
    its policy samples, and the VQA-only start model never samples a refusal."""
    from mova.artifacts import build_once
    from mova.config import DataConfig, RunConfig, TrainConfig
    from mova.data.preference import load_spavl
    from mova.trainers.stages import run_stage

    folder = out / "chosen-sft"
    key = {"start": str(start["sft"]), "pairs": str(pairs), "steps": args.chosen_sft_steps, "lr": 1e-3, "batch": 8}

    def build() -> None:
        data = folder / "data"
        (data / "images").mkdir(parents=True, exist_ok=True)
        records = []
        for i, pair in enumerate(load_spavl(str(pairs))):
            pair.image.save(data / "images" / f"{i}.png")
            records.append({"id": f"pair-{i}", "image": f"images/{i}.png", "conversations": pair.conversation()})
        (data / "chosen.json").write_text(json.dumps(records) + "\n")
        cfg = RunConfig(stage="sft", init_from=str(start["sft"]),
                        data=DataConfig(data_path=str(data / "chosen.json"), image_folder=str(data)),
                        train=TrainConfig(output_dir=str(folder), max_steps=args.chosen_sft_steps,
                                          per_device_train_batch_size=8, learning_rate=1e-3, warmup_ratio=0.05,
                                          logging_steps=10, save_steps=0, report_to=[], seed=0))
        run_stage(cfg)

    build_once(folder, key, build, marker="final/config.json")
    return folder / "final"


def run_ppo_variant(out: Path, start: dict[str, Path], pairs: Path, rm: Path, kl: float, mix: float,
                    iterations: int, args: argparse.Namespace, init_from: Path | None = None) -> Path:
    from mova.config import DataConfig, RunConfig, TrainConfig
    from mova.trainers.ppo import run_ppo
    from mova.trainers.ppo_config import PpoConfig

    ppo = PpoConfig(preset="ppo_max", reward_model=str(rm), kl_coef=kl, train_fusion=True,
                    rollout_batch_size=args.rollout, mini_batch_size=args.rollout, max_new_tokens=24,
                    critic_pretrain_iterations=min(2, max(iterations - 1, 0)),
                    ptx_coef=mix, ptx_data=str(start["data"] / "sft.json") if mix else None,
                    ptx_batch_size=args.mix_batch_size, ptx_feature_cache=str(start["cache"]))
    cfg = RunConfig(stage="ppo", init_from=str(init_from or start["sft"]), data=DataConfig(data_path=str(pairs)),
                    train=TrainConfig(output_dir=str(out), max_steps=iterations, learning_rate=args.ppo_lr,
                                      save_steps=0, report_to=[], seed=0),
                    sections={"ppo": ppo})
    return Path(run_ppo(cfg)["final_model"])


def run_grpo_variant(out: Path, start: dict[str, Path], pairs: Path, rm: Path, kl: float, mix: float,
                     iterations: int, args: argparse.Namespace, init_from: Path | None = None) -> Path:
    """GRPO against the same reward model: ``rollout // 4`` prompts x 4 responses per iteration (as many
    samples as PPO's rollout), group-normalised advantages, k3 KL in the loss, no critic."""
    from mova.config import DataConfig, RunConfig, TrainConfig
    from mova.trainers.grpo import run_grpo
    from mova.trainers.grpo_config import GrpoConfig

    grpo = GrpoConfig(reward_model=str(rm), kl_coef=kl, train_fusion=True, num_generations=4,
                      rollout_batch_size=max(args.rollout // 4, 1), mini_batch_size=args.rollout, max_new_tokens=24,
                      ptx_coef=mix, ptx_data=str(start["data"] / "sft.json") if mix else None,
                      ptx_batch_size=args.mix_batch_size, ptx_feature_cache=str(start["cache"]))
    cfg = RunConfig(stage="grpo", init_from=str(init_from or start["sft"]), data=DataConfig(data_path=str(pairs)),
                    train=TrainConfig(output_dir=str(out), max_steps=iterations, learning_rate=args.ppo_lr,
                                      save_steps=0, report_to=[], seed=0, lr_scheduler_type="constant",
                                      warmup_ratio=0.0),
                    sections={"grpo": grpo})
    return Path(run_grpo(cfg)["final_model"])


def table(rows: list[dict[str, Any]]) -> str:
    def pct(x: Any) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    head = ("| method | setting | harm unsafe % | harm refusal % | help refusal % | help RM gain | VQA % | "
            "time s |\n|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        gain = "-" if r.get("help_gain") is None else f"{r['help_gain']:+.2f}"
        lines.append(f"| {r['method']} | {r['setting']} | {pct(r['unsafe'])} | {pct(r['harm_refusal'])} | "
                     f"{pct(r['help_refusal'])} | {gain} | {pct(r['vqa'])} | {r.get('seconds', '-')} |")
    return "\n".join(lines)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/safety_pareto")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing")
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--test-images", type=int, default=None)
    p.add_argument("--align-steps", type=int, default=None)
    p.add_argument("--sft-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rm-steps", type=int, default=None)
    p.add_argument("--betas", default=None, help="DPO beta values, comma-separated")
    p.add_argument("--kls", default=None, help="PPO KL coefficients, comma-separated")
    p.add_argument("--mixes", default=None, help="instruction-data weights, comma-separated (0: none)")
    p.add_argument("--dpo-steps", default=None, help="DPO step counts, comma-separated")
    p.add_argument("--ppo-iterations", default=None, help="PPO iteration counts, comma-separated")
    p.add_argument("--dpo-lr", type=float, default=3e-3)
    p.add_argument("--ppo-lr", type=float, default=1e-4)
    p.add_argument("--rollout", type=int, default=16)
    p.add_argument("--mix-batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="score only the first N questions of each split")
    p.add_argument("--skip-ppo", action="store_true")
    p.add_argument("--grpo", action="store_true", help="GRPO rows too (same KL values, mixes, iterations, starts)")
    p.add_argument("--ppo-start", default="sft", choices=["sft", "chosen-sft", "both"],
                   help="PPO's policy: the start model, or the start model fine-tuned on the pairs' chosen answers")
    p.add_argument("--chosen-sft-steps", type=int, default=None)
    args = p.parse_args(argv)
    full = {"train_images": 400, "test_images": 100, "align_steps": 100, "sft_steps": 800, "rm_steps": 300,
            "betas": "0.1,0.3", "kls": "0.05,0.2", "mixes": "0,1", "dpo_steps": "600", "ppo_iterations": "40",
            "chosen_sft_steps": 150}
    quick = {"train_images": 12, "test_images": 6, "align_steps": 2, "sft_steps": 4, "rm_steps": 2, "betas": "0.1",
             "kls": "0.05", "mixes": "1", "dpo_steps": "2", "ppo_iterations": "1", "limit": 4,
             "chosen_sft_steps": 2}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.quick:
        args.rollout, args.batch_size, args.mix_batch_size = 4, 4, 2

    import torch

    from mova.data.spavl_mini import write_spavl_mini

    torch.set_num_threads(max(torch.get_num_threads(), 1))
    out = Path(args.out)
    t0 = time.perf_counter()
    start = start_model(out, args)
    pairs = write_spavl_mini(out / "spavl-mini", seed=0)
    rm = reward_model(out, start, pairs, args)
    rows = []
    base = score(start["sft"], start, pairs, rm, out / "eval-start", None, args.limit)
    rows.append({"method": "start (sft)", "setting": "-", **base})
    base_answers = out / "eval-start" / "safety" / "answers.jsonl"
    for beta, mix, steps in itertools.product(floats(args.betas), floats(args.mixes), ints(args.dpo_steps)):
        name = f"dpo-b{beta}-m{mix}-s{steps}"
        t = time.perf_counter()
        final = run_dpo_variant(out / name, start, pairs, beta, mix, steps, args)
        seconds = round(time.perf_counter() - t)
        rows.append({"method": "DPO", "setting": f"beta {beta}, mix {mix}, {steps} steps", "seconds": seconds,
                     **score(final, start, pairs, rm, out / name, base_answers, args.limit)})
        print(json.dumps(rows[-1]), flush=True)
    starts = {"sft": ["sft"], "chosen-sft": ["chosen-sft"], "both": ["sft", "chosen-sft"]}[args.ppo_start]
    ppo_init: dict[str, Path | None] = {"sft": None}
    if "chosen-sft" in starts and not args.skip_ppo:
        t = time.perf_counter()
        ppo_init["chosen-sft"] = chosen_sft(out, start, pairs, args)
        rows.append({"method": "SFT on chosen", "setting": f"{args.chosen_sft_steps} steps",
                     "seconds": round(time.perf_counter() - t),
                     **score(ppo_init["chosen-sft"], start, pairs, rm, out / "chosen-sft", base_answers, args.limit)})
        print(json.dumps(rows[-1]), flush=True)
    if not args.skip_ppo:
        for begin, kl, mix, iters in itertools.product(starts, floats(args.kls), floats(args.mixes),
                                                       ints(args.ppo_iterations)):
            name = f"ppo-{begin}-kl{kl}-m{mix}-i{iters}-lr{args.ppo_lr}"
            t = time.perf_counter()
            final = run_ppo_variant(out / name, start, pairs, rm, kl, mix, iters, args, init_from=ppo_init[begin])
            seconds = round(time.perf_counter() - t)
            where = "" if begin == "sft" else ", from SFT on chosen"
            rows.append({"method": "PPO-max", "setting": f"kl {kl}, mix {mix}, {iters} iterations, lr {args.ppo_lr}"
                         f"{where}", "seconds": seconds,
                         **score(final, start, pairs, rm, out / name, base_answers, args.limit)})
            print(json.dumps(rows[-1]), flush=True)
            if not args.grpo:
                continue
            name = name.replace("ppo-", "grpo-", 1)
            t = time.perf_counter()
            final = run_grpo_variant(out / name, start, pairs, rm, kl, mix, iters, args, init_from=ppo_init[begin])
            seconds = round(time.perf_counter() - t)
            rows.append({"method": "GRPO", "setting": f"kl {kl}, mix {mix}, {iters} iterations, lr {args.ppo_lr}"
                         f"{where}", "seconds": seconds,
                         **score(final, start, pairs, rm, out / name, base_answers, args.limit)})
            print(json.dumps(rows[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nmini SPA-VL, tiny model on CPU ({round(time.perf_counter() - t0)} s in all):")
    print(table(rows))


if __name__ == "__main__":
    main()
