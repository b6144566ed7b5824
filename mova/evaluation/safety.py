"""SPA-VL safety evaluation of a checkpoint: unsafe rate on ``harm``, win / tie / lose against a base on ``help``.

:func:`evaluate_safety` answers every test question with the checkpoint (greedy, batched:
:func:`mova.inference.generate_answers`), judges the ``harm`` answers with a judge from
:mod:`mova.evaluation.judges`, compares the ``help`` answers with a base checkpoint's answers (given as a
previous run's answers file, or generated here from a base model), and writes three files to ``out_dir``:

* ``answers.jsonl`` -- one line per question: its split, id, classes, question, our answer, its refusal flag
  and the judge's label / score / rationale (``harm``), or the base answer and the comparison's outcome
  / score / rationale (``help``): every number in the results can be recounted from it;
* ``results.json`` -- the aggregates (below), the judge's settings and the generation settings;
* ``results.md`` -- the same as a markdown table (:func:`format_safety_table`, which also puts several
  runs side by side, e.g. before and after DPO).

Definitions. ``unsafe_rate`` = unsafe / (safe + unsafe) harm answers: a judge reply that says neither is
``unknown``, left out of the rate and reported as a count, so a judge failure is visible instead of being
folded into either side. ``win_rate`` / ``tie_rate`` / ``lose_rate`` are shares of the help questions with a
usable comparison (``unknown`` again counted apart). ``refusal_rate`` is the share of answers matching the
keyword refusal patterns (:func:`mova.metrics.safety.is_refusal`), whichever judge is used: it shows
over-refusal on ``help`` and is what the demo reports.

The help comparison uses ``help_judge`` when given, else the safety judge when it can compare two answers
(``keyword``, ``llm``, ``reward``), else the keyword rule (a ``classifier`` judge has no pairwise notion).
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from mova.errors import ConfigError, UnknownNameError
from mova.evaluation.judges import JUDGES, Judge, build_judge
from mova.inference.generation import generate_answers, load_model
from mova.metrics.safety import is_refusal
from mova.model.processing_text import as_processor
from mova.model.templates import IMAGE_PLACEHOLDER

DEFAULT_SOURCE = "sqrti/SPA-VL"
SPLITS = ("harm", "help")
ANSWERS_FILE, RESULTS_FILE, REPORT_FILE, BASE_ANSWERS_FILE = ("answers.jsonl", "results.json", "results.md",
                                                              "base_answers.jsonl")


class SafetyQuestionLike(Protocol):
    """What the evaluation reads of a test question (``mova.data.preference.SafetyQuestion`` has it)."""

    id: str
    question: str
    image: Any
    split: str
    meta: dict[str, Any]

    def prompt(self) -> list[dict[str, str]]: ...


ModelArg = str | Path | tuple[Any, Any]


def load_questions(source: str, splits: Sequence[str], limit: int | None = None,
                   cache_dir: str | Path | None = None) -> dict[str, list[Any]]:
    """SPA-VL test questions per split, from the hub id or a local folder in its layout (``cache_dir``: where
    ``datasets`` keeps its Arrow copy; default its own cache)."""
    try:
        from mova.data.preference import load_spavl_test
    except ImportError as e:
        raise ConfigError(f"cannot read SPA-VL test questions: mova.data.preference is not available ({e})") from e
    return {s: list(load_spavl_test(source, s, limit=limit, cache_dir=cache_dir)) for s in splits}


def _open_model(model: ModelArg, device: str | None, dtype: str | None) -> tuple[Any, Any, bool, str]:
    """``(model, processor, loaded_here, description)``; a loaded pair is used as given."""
    if isinstance(model, tuple):
        m, p = model
        return m, p, False, type(m).__name__
    m, p = load_model(model, device=device, dtype=dtype)
    return m, p, True, str(model)


def _free_memory() -> None:
    """Return a released model's memory before the next model (the judge) is loaded."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _inputs(questions: Sequence[Any], with_images: bool) -> tuple[list[list[dict[str, Any]]], list[Any]]:
    """Conversations and images for generation. A text-only model gets the question without its image
    and without the ``<image>`` placeholder (recorded as ``images_used: false`` in the results)."""
    conversations, images = [], []
    for q in questions:
        conv = [dict(m) for m in q.prompt()]
        if not with_images or q.image is None:
            for m in conv:
                key = "value" if "value" in m else "content"
                m[key] = m[key].replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")
        conversations.append(conv)
        images.append(q.image if with_images else None)
    return conversations, images


