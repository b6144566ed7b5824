"""Noisy preferences: held-out accuracy of plain BT vs each noisy-preference option, by share of flipped labels.

For each seed and noise level: write separable synthetic text preferences (:mod:`mova.data.synthetic_prefs`)
with that share of training labels flipped (the test pairs are clean), score the training pairs' preference
strength with an ensemble of reward models (:func:`mova.trainers.rm_strength.compute_strength`), then train one reward
model per method on the tiny 2-layer Llama and score the clean test pairs. Prints a markdown table (mean and
spread over seeds) and writes ``results.json``.

    OMP_NUM_THREADS=1 python benchmarks/rm_noisy.py --out-dir runs/bench-rm-noisy
    OMP_NUM_THREADS=1 python benchmarks/rm_noisy.py --seeds 0,1,2 --jobs 9        # the table the docs quote
    python benchmarks/rm_noisy.py --quick --out-dir /tmp/rm-quick                  # smoke run, every method
    python benchmarks/rm_noisy.py --model smollm2-135m-instruct --seeds 0,1,2 --noise 0,0.2,0.4
    python benchmarks/rm_noisy.py --model tiny --quick --out-dir /tmp/rm-feat-quick  # the --model path, seconds

With ``--model`` the reward models are heads on a pretrained LM's frozen features instead of whole models:
each text (the prompt and one answer) goes through the LM once, its last-token hidden state is cached
(``features-seedS.safetensors``), and every method trains a linear reward head on the cached features with
Mova's reward-model loss (:func:`mova.trainers.rm_loss.rm_loss`; flipping with
:func:`~mova.trainers.rm_loss.weakest_pairs`). Preference strength comes from an ensemble of ``--models`` heads
trained with plain BT on the noisy labels (as ``compute_strength`` does for whole models; ``--holdout`` as there).
``tiny`` names a random
2-layer model for the smoke run.

Label flipping swaps the pairs the ensemble puts below zero (``flip_fraction`` = the share of negative
strength means), so it needs no knowledge of the true noise rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: method name -> rm.* overrides (strength-based ones get rm.strength_path added).
METHODS: dict[str, list[str]] = {
    "bt": [],
    "label_smoothing": ["rm.loss=label_smoothing", "rm.label_smoothing=0.2"],
    "margin": ["rm.margin_scale=1.0"],
    "flip": ["rm.flip_fraction=AUTO"],
    "flip+margin": ["rm.flip_fraction=AUTO", "rm.margin_scale=1.0"],
    "soft_label+margin": ["rm.loss=soft_negative", "rm.label_smoothing=0.4", "rm.margin_scale=1.0"],
    "simcse": ["rm.contrastive=simcse", "rm.contrastive_weight=0.1"],
    "swav": ["rm.contrastive=swav", "rm.contrastive_weight=0.1"],
}
NEEDS_STRENGTH = {"margin", "flip", "flip+margin", "soft_label+margin"}


def _cfg(lm: Path, train: Path, out: Path, steps: int, batch: int, lr: float, seed: int, extra: list[str]) -> Any:
    from mova.config import load_run_config

    return load_run_config(None, [f"init_from={lm}", f"data.data_path={train}", f"train.output_dir={out}",
                                  f"train.max_steps={steps}", f"train.per_device_train_batch_size={batch}",
                                  f"train.learning_rate={lr}", f"train.seed={seed}", "train.save_steps=0",
                                  "train.logging_steps=1000", "train.report_to=[]", "train.warmup_ratio=0.0",
                                  "train.use_cpu=true", *extra], stage="rm")


def run_combo(args: argparse.Namespace, lm: Path, seed: int, noise: float, methods: list[str]) -> dict[str, Any]:
    """Data, strength ensemble and one reward model per method for one (seed, noise); written to result.json."""
    from mova.data.synthetic_prefs import write_synthetic_prefs
    from mova.trainers.rm import run_rm
    from mova.trainers.rm_strength import compute_strength

    out = Path(args.out_dir)
    tag = f"noise{noise}-seed{seed}"
    t0 = time.perf_counter()
    train, test = write_synthetic_prefs(out / tag / "data", args.train, args.test, noise, seed)
    strength_path = None
    neg_share = 0.0
    info: dict[str, Any] = {}
    if NEEDS_STRENGTH & set(methods):
        cfg = _cfg(lm, train, out / tag / "strength", args.strength_steps, args.batch, args.lr, seed, [])
        res = compute_strength(cfg, args.models, out / tag / "strength", holdout=args.holdout)
        strength_path, neg_share = res["strength_path"], res["negative_share"]
        rows = [json.loads(line) for line in Path(strength_path).read_text().splitlines()]
        noisy = [json.loads(line)["label_noise"] for line in train.read_text().splitlines()]
        neg = [r["strength_mean"] < 0 for r in rows]
        info = {"negative_share": neg_share, "noisy_pairs": sum(noisy),
                "noisy_with_negative_strength": sum(a and b for a, b in zip(neg, noisy))}
    accuracy: dict[str, float] = {}
    for method in methods:
        overrides = [o.replace("AUTO", f"{neg_share:.6f}") for o in METHODS[method]]
        if method in NEEDS_STRENGTH:
            overrides.append(f"rm.strength_path={strength_path}")
        cfg = _cfg(lm, train, out / tag / method, args.steps, args.batch, args.lr, seed,
                   [*overrides, f"data.eval_data_path={test}"])
        accuracy[method] = run_rm(cfg)["eval"]["accuracy"]
        print(f"[{time.perf_counter() - t0:7.1f}s] {tag} {method:18s} held-out accuracy {accuracy[method]:.3f}",
              flush=True)
    result = {"seed": seed, "noise": noise, "accuracy": accuracy, "strength": info}
    (out / tag / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


FEATURE_METHODS = ("bt", "label_smoothing", "margin", "flip", "flip+margin")


def lm_features(model_path: str, texts: list[str], batch: int = 32) -> Any:
    """Last-token hidden states (``[len(texts), width]``) of ``texts`` under the LM at ``model_path``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True)
            hidden = lm(**enc, output_hidden_states=True).hidden_states[-1]
            out.append(hidden[:, -1].float())  # left padding: the last position is every text's last token
    return torch.cat(out)


