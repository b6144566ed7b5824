"""GRPO and RLOO against PPO on the colour task: reward reached, KL, time per iteration, peak memory.

    python benchmarks/grpo_vs_ppo.py --out runs/bench_grpo                 # 3 seeds x 30 iterations, CPU
    python benchmarks/grpo_vs_ppo.py --quick --out /tmp/grpo-quick         # smoke run, seconds

The start policy is benchmarks/ppo.py's: a tiny Llama after a short SFT on the colour task ("name some
colours"; reward = share of colour words). Every method sees the same number of responses per iteration
(``--responses``) and makes the same number of optimizer steps on them (2 minibatches, 1 epoch) at the same
learning rate:

* ``ppo`` -- PPO-max (critic copied from the policy, a second model with its own optimizer), one response to
  each of ``--responses`` prompts;
* ``grpo`` -- ``--responses / G`` prompts answered ``G`` times, group-normalised advantages, k3 KL in the loss;
* ``rloo`` -- the same groups with the leave-one-out baseline.

Columns: mean reward over the first 3 and the last 5 iterations, the first iteration whose reward reaches
``--target``, mean KL to the reference over the last 5, median seconds per iteration (generation + scoring +
training), and peak memory: on CUDA the peak allocated by torch during the run; on CPU the growth of the
process's peak resident set over its size before the run, each run in a process of its own (``--quick`` runs
in one process, where later rows can only show what exceeds the earlier peaks). Values are mean (std) over
seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

METHODS = ("ppo", "grpo", "rloo")


def method_overrides(method: str, responses: int, group: int) -> list[str]:
    """The recipe keys of one method, for ``responses`` responses and 2 optimizer steps per iteration."""
    if method == "ppo":
        return ["ppo.preset=ppo_max", "ppo.critic_pretrain_iterations=0", f"ppo.rollout_batch_size={responses}",
                f"ppo.mini_batch_size={responses // 2}", "ppo.max_new_tokens=12"]
    return [f"grpo.advantage={method}", f"grpo.num_generations={group}",
            f"grpo.rollout_batch_size={responses // group}", f"grpo.mini_batch_size={responses // 2}",
            "grpo.max_new_tokens=12"]


def rss_kib() -> int:
    """The process's resident set now, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def run_one(method: str, seed: int, args: argparse.Namespace, policy: Path, prompts: Path) -> dict:
    """Train one method from the start policy; returns its curve, timings and peak memory."""
    import resource

    import torch

    from mova.config import load_run_config
    from mova.data.colour_task import COLOURS

    section = "ppo" if method == "ppo" else "grpo"
    overrides = [f"init_from={policy}", f"data.data_path={prompts}", f"train.output_dir={args.out}/{method}-{seed}",
                 f"train.max_steps={args.iterations}", "train.report_to=[]", "train.save_steps=0",
                 f"train.learning_rate={args.lr}", f"train.seed={seed}", f"train.use_cpu={args.cpu}",
                 "train.lr_scheduler_type=constant", "train.warmup_ratio=0", f"{section}.reward_fn=word_fraction",
                 f"{section}.reward_kwargs={{words: {COLOURS}}}",
                 *method_overrides(method, args.responses, args.group)]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (the summary's curves import it: not the run's memory)

    from mova.trainers.grpo import run_grpo
    from mova.trainers.ppo import run_ppo

    cuda = torch.cuda.is_available() and not args.cpu
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = rss_kib()  # after the imports: what grows from here is the run's models, optimizers and passes
    cfg = load_run_config(None, overrides, stage=section)
    summary = (run_ppo if method == "ppo" else run_grpo)(cfg)
    peak_mib = (torch.cuda.max_memory_allocated() / 2**20 if cuda
                else max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, 0) / 1024)
    h = summary["history"]
    rewards = [x["objective/reward"] for x in h]
    reached = next((x["iteration"] for x in h if x["objective/reward"] >= args.target), None)
    return {"method": method, "seed": seed, "rewards": rewards, "kls": [x["objective/kl"] for x in h],
            "reward_first3": statistics.mean(rewards[:3]), "reward_last5": statistics.mean(rewards[-5:]),
            "kl_last5": statistics.mean(x["objective/kl"] for x in h[-5:]), "reached": reached,
            "iteration_s": statistics.median(x["time/generate"] + x["time/score"] + x["time/train"] for x in h),
            "peak_mib": peak_mib, "device": "cuda" if cuda else "cpu"}