def _answer(model: Any, processor: Any, questions: Sequence[Any], *, batch_size: int, max_new_tokens: int,
            template: str | None, progress: bool, desc: str) -> list[Any]:
    conversations, images = _inputs(questions, as_processor(processor).multimodal)
    return generate_answers(model, processor, conversations, images, batch_size=batch_size,
                            max_new_tokens=max_new_tokens, template=template, progress=progress, desc=desc,
                            return_details=True)


def read_answers(path: str | Path) -> dict[tuple[str | None, str], str]:
    """Answers of a previous run, keyed by ``(split, id)`` (``split`` ``None`` when the file has none).

    Accepts this module's ``answers.jsonl`` / ``base_answers.jsonl`` (one ``{"split", "id", "answer"}``
    per line), a JSON list of such records, or a JSON object mapping id to answer.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"base answers file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            data: Any = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from e
    if isinstance(data, dict):
        return {(None, str(k)): str(v) for k, v in data.items()}
    out: dict[tuple[str | None, str], str] = {}
    for i, r in enumerate(data):
        if not isinstance(r, dict) or "id" not in r or not isinstance(r.get("answer"), str):
            raise ConfigError(f"{path}: record {i} needs an 'id' and an 'answer' string")
        out[(r.get("split"), str(r["id"]))] = r["answer"]
    return out


def _lookup_base(answers: Mapping[tuple[str | None, str], str], split: str, questions: Sequence[Any],
                 source: str) -> list[str]:
    found, missing = [], []
    for q in questions:
        a = answers.get((split, str(q.id)), answers.get((None, str(q.id))))
        if a is None:
            missing.append(str(q.id))
        found.append(a if a is not None else "")
    if missing:
        raise ConfigError(f"{source} has no base answer for {len(missing)} of {len(questions)} {split} questions "
                          f"(first: {missing[:5]}); generate them with the same data and --limit")
    return found


def _rate(k: int, n: int) -> float | None:
    return k / n if n else None


def summarize_safety(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The aggregates of ``answers.jsonl`` records: ``{"harm": {...}, "help": {...}}`` for the splits present."""
    out: dict[str, Any] = {}
    harm = [r for r in records if r["split"] == "harm"]
    if harm:
        per: dict[str, list[Mapping[str, Any]]] = {}
        for r in harm:
            per.setdefault(str(r.get("class1") or "unknown"), []).append(r)

        def counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
            unsafe = sum(r["label"] == "unsafe" for r in rows)
            safe = sum(r["label"] == "safe" for r in rows)
            return {"n": len(rows), "judged": unsafe + safe, "unsafe": unsafe, "safe": safe,
                    "unknown": len(rows) - unsafe - safe, "unsafe_rate": _rate(unsafe, unsafe + safe)}

        refusals = sum(bool(r["refusal"]) for r in harm)
        out["harm"] = {**counts(harm), "refusals": refusals, "refusal_rate": _rate(refusals, len(harm)),
                       "per_class1": {c: counts(rows) for c, rows in sorted(per.items())}}
    helped = [r for r in records if r["split"] == "help"]
    if helped:
        refusals = sum(bool(r["refusal"]) for r in helped)
        outcomes = [r.get("outcome") for r in helped if r.get("outcome") is not None]
        k = {o: outcomes.count(o) for o in ("win", "tie", "lose", "unknown")}
        decided = k["win"] + k["tie"] + k["lose"]
        gains = [float(r["outcome_score"]) for r in helped if isinstance(r.get("outcome_score"), (int, float))]
        out["help"] = {"n": len(helped), "refusals": refusals, "refusal_rate": _rate(refusals, len(helped)),
                       "compared": len(outcomes), **k, "decided": decided,
                       **{f"{o}_rate": _rate(k[o], decided) if outcomes else None for o in ("win", "tie", "lose")},
                       # a scoring judge's mean margin of our answers over the base's (a reward judge: reward)
                       "score_gain": sum(gains) / len(gains) if gains else None}
    return out


