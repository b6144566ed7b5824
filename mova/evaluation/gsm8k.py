"""GSM8K-style evaluation: batched greedy generation, chain-of-thought or program answers, accuracy plus a
per-sample JSONL.

    mova eval gsm8k --model runs/r3/final --data openai/gsm8k --split test --kind cot --shots 8 \\
        --out-dir runs/eval/gsm8k
    mova eval run --checkpoint CKPT --tasks gsm8k --task-option gsm8k.data=data/arith_mini \\
        --task-option gsm8k.shots=0

Prompts (the same format R3 trains on, :data:`mova.rl.curriculum.DEFAULT_PROMPTS`): each few-shot example
is the template filled with its question followed by its gold target, examples are separated by a blank
line, and the test question comes last:

* ``cot``: ``Question: {question}\\nAnswer:\\n`` + rationale lines + ``#### value``; the model's answer is
  read with an extraction rule (``--extract``, default ``gsm8k``: the first ``#### value``; falls back to
  "The answer is X").
* ``program``: ``Question: {question}\\n`` + the program; the prompt ends with ``def solution():`` so the
  model writes the body, which runs in :mod:`mova.rl.sandbox` (never in this process); the return value is
  the answer.

Metrics: ``accuracy`` (numeric match of the extracted answer, :func:`mova.metrics.answers.numbers_match`),
``well_formed`` (an answer could be read / the program ran); for ``cot`` also ``strict_match`` and
``flexible_match``, scored exactly as lm-evaluation-harness' GSM8K task scores its two filters (its
regexes, take-first, ``[invalid]`` fallback, its ``exact_match`` normalisation), so they can be set beside
published harness numbers when the prompt is the same; for ``program`` also ``timeouts`` (wall-clock or
CPU limit reached).

Few-shot file: JSONL or JSON in any format :mod:`mova.data.reasoning` reads (GSM8K ``question`` +
``answer`` with ``#### value``; program CoT needs a ``program`` field). ``--shots N`` takes its first N
records. The default file, ``mova/assets/fewshot/gsm8k.jsonl``, holds eight examples written for Mova,
each with both a rationale and a program.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.data.reasoning import ReasoningRecord, load_reasoning
from mova.errors import ConfigError
from mova.evaluation.tasks import TaskContext, register_task
from mova.metrics.answers import ANSWER_EXTRACTORS, extract_answer, harness_exact_match, numbers_match
from mova.rl.curriculum import DEFAULT_PROMPTS, split_program
from mova.rl.reasoning_rewards import extract_program, join_program
from mova.rl.sandbox import SandboxConfig, run_programs

DEFAULT_FEWSHOT = Path(__file__).resolve().parents[1] / "assets" / "fewshot" / "gsm8k.jsonl"
PROGRAM_HEADER = "def solution():\n"


@dataclass
class Gsm8kConfig:
    """Options of the GSM8K evaluation (``--task-option gsm8k.KEY=VALUE`` or ``mova eval gsm8k --key``)."""

    #: a local file/folder in a reasoning format, or a hub dataset (``openai/gsm8k``, config ``main``)
    data: str = "openai/gsm8k"
    split: str = "test"
    #: cot | program
    kind: str = "cot"
    #: few-shot file ("default": the bundled one; "none" or shots=0: zero-shot)
    fewshot: str = "default"
    shots: int = 8
    #: extraction rule for cot answers (mova.metrics.answers.ANSWER_EXTRACTORS)
    extract: str = "gsm8k"
    #: prompt template with {question} (None: the kind's R3 default)
    template: str | None = None
    #: put each few-shot prompt to the model as one user turn of its tokenizer's chat template (instruct models)
    chat_template: bool = False
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=lambda: ["Question:"])
    limit: int | None = None
    #: wall-clock seconds per program (program kind)
    program_timeout_s: float = 5.0


def load_fewshot(path: str | Path | None, shots: int, kind: str) -> list[ReasoningRecord]:
    """The first ``shots`` examples of a few-shot file (``"default"``: the bundled file; ``None``/``"none"``
    or ``shots == 0``: none). Program CoT needs every example to carry a program."""
    if shots <= 0 or path in (None, "none", ""):
        return []
    source = DEFAULT_FEWSHOT if path == "default" else Path(path)
    records = load_reasoning(source, split="fewshot")[:shots]
    if len(records) < shots:
        raise ConfigError(f"few-shot file {source} has {len(records)} examples, {shots} asked for")
    if kind == "program":
        missing = [r.id for r in records if not r.program]
        if missing:
            raise ConfigError(f"few-shot file {source}: examples {missing} have no program for --kind program")
    return records


def _template(kind: str, template: str | None) -> str:
    if kind not in DEFAULT_PROMPTS:
        raise ConfigError(f"unknown GSM8K answer kind {kind!r}; known: {sorted(DEFAULT_PROMPTS)}")
    return template or DEFAULT_PROMPTS[kind]


def build_prompt(record: ReasoningRecord, fewshot: Sequence[ReasoningRecord], kind: str = "cot",
                 template: str | None = None) -> str:
    """The few-shot prompt for ``record`` (see the module docstring for the layout)."""
    tpl = _template(kind, template)
    parts = []
    for ex in fewshot:
        if kind == "program":
            header, body = split_program(ex.program or "")
            target = header + "".join(line + "\n" for line in body)
        else:
            target = ex.gsm8k_answer() + "\n"
        parts.append(tpl.format(question=ex.question) + target)
    head = tpl.format(question=record.question)
    if kind == "program":
        head += PROGRAM_HEADER
    return "\n".join(parts + [head])


@dataclass
class ScoredSample:
    id: str
    question: str
    output: str
    gold: str
    extracted: str | None
    correct: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "gold": self.gold, "output": self.output,
                "extracted": self.extracted, "correct": self.correct, **self.extra}


def score_cot(records: Sequence[ReasoningRecord], outputs: Sequence[str],
              extract: str = "gsm8k") -> tuple[list[ScoredSample], dict[str, float]]:
    """Score chain-of-thought outputs (no model needed: the evaluation's pure half)."""
    if extract not in ANSWER_EXTRACTORS:
        raise ConfigError(f"unknown answer extraction {extract!r}; known: {sorted(ANSWER_EXTRACTORS)}")
    samples = []
    for record, out in zip(records, outputs, strict=True):
        value = extract_answer(out, extract)
        if value is None and extract != "answer_is":
            value = extract_answer(out, "answer_is")
        strict, flexible = extract_answer(out, "strict"), extract_answer(out, "flexible")
        gold_text = record.gsm8k_answer()
        samples.append(ScoredSample(record.id, record.question, out, record.answer, value,
                                    numbers_match(value, record.answer), {
                                        "strict": strict, "flexible": flexible,
                                        "strict_match": harness_exact_match(strict, gold_text),
                                        "flexible_match": harness_exact_match(flexible, gold_text)}))
    n = max(len(samples), 1)
    return samples, {"accuracy": sum(s.correct for s in samples) / n,
                     "well_formed": sum(s.extracted is not None for s in samples) / n,
                     "strict_match": sum(s.extra["strict_match"] for s in samples) / n,
                     "flexible_match": sum(s.extra["flexible_match"] for s in samples) / n,
                     "num_samples": float(len(samples))}


def score_programs(records: Sequence[ReasoningRecord], outputs: Sequence[str],
                   sandbox: SandboxConfig | None = None) -> tuple[list[ScoredSample], dict[str, float]]:
    """Run each output (the body after ``def solution():``) in the sandbox and score its answer."""
    programs = [extract_program(join_program(PROGRAM_HEADER, out)) for out in outputs]
    if len(programs) != len(records):
        raise ValueError(f"{len(records)} records but {len(outputs)} outputs")
    todo = [i for i, p in enumerate(programs) if p]
    results = dict(zip(todo, run_programs([programs[i] for i in todo], sandbox or SandboxConfig())))
    samples = []
    for i, (record, out) in enumerate(zip(records, outputs)):
        result = results.get(i)
        answer = result.answer if result is not None and result.ok else None
        samples.append(ScoredSample(record.id, record.question, out, record.answer, answer,
                                    numbers_match(answer, record.answer), {
                                        "program": programs[i],
                                        "error": "no program" if result is None else result.error}))
    n = max(len(samples), 1)
    return samples, {"accuracy": sum(s.correct for s in samples) / n,
                     "well_formed": sum(s.extracted is not None for s in samples) / n,
                     "timeouts": sum(s.extra["error"] in ("timeout", "cpu") for s in samples) / n,
                     "num_samples": float(len(samples))}


Generate = Callable[[list[str], int, list[str]], list[str]]


def evaluate_gsm8k(generate: Generate, records: Sequence[ReasoningRecord], config: Gsm8kConfig,
                   out_path: str | Path | None = None) -> dict[str, float]:
    """Prompt, generate (``generate(prompts, max_new_tokens, stop) -> texts``, greedy), score, and write one
    JSON line per sample to ``out_path``."""
    fewshot = load_fewshot(config.fewshot, config.shots, config.kind)
    prompts = [build_prompt(r, fewshot, config.kind, config.template) for r in records]
    outputs = generate(prompts, config.max_new_tokens, list(config.stop))
    if config.kind == "program":
        sandbox = SandboxConfig(timeout_s=config.program_timeout_s, cpu_seconds=max(1, int(config.program_timeout_s)))
        samples, metrics = score_programs(records, outputs, sandbox)
    else:
        samples, metrics = score_cot(records, outputs, config.extract)
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample.row()) + "\n")
    return metrics


