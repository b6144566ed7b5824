"""CPU-scale R3 experiment: SFT a tiny model on generated arithmetic, then plain PPO vs R3 for the same
number of samples; prints held-out accuracy for SFT, PPO and R3 (greedy, zero-shot, ``#### value``) per seed
and their mean.

    python benchmarks/r3_arith.py --out runs/r3_arith --seeds 0 1
    python benchmarks/r3_arith.py --sft-only --layers 2 --width 64                 # can a tiny model learn it?
    python benchmarks/r3_arith.py --sft-only --layers 2 --width 64 --kind program --max-new-tokens 150
    python benchmarks/r3_arith.py --quick --out /tmp/r3-quick                      # smoke run, seconds
    python benchmarks/r3_arith.py --model smollm2-135m-instruct --out runs/r3-smol  # real model, LoRA
    python benchmarks/r3_arith.py --model tiny --quick --out /tmp/r3-smol-quick     # that path on a random model

``--model`` runs the comparison on a pretrained instruct LM with LoRA (``train/configs/smol_r3.yaml``): problems
from :func:`smol_problems` (add / take away, test phrasings held out of training), the level calibrated first
(the base model zero-shot on ``--calibration`` problems per level; the first level in 20-60%), then LoRA SFT on
gold rationales, then from the SFT policy: outcome-reward RL (k = 0 only) with PPO, R3 (mixed start states) with
PPO and R3 with GRPO, each in its own process (so its peak memory is its own; ``--quick``: one process):
held-out accuracy, reward per iteration, KL, seconds per iteration, peak resident set.

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
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


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


#: (sentence for "gets n", sentence for "gives n away") per phrasing; the last two are the held-out test phrasings.
SMOL_PHRASINGS = (
    ("{p} gets {n} more.", "{p} gives {n} away."),
    ("{p} finds {n} more.", "{p} loses {n}."),
    ("{p} buys {n} more.", "{p} sells {n}."),
    ("{p} receives {n} more.", "{p} drops {n} of them."),
    ("{p} is given {n} more.", "{p} hands {n} to a friend."),
)
SMOL_TEST_PHRASINGS = 2
SMOL_PROMPT = ("Question: {question}\nSolve it with one line per step, like 5 - 2 = 3, and end with a line "
               "#### followed by the answer.\nAnswer:\n")
SMOL_LEVELS = ((1, 5), (1, 10), (2, 5), (2, 10))


def smol_problems(n: int, steps: int, max_value: int, seed: int, test: bool) -> list[dict]:
    """``n`` GSM8K-format word problems of ``steps`` additions / subtractions, every number <= ``max_value``
    (the start value at least 2), phrased with the training or the held-out (``test``) phrasings."""
    import random

    from mova.data.arith_mini import ITEMS, NAMES, PRONOUN

    rng = random.Random(f"smol-{seed}-{steps}-{max_value}-{test}")
    phrasings = SMOL_PHRASINGS[-SMOL_TEST_PHRASINGS:] if test else SMOL_PHRASINGS[:-SMOL_TEST_PHRASINGS]
    out: list[dict] = []
    seen: set[str] = set()
    while len(out) < n:
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        value = rng.randint(2, max_value)
        sentences, cot = [f"{name} has {value} {item}."], []
        for i in range(steps):
            add = value == 0 or rng.random() < 0.5
            k = rng.randint(1, max_value if add else value)
            new = value + k if add else value - k
            sentence = rng.choice(phrasings)[0 if add else 1].format(p=PRONOUN[name], n=k)
            sentences.append(sentence if i == 0 else "Then " + sentence[0].lower() + sentence[1:])
            cot.append(f"{value} {'+' if add else '-'} {k} = {new}")
            value = new
        sentences.append(f"How many {item} does {name} have now?")
        question = " ".join(sentences)
        if question in seen:
            continue
        seen.add(question)
        out.append({"id": f"{'test' if test else 'train'}-{len(out)}", "question": question,
                    "answer": "\n".join(cot) + f"\n#### {value}"})
    return out


def write_smol_data(folder: Path, n_train: int, n_test: int, steps: int, max_value: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = smol_problems(n, steps, max_value, seed, split == "test")
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def smol_evaluate(model_dir: str, data: Path, out: Path, limit: int | None, max_new_tokens: int) -> dict:
    """Greedy zero-shot accuracy with :data:`SMOL_PROMPT` as one user turn of the model's chat template."""
    from mova.data.reasoning import load_reasoning
    from mova.evaluation.gsm8k import Gsm8kConfig, backend_generate, evaluate_gsm8k
    from mova.inference.backends import load_backend

    backend = load_backend(model_dir, batch_size=32, progress=False)
    records = load_reasoning(data, split="test", limit=limit)
    config = Gsm8kConfig(data=str(data), kind="cot", shots=0, fewshot="none", max_new_tokens=max_new_tokens,
                         limit=limit, template=SMOL_PROMPT, chat_template=True)
    return evaluate_gsm8k(backend_generate(backend, chat_template=True), records, config, out / "samples.jsonl")


