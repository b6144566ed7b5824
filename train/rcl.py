"""RCL and the continual baselines on TRACE-layout data (thin entry; the work is in ``mova.continual``).

    python train/rcl.py demo runs/continual_demo            # mini TRACE, tiny model + teacher, seqft/replay/rcl
    python train/rcl.py tiny-model OUT                      # a tiny random Llama (the demo's start model)
    python train/rcl.py teacher --tasks-dir D --model M --out OUT --config C   # teacher on gold reasoning (mini)
    python train/rcl.py paths --config C [key=value ...]    # only generate + filter the teacher's paths
    python train/rcl.py run --config C [key=value ...]      # = mova train continual with strategies=[rcl]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path


def _demo(a: argparse.Namespace) -> None:
    import dataclasses

    from mova.artifacts import build_once, claim
    from mova.config import TrainConfig
    from mova.continual.config import load_continual_config
    from mova.continual.loop import run_continual
    from mova.continual.rcl import train_teacher
    from mova.continual.tiny import save_tiny_lm
    from mova.data.trace import task_order
    from mova.data.trace_mini import write_mini_trace

    started = time.perf_counter()
    out = Path(a.out_dir)
    data = write_mini_trace(out / "trace_mini", n_train=a.train, n_test=a.test, tasks=a.tasks.split(","))
    base = save_tiny_lm(out / "base")
    overrides = [f"model={base}", f"tasks_dir={data}", f"output_dir={out}", f"rcl.teacher={out / 'teacher'}",
                 f"order={json.dumps(a.tasks.split(','))}", f"strategies={json.dumps(a.strategies.split(','))}",
                 *a.overrides]
    cfg = load_continual_config(a.config, overrides)
    # What shapes each reused folder: a rerun with other sizes rebuilds it instead of reusing a stale one.
    data_key = {"tasks": a.tasks, "train": a.train, "test": a.test, "base": "save_tiny_lm defaults"}
    teacher_key = {**data_key, "teacher_epochs": a.teacher_epochs, "teacher_records": a.teacher_records,
                   "rcl": dataclasses.asdict(cfg.rcl)}
    if "rcl" in cfg.strategies:
        def build_teacher() -> None:
            t0 = time.perf_counter()
            teacher_cfg = TrainConfig(num_train_epochs=a.teacher_epochs, per_device_train_batch_size=16,
                                      learning_rate=3e-3, warmup_ratio=0.05, save_steps=0, report_to=[],
                                      logging_steps=20, use_cpu=True)
            s = train_teacher(task_order(data, cfg.order), base, out / "teacher", teacher_cfg, cfg.rcl,
                              limit=a.teacher_records)
            shutil.rmtree(out / "rcl_paths", ignore_errors=True)  # paths of an earlier teacher would be reused
            print(f"teacher: {s['global_step']} steps, loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}, "
                  f"{time.perf_counter() - t0:.0f} s")

        build_once(out / "teacher", teacher_key, build_teacher)
        if not cfg.rcl.paths_dir:  # the teacher's paths, unless the run reads them from a folder of its own
            claim(out / "rcl_paths", teacher_key)
    # The loop resumes each strategy from its folder's state.json: only a run with the same configuration may.
    run_key = {**teacher_key, "config": dataclasses.asdict(cfg)}
    for name in cfg.strategies:
        claim(out / name, run_key)
    summary = run_continual(cfg)
    print(summary["table"])
    print(f"RCL paths kept: {json.dumps({k: v['kept'] for k, v in _kept(out).items()})}")
    print(f"reports: {summary['reports']['markdown']}; total {time.perf_counter() - started:.0f} s")


def _kept(out: Path) -> dict:
    path = out / "rcl_paths" / "kept.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="the mini TRACE sequence end to end on CPU")
    d.add_argument("out_dir")
    d.add_argument("--config", default="train/configs/tiny_continual.yaml")
    d.add_argument("--tasks", default="stance,summary,code,numeric,simplify")
    d.add_argument("--strategies", default="seqft,replay,rcl")
    d.add_argument("--train", type=int, default=120)
    d.add_argument("--test", type=int, default=30)
    d.add_argument("--teacher-epochs", type=float, default=8.0)
    d.add_argument("--teacher-records", type=int, default=120, help="training records per task for the teacher")
    d.add_argument("overrides", nargs="*")
    m = sub.add_parser("tiny-model", help="write a tiny random Llama with the repository tokenizer")
    m.add_argument("out_dir")
    t = sub.add_parser("teacher", help="train a teacher on records with gold 'reasoning' (mini TRACE)")
    t.add_argument("--tasks-dir", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=float, default=8.0)
    t.add_argument("--limit", type=int, default=None, help="training records per task")
    t.add_argument("--config", default=None,
                   help="the continual YAML whose rcl options (demonstrations, marker) the teacher's prompts follow")
    for name in ("paths", "run"):
        r = sub.add_parser(name)
        r.add_argument("--config", required=True)
        r.add_argument("overrides", nargs="*")
    a = p.parse_args(argv)

    if a.cmd == "demo":
        _demo(a)
    elif a.cmd == "tiny-model":
        from mova.continual.tiny import save_tiny_lm

        print(save_tiny_lm(a.out_dir))
    elif a.cmd == "teacher":
        from mova.config import TrainConfig
        from mova.continual.config import RclOptions, load_continual_config
        from mova.continual.rcl import train_teacher
        from mova.data.trace import task_order

        rcl = load_continual_config(a.config, [f"model={a.model}", f"tasks_dir={a.tasks_dir}"]).rcl if a.config \
            else RclOptions()
        cfg = TrainConfig(num_train_epochs=a.epochs, per_device_train_batch_size=16, learning_rate=3e-3,
                          warmup_ratio=0.05, save_steps=0, report_to=[], logging_steps=20)
        s = train_teacher(task_order(a.tasks_dir), a.model, a.out, cfg, rcl, limit=a.limit)
        print(json.dumps({k: s.get(k) for k in ("global_step", "first_loss", "last_loss", "train_runtime_s")}))
    else:
        from mova.continual.config import load_continual_config
        from mova.continual.loop import run_continual
        from mova.continual.strategies import build_strategy
        from mova.data.trace import task_order

        cfg = load_continual_config(a.config, [*a.overrides, "strategies=[rcl]"])
        if a.cmd == "paths":
            tasks = task_order(cfg.tasks_dir, cfg.order or None)
            strategy = build_strategy("rcl", cfg, tasks, Path(cfg.output_dir) / "rcl")
            strategy.before_run()
            for i in range(len(tasks)):
                strategy.records_for(i)
            print(json.dumps(strategy.notes["kept"], indent=1))
        else:
            print(run_continual(cfg)["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
