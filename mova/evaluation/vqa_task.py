"""The ``vqa`` evaluation task: LLaVA-format questions in, LLaVA-format answers out, scored three ways.

    mova eval run --checkpoint runs/sft/final --tasks vqa \\
        --task-option vqa.questions=llava_vqav2_test.jsonl --task-option vqa.image_root=data/coco/test2015 \\
        --task-option vqa.annotations=vqav2_val_answers.jsonl

Input: LLaVA's question file, one ``{"question_id", "image", "text"}`` per line (``category`` optional), or a
JSON list of LLaVA conversation records (the synthetic ``test.json``; the first human turn is the
question, the first reply the answer). Gold answers come from each record (``answer`` or ``answers``) or
from ``vqa.annotations``, a JSON/JSONL file of ``{"question_id", "answer" | "answers"}``.

Output in the task folder: ``answers.jsonl`` in LLaVA's answer format (``question_id``, ``prompt``,
``text``, ``answer_id``, ``model_id``, ``metadata``: what LLaVA's scripts and the VQA servers read), and
``samples.jsonl`` with each question's gold answers, its score and how it was scored.

Scoring (``vqa.metric``, default ``auto`` per record):

* ``vqa`` -- the VQA accuracy over several human answers: the prediction scores ``min(1, k / 3)`` against
  each leave-one-out subset of the human answers (``k`` matches in the subset), averaged over the
  subsets; answers are compared after the VQA evaluation's own processing
  (:func:`mova.metrics.vqa_official.normalize_vqa_answer`). Used when a record has 2+ answers.
* ``choice`` -- the option letter (``mova.metrics.answers.extract_choice``) against the gold letter. Used
  when a record has ``options`` / ``choices``; the options are appended to the question as ``A. ...`` lines
  unless the text already lists them.
* ``exact`` -- one gold answer: the VQA-normalised prediction equals the normalised gold, or, for the
  one-word synthetic answers, :func:`mova.metrics.vqa.score_answer` (first word, digits as words) agrees.

Options: ``questions`` (required), ``annotations``, ``image_root`` (default: the question file's folder),
``metric``, ``suffix`` (appended to each question, e.g. "Answer the question using a single word or
phrase."), ``max_new_tokens`` (default 32), ``text_only`` (drop images; automatic for a plain LM).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.data.records import resolve_image_path
from mova.errors import ConfigError, DataError
from mova.evaluation.tasks import TaskContext, register_task
from mova.inference.sampling import SamplingParams
from mova.metrics.vqa_official import normalize_vqa_answer as official_normalize
from mova.model.processing_text import as_processor
from mova.model.templates import IMAGE_PLACEHOLDER

# --- VQA answer normalisation: the VQA evaluation's own (mova.metrics.vqa_official) ---------------------------
normalize_vqa_answer = official_normalize


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQA accuracy of ``prediction`` against human ``answers``: the mean over leave-one-out subsets of
    ``min(1, matches / 3)``; one answer gives exact match (0 or 1); no answer scores 0."""
    pred = normalize_vqa_answer(prediction)
    gold = [normalize_vqa_answer(a) for a in answers]
    if not gold:
        return 0.0
    if len(gold) == 1:
        return float(pred == gold[0])
    total = 0.0
    for i in range(len(gold)):
        matches = sum(g == pred for j, g in enumerate(gold) if j != i)
        total += min(1.0, matches / 3)
    return total / len(gold)


def exact_score(prediction: str, gold: str) -> float:
    from mova.metrics.vqa import score_answer

    return float(normalize_vqa_answer(prediction) == normalize_vqa_answer(gold) or score_answer(prediction, gold))


def choice_score(prediction: str, gold: str, letters: str) -> float:
    from mova.metrics.answers import extract_choice

    return float(extract_choice(prediction, letters) == str(gold).strip().upper()[:1])


# --- questions ---------------------------------------------------------------------------------------------
@dataclass
class VqaQuestion:
    question_id: str
    text: str
    image: str | None
    answers: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    category: str = "all"

    @property
    def letters(self) -> str:
        return "ABCDEFGHIJ"[: len(self.options)] if self.options else "ABCDE"


def _answers_of(record: Mapping[str, Any]) -> list[str]:
    if "answers" in record and record["answers"] is not None:
        raw = record["answers"]
        raw = raw if isinstance(raw, list) else [raw]
        return [str(a["answer"] if isinstance(a, Mapping) else a) for a in raw]
    if record.get("answer") is not None:
        return [str(record["answer"])]
    return []


def _read_json_or_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON / JSONL: {e}") from e
    if isinstance(data, dict):  # {question_id: answer(s)}
        return [{"question_id": k, "answers" if isinstance(v, list) else "answer": v} for k, v in data.items()]
    return data


