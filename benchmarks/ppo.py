"""PPO benchmark: time per iteration split into generation, scoring and training, and samples/s; plus the
``ppo_max`` vs ``vanilla`` curves on the colour task.

    python benchmarks/ppo.py --out runs/bench_ppo                 # tiny text + tiny VLM, CPU
    python benchmarks/ppo.py --out runs/bench_ppo --curves 60     # also ppo_max vs vanilla, 60 iterations
    python benchmarks/ppo.py --width 512 --layers 8 --new-tokens 128 --rollout 64   # a larger text model (GPU)
    python benchmarks/ppo.py --quick --out /tmp/ppo-quick                          # smoke run, seconds

Rows (one run each, after ``--warmup`` iterations that are not timed):

* ``text ppo_max separate`` / ``text ppo_max shared`` -- a tiny Llama after a short SFT on the colour task,
  rule reward, critic as a second model or as a value head on the policy's trunk;
* ``vlm ppo_max`` -- a tiny Mova VLM on the generated mini SPA-VL, scored by a reward model (random head),
  experts run once per prompt image.

The device is CUDA when available (``--cpu`` to force CPU). Numbers are medians over the timed iterations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def text_policy(root: Path, layers: int, width: int, sft_steps: int = 60) -> tuple[Path, Path]:
    """(policy folder, prompts file): a tiny Llama warmed up on the colour task (reused only when built with
    the same arguments)."""
    from mova.artifacts import build_once
    from mova.data.colour_task import write_colour_task

    data = write_colour_task(root / "data", n_prompts=256)
    folder = root / f"policy-{layers}x{width}"
    key = {"layers": layers, "width": width, "sft_steps": sft_steps, "batch": 16, "lr": 3e-3, "n_prompts": 256}
    build_once(folder, key, lambda: _train_policy(folder, data["sft"], layers, width, sft_steps),
               marker="final/config.json")
    return folder / "final", data["prompts"]


def _train_policy(folder: Path, sft_data: Path, layers: int, width: int, steps: int) -> None:
    import json as _json

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mova.config import TrainConfig
    from mova.model.tiny import tiny_text_lm
    from mova.trainers.text_sft import train_prompt_answer

    tiny_text_lm(folder / "init", layers=layers, width=width)
    model = AutoModelForCausalLM.from_pretrained(folder / "init", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder / "init")
    records = [_json.loads(x) for x in sft_data.read_text().splitlines() if x.strip()]
    cfg = TrainConfig(max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3, warmup_ratio=0.0,
                      logging_steps=steps, save_steps=10 * steps, report_to=[], lr_scheduler_type="constant")
    train_prompt_answer(model, tok, records, cfg, folder / "sft_run")
    model.save_pretrained(folder / "final")
    tok.save_pretrained(folder / "final")


def vlm_setup(root: Path) -> tuple[Path, Path, Path]:
    import torch

    from mova.config import ModelConfig, from_dict
    from mova.data.spavl_mini import write_spavl_mini
    from mova.model.builder import build_model
    from mova.presets import preset_dict
    from mova.rl.reward_model import RewardModel

    data = write_spavl_mini(root / "spavl", n_train=64, n_validation=8, n_test_per_split=8, seed=0)
    preset = preset_dict("tiny")
    preset["experts"] = [e for e in preset["experts"] if e["family"] != "ocr_text"]
    torch.manual_seed(0)
    model, processor = build_model(from_dict(ModelConfig, preset, "model"), load_weights=False)
    model.save_pretrained(root / "vlm")
    processor.save_pretrained(root / "vlm")
    rm = RewardModel.from_backbone(model)
    torch.nn.init.normal_(rm.score_head.weight, std=0.5)
    rm.save_pretrained(root / "vlm_rm", processor=processor)
    return root / "vlm", root / "vlm_rm", data


def run(overrides: list[str]) -> dict:
    from mova.config import load_run_config
    from mova.trainers.ppo import run_ppo

    return run_ppo(load_run_config(None, overrides, stage="ppo"))


def timing_row(name: str, summary: dict, warmup: int, rollout: int) -> dict:
    hist = summary["history"][warmup:]
    gen = statistics.median(h["time/generate"] for h in hist)
    score = statistics.median(h["time/score"] for h in hist)
    train = statistics.median(h["time/train"] for h in hist)
    total = gen + score + train
    return {"run": name, "iterations": len(hist), "generate_s": gen, "score_s": score, "train_s": train,
            "iteration_s": total, "samples_per_s": rollout / total,
            "tokens_per_response": statistics.mean(h["response_length"] for h in hist)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_ppo")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rollout", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--curves", type=int, default=0, help="also run ppo_max vs vanilla for N iterations")
    p.add_argument("--curve-rollout", type=int, default=16, help="prompts per iteration in the --curves runs")
    p.add_argument("--no-vlm", action="store_true")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--sft-steps", type=int, default=60, help="SFT steps of the text policy on the colour task")
    p.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: checks the script runs")
    if p.parse_known_args(argv)[0].quick:  # quick sizes are defaults: explicit arguments still win
        p.set_defaults(iterations=1, warmup=1, rollout=4, new_tokens=4, sft_steps=2, curves=2, curve_rollout=4)
    args = p.parse_args(argv)

    import torch

    from mova.data.colour_task import COLOURS
    from mova.trainers.ppo import plot_curves

    out = Path(args.out)
    policy, prompts = text_policy(out, args.layers, args.width, args.sft_steps)
    common = [f"train.max_steps={args.iterations + args.warmup}", "train.report_to=[]", "train.save_steps=0",
              "train.learning_rate=1e-3", f"ppo.rollout_batch_size={args.rollout}",
              f"ppo.mini_batch_size={max(args.rollout // 2, 1)}", f"ppo.max_new_tokens={args.new_tokens}",
              "ppo.critic_pretrain_iterations=0", f"train.use_cpu={args.cpu}",
              "train.lr_scheduler_type=constant", "train.warmup_ratio=0"]
    text = [f"init_from={policy}", f"data.data_path={prompts}", "ppo.reward_fn=word_fraction",
            f"ppo.reward_kwargs={{words: {COLOURS}}}"]
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    rows = []
    for critic in ("separate", "shared"):
        s = run(text + common + [f"train.output_dir={out / f'text-{critic}'}", "ppo.preset=ppo_max",
                                 f"ppo.critic={critic}"])
        rows.append(timing_row(f"text {args.layers}x{args.width} ppo_max {critic}", s, args.warmup, args.rollout))
    if not args.no_vlm:
        vlm, rm, data = vlm_setup(out)
        s = run(common + [f"init_from={vlm}", f"data.data_path={data}", f"ppo.reward_model={rm}",
                          f"train.output_dir={out / 'vlm'}", "ppo.preset=ppo_max"])
        rows.append(timing_row("vlm tiny ppo_max separate", s, args.warmup, args.rollout))
    print(f"\nPPO iteration time on {device} ({args.rollout} prompts x up to {args.new_tokens} new tokens; "
          f"median of {args.iterations} iterations)\n")
    print("| run | generate s | score s | train s | iteration s | samples/s | tokens/response |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['generate_s']:.3f} | {r['score_s']:.3f} | {r['train_s']:.3f} | "
              f"{r['iteration_s']:.3f} | {r['samples_per_s']:.1f} | {r['tokens_per_response']:.1f} |")
    result = {"device": device, "rows": rows}
    if args.curves:
        runs = {}
        for preset in ("ppo_max", "vanilla"):
            t0 = time.time()
            s = run(text + [f"train.max_steps={args.curves}", "train.report_to=[]", "train.save_steps=0",
                            "train.learning_rate=1e-3", f"ppo.rollout_batch_size={args.curve_rollout}",
                            f"ppo.mini_batch_size={max(args.curve_rollout // 2, 1)}",
                            "ppo.max_new_tokens=12", f"ppo.preset={preset}", f"train.use_cpu={args.cpu}",
                            "train.lr_scheduler_type=constant", "train.warmup_ratio=0",
                            f"train.output_dir={out / f'curve-{preset}'}"])
            runs[preset] = s["history"]
            last = s["history"][-10:]
            result[f"curve_{preset}"] = {
                "seconds": time.time() - t0,
                "reward_first": s["history"][0]["objective/reward"],
                "ppl_first": s["history"][0]["objective/ppl"],
                "reward_last10": statistics.mean(h["objective/reward"] for h in last),
                "kl_last10": statistics.mean(h["objective/kl"] for h in last),
                "kl_max": max(h["objective/kl"] for h in s["history"]),
                "ppl_last10": statistics.mean(h["objective/ppl"] for h in last),
                "length_last10": statistics.mean(h["response_length"] for h in last),
                "collapse_warnings": len(s["collapse_warnings"]),
            }
        plot_curves(runs, out / "ppo_max_vs_vanilla.png")
        png = out / "ppo_max_vs_vanilla.png"
        print(f"\nppo_max vs vanilla, {args.curves} iterations of {args.curve_rollout} prompts (curves: {png})\n")
        print("| preset | reward (first) | reward (last 10) | KL (last 10) | max KL | ppl (first) | ppl (last 10) "
              "| length (last 10) | warnings | seconds |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for preset in ("ppo_max", "vanilla"):
            c = result[f"curve_{preset}"]
            print(f"| {preset} | {c['reward_first']:.3f} | {c['reward_last10']:.3f} | {c['kl_last10']:.2f} | "
                  f"{c['kl_max']:.2f} | {c['ppl_first']:.2f} | {c['ppl_last10']:.2f} | {c['length_last10']:.1f} | "
                  f"{c['collapse_warnings']} | {c['seconds']:.0f} |")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