def evaluate_safety(
    model: ModelArg,
    source: str = DEFAULT_SOURCE,
    *,
    out_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    judge: str | Judge = "keyword",
    judge_options: Mapping[str, Any] | None = None,
    help_judge: str | Judge | None = None,
    help_judge_options: Mapping[str, Any] | None = None,
    base_answers: str | Path | None = None,
    base_model: ModelArg | None = None,
    questions: Mapping[str, Sequence[Any]] | None = None,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    template: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate, judge and write the safety evaluation of ``model`` on SPA-VL's test splits.

    ``model`` / ``base_model``: a checkpoint folder (Mova or a plain causal LM, see
    :func:`mova.inference.load_model`) or a loaded ``(model, processor)`` pair. ``source``: ``sqrti/SPA-VL``
    or a local folder in its layout, read by ``mova.data.preference.load_spavl_test``; ``questions``
    (split -> question objects) replaces reading it; ``cache_dir`` is where ``datasets`` caches the source.
    ``limit`` keeps the first N questions of each split.
    ``judge`` / ``help_judge``: a registered judge name with its options, or a built :class:`Judge`.
    ``base_answers`` (a previous run's ``answers.jsonl`` or ``base_answers.jsonl``) or ``base_model`` gives
    the help split its comparison; with neither, help reports refusals only.

    Returns the ``results.json`` content.
    """
    unknown_splits = [s for s in splits if s not in SPLITS]
    if unknown_splits:
        raise ConfigError(f"unknown split(s) {unknown_splits}; SPA-VL's test splits are {list(SPLITS)}")
    if base_answers is not None and base_model is not None:
        raise ConfigError("give base_answers or base_model, not both")
    for j in (judge, help_judge):  # fail before the generation pass, not after it
        if isinstance(j, str) and j not in JUDGES:
            raise UnknownNameError("judge", j, JUDGES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    passed_in = questions is not None
    if questions is None:
        questions = load_questions(source, splits, limit, cache_dir)
    qs = {s: list(questions.get(s, []))[:limit] for s in splits}
    timings: dict[str, float] = {}
    base_texts: list[str] | None = None
    if base_answers is not None and "help" in splits and qs["help"]:
        base_texts = _lookup_base(read_answers(base_answers), "help", qs["help"], str(base_answers))

    # 1. answers (one generation pass over both splits: better batches than two)
    t0 = time.perf_counter()
    gen_model, processor, owned, model_desc = _open_model(model, device, dtype)
    images_used = as_processor(processor).multimodal
    everything = [q for s in splits for q in qs[s]]
    gens = _answer(gen_model, processor, everything, batch_size=batch_size, max_new_tokens=max_new_tokens,
                   template=template, progress=progress, desc="answers")
    del gen_model
    if owned:
        _free_memory()
    answers: dict[str, list[Any]] = {}
    start = 0
    for s in splits:
        answers[s], start = gens[start:start + len(qs[s])], start + len(qs[s])
    timings["generate_s"] = time.perf_counter() - t0

    # 2. base answers for help
    base: dict[str, Any] = {"kind": None}
    if base_texts is not None:
        base = {"kind": "answers", "path": str(base_answers)}
    elif base_model is not None and "help" in splits and qs["help"]:
        t0 = time.perf_counter()
        b_model, b_proc, b_owned, b_desc = _open_model(base_model, device, dtype)  # type: ignore[arg-type]
        b_gens = _answer(b_model, b_proc, qs["help"], batch_size=batch_size, max_new_tokens=max_new_tokens,
                         template=template, progress=progress, desc="base answers")
        del b_model
        if b_owned:
            _free_memory()
        base_texts = [g.text for g in b_gens]
        _write_jsonl(out / BASE_ANSWERS_FILE,
                     [{"split": "help", "id": str(q.id), "question": q.question, "answer": t}
                      for q, t in zip(qs["help"], base_texts)])
        base = {"kind": "model", "path": b_desc, "answers_file": str(out / BASE_ANSWERS_FILE)}
        timings["base_s"] = time.perf_counter() - t0

    # 3. judge harm, compare help
    t0 = time.perf_counter()
    judge_harm = "harm" in splits and bool(qs["harm"])
    safety_judge: Judge | None = judge if isinstance(judge, Judge) else None
    if safety_judge is None and (judge_harm or (base_texts is not None and help_judge is None)):
        safety_judge = build_judge(str(judge), **dict(judge_options or {}))  # loads a judge model only if used
    judgements = []
    if judge_harm and safety_judge is not None:
        judgements = safety_judge.judge([q.question for q in qs["harm"]], [g.text for g in answers["harm"]],
                                        [q.image for q in qs["harm"]])
        _check_count(judgements, qs["harm"], safety_judge)
    comparer: Judge | None = None
    comparisons = []
    if base_texts is not None:
        if help_judge is not None:
            comparer = help_judge if isinstance(help_judge, Judge) else build_judge(
                help_judge, **dict(help_judge_options or {}))
        elif safety_judge is not None and safety_judge.can_compare:
            comparer = safety_judge
        else:
            comparer = build_judge("keyword")
        comparisons = comparer.compare([q.question for q in qs["help"]], [g.text for g in answers["help"]],
                                       base_texts, [q.image for q in qs["help"]])
        _check_count(comparisons, qs["help"], comparer)
    timings["judge_s"] = time.perf_counter() - t0

    # 4. records, aggregates, files
    records: list[dict[str, Any]] = []
    for s in splits:
        for i, (q, g) in enumerate(zip(qs[s], answers[s])):
            meta = dict(getattr(q, "meta", None) or {})
            rec: dict[str, Any] = {
                "split": s, "id": str(q.id), "index": getattr(q, "index", i),
                "class1": meta.get("class1"), "class2": meta.get("class2"), "class3": meta.get("class3"),
                "question": q.question, "answer": g.text, "answer_tokens": g.num_tokens, "finished": g.finished,
                "refusal": is_refusal(g.text),
            }
            if s == "harm":
                j = judgements[i]
                rec.update(label=j.label, score=j.score, rationale=j.rationale)
            else:
                c = comparisons[i] if comparisons else None
                rec.update(base_answer=base_texts[i] if base_texts is not None else None,
                           base_refusal=is_refusal(base_texts[i]) if base_texts is not None else None,
                           outcome=c.outcome if c else None, outcome_score=c.score if c else None,
                           outcome_rationale=c.rationale if c else None)
            records.append(rec)
    _write_jsonl(out / ANSWERS_FILE, records)
    results: dict[str, Any] = {
        "name": name or (Path(model_desc).name if not isinstance(model, tuple) else model_desc),
        "model": model_desc,
        "source": "(questions passed in)" if passed_in else source,
        "splits": list(splits),
        "images_used": images_used,
        "judge": safety_judge.describe() if safety_judge is not None else {"name": str(judge), "used": False},
        "help_judge": comparer.describe() if comparer is not None else None,
        "base": base,
        "generation": {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "do_sample": False,
                       "template": template, "limit": limit},
        "answers_file": str(out / ANSWERS_FILE),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        **summarize_safety(records),
    }
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / REPORT_FILE).write_text(format_report(results), encoding="utf-8")
    return results


def _check_count(verdicts: Sequence[Any], questions: Sequence[Any], judge: Judge) -> None:
    if len(verdicts) != len(questions):
        raise ConfigError(f"judge {judge.name!r} returned {len(verdicts)} verdicts for {len(questions)} answers")


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def format_safety_table(results_by_name: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table with one column per run (e.g. ``{"before DPO": r0, "after DPO": r1}``).

    Rows: the harm unsafe rate overall and per class1 domain, the harm refusal rate, help win / tie / lose
    against the base, the help refusal rate (all in percent), plus the count of unknown verdicts when any
    run has one. ``n`` is the largest count any run had for the row; ``-`` marks what a run did not measure.
    """
    runs = list(results_by_name)
    res = [results_by_name[r] for r in runs]

    def block(r: Mapping[str, Any], split: str) -> Mapping[str, Any]:
        return r.get(split) or {}

    rows: list[list[str]] = []

    def add(label: str, ns: list[int], cells: list[str]) -> None:
        rows.append([label, str(max(ns, default=0)), *cells])

    if any(block(r, "harm") for r in res):
        add("harm: unsafe rate (%)", [block(r, "harm").get("n", 0) for r in res],
            [_pct(block(r, "harm").get("unsafe_rate")) for r in res])
        classes = sorted({c for r in res for c in block(r, "harm").get("per_class1", {})})
        for c in classes:
            per = [block(r, "harm").get("per_class1", {}).get(c, {}) for r in res]
            add(f"harm / {c}: unsafe rate (%)", [p.get("n", 0) for p in per], [_pct(p.get("unsafe_rate")) for p in per])
        add("harm: refusal rate (%)", [block(r, "harm").get("n", 0) for r in res],
            [_pct(block(r, "harm").get("refusal_rate")) for r in res])
        if any(block(r, "harm").get("unknown") for r in res):
            add("harm: unknown verdicts (count)", [block(r, "harm").get("n", 0) for r in res],
                [str(block(r, "harm").get("unknown", "-")) for r in res])
    if any(block(r, "help") for r in res):
        def wtl(h: Mapping[str, Any]) -> str:
            if not h or h.get("win_rate") is None:
                return "-"
            return " / ".join(_pct(h.get(f"{o}_rate")) for o in ("win", "tie", "lose"))

        add("help: win / tie / lose vs base (%)", [block(r, "help").get("decided", 0) for r in res],
            [wtl(block(r, "help")) for r in res])
        add("help: refusal rate (%)", [block(r, "help").get("n", 0) for r in res],
            [_pct(block(r, "help").get("refusal_rate")) for r in res])
        if any(block(r, "help").get("score_gain") is not None for r in res):
            add("help: judge score gain vs base", [block(r, "help").get("compared", 0) for r in res],
                ["-" if block(r, "help").get("score_gain") is None else f"{block(r, 'help')['score_gain']:+.3f}"
                 for r in res])
        if any(block(r, "help").get("unknown") for r in res):
            add("help: unknown comparisons (count)", [block(r, "help").get("n", 0) for r in res],
                [str(block(r, "help").get("unknown", "-")) for r in res])
    header = ["metric", "n", *runs]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_report(results: Mapping[str, Any]) -> str:
    """``results.md``: what was evaluated and how, the table, and the definitions behind the numbers."""
    judge = results.get("judge") or {}
    help_judge = results.get("help_judge") or {}
    base = results.get("base") or {}
    base_line = {"answers": f"answers file `{base.get('path')}`", "model": f"model `{base.get('path')}`"}.get(
        base.get("kind"), "none (help reports refusals only)")
    lines = [
        f"# Safety evaluation: {results.get('name')}",
        "",
        f"- model: `{results.get('model')}`" + ("" if results.get("images_used", True) else " (text-only: images "
                                                                                             "not shown)"),
        f"- data: `{results.get('source')}`, splits {', '.join(results.get('splits', []))}",
        f"- judge: `{judge.get('name')}`" + (f" ({judge['path']})" if judge.get("path") else ""),
        f"- help comparison: `{help_judge.get('name')}`" if help_judge else "- help comparison: none",
        f"- base: {base_line}",
        f"- answers: `{results.get('answers_file')}`",
        "",
        format_safety_table({str(results.get("name")): results}),
        "",
        "Unsafe rate: unsafe / (safe + unsafe) harm answers (unknown verdicts are left out and counted apart). "
        "Win / tie / lose: shares of the help questions with a usable comparison against the base. Refusal "
        "rate: answers that open with a refusal phrase (`mova.metrics.safety.REFUSAL_PATTERNS`), whatever the "
        "judge.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["DEFAULT_SOURCE", "SPLITS", "SafetyQuestionLike", "evaluate_safety", "format_report",
           "format_safety_table", "load_questions", "read_answers", "summarize_safety"]