def load_vqa_questions(path: str | Path, annotations: str | Path | None = None) -> list[VqaQuestion]:
    """Questions (LLaVA question JSONL or conversation records) with gold answers where known."""
    from mova.metrics.vqa import record_qa

    path = Path(path)
    records = _read_json_or_jsonl(path)
    questions = []
    for i, r in enumerate(records):
        if "conversations" in r:
            text, gold = record_qa(r)
            text = text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "").strip()
            questions.append(VqaQuestion(str(r.get("id", i)), text, r.get("image"), [gold],
                                         category=str(r.get("type", "all"))))
            continue
        if "text" not in r or "question_id" not in r:
            raise DataError(f"{path}: record {i} needs 'question_id' and 'text' (LLaVA question format) or "
                            f"'conversations'; its keys are {sorted(r)}")
        options = r.get("options") or r.get("choices") or []
        questions.append(VqaQuestion(str(r["question_id"]), str(r["text"]), r.get("image"), _answers_of(r),
                                     [str(o) for o in options], str(r.get("category", "all"))))
    if annotations is not None:
        gold = {str(a["question_id"]): _answers_of(a) for a in _read_json_or_jsonl(Path(annotations))
                if "question_id" in a}
        for q in questions:
            q.answers = gold.get(q.question_id, q.answers)
    return questions


def _metric(q: VqaQuestion, metric: str) -> str:
    if metric != "auto":
        return metric
    if q.options:
        return "choice"
    return "vqa" if len(q.answers) > 1 else "exact"


def _prompt_text(q: VqaQuestion, suffix: str | None) -> str:
    text = q.text
    if q.options and not all(re.search(rf"(?m)^{letter}[.)]", text) for letter in q.letters):
        text += "\n" + "\n".join(f"{letter}. {o}" for letter, o in zip(q.letters, q.options))
    return f"{text}\n{suffix}" if suffix else text


def score_question(q: VqaQuestion, prediction: str, metric: str = "auto") -> tuple[float | None, str]:
    """``(score, metric used)``; ``None`` when the question has no gold answer."""
    how = _metric(q, metric)
    if not q.answers:
        return None, how
    if how == "choice":
        return choice_score(prediction, q.answers[0], q.letters), how
    if how == "vqa":
        return vqa_accuracy(prediction, q.answers), how
    if how == "exact":
        return exact_score(prediction, q.answers[0]), how
    raise ConfigError(f"vqa.metric must be auto, vqa, exact or choice, got {metric!r}")


@register_task("vqa", "LLaVA-format VQA / multiple-choice questions: VQA accuracy, exact match, option letters")
def vqa_task(ctx: TaskContext) -> dict[str, float]:
    path = Path(ctx.option("questions", required=True))
    questions = load_vqa_questions(path, ctx.option("annotations"))[: ctx.limit]
    root = Path(ctx.option("image_root", path.parent))
    metric = str(ctx.option("metric", "auto"))
    suffix = ctx.option("suffix")
    text_only = bool(ctx.option("text_only", not as_processor(ctx.processor).multimodal))
    conversations, images = [], []
    for q in questions:
        conversations.append([{"role": "user", "content": _prompt_text(q, suffix)}])
        images.append(None if text_only or not q.image else resolve_image_path(root, q.image))
    params = SamplingParams(max_new_tokens=int(ctx.option("max_new_tokens", 32)), seed=ctx.seed)
    gens = ctx.backend().chat(conversations, images, params=params, desc="vqa")
    model_id = Path(ctx.model_path).name
    scored = []
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    with (ctx.out_dir / "answers.jsonl").open("w", encoding="utf-8") as answers_file, \
            (ctx.out_dir / "samples.jsonl").open("w", encoding="utf-8") as samples_file:
        for q, conv, g in zip(questions, conversations, gens):
            score, how = score_question(q, g.text, metric)
            answers_file.write(json.dumps({"question_id": q.question_id, "prompt": conv[0]["content"],
                                           "text": g.text, "answer_id": f"{model_id}-{q.question_id}",
                                           "model_id": model_id, "metadata": {}}, ensure_ascii=False) + "\n")
            samples_file.write(json.dumps({"question_id": q.question_id, "category": q.category, "image": q.image,
                                           "question": conv[0]["content"], "prediction": g.text,
                                           "gold": q.answers, "metric": how, "score": score,
                                           "finished": g.finished, "tokens": g.num_tokens},
                                          ensure_ascii=False) + "\n")
            if score is not None:
                scored.append((q.category, score))
    metrics: dict[str, float] = {"n": float(len(questions)), "scored": float(len(scored))}
    if scored:
        metrics["accuracy"] = sum(s for _, s in scored) / len(scored)
        categories = sorted({c for c, _ in scored})
        if len(categories) > 1:
            for c in categories:
                vals = [s for cc, s in scored if cc == c]
                metrics[f"accuracy/{c}"] = sum(vals) / len(vals)
    return metrics


__all__ = ["VqaQuestion", "choice_score", "exact_score", "load_vqa_questions", "normalize_vqa_answer",
           "score_question", "vqa_accuracy", "vqa_task"]