def backend_generate(backend: Any, desc: str = "gsm8k", chat_template: bool = False) -> Generate:
    """A :data:`Generate` over a :class:`mova.inference.GenerationBackend` (greedy); with ``chat_template`` each
    prompt goes in as one user turn of the model's chat template (:func:`~mova.model.templates.user_turn_prompt`)."""
    from mova.inference.sampling import SamplingParams
    from mova.model.templates import user_turn_prompt

    def generate(prompts: list[str], max_new_tokens: int, stop: list[str]) -> list[str]:
        params = SamplingParams(max_new_tokens=max_new_tokens, stop=stop)
        if chat_template:
            prompts = [user_turn_prompt(backend.processor.tokenizer, p) for p in prompts]
        return [g.text for g in backend.generate(prompts, params=params, desc=desc)]

    return generate


def config_from_options(options: dict[str, Any], **defaults: Any) -> Gsm8kConfig:
    from mova.config import from_dict

    return from_dict(Gsm8kConfig, {**defaults, **options}, where="gsm8k options")


@register_task("gsm8k", "grade-school maths (GSM8K format): accuracy on the final number, CoT or program answers")
def gsm8k_task(ctx: TaskContext) -> dict[str, float]:
    config = config_from_options(dict(ctx.options), max_new_tokens=ctx.max_new_tokens, limit=ctx.limit)
    records = load_reasoning(config.data, split=config.split, limit=config.limit)
    out = ctx.out_dir / "gsm8k.jsonl" if ctx.is_main else None
    return evaluate_gsm8k(backend_generate(ctx.backend(), chat_template=config.chat_template), records, config, out)