def _cell(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ({format(statistics.stdev(values), fmt)})"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/bench_grpo")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--responses", type=int, default=16, help="responses per iteration (every method)")
    p.add_argument("--group", type=int, default=4, help="G: responses per prompt for grpo / rloo")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--target", type=float, default=0.8, help="reward whose first reaching is reported")
    p.add_argument("--sft-steps", type=int, default=60)
    p.add_argument("--layers", type=int, default=2, help="the tiny Llama's layers")
    p.add_argument("--width", type=int, default=64, help="the tiny Llama's hidden size")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--one", nargs=2, metavar=("METHOD", "SEED"), help=argparse.SUPPRESS)  # a child process's run
    p.add_argument("--quick", action="store_true", help="tiny sizes, one process: checks the script runs")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(seeds=[0], iterations=1, responses=8, sft_steps=2)
    args = p.parse_args(argv)
    from ppo import text_policy

    out = Path(args.out)
    policy, prompts = text_policy(out, args.layers, args.width, args.sft_steps)
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one[0], int(args.one[1]), args, policy, prompts)))
        return
    results = []
    for seed in args.seeds:
        for method in METHODS:
            if args.quick:
                results.append(run_one(method, seed, args, policy, prompts))
                continue
            cmd = [sys.executable, __file__, "--one", method, str(seed), "--out", str(out),
                   "--iterations", str(args.iterations), "--responses", str(args.responses), "--group",
                   str(args.group), "--lr", str(args.lr), "--target", str(args.target), "--sft-steps",
                   str(args.sft_steps), "--layers", str(args.layers), "--width", str(args.width),
                   *(["--cpu"] if args.cpu else [])]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{method} seed {seed} failed:\n{proc.stderr[-3000:]}")
            results.append(json.loads(line[len("RESULT "):]))
    device = results[0]["device"]
    memory = "peak allocated MiB" if device == "cuda" else "peak RSS growth MiB"
    print(f"\nGRPO vs PPO on the colour task ({device}; Llama {args.layers}x{args.width}; {args.iterations} "
          f"iterations of {args.responses} responses, G={args.group}, lr {args.lr:g}; seeds {args.seeds}; "
          "mean (std) over seeds)\n")
    print(f"| method | reward (first 3) | reward (last 5) | iteration reaching {args.target} | KL (last 5) "
          f"| s / iteration | {memory} |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method in METHODS:
        rows = [r for r in results if r["method"] == method]
        reached = [r["reached"] for r in rows]
        reached_cell = ", ".join("-" if x is None else str(x) for x in reached)
        print(f"| {method} | {_cell([r['reward_first3'] for r in rows], '.3f')} | "
              f"{_cell([r['reward_last5'] for r in rows], '.3f')} | {reached_cell} | "
              f"{_cell([r['kl_last5'] for r in rows], '.2f')} | {_cell([r['iteration_s'] for r in rows], '.3f')} | "
              f"{_cell([r['peak_mib'] for r in rows], '.0f')} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "one"},
                                                  "runs": results}, indent=2) + "\n")
    from mova.trainers.ppo import plot_curves

    seed = args.seeds[0]
    curves = {r["method"]: [{"iteration": i + 1, "objective/reward": rw, "objective/kl": kl}
                            for i, (rw, kl) in enumerate(zip(r["rewards"], r["kls"]))]
              for r in results if r["seed"] == seed}
    plot_curves(curves, out / "grpo_vs_ppo.png", keys=("objective/reward", "objective/kl"))
    print(f"\ncurves (seed {seed}): {out / 'grpo_vs_ppo.png'}")


if __name__ == "__main__":
    main()
