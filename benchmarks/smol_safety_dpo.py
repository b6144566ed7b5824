"""Safety DPO on text with the real SmolLM2-135M-Instruct: refusal of harmful and benign requests, before and after.

Why: the safety-alignment claim (preference optimisation on refuse-harmful / help-benign pairs raises refusal of
harmful requests without teaching the model to refuse everything or forget what it could do) can only be seen on
a model that has something to lose. This benchmark trains LoRA adapters on SmolLM2 with Mova's DPO trainer
(``train/configs/smol_dpo.yaml``: the adapters-off base as the reference) and measures, on questions whose
phrasings were held out of training:

* harmful refusal: the share of harmful requests Mova's keyword refusal judge (``KeywordJudge``, the safety
  eval's offline judge) labels safe;
* benign refusal: the share of benign requests answered with a refusal (or nothing) by the same rule;
* capability: accuracy on generated one-step arithmetic word problems (numbers up to 5, the level calibrated
  for SmolLM2 in ``benchmarks/smol_polish.py``), answered with the shipped CoT prompt, never seen in DPO.

Data: the questions of the mini SPA-VL (``mova/data/spavl_mini.py``) without their images. Training pairs use
three of the five question templates of every task (chosen = a refusal with a reason for a harmful question,
a short tip for a benign one; rejected = compliance, or an over-refusal / dismissal); the test questions use the
two held-out templates of every task. One DPO run per learning rate in ``--lrs`` (same steps, batch, beta,
LoRA rank), each evaluated.

    python benchmarks/smol_safety_dpo.py                  # SmolLM2, lrs 1e-4 and 5e-4, 40 steps each
    python benchmarks/smol_safety_dpo.py --lrs 2e-4 --rpo-alpha 1   # DPO + the chosen answers' NLL (RPO)
    python benchmarks/smol_safety_dpo.py --quick          # smoke run on a random 2-layer model, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` text preference rows (half harmful, half benign) on the training templates of the mini SPA-VL."""
    from mova.data.spavl_mini import _sample_questions, answers, question_pool

    rng = random.Random(f"pairs-{seed}")
    picked = _sample_questions(rng, question_pool(True, held_out=False), (n + 1) // 2, distinct=False)
    picked += _sample_questions(rng, question_pool(False, held_out=False), n // 2, distinct=False)
    rng.shuffle(picked)
    rows = []
    for task, question in picked:
        chosen, rejected = answers(rng, task)
        rows.append({"prompt": question, "chosen": chosen, "rejected": rejected})
    return rows


def test_questions(n: int, harmful: bool, seed: int) -> list[str]:
    """``n`` distinct questions on the held-out templates, balanced over subcategories."""
    from mova.data.spavl_mini import _sample_questions, question_pool

    rng = random.Random(f"test-{harmful}-{seed}")
    return [q for _, q in _sample_questions(rng, question_pool(harmful, held_out=True), n, distinct=True)]


def evaluate(path: str, harmful: list[str], benign: list[str], arith: list, args: argparse.Namespace) -> dict:
    """Refusal rates (keyword judge) on the harmful and benign questions and accuracy on the arithmetic."""
    from smol_polish import run as polish_run

    from mova.evaluation.judges import KeywordJudge
    from mova.inference.backends import load_backend
    from mova.inference.sampling import SamplingParams
    from mova.metrics.safety import is_helpful

    t0 = time.perf_counter()
    backend = load_backend(path, "transformers", batch_size=args.batch_size, device="cpu", progress=False)
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    convs = [[{"role": "user", "content": q}] for q in harmful + benign]
    outs = [g.text for g in backend.chat(convs, params=params)]
    h_out, b_out = outs[:len(harmful)], outs[len(harmful):]
    judged = KeywordJudge().judge(harmful, h_out)
    summary, _ = polish_run(backend, arith, 0, True, args.arith_tokens, 1)
    return {"harmful_refusal": sum(j.label == "safe" for j in judged) / len(harmful),
            "benign_refusal": sum(not is_helpful(a) for a in b_out) / len(benign),
            "arith_accuracy": summary["accuracy_original"], "eval_seconds": time.perf_counter() - t0,
            "examples": {"harmful": list(zip(harmful[:3], h_out[:3])), "benign": list(zip(benign[:3], b_out[:3]))}}


def train(args: argparse.Namespace, model: str, pairs_path: Path, out: Path, lr: float) -> dict[str, Any]:
    """One LoRA DPO run with the SmolLM2 recipe; returns the trainer's summary."""
    from mova.config import load_run_config
    from mova.trainers.dpo import run_dpo

    cfg = load_run_config(ROOT / "train" / "configs" / "smol_dpo.yaml", [
        f"init_from={model}", f"data.data_path={pairs_path}", f"train.output_dir={out}",
        f"train.max_steps={args.steps}", f"train.per_device_train_batch_size={args.batch}",
        f"train.learning_rate={lr}", "train.save_steps=0", "train.logging_steps=5", "train.report_to=[]",
        f"train.seed={args.seed}", f"dpo.beta={args.beta}", f"train.lora.r={args.lora_r}",
        f"train.lora.alpha={2 * args.lora_r}", f"dpo.rpo_alpha={args.rpo_alpha}"], stage="dpo")
    return run_dpo(cfg)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--out", default="runs/smol-safety-dpo")
    p.add_argument("--pairs", type=int, default=480, help="training pairs (half harmful, half benign)")
    p.add_argument("--test", type=int, default=40, help="held-out questions per side (harmful, benign)")
    p.add_argument("--arith", type=int, default=40, help="arithmetic problems for the capability check")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 5e-4])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--rpo-alpha", type=float, default=0.0, help="weight of the chosen answers' NLL (RPO); 0: DPO")
    p.add_argument("--max-new-tokens", type=int, default=24, help="per answer to a request (a refusal opens it)")
    p.add_argument("--arith-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=40, help="generation batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="random 2-layer model, a few pairs and steps")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model
    if args.quick:
        from mova.model.tiny import tiny_text_lm

        args.pairs, args.test, args.arith, args.lrs, args.steps, args.batch = 16, 4, 4, [1e-3], 2, 4
        args.max_new_tokens, args.arith_tokens, args.lora_r = 8, 8, 4
        model = str(out / "tiny-lm")
        tiny_text_lm(model, seed=0)
    from smol_polish import make_problems

    start = time.perf_counter()
    pairs_path = out / "pairs.jsonl"
    pairs = make_pairs(args.pairs, args.seed)
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
    harmful, benign = test_questions(args.test, True, args.seed), test_questions(args.test, False, args.seed)
    train_questions = {r["prompt"] for r in pairs}
    assert not train_questions & set(harmful + benign), "a test question is a training question"
    arith = make_problems(args.arith, 1, 5, seed=args.seed + 7)
    print(f"model {args.model if not args.quick else 'tiny random (quick)'}; {len(pairs)} training pairs, "
          f"{args.test} + {args.test} held-out questions, {args.arith} arithmetic problems (1 step, numbers <= 5); "
          f"LoRA r={args.lora_r}, beta {args.beta}, batch {args.batch}, {args.steps} steps", flush=True)

    from mova.model.known_models import resolve_known

    rows = [("base", None, evaluate(resolve_known(model) or model, harmful, benign, arith, args), {})]
    base = rows[0][2]
    print(f"base evaluated in {base['eval_seconds']:.0f} s: harmful refused {base['harmful_refusal']:.3f}, benign "
          f"refused {base['benign_refusal']:.3f}, arithmetic {base['arith_accuracy']:.3f}; "
          f"{json.dumps(base['examples'])}", flush=True)
    for lr in args.lrs:
        t0 = time.perf_counter()
        summary = train(args, model, pairs_path, out / f"lr{lr:g}", lr)
        secs = time.perf_counter() - t0
        result = evaluate(summary["final_model"], harmful, benign, arith, args)
        last = summary.get("last_metrics", {})
        name = f"DPO lr {lr:g}" + (f" + NLL (rpo_alpha {args.rpo_alpha:g})" if args.rpo_alpha else "")
        rows.append((name, secs, result, last))
        print(f"lr {lr:g}: trained in {secs:.0f} s, evaluated in {result['eval_seconds']:.0f} s: harmful refused "
              f"{result['harmful_refusal']:.3f}, benign refused {result['benign_refusal']:.3f}, arithmetic "
              f"{result['arith_accuracy']:.3f}; last metrics "
              f"{json.dumps(last)}; {json.dumps(result['examples'])}", flush=True)

    print("\n| model | harmful refused (%) | benign refused (%) | arithmetic (%) | DPO reward acc. (last) | "
          "train s |\n|---|---:|---:|---:|---:|---:|")
    for name, secs, r, last in rows:
        acc = last.get("rewards/accuracies")
        print(f"| {name} | {100 * r['harmful_refusal']:.1f} | {100 * r['benign_refusal']:.1f} | "
              f"{100 * r['arith_accuracy']:.1f} | {'-' if acc is None else f'{acc:.2f}'} | "
              f"{'-' if secs is None else f'{secs:.0f}'} |")
    print(f"total seconds {time.perf_counter() - start:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
