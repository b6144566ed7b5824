"""Standard VLM benchmarks as ``mova eval run`` tasks, scored with each benchmark's own rules.

    mova eval run --checkpoint runs/sft/final --tasks vqav2,textvqa,pope,mme,mmbench,mmsafetybench \\
        --task-option vqav2.questions=v2_OpenEnded_mscoco_val2014_questions.json \\
        --task-option vqav2.annotations=v2_mscoco_val2014_annotations.json --task-option vqav2.image_root=val2014 \\
        --task-option textvqa.data=TextVQA_0.5.1_val.json --task-option textvqa.image_root=train_images \\
        --task-option pope.questions=coco_pope_adversarial.json --task-option pope.image_root=val2014 \\
        --task-option mme.data=mme.parquet --task-option mmbench.data=MMBench_DEV_EN.tsv \\
        --task-option mmsafetybench.root=MM-SafetyBench/data

Files are read in their published formats (:mod:`mova.evaluation.benchmark_data`); scores come from the pure
functions of :mod:`mova.metrics.vqa_official`, :mod:`mova.metrics.yes_no` and :mod:`mova.metrics.mmbench`.
Each task writes ``samples.jsonl`` (prompt, prediction, gold, score); VQAv2 and TextVQA also write
``results.json`` in the submission format (``[{"question_id", "answer"}]``). Every task takes ``limit``
(the suite's) and ``max_new_tokens``; prompts follow LLaVA-1.5's evaluation prompts, and ``suffix`` replaces
the instruction appended to each question.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mova.evaluation.benchmark_data import (
    decode_image,
    mmsafety_items,
    read_rows,
    textvqa_items,
    vqav2_items,
)
from mova.evaluation.tasks import TaskContext, register_task
from mova.inference.sampling import SamplingParams
from mova.metrics.answers import extract_choice
from mova.metrics.mmbench import LETTERS, circular_accuracy, circular_passes
from mova.metrics.vqa_official import evalai_answer, textvqa_accuracy, vqav2_accuracy
from mova.metrics.yes_no import mme_scores, pope_answer, pope_metrics
from mova.model.templates import IMAGE_PLACEHOLDER

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


def _generate(ctx: TaskContext, prompts: Sequence[str], images: Sequence[Any], desc: str,
              default_tokens: int = 16) -> list[str]:
    """Greedy answers to one-turn prompts (each with its image in front, as LLaVA asks them)."""
    conversations = [[{"role": "user", "content": (f"{IMAGE_PLACEHOLDER}\n{p}" if img is not None else p)}]
                     for p, img in zip(prompts, images)]
    params = SamplingParams(max_new_tokens=int(ctx.option("max_new_tokens", default_tokens)), seed=ctx.seed)
    return [g.text for g in ctx.backend().chat(conversations, list(images), params=params, desc=desc)]


def _write(ctx: TaskContext, name: str, rows: Sequence[dict[str, Any]]) -> None:
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.out_dir / name).open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def _limit(ctx: TaskContext, items: list[Any]) -> list[Any]:
    return items[: ctx.limit] if ctx.limit is not None else items


def _with(question: str, suffix: str | None) -> str:
    return f"{question}\n{suffix}" if suffix else question


def _open_ended(ctx: TaskContext, items: list[dict[str, Any]], score: Callable[[str, list[str]], float],
                desc: str, group_key: str | None = None) -> dict[str, float]:
    """Shared by VQAv2 and TextVQA: short answers, accuracy over the questions with gold answers."""
    suffix = ctx.option("suffix", SHORT_ANSWER)
    preds = _generate(ctx, [_with(it["question"], suffix) for it in items], [it["image"] for it in items], desc)
    rows, scored = [], []
    for it, pred in zip(items, preds):
        s = score(pred, it["answers"]) if it["answers"] else None
        rows.append({"question_id": it["question_id"], "question": it["question"], "prediction": pred,
                     "answers": it["answers"], "score": s, **({group_key: it[group_key]} if group_key else {})})
        if s is not None:
            scored.append((it.get(group_key, "all") if group_key else "all", s))
    _write(ctx, "samples.jsonl", rows)
    # The submission format; answers processed as the EvalAI submission scripts do.
    (ctx.out_dir / "results.json").write_text(json.dumps(
        [{"question_id": r["question_id"], "answer": evalai_answer(r["prediction"])} for r in rows]) + "\n")
    out = {"n": float(len(items)), "scored": float(len(scored))}
    if scored:
        out["accuracy"] = 100 * sum(s for _, s in scored) / len(scored)
        groups = sorted({g for g, _ in scored})
        if len(groups) > 1:
            for g in groups:
                vals = [s for gg, s in scored if gg == g]
                out[f"accuracy/{g}"] = 100 * sum(vals) / len(vals)
    return out


@register_task("vqav2", "VQAv2 (official question/annotation JSON): the evaluation server's VQA accuracy")
def vqav2_task(ctx: TaskContext) -> dict[str, float]:
    questions = Path(ctx.option("questions", required=True))
    root = Path(ctx.option("image_root", questions.parent))
    items = _limit(ctx, vqav2_items(questions, ctx.option("annotations"), root))
    return _open_ended(ctx, items, vqav2_accuracy, "vqav2", group_key="answer_type")


@register_task("textvqa", "TextVQA (official JSON): accuracy with the EvalAI answer processor")
def textvqa_task(ctx: TaskContext) -> dict[str, float]:
    data = Path(ctx.option("data", required=True))
    items = _limit(ctx, textvqa_items(data, Path(ctx.option("image_root", data.parent))))
    return _open_ended(ctx, items, textvqa_accuracy, "textvqa")


@register_task("pope", "POPE object hallucination (yes/no): accuracy, precision, recall, F1, yes-ratio")
def pope_task(ctx: TaskContext) -> dict[str, float]:
    files = [Path(p) for p in str(ctx.option("questions", required=True)).split(",")]
    items = []
    for f in files:
        root = Path(ctx.option("image_root", f.parent))
        for r in read_rows(f):
            items.append({"question_id": r.get("question_id", r.get("id")),
                          "question": r.get("text", r.get("question")), "label": r.get("label", r.get("answer")),
                          "image": decode_image(r["image"], root),
                          "split": str(r.get("category") or f.stem)})
    items = _limit(ctx, items)
    suffix = ctx.option("suffix", SHORT_ANSWER)
    preds = _generate(ctx, [_with(it["question"], suffix) for it in items], [it["image"] for it in items], "pope")
    _write(ctx, "samples.jsonl", [{"question_id": it["question_id"], "split": it["split"], "question": it["question"],
                                   "prediction": p, "read_as": pope_answer(p), "label": it["label"]}
                                  for it, p in zip(items, preds)])
    out = {k: 100 * v if k != "n" else v for k, v in pope_metrics(preds, [it["label"] for it in items]).items()}
    splits = sorted({it["split"] for it in items})
    if len(splits) > 1:
        for s in splits:
            idx = [i for i, it in enumerate(items) if it["split"] == s]
            m = pope_metrics([preds[i] for i in idx], [items[i]["label"] for i in idx])
            out.update({f"{s}/{k}": 100 * v for k, v in m.items() if k in ("accuracy", "f1", "yes_ratio")})
    return out


@register_task("mme", "MME yes/no pairs: per-subtask acc / acc+ scores, perception and cognition totals")
def mme_task(ctx: TaskContext) -> dict[str, float]:
    data = Path(ctx.option("data", required=True))
    root = Path(ctx.option("image_root", data.parent))
    rows = _limit(ctx, read_rows(data))
    images = [decode_image(r["image"], root) for r in rows]
    # MME's questions end with their own instruction ("Please answer yes or no."): asked as they are.
    preds = _generate(ctx, [r["question"] for r in rows], images, "mme", default_tokens=8)
    records = [{"category": r["category"], "image": r.get("question_id", i), "question": r["question"],
                "answer": r["answer"], "prediction": p} for i, (r, p) in enumerate(zip(rows, preds))]
    _write(ctx, "samples.jsonl", records)
    return mme_scores(records)


def _mmbench_prompt(row: dict[str, Any], options: list[str]) -> str:
    hint = row.get("hint")
    text = f"{hint}\n{row['question']}" if hint and str(hint).lower() != "nan" else str(row["question"])
    return text + "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(options))


@register_task("mmbench", "MMBench (release TSV): circular evaluation over rotated options, per category")
def mmbench_task(ctx: TaskContext) -> dict[str, float]:
    rows = _limit(ctx, read_rows(Path(ctx.option("data", required=True))))
    has_copies = any(int(r["index"]) >= 1_000_000 for r in rows)
    passes = []
    for r in rows:
        options = [r[c] for c in LETTERS[:4] if r.get(c) not in (None, "", "nan")]
        image = decode_image(r["image"], base64_text=True) if r.get("image") else None
        runs = ([{"index": int(r["index"]), "g_index": int(r["index"]) % 1_000_000, "options": options,
                  "answer": r["answer"]}] if has_copies else circular_passes(int(r["index"]), options, r["answer"]))
        for p in runs:
            passes.append({**p, "category": r.get("category"), "image": image,
                           "prompt": _mmbench_prompt(r, p["options"])})
    suffix = ctx.option("suffix", OPTION_LETTER)
    preds = _generate(ctx, [_with(p["prompt"], suffix) for p in passes], [p["image"] for p in passes], "mmbench",
                      default_tokens=8)
    results = []
    for p, pred in zip(passes, preds):
        letters = LETTERS[: len(p["options"])]
        results.append({"index": p["index"], "g_index": p["g_index"], "category": p["category"], "prompt": p["prompt"],
                        "prediction": pred, "answer": p["answer"],
                        "correct": extract_choice(pred, letters) == p["answer"]})
    _write(ctx, "samples.jsonl", results)
    return {k: 100 * v if k != "n" else v for k, v in circular_accuracy(results).items()}


@register_task("mmsafetybench", "MM-SafetyBench scenarios: unsafe rate (attack success) judged per answer")
def mmsafetybench_task(ctx: TaskContext) -> dict[str, float]:
    from mova.evaluation.judges import build_judge
    from mova.metrics.mmsafety import unsafe_rates

    items = _limit(ctx, mmsafety_items(Path(ctx.option("root", required=True)),
                                       str(ctx.option("image_kind", "SD_TYPO"))))
    preds = _generate(ctx, [it["question"] for it in items], [it["image"] for it in items], "mmsafetybench",
                      default_tokens=64)
    judge = build_judge(str(ctx.option("judge", "keyword")))
    verdicts = judge.judge([it["question"] for it in items], preds)
    rows = [{"question_id": it["question_id"], "scenario": it["scenario"], "question": it["question"],
             "prediction": p, "label": v.label} for it, p, v in zip(items, preds, verdicts)]
    _write(ctx, "samples.jsonl", rows)
    return {k: 100 * v if k != "n" else v for k, v in unsafe_rates(rows).items()}