def smol_sft(model_dir: str, data: Path, out: Path, steps: int, lr: float, seed: int) -> str:
    """LoRA SFT (merged) on the gold rationales, prompts as the R3 runs put them; returns the saved folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mova.config import LoraConfig, TrainConfig
    from mova.data.reasoning import load_reasoning
    from mova.model.templates import user_turn_prompt
    from mova.trainers.text_sft import train_prompt_answer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    # exactly the prompt R3's k = 0 start state and the evaluation put to the model (no newline after it)
    records = [{"prompt": user_turn_prompt(tok, SMOL_PROMPT.format(question=r.question).rstrip("\n")),
                "answer": r.gsm8k_answer()} for r in load_reasoning(data, split="train")]
    cfg = TrainConfig(max_steps=steps, per_device_train_batch_size=8, learning_rate=lr, warmup_ratio=0.0,
                      logging_steps=5, save_steps=10 * steps, report_to=[], seed=seed,
                      lora=LoraConfig(r=16, alpha=32, merge=True))
    train_prompt_answer(model, tok, records, cfg, out / "run", separator="")
    model.save_pretrained(out / "final")
    tok.save_pretrained(out / "final")
    return str(out / "final")


SMOL_RL = {  # name -> overrides on top of train/configs/smol_r3.yaml
    "outcome PPO": ["curriculum.schedule=none", "curriculum.optimizer=ppo"],
    "R3 PPO": ["curriculum.schedule=mixed", "curriculum.optimizer=ppo"],
    "R3 GRPO": ["curriculum.schedule=mixed", "curriculum.optimizer=grpo"],
}


def smol_rl_child(spec: dict) -> dict:
    """One RL run (in its own process): its summary's curve, timing and the peak resident set it reached."""
    import resource

    import yaml

    from mova.config import load_run_config
    from mova.trainers.r3 import run_r3

    batch, group = spec["batch"], spec["group"]
    grpo = "curriculum.optimizer=grpo" in SMOL_RL[spec["name"]]
    recipe = yaml.safe_load((ROOT / "train" / "configs" / "smol_r3.yaml").read_text())
    recipe.pop("ppo")  # the optimiser's options come from the overrides below (GRPO refuses a ppo: section)
    Path(spec["out"]).mkdir(parents=True, exist_ok=True)
    recipe_path = Path(spec["out"]) / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe))
    opt = "grpo" if grpo else "ppo"
    overrides = [f"init_from={spec['policy']}", f"data.data_path={spec['data']}", f"train.output_dir={spec['out']}",
                 f"train.max_steps={spec['iterations']}", f"train.learning_rate={spec['lr']}", "train.report_to=[]",
                 "train.save_steps=0", f"train.seed={spec['seed']}", f"curriculum.seed={spec['seed']}",
                 f"curriculum.prompt={json.dumps(SMOL_PROMPT)}", f"{opt}.kl_coef={spec['kl']}",
                 f"{opt}.mini_batch_size={batch // 2}", f"{opt}.max_new_tokens={spec['max_new_tokens']}",
                 *([f"grpo.num_generations={group}", f"grpo.rollout_batch_size={batch // group}"] if grpo else
                   ["ppo.preset=ppo_max", f"ppo.rollout_batch_size={batch}", "ppo.critic_pretrain_iterations=1"]),
                 *SMOL_RL[spec["name"]]]
    if spec.get("tiny"):
        overrides += ["train.lora.r=4", "train.lora.alpha=8"]
    cfg = load_run_config(recipe_path, overrides, stage="r3")
    summary = run_r3(cfg)
    h = summary["history"]
    return {"final_model": summary["final_model"], "rewards": [x["objective/reward"] for x in h],
            "kls": [x.get("objective/kl", float("nan")) for x in h],
            "mean_k": [x.get("curriculum/mean_k", 0.0) for x in h],
            "iteration_s": statistics.median(x["time/generate"] + x["time/score"] + x["time/train"] for x in h),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_model(args: argparse.Namespace) -> None:
    """The ``--model`` comparison (see the module docstring)."""
    import subprocess

    from mova.model.known_models import resolve_known

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    if args.model == "tiny":
        from mova.model.tiny import tiny_text_lm

        base = str(out / "tiny-lm")
        tiny_text_lm(base, seed=0)
    else:
        base = resolve_known(args.model) or args.model
    print(f"model {args.model}; calibration: base model, zero-shot, chat template, {args.calibration} held-out "
          f"problems per level, {args.max_new_tokens} new tokens", flush=True)
    print("| steps | largest number | accuracy (%) | well formed (%) | seconds |\n|---:|---:|---:|---:|---:|",
          flush=True)
    chosen = best = None
    levels = SMOL_LEVELS[:1] if args.quick else SMOL_LEVELS
    for steps, max_value in levels:
        t0 = time.time()
        folder = write_smol_data(out / f"calib-{steps}-{max_value}", 8, args.calibration, steps, max_value)
        sc = smol_evaluate(base, folder, folder / "eval", None, args.max_new_tokens)
        print(f"| {steps} | {max_value} | {100 * sc['accuracy']:.1f} | {100 * sc['well_formed']:.1f} | "
              f"{time.time() - t0:.0f} |", flush=True)
        if best is None or abs(sc["accuracy"] - 0.4) < abs(best[1] - 0.4):
            best = ((steps, max_value), sc["accuracy"])
        if 0.2 <= sc["accuracy"] <= 0.6:
            chosen = (steps, max_value)
            break
    chosen = chosen or best[0]
    print(f"chosen level: {chosen[0]} step(s), numbers up to {chosen[1]}", flush=True)
    data = write_smol_data(out / "data", args.train, args.test, *chosen)
    rows = []
    for seed in args.seeds:
        row: dict = {"seed": seed}
        t0 = time.time()
        row["base"] = smol_evaluate(base, data, out / f"base-{seed}", None, args.max_new_tokens)["accuracy"]
        sft_dir = smol_sft(base, data, out / f"sft-{seed}", args.sft_steps, args.sft_lr, seed)
        row["sft_s"] = round(time.time() - t0, 1)
        row["SFT"] = smol_evaluate(sft_dir, data, out / f"sft-{seed}", None, args.max_new_tokens)["accuracy"]
        print(json.dumps(row), flush=True)
        for name in SMOL_RL:
            spec = {"name": name, "policy": sft_dir, "data": str(data),
                    "out": str(out / f"{name.replace(' ', '-')}-{seed}"),
                    "iterations": args.iterations, "lr": args.lr, "seed": seed, "kl": args.kl,
                    "batch": args.rollout_batch, "group": args.group, "max_new_tokens": args.max_new_tokens,
                    "tiny": args.model == "tiny"}
            t0 = time.time()
            if args.quick:  # one process (a child's start costs more than the quick run's training)
                res = smol_rl_child(spec)
            else:
                proc = subprocess.run([sys.executable, __file__, "--rl-child", json.dumps(spec)], capture_output=True,
                                      text=True, check=False)
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{name} seed {seed} failed:\n{proc.stderr[-3000:]}")
                res = json.loads(line[len("RESULT "):])
            res["wall_s"] = round(time.time() - t0, 1)
            res["accuracy"] = smol_evaluate(res["final_model"], data, Path(spec["out"]) / "eval", None,
                                            args.max_new_tokens)["accuracy"]
            row[name] = res
            print(json.dumps({"seed": seed, "method": name, **{k: v for k, v in res.items() if k != "final_model"}}),
                  flush=True)
        rows.append(row)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    names = list(SMOL_RL)
    print(f"\nheld-out accuracy on {args.test} problems with held-out phrasings ({chosen[0]} step(s), numbers <= "
          f"{chosen[1]}; greedy, zero-shot, chat template); RL from the SFT policy, {args.iterations} iterations x "
          f"{args.rollout_batch} responses (GRPO: groups of {args.group}), lr {args.lr:g}, KL {args.kl:g}\n")
    print("| seed | base | SFT | " + " | ".join(names) + " |\n|---:|---:|---:|" + "---:|" * len(names))
    for r in rows:
        print(f"| {r['seed']} | {r['base']:.1%} | {r['SFT']:.1%} | "
              + " | ".join(f"{r[n]['accuracy']:.1%}" for n in names) + " |")
    if len(rows) > 1:
        means = [statistics.mean(r[k] for r in rows) for k in ("base", "SFT")]
        means += [statistics.mean(r[n]["accuracy"] for r in rows) for n in names]
        print("| mean | " + " | ".join(f"{m:.1%}" for m in means) + " |")
    print("\n| method | reward per iteration (seed " + str(rows[0]["seed"]) + ") | mean k per iteration | "
          "KL (last) | s / iteration | peak RSS MiB | run wall s |\n|---|---|---|---:|---:|---:|---:|")
    for n in names:
        r = rows[0][n]
        print(f"| {n} | {' '.join(f'{x:.2f}' for x in r['rewards'])} | {' '.join(f'{x:.1f}' for x in r['mean_k'])} | "
              f"{r['kls'][-1]:.3f} | {r['iteration_s']:.1f} | {r['peak_mib']:.0f} | {r['wall_s']:.0f} |")
    print(f"\ntotal wall seconds {time.time() - t_start:.0f}")


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
    p.add_argument("--model", default=None, help="a pretrained instruct LM (smollm2-135m-instruct, a folder, or "
                   "tiny): the calibrated LoRA comparison instead of the tiny SFT one")
    p.add_argument("--calibration", type=int, default=24, help="--model: problems per calibration level")
    p.add_argument("--sft-lr", type=float, default=2e-4, help="--model: LoRA SFT learning rate")
    p.add_argument("--group", type=int, default=4, help="--model: GRPO group size")
    p.add_argument("--rl-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="tiny sizes and a few steps: checks the script runs")
    known = p.parse_known_args(argv)[0]
    if known.rl_child:
        print("RESULT " + json.dumps(smol_rl_child(json.loads(known.rl_child))), flush=True)
        return
    if known.model:  # the real-model defaults, scaled to a shared CPU
        p.set_defaults(train=200, test=40, sft_steps=20, iterations=4, rollout_batch=8, lr=5e-5, kl=0.02,
                       max_new_tokens=40)
    if known.quick:  # quick sizes are defaults: explicit arguments still win
        p.set_defaults(train=64, test=8, sft_steps=3, iterations=1, rollout_batch=4, layers=1, width=32)
        if known.model:
            p.set_defaults(calibration=4, train=16, test=4, sft_steps=1, iterations=1, max_new_tokens=8)
    args = p.parse_args(argv)
    if args.model:
        run_model(args)
        return
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
