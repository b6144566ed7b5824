"""Maths reasoning records (GSM8K, SVAMP, program chain of thought) read into one shape.

Every reader returns :class:`ReasoningRecord`\\ s, so the R3 curriculum (:mod:`mova.rl.curriculum`), the
rewards (:mod:`mova.rl.reasoning_rewards`) and the GSM8K evaluation (:mod:`mova.evaluation.gsm8k`) do not
care where a problem came from. Formats, detected from a row's keys (or named with ``fmt=``):

``gsm8k``
    ``{"question": str, "answer": "step\\nstep\\n#### 72"}`` -- GSM8K's own format. The rationale is the
    text before the ``####`` line; GSM8K's calculator annotations ``<<48/2=24>>`` are removed by default
    (they are tool calls for the original authors' calculator, not reasoning a model should imitate).
``svamp``
    ``{"Body": str, "Question": str, "Equation": "( 5.0 + 3.0 )", "Answer": 8.0}`` (SVAMP's release).
    The question is body + question; the rationale is one line, ``equation = answer``.
``program``
    ``{"question": str, "program": "def solution():\\n    ...\\n    return x", "answer": value}`` --
    program chain of thought. ``answer`` may also be in GSM8K form; a row may carry both a ``program`` and
    a GSM8K ``answer`` rationale (the bundled arithmetic set does), giving both kinds.

Files: ``.jsonl`` (one object a line) or ``.json`` (a list, or ``{"data": [...]}``). A hub name
(``openai/gsm8k``) goes through ``datasets.load_dataset(name, "main", split=...)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mova.data.records import read_json_records
from mova.errors import DataError
from mova.metrics.answers import extract_answer, format_number, normalize_number


@dataclass(frozen=True)
class ReasoningRecord:
    """One maths problem. ``rationale`` is the chain of thought *without* the final ``#### value`` line;
    ``answer`` is the gold value as a plain number string; ``program`` the program CoT (or ``None``)."""

    id: str
    question: str
    rationale: str
    answer: str
    program: str | None = None

    def gsm8k_answer(self) -> str:
        """The record's target in GSM8K form: the rationale lines, then ``#### value``."""
        return to_gsm8k_answer(self.rationale, self.answer)


def to_gsm8k_answer(rationale: str, answer: str) -> str:
    body = rationale.strip("\n")
    return f"{body}\n#### {answer}" if body else f"#### {answer}"


_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _value(raw: Any, where: str) -> str:
    value = normalize_number(raw)
    if value is None:
        raise DataError(f"{where}: the gold answer {raw!r} is not a number")
    return format_number(value)


def _from_gsm8k(row: dict[str, Any], where: str, strip_calculator: bool = True) -> ReasoningRecord:
    answer_text = _text(row, "answer", where)
    if "####" not in answer_text:
        raise DataError(f"{where}: the 'answer' field has no '#### value' line: {answer_text[-80:]!r}")
    rationale = answer_text[:answer_text.index("####")].rstrip()
    if strip_calculator:
        rationale = _CALCULATOR.sub("", rationale)
    value = extract_answer(answer_text, "gsm8k")
    if value is None:
        raise DataError(f"{where}: cannot read a number after '####': {answer_text[-80:]!r}")
    program = row.get("program") if isinstance(row.get("program"), str) else None
    return ReasoningRecord(str(row.get("id", where)), _text(row, "question", where), rationale, value, program)


def _from_svamp(row: dict[str, Any], where: str) -> ReasoningRecord:
    body, question = _text(row, "Body", where), _text(row, "Question", where)
    value = _value(row.get("Answer"), where)
    equation = str(row.get("Equation", "")).strip()
    rationale = f"{equation} = {value}" if equation else ""
    joined = f"{body.strip()} {question.strip()}".strip()
    return ReasoningRecord(str(row.get("ID", where)), joined, rationale, value)


def _from_program(row: dict[str, Any], where: str) -> ReasoningRecord:
    program = _text(row, "program", where)
    if not re.search(r"def\s+\w+\s*\(", program):
        raise DataError(f"{where}: the 'program' field defines no function: {program[:80]!r}")
    raw = row.get("answer")
    if isinstance(raw, str) and "####" in raw:
        base = _from_gsm8k(row, where)
        return ReasoningRecord(base.id, base.question, base.rationale, base.answer, program)
    return ReasoningRecord(str(row.get("id", where)), _text(row, "question", where), "", _value(raw, where), program)


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} is missing or empty (keys: {sorted(row)})")
    return value


#: format name -> row parser(row, where) -> ReasoningRecord.
READERS: dict[str, Callable[[dict[str, Any], str], ReasoningRecord]] = {
    "gsm8k": _from_gsm8k,
    "svamp": _from_svamp,
    "program": _from_program,
}


def detect_format(row: dict[str, Any]) -> str:
    """The format of one row from its keys (see the module docstring)."""
    if "Body" in row and "Question" in row:
        return "svamp"
    if "program" in row and not (isinstance(row.get("answer"), str) and "####" in row["answer"]):
        return "program"
    if "question" in row and "answer" in row:
        return "gsm8k"
    raise DataError(f"cannot tell the reasoning format of a row with keys {sorted(row)}; expected GSM8K "
                    "(question, answer with '#### value'), SVAMP (Body, Question, Equation, Answer) or "
                    "program CoT (question, program, answer)")


def parse_rows(rows: Sequence[dict[str, Any]], fmt: str = "auto", source: str = "data") -> list[ReasoningRecord]:
    """Records from raw rows; an unreadable row raises :class:`DataError` naming ``source`` and its index."""
    if fmt != "auto" and fmt not in READERS:
        raise DataError(f"unknown reasoning format {fmt!r}; known: auto, {', '.join(READERS)}")
    records = []
    for i, row in enumerate(rows):
        where = f"{source} row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object, got {type(row).__name__}")
        records.append(READERS[detect_format(row) if fmt == "auto" else fmt](row, where))
    return records


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The raw rows of a local ``.jsonl`` or ``.json`` file."""
    return read_json_records(path, "reasoning data")


def load_reasoning(source: str | Path, split: str = "test", fmt: str = "auto", limit: int | None = None,
                   config: str = "main") -> list[ReasoningRecord]:
    """Records from a local file, a folder holding ``{split}.jsonl``/``{split}.json``, or a hub dataset."""
    path = Path(source)
    if path.is_dir():
        candidates = [path / f"{split}.jsonl", path / f"{split}.json"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataError(f"folder {path} has no {split}.jsonl or {split}.json")
        path = found
    if path.is_file():
        rows = read_rows(path)
        label = str(path)
    elif path.suffix in (".json", ".jsonl"):
        raise DataError(f"reasoning data file {path} does not exist")
    else:
        import datasets

        rows = list(datasets.load_dataset(str(source), config, split=split))
        label = f"{source}:{split}"
    if limit is not None:
        rows = rows[:limit]
    return parse_rows(rows, fmt=fmt, source=label)