def train_head(fc: Any, fr: Any, steps: int, lr: float, seed: int, loss: str = "bt", smoothing: float = 0.0,
               strength: Any = None, margin_scale: float = 0.0, batch: int = 16) -> Any:
    """A linear reward head ``r(f) = w.f + b`` trained on chosen / rejected features with Mova's RM loss."""
    import torch

    from mova.trainers.rm_loss import rm_loss

    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(fc.shape[1], 1)
    torch.nn.init.normal_(head.weight, std=0.01, generator=g)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    n = fc.shape[0]
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=g)
        out = rm_loss(head(fc[idx]).squeeze(-1), head(fr[idx]).squeeze(-1), loss=loss, label_smoothing=smoothing,
                      strength=None if strength is None else strength[idx], margin_scale=margin_scale)
        opt.zero_grad()
        out.losses.mean().backward()
        opt.step()
    return head


def run_features(args: argparse.Namespace) -> int:
    """The ``--model`` path: reward heads on cached last-token features of a pretrained LM."""
    import torch
    from safetensors.torch import load_file, save_file

    from mova.data.strength import holdout_folds
    from mova.data.synthetic_prefs import make_pairs
    from mova.model.known_models import resolve_known
    from mova.trainers.rm_loss import weakest_pairs

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        from mova.model.tiny import tiny_text_lm

        model_path = str(out / "tiny-lm")
        tiny_text_lm(model_path, seed=0)
    else:
        model_path = resolve_known(args.model) or args.model
    started = time.perf_counter()
    noises = [float(x) for x in args.noise.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    methods = [m for m in args.methods.split(",") if m in FEATURE_METHODS]
    acc: dict[str, dict[str, list[float]]] = {m: {str(n): [] for n in noises} for m in methods}
    found: dict[str, list[tuple[int, int, float]]] = {str(n): [] for n in noises}
    feature_seconds = 0.0

    def text(row: dict, answer: str) -> str:
        return f"{row['prompt']}{row[answer]}"

    for seed in seeds:
        clean = make_pairs(args.train, seed, 0.0, prefix="train")
        test = make_pairs(args.test, seed + 10_000, 0.0, prefix="test")
        cache = out / f"features-seed{seed}-{args.train}-{args.test}.safetensors"
        if cache.exists():
            feats = load_file(str(cache))
        else:
            t0 = time.perf_counter()
            texts = [text(r, a) for rows in (clean, test) for a in ("chosen", "rejected") for r in rows]
            f = lm_features(model_path, texts)
            n, m = len(clean), len(test)
            feats = {"train_c": f[:n], "train_r": f[n:2 * n], "test_c": f[2 * n:2 * n + m], "test_r": f[2 * n + m:]}
            save_file({k: v.contiguous() for k, v in feats.items()}, str(cache))
            feature_seconds += time.perf_counter() - t0
            print(f"[{time.perf_counter() - started:6.1f}s] features of seed {seed}: {len(texts)} texts, width "
                  f"{f.shape[1]}", flush=True)
        mu = torch.cat([feats["train_c"], feats["train_r"]]).mean(0)
        sd = torch.cat([feats["train_c"], feats["train_r"]]).std(0) + 1e-6
        norm = {k: (v - mu) / sd for k, v in feats.items()}  # standardised with the training features' statistics
        for noise in noises:
            noisy = torch.tensor([r["label_noise"] for r in make_pairs(args.train, seed, noise, prefix="train")])
            fc = torch.where(noisy[:, None], norm["train_r"], norm["train_c"])
            fr = torch.where(noisy[:, None], norm["train_c"], norm["train_r"])
            folds = holdout_folds(len(fc), args.models, args.holdout, seed) if args.holdout > 0 else None
            diffs = torch.full((args.models, len(fc)), float("nan"))
            for k in range(args.models):
                rows = torch.tensor(folds[k]) if folds is not None else torch.arange(len(fc))
                h = train_head(fc[rows], fr[rows], args.strength_steps, args.lr, 1000 * seed + k)
                with torch.no_grad():
                    d = (h(fc) - h(fr)).squeeze(-1)
                if folds is not None:  # a pair's strength only from heads that never trained on it
                    d[rows] = float("nan")
                diffs[k] = d
            strength = diffs.nanmean(0)
            neg = strength < 0
            found[str(noise)].append((int((neg & noisy).sum()), int(noisy.sum()), float(neg.float().mean())))
            for method in methods:
                a, b, s = fc, fr, strength
                if "flip" in method:
                    idx = weakest_pairs(strength, float(neg.float().mean()))
                    swap = torch.zeros(len(s), dtype=torch.bool)
                    swap[idx] = True
                    a, b = torch.where(swap[:, None], fr, fc), torch.where(swap[:, None], fc, fr)
                    s = torch.where(swap, -s, s)
                head = train_head(a, b, args.steps, args.lr, seed,
                                  loss="label_smoothing" if method == "label_smoothing" else "bt",
                                  smoothing=0.2 if method == "label_smoothing" else 0.0,
                                  strength=s, margin_scale=1.0 if "margin" in method else 0.0)
                with torch.no_grad():
                    held = float((head(norm["test_c"]) > head(norm["test_r"])).float().mean())
                acc[method][str(noise)].append(held)
            print(f"[{time.perf_counter() - started:6.1f}s] seed {seed} noise {noise}: "
                  + ", ".join(f"{m} {acc[m][str(noise)][-1]:.3f}" for m in methods), flush=True)
    lines = ["| method | " + " | ".join(f"{int(n * 100)}% flipped" for n in noises) + " |",
             "|---|" + "---|" * len(noises)]
    for method in methods:
        cells = []
        for n in noises:
            v = acc[method][str(n)]
            cells.append(f"{statistics.mean(v):.3f}" + (f" ± {statistics.pstdev(v):.3f}" if len(v) > 1 else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"\nHeld-out accuracy on clean pairs, linear reward heads on {args.model} last-token features "
          f"(mean ± std over seeds {seeds}; {args.train} training / {args.test} test pairs, {args.steps} steps, "
          f"lr {args.lr}, batch 16, ensemble of {args.models} x {args.strength_steps} steps, holdout {args.holdout}; "
          "features "
          f"{feature_seconds:.0f} s, total {time.perf_counter() - started:.0f} s)\n")
    print(table)
    print("\n| flipped | flipped pairs the ensemble put below zero | pairs below zero |\n|---|---|---|")
    for n in noises:
        hits = [f"{h}/{k}" for h, k, _ in found[str(n)]]
        shares = [s for _, _, s in found[str(n)]]
        print(f"| {int(n * 100)}% | {', '.join(hits)} | {100 * min(shares):.0f}-{100 * max(shares):.0f}% |")
    (out / "results-features.json").write_text(json.dumps({"args": vars(args), "accuracy": acc,
                                                           "strength": found, "table": table}, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", default="runs/bench-rm-noisy")
    p.add_argument("--noise", default="0,0.2,0.4", help="comma-separated shares of flipped training labels")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--test", type=int, default=128)
    p.add_argument("--steps", type=int, default=160, help="steps per reward model")
    p.add_argument("--strength-steps", type=int, default=40, help="steps per ensemble model")
    p.add_argument("--models", type=int, default=3, help="ensemble size for the strength columns")
    p.add_argument("--holdout", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--jobs", type=int, default=1, help="(seed, noise) combinations run in parallel processes")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help="a pretrained LM (smollm2-135m-instruct, a folder, or tiny): "
                   "linear reward heads on its cached last-token features")
    p.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: checks the script runs")
    if p.parse_known_args(argv)[0].model:  # feature heads: more steps, a higher learning rate by default
        p.set_defaults(steps=300, strength_steps=150, lr=1e-2)
    if p.parse_known_args(argv)[0].quick:  # quick sizes are defaults: explicit arguments still win
        p.set_defaults(noise="0.2", seeds="0", train=32, test=16, steps=2, strength_steps=1, models=2, batch=8)
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    if args.model:
        return run_features(args)

    import torch

    from mova.artifacts import build_once
    from tests.conftest import save_tiny_text_lm

    torch.set_num_threads(1)
    out = Path(args.out_dir)
    lm = out / "lm"
    build_once(lm, {"model": "tests.conftest.save_tiny_text_lm", "seed": 0}, lambda: save_tiny_text_lm(lm, seed=0))
    started = time.perf_counter()
    noises = [float(x) for x in args.noise.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    methods = args.methods.split(",")
    combos = [(s, n) for s in seeds for n in noises]
    if args.child:
        run_combo(args, lm, seeds[0], noises[0], methods)
        return 0
    if args.jobs <= 1 or len(combos) == 1:
        done = [run_combo(args, lm, s, n, methods) for s, n in combos]
    else:  # one process per (seed, noise), at most --jobs at a time
        import subprocess

        procs: list[subprocess.Popen] = []
        pending = list(combos)
        while pending or procs:
            while pending and len(procs) < args.jobs:
                s, n = pending.pop(0)
                cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]),
                       "--seeds", str(s), "--noise", str(n), "--jobs", "1", "--child"]
                procs.append(subprocess.Popen(cmd))
            time.sleep(1)
            for p in [p for p in procs if p.poll() is not None]:
                if p.returncode:
                    raise SystemExit(f"benchmark job {p.args[-5:]} failed with exit code {p.returncode}")
                procs.remove(p)
        done = [json.loads((out / f"noise{n}-seed{s}" / "result.json").read_text()) for s, n in combos]
    results: dict[str, dict[str, list[float]]] = {m: {str(n): [] for n in noises} for m in methods}
    extra_info = {f"noise{r['noise']}-seed{r['seed']}": r["strength"] for r in done}
    for r in done:
        for m in methods:
            results[m][str(r["noise"])].append(r["accuracy"][m])
    lines = ["| method | " + " | ".join(f"{int(n * 100)}% flipped" for n in noises) + " |",
             "|---|" + "---|" * len(noises)]
    for method in methods:
        cells = []
        for n in noises:
            v = results[method][str(n)]
            spread = f" ± {statistics.pstdev(v):.3f}" if len(v) > 1 else ""
            cells.append(f"{statistics.mean(v):.3f}{spread}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"\nHeld-out accuracy on clean pairs (mean ± std over seeds {seeds}; {args.train} training pairs, "
          f"{args.steps} steps, ensemble of {args.models} x {args.strength_steps} steps, holdout {args.holdout}; "
          f"{args.jobs} parallel jobs, {time.perf_counter() - started:.0f} s)\n")
    print(table)
    found = [(n, [r["strength"] for r in done if r["noise"] == n and r["strength"]]) for n in noises]
    if any(infos for _, infos in found):
        print("\n| flipped | flipped pairs the ensemble put below zero | pairs below zero |")
        print("|---|---|---|")
        for n, infos in found:
            if infos:
                hits = sorted(i["noisy_with_negative_strength"] for i in infos)
                noisy = sorted({i["noisy_pairs"] for i in infos})
                share = sorted(i["negative_share"] for i in infos)
                print(f"| {int(n * 100)}% | {hits[0]}-{hits[-1]} of {'/'.join(map(str, noisy))} "
                      f"| {100 * share[0]:.0f}-{100 * share[-1]:.0f}% |")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "accuracy": results,
                                                  "strength": extra_info, "table": table}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
