"""Continual learning on the mini TRACE with the real SmolLM2-135M-Instruct as the student: SeqFT, replay, LoRA, RCL.

Why: the TRACE paper's claim for RCL is that training on verified reasoning paths ("reasoning first, then the
answer") forgets less than plain sequential fine-tuning and keeps more of the model's general ability. On a
random 2-layer student (the CPU demo) there is no general ability to keep and no prior to reason with, so the
claim can only be looked at on a pretrained model. This benchmark runs ``mova train continual`` on the five
generated mini TRACE tasks (``mova/data/trace_mini.py``) with SmolLM2 as the student and reports, per
strategy, OP, BWT and FWT (``docs/continual.md``) and a general-ability probe: one-step arithmetic word
problems (``benchmarks/smol_polish.py``'s generator, numbers up to 5), scored by their final number, before
and after the sequence.

RCL needs a teacher that writes reasoning paths. No model stronger than SmolLM2 can be had offline, so the
teacher here is SmolLM2 itself, prompted with each task's two demonstrations (``rcl_demos.json``); a path is
kept only when its answer matches the gold one (``rcl.min_score``), and examples without a kept path train on
their plain answer (``rcl.unverified: answer``), so every strategy sees every example. This is RCL with a
self-teacher (as in STaR-style self-training), not with the paper's GPT-4 teacher.

Each strategy runs as its own ``mova train continual`` process on one shared config (written to
``OUT/continual.yaml``, so any row can be re-run by hand); LoRA gets its own learning rate. ``--jobs 2`` runs
two at a time (one thread each). A killed run resumes: every finished task is kept; a run with other
arguments in the same ``--out`` starts afresh.

    python benchmarks/smol_continual.py                 # SmolLM2, seqft/replay/lora/rcl
    python benchmarks/smol_continual.py --jobs 2        # two strategies at a time
    python benchmarks/smol_continual.py --quick         # a random 2-layer model, 2 tasks, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: what the TRACE paper reports for RCL against sequential fine-tuning (its section on RCL), for the table.
PAPER_CLAIM = ("TRACE (Wang et al., 2023): RCL keeps more of the earlier tasks (higher BWT) and of the general "
               "abilities than sequential fine-tuning, at a similar OP, with a GPT-4 teacher and LLaMA-2 students")


def write_probe(path: Path, n: int, seed: int) -> Path:
    """``n`` one-step word problems as ``{"prompt", "answer"}`` for the ``final_number`` metric."""
    from smol_polish import make_problems

    rows = [{"prompt": f"Question: {p.question}\nAnswer:", "answer": f"#### {p.gold}"}
            for p in make_problems(n, 1, 5, seed)]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return path


def write_config(args: argparse.Namespace, out: Path, data: Path, probe: Path, model: str) -> Path:
    """The shared ``mova train continual`` config of every strategy (LoRA's learning rate comes per process)."""
    import yaml

    cfg: dict[str, Any] = {
        "model": model,
        "tasks_dir": str(data),
        "order": args.tasks.split(","),
        "strategies": args.strategies.split(","),
        "output_dir": str(out),
        "keep_checkpoints": "last",
        "max_length": 192,
        "train": {"num_train_epochs": args.epochs, "per_device_train_batch_size": args.batch,
                  "learning_rate": args.lr, "warmup_ratio": 0.1, "lr_scheduler_type": "cosine",
                  "logging_steps": 5, "save_steps": 0, "report_to": [], "seed": args.seed,
                  "lora": {"r": 16, "alpha": 32}},
        "replay": {"fraction": args.replay},
        "rcl": {"teacher": args.teacher or model, "num_demos": 2, "batch_size": args.gen_batch,
                "max_new_tokens": 32, "min_score": 0.8, "unverified": "answer"},
        "eval": {"batch_size": args.gen_batch, "max_new_tokens": 16,
                 "probes": [{"name": "arithmetic", "path": str(probe), "metric": "final_number",
                             "max_new_tokens": 48, "chat_template": args.model != "tiny"}]},
    }
    path = out / "continual.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def launch(config: Path, strategy: str, extra: list[str], log: Path, threads: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "mova.cli", "train", "continual", "--config", str(config),
           f"strategies=[{strategy}]", *extra]
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"start {strategy}: {' '.join(cmd[1:])} (log {log})", flush=True)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def run_all(config: Path, strategies: list[str], per_strategy: dict[str, list[str]], logs: Path, jobs: int
            ) -> dict[str, float]:
    """Every strategy in its own process, ``jobs`` at a time; returns each one's wall seconds."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = list(strategies)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    seconds: dict[str, float] = {}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            running[name] = (launch(config, name, per_strategy.get(name, []), logs / f"{name}.log", threads),
                             time.perf_counter())
        time.sleep(1.0)
        for name, (proc, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            seconds[name] = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = (logs / f"{name}.log").read_text()[-3000:]
                raise SystemExit(f"strategy {name} exited {proc.returncode}; end of its log:\n{tail}")
            print(f"done {name} in {seconds[name]:.0f} s", flush=True)
    return seconds


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="the student: a known model name, a folder, or 'tiny' (a random 2-layer Llama)")
    p.add_argument("--teacher", default=None, help="RCL's teacher (default: the student model itself)")
    p.add_argument("--out", default="runs/smol_continual")
    p.add_argument("--tasks", default="stance,summary,code,numeric,simplify")
    p.add_argument("--strategies", default="seqft,replay,lora,rcl")
    p.add_argument("--train", type=int, default=48, help="training records per task")
    p.add_argument("--test", type=int, default=24, help="test records per task")
    p.add_argument("--probe", type=int, default=30, help="arithmetic probe problems")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5, help="learning rate of full fine-tuning")
    p.add_argument("--lora-lr", type=float, default=5e-4, help="learning rate of the lora strategy")
    p.add_argument("--replay", type=float, default=0.2, help="replay.fraction")
    p.add_argument("--gen-batch", type=int, default=24)
    p.add_argument("--jobs", type=int, default=1, help="strategies run at a time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="random 2-layer model, 2 tasks, tiny sizes")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.tasks, args.train, args.test, args.probe = "tiny", "stance,numeric", 8, 4, 4
        args.epochs, args.lr, args.lora_lr, args.gen_batch = 1.0, 3e-3, 3e-3, 8
        if args.out == p.get_default("out"):
            args.out = "runs/smol_continual_quick"

    from mova.artifacts import claim
    from mova.continual.loop import results_of
    from mova.continual.report import markdown_table, write_reports
    from mova.data.trace_mini import write_mini_trace

    start = time.perf_counter()
    out = Path(args.out).resolve()
    # The loop resumes each strategy from its state.json: only a run with the same arguments may reuse them.
    claim(out, {k: v for k, v in vars(args).items() if k not in ("jobs", "out")})
    data = write_mini_trace(out / "trace_mini", n_train=args.train, n_eval=4, n_test=args.test,
                            tasks=args.tasks.split(","), seed=args.seed)
    probe = write_probe(out / "probe_arithmetic.json", args.probe, args.seed)
    model = args.model
    if model == "tiny":
        from mova.continual.tiny import save_tiny_lm

        model = str(save_tiny_lm(out / "tiny_base"))
    config = write_config(args, out, data, probe, model)
    strategies = args.strategies.split(",")
    per_strategy = {"lora": [f"train.learning_rate={args.lora_lr}"]}
    seconds = run_all(config, strategies, per_strategy, out / "logs", args.jobs)

    results = {}
    for name in strategies:
        state = json.loads((out / name / "state.json").read_text())
        results[name] = results_of(state)
    write_reports(results, out)
    print(f"\nstudent {args.model}, {len(args.tasks.split(','))} tasks x {args.train} training records, "
          f"{args.epochs:g} epochs, batch {args.batch}, lr {args.lr:g} (lora {args.lora_lr:g}), "
          f"test {args.test} per task; config {config}\n")
    print(markdown_table(results))
    print("\n| strategy | OP (%) | BWT (%) | FWT (%) | arithmetic probe start -> end (%) | RCL paths kept | "
          "wall s |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        probes = r.get("probes") or {}
        start_p = (probes.get("start") or {}).get("arithmetic")
        end_p = (probes.get("after_task") or [{}])[-1].get("arithmetic") if probes else None
        kept = r.get("notes", {}).get("kept")
        kept_s = "-" if not kept else f"{sum(c['kept'] for c in kept.values())}/" \
                                      f"{sum(c['total'] for c in kept.values())}"
        print(f"| {name} | {pct(r['OP'])} | {pct(r['BWT'])} | {pct(r['FWT'])} | {pct(start_p)} -> {pct(end_p)} | "
              f"{kept_s} | {seconds.get(name, 0):.0f} |")
    print(f"\npaper: {PAPER_CLAIM}")
    print(f"total seconds {time.perf_counter() - start:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
