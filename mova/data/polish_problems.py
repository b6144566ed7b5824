"""Problems for Self-Polish: the GSM8K, SVAMP, MultiArith and AQuA record shapes, and the few-shot prompt files.

Each dataset writes its problems differently; a registry of formats turns a record into one
:class:`Problem` (question text, gold answer, options for multiple choice). ``format="auto"`` picks the
format from the first record's keys, so a user can point ``mova polish`` at any of the four files as
released:

========== ======================================================================= =========================
format     record                                                                  gold
========== ======================================================================= =========================
gsm8k      ``{"question", "answer": "... #### 72"}``                               number after ``####``
svamp      ``{"ID", "Body", "Question", "Answer": 8.0}`` (question = Body + Question) ``Answer``
multiarith ``{"iIndex", "sQuestion", "lSolutions": [8.0]}``                        ``lSolutions[0]``
aqua       ``{"question", "options": ["A)21", ...], "correct": "A"}``               option letter
========== ======================================================================= =========================

Prompt files (``mova/data/polish_prompts/*.json``) hold an instruction, an example template, a query
template, a separator, stop strings and few-shot examples; :class:`PromptFile` renders them. A user's own
file in the same shape can replace any shipped one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mova.data.records import read_json_records
from mova.errors import DataError, UnknownNameError
from mova.registry import Registry

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "data" / "polish_prompts"


@dataclass
class Problem:
    """One problem: ``kind`` is ``"number"`` (gold is a number string) or ``"choice"`` (gold is a letter and
    ``options`` lists ``"(A) 21"``-style option texts)."""

    id: str
    question: str
    gold: str | None
    kind: str = "number"
    options: list[str] = field(default_factory=list)

    @property
    def letters(self) -> str:
        return "".join(o[1] for o in self.options) if self.options else "ABCDE"


Parser = Callable[[Mapping[str, Any], int], Problem]

#: format name -> (detector(record) -> bool, parser(record, index) -> Problem)
PROBLEM_FORMATS: Registry[tuple[Callable[[Mapping[str, Any]], bool], Parser]] = Registry("problem format")


def register_problem_format(name: str, detect: Callable[[Mapping[str, Any]], bool]) -> Callable[[Parser], Parser]:
    def wrap(fn: Parser) -> Parser:
        PROBLEM_FORMATS.register(name, (detect, fn))
        return fn

    return wrap


def _number(value: Any) -> str | None:
    from mova.metrics.answers import format_number, normalize_number

    x = normalize_number(value)
    return None if x is None else format_number(x)


def _require(record: Mapping[str, Any], keys: Sequence[str], fmt: str, index: int) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{fmt} record {index} (id {record.get('id', record.get('ID', '?'))!r}) lacks "
                        f"{missing}; its keys are {sorted(record)}")


@register_problem_format("aqua", lambda r: "options" in r and "question" in r)
def _aqua(r: Mapping[str, Any], i: int) -> Problem:
    _require(r, ["question", "options"], "aqua", i)
    options = []
    for o in r["options"]:
        o = str(o).strip()
        letter, rest = o[0], o[1:].lstrip(")").lstrip(".").strip()
        options.append(f"({letter}) {rest}")
    gold = str(r["correct"]).strip().upper() if r.get("correct") is not None else None
    return Problem(str(r.get("id", i)), str(r["question"]).strip(), gold, "choice", options)


@register_problem_format("gsm8k", lambda r: "question" in r and "answer" in r)
def _gsm8k(r: Mapping[str, Any], i: int) -> Problem:
    from mova.metrics.answers import extract_answer

    _require(r, ["question", "answer"], "gsm8k", i)
    answer = str(r["answer"])
    gold = extract_answer(answer, "gsm8k") if "####" in answer else _number(answer)
    return Problem(str(r.get("id", i)), str(r["question"]).strip(), gold)


@register_problem_format("svamp", lambda r: "Body" in r and "Question" in r)
def _svamp(r: Mapping[str, Any], i: int) -> Problem:
    _require(r, ["Body", "Question"], "svamp", i)
    body = str(r["Body"]).strip()
    sep = "" if not body or body.endswith((".", "?", "!")) else "."
    question = f"{body}{sep} {str(r['Question']).strip()}".strip()
    return Problem(str(r.get("ID", i)), question, _number(r.get("Answer")))


@register_problem_format("multiarith", lambda r: "sQuestion" in r)
def _multiarith(r: Mapping[str, Any], i: int) -> Problem:
    _require(r, ["sQuestion"], "multiarith", i)
    solutions = r.get("lSolutions") or [None]
    return Problem(str(r.get("iIndex", i)), str(r["sQuestion"]).strip(), _number(solutions[0]))


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The problems of a ``.json`` / ``.jsonl`` file."""
    return read_json_records(path, "problem")


def detect_format(record: Mapping[str, Any]) -> str:
    for name, (detect, _) in PROBLEM_FORMATS.items():
        if detect(record):
            return name
    raise DataError(f"cannot tell the problem format from the keys {sorted(record)}; pass the format "
                    f"({', '.join(PROBLEM_FORMATS)})")


def load_problems(path: str | Path, fmt: str = "auto", limit: int | None = None) -> tuple[list[Problem], str]:
    """``(problems, format)`` from a dataset file in one of :data:`PROBLEM_FORMATS` (``auto``: by keys)."""
    records = read_records(path)[:limit]
    if not records:
        raise DataError(f"{path}: no problems")
    if fmt == "auto":
        fmt = detect_format(records[0])
    if fmt not in PROBLEM_FORMATS:
        raise UnknownNameError("problem format", fmt, PROBLEM_FORMATS)
    parse = PROBLEM_FORMATS[fmt][1]
    return [parse(r, i) for i, r in enumerate(records)], fmt


@dataclass
class PromptFile:
    """A few-shot prompt: ``instruction``, examples rendered by ``example_template``, then the query."""

    name: str
    example_template: str
    query_template: str
    examples: list[dict[str, str]]
    instruction: str = ""
    separator: str = "\n\n"
    stop: list[str] = field(default_factory=list)
    description: str = ""

    @classmethod
    def load(cls, name_or_path: str | Path) -> PromptFile:
        """A shipped prompt by name (``rewrite``, ``answer_cot``, ...) or a JSON file of the same shape."""
        path = Path(name_or_path)
        if not path.suffix:
            path = PROMPTS_DIR / f"{name_or_path}.json"
        if not path.is_file():
            shipped = sorted(p.stem for p in PROMPTS_DIR.glob("*.json"))
            raise DataError(f"prompt file {name_or_path!r} not found (shipped prompts: {', '.join(shipped)})")
        data = json.loads(path.read_text(encoding="utf-8"))
        try:
            return cls(**data)
        except TypeError as e:
            raise DataError(f"{path}: not a prompt file ({e})") from e

    def render(self, shots: int | None = None, **query: str) -> str:
        """The full prompt for ``query`` with the first ``shots`` examples (all by default)."""
        examples = self.examples if shots is None else self.examples[:shots]
        parts = [self.instruction] if self.instruction else []
        parts += [self.example_template.format(**ex) for ex in examples]
        parts.append(self.query_template.format(**query))
        return self.separator.join(parts)


__all__ = ["PROBLEM_FORMATS", "PROMPTS_DIR", "Problem", "PromptFile", "detect_format", "load_problems",
           "read_records", "register_problem_format"]
