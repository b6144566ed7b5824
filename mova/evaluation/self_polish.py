"""Self-Polish: the model rewrites a problem into a clearer one before answering, until its answers settle.

For each problem ``q0``:

1. answer ``q0`` -> ``a0``;
2. round ``t = 1 .. max_rounds``: rewrite the latest version ``q(t-1)`` -> ``qt`` (few-shot rewrite prompt),
   answer ``qt`` -> ``at``; stop as soon as ``at`` agrees with ``a(t-1)`` (*converged*);
3. the final answer: when converged, the answer the last two rounds agree on; otherwise the ``final`` rule:
   ``original`` (``a0``), ``first`` (``a1``, the first rewrite's answer), ``last`` (``a(max_rounds)``) or
   ``vote`` (the most frequent answer among ``a0 .. a(max_rounds)``, ties to the most recent one).

Answers agree when their cleaned forms match: numbers numerically (:func:`mova.metrics.answers.numbers_match`),
options by letter. An answer that cannot be read (``None``) agrees with nothing and gets no vote.

All problems move through the rounds together, so each round is two batched generation calls over the
problems still polishing (a converged problem leaves the batch). Since the loop never looks at the final
rule, one run scores all four rules (``accuracy_by_rule`` in :func:`summarize_polish`). Every version,
raw answer and cleaned answer is kept in the :class:`PolishResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from mova.data.polish_problems import Problem, PromptFile
from mova.errors import ConfigError
from mova.inference.backends import GenerationBackend
from mova.inference.sampling import SamplingParams
from mova.metrics.answers import extract_answer, extract_choice, numbers_match

FINAL_RULES = ("original", "first", "last", "vote")
ANSWER_STYLES = ("standard", "cot")


@dataclass
class PolishConfig:
    """Self-Polish settings. ``answer_prompt`` / ``rewrite_prompt``: a shipped prompt name or a JSON file
    (default: ``answer_<style>`` or ``answer_choice_<style>`` by problem kind, and ``rewrite``); ``shots``:
    how many of the prompt's examples to use (all by default); ``chat``: wrap each prompt as one user turn
    of the model's chat template (for chat-tuned models) instead of sending it raw."""

    max_rounds: int = 2
    final: str = "vote"
    answer_style: str = "cot"
    answer_prompt: str | None = None
    rewrite_prompt: str = "rewrite"
    shots: int | None = None
    chat: bool = False
    answer_max_new_tokens: int = 256
    rewrite_max_new_tokens: int = 200
    seed: int = 0
    do_sample: bool = False
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.final not in FINAL_RULES:
            raise ConfigError(f"final must be one of {FINAL_RULES}, got {self.final!r}")
        if self.answer_style not in ANSWER_STYLES:
            raise ConfigError(f"answer_style must be one of {ANSWER_STYLES}, got {self.answer_style!r}")
        if self.max_rounds < 0:
            raise ConfigError(f"max_rounds must be >= 0, got {self.max_rounds}")


@dataclass
class PolishResult:
    """One problem's run: ``versions[0]`` is the original problem, ``versions[t]`` the t-th rewrite;
    ``raw_answers[t]`` / ``answers[t]`` the model's answer to ``versions[t]`` and its cleaned form."""

    id: str
    gold: str | None
    versions: list[str] = field(default_factory=list)
    raw_answers: list[str] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)
    converged: bool = False
    final_answer: str | None = None
    final_rule: str = ""
    answer_by_rule: dict[str, str | None] = field(default_factory=dict)
    correct_original: bool | None = None
    correct: bool | None = None
    kind: str = "number"

    @property
    def rounds(self) -> int:
        """Rewrites made (0 when polishing was off)."""
        return len(self.versions) - 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rounds": self.rounds}


def clean_answer(text: str, problem: Problem) -> str | None:
    """The final answer in a model's reply: an option letter for a multiple-choice problem, else a number
    ("The answer is N" first, then the last number in the reply)."""
    if problem.kind == "choice":
        return extract_choice(text, problem.letters)
    return extract_answer(text, "answer_is") or _last_number(text)


def _last_number(text: str) -> str | None:
    from mova.metrics.answers import format_number, normalize_number

    raw = extract_answer(text, "flexible")
    value = normalize_number(raw.rstrip(".")) if raw else None
    return None if value is None else format_number(value)


def answers_agree(a: str | None, b: str | None, kind: str = "number") -> bool:
    """Whether two cleaned answers are the same answer (``None`` agrees with nothing)."""
    if a is None or b is None:
        return False
    return a == b if kind == "choice" else numbers_match(a, b)


def choose_final(answers: Sequence[str | None], converged: bool, rule: str, kind: str = "number") -> str | None:
    """The final answer of one problem's answer sequence ``a0 .. aT`` under ``rule`` (see the module doc)."""
    if rule not in FINAL_RULES:
        raise ConfigError(f"final rule must be one of {FINAL_RULES}, got {rule!r}")
    if not answers:
        return None
    if converged or rule == "last":
        return answers[-1]
    if rule == "original":
        return answers[0]
    if rule == "first":
        return answers[1] if len(answers) > 1 else answers[0]
    # vote: count answers that agree; ties go to the answer seen most recently
    groups: list[list[int]] = []  # indices of answers in each agreement group
    for i, a in enumerate(answers):
        if a is None:
            continue
        for g in groups:
            if answers_agree(answers[g[0]], a, kind):
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    best = max(groups, key=lambda g: (len(g), g[-1]))
    return answers[best[-1]]


def is_correct(answer: str | None, problem: Problem) -> bool | None:
    if problem.gold is None:
        return None
    return answers_agree(answer, problem.gold, problem.kind)


class SelfPolish:
    """Runs Self-Polish on a :class:`~mova.inference.backends.GenerationBackend`."""

    def __init__(self, backend: GenerationBackend, config: PolishConfig | None = None):
        self.backend = backend
        self.config = config or PolishConfig()
        self._prompts: dict[str, PromptFile] = {}

    def prompt_file(self, name: str) -> PromptFile:
        if name not in self._prompts:
            self._prompts[name] = PromptFile.load(name)
        return self._prompts[name]

    def answer_prompt(self, problem: Problem) -> PromptFile:
        c = self.config
        name = c.answer_prompt or (f"answer_choice_{c.answer_style}" if problem.kind == "choice"
                                   else f"answer_{c.answer_style}")
        return self.prompt_file(name)

    def _run(self, prompts: list[str], stop: list[str], max_new_tokens: int, desc: str) -> list[str]:
        c = self.config
        params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=c.do_sample, temperature=c.temperature,
                                seed=c.seed, stop=stop)
        if c.chat:
            gens = self.backend.chat([[{"role": "user", "content": p}] for p in prompts], params=params, desc=desc)
        else:
            gens = self.backend.generate(prompts, params=params, desc=desc)
        return [g.text for g in gens]

    def answer(self, problems: Sequence[Problem], versions: Sequence[str], desc: str = "answer") -> list[str]:
        """Raw answers to ``versions[i]`` (a version of ``problems[i]``), batched by prompt file."""
        out: list[str] = [""] * len(problems)
        by_file: dict[str, list[int]] = {}
        for i, p in enumerate(problems):
            by_file.setdefault(self.answer_prompt(p).name, []).append(i)
        for idx in by_file.values():
            pf = self.answer_prompt(problems[idx[0]])
            prompts = [pf.render(self.config.shots, question=versions[i], options=" ".join(problems[i].options))
                       for i in idx]
            for i, text in zip(idx, self._run(prompts, pf.stop, self.config.answer_max_new_tokens, desc)):
                out[i] = text
        return out

    def rewrite(self, versions: Sequence[str], desc: str = "rewrite") -> list[str]:
        """A clearer version of each problem text; an empty rewrite keeps the text it came from."""
        pf = self.prompt_file(self.config.rewrite_prompt)
        texts = self._run([pf.render(self.config.shots, problem=v) for v in versions], pf.stop,
                          self.config.rewrite_max_new_tokens, desc)
        return [t.strip() or v for t, v in zip(texts, versions)]

    def run(self, problems: Sequence[Problem]) -> list[PolishResult]:
        c = self.config
        results = [PolishResult(id=p.id, gold=p.gold, versions=[p.question], kind=p.kind) for p in problems]
        raw = self.answer(problems, [p.question for p in problems], desc="answer (original)")
        for r, p, text in zip(results, problems, raw):
            r.raw_answers.append(text)
            r.answers.append(clean_answer(text, p))
        for t in range(1, c.max_rounds + 1):
            active = [i for i, r in enumerate(results) if not r.converged]
            if not active:
                break
            new_versions = self.rewrite([results[i].versions[-1] for i in active], desc=f"rewrite (round {t})")
            new_raw = self.answer([problems[i] for i in active], new_versions, desc=f"answer (round {t})")
            for i, v, text in zip(active, new_versions, new_raw):
                r = results[i]
                r.versions.append(v)
                r.raw_answers.append(text)
                r.answers.append(clean_answer(text, problems[i]))
                r.converged = answers_agree(r.answers[-1], r.answers[-2], r.kind)
        for r, p in zip(results, problems):
            r.answer_by_rule = {rule: choose_final(r.answers, r.converged, rule, r.kind) for rule in FINAL_RULES}
            r.final_rule = "converged" if r.converged else c.final
            r.final_answer = r.answer_by_rule[c.final]
            r.correct_original = is_correct(r.answers[0], p)
            r.correct = is_correct(r.final_answer, p)
        return results


def summarize_polish(results: Sequence[PolishResult], final: str = "vote") -> dict[str, Any]:
    """Accuracy without polishing (the original problem's answer) and with it (the ``final`` rule), the
    accuracy of every final rule, the share of problems that converged and the mean number of rewrites."""
    scored = [r for r in results if r.gold is not None]
    n = len(scored)

    def acc(values: Sequence[bool | None]) -> float | None:
        return sum(bool(v) for v in values) / n if n else None

    by_rule = {rule: acc([answers_agree(r.answer_by_rule.get(rule), r.gold, r.kind) for r in scored])
               for rule in FINAL_RULES}
    return {
        "n": len(results),
        "scored": n,
        "accuracy_original": acc([r.correct_original for r in scored]),
        "accuracy_polished": by_rule[final],
        "final_rule": final,
        "accuracy_by_rule": by_rule,
        "converged_rate": sum(r.converged for r in results) / len(results) if results else None,
        "mean_rewrites": sum(r.rounds for r in results) / len(results) if results else None,
        "unreadable_original": sum(r.answers[0] is None for r in results if r.answers),
    }


def format_polish_table(summaries: dict[str, dict[str, Any]]) -> str:
    """A markdown table, one column per run: accuracy without / with polishing and per final rule."""
    runs = list(summaries)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    rows = [("accuracy, no polishing (%)", [pct(summaries[r]["accuracy_original"]) for r in runs]),
            ("accuracy, Self-Polish (%)", [pct(summaries[r]["accuracy_polished"]) for r in runs])]
    for rule in FINAL_RULES:
        rows.append((f"  final = {rule} (%)", [pct(summaries[r]["accuracy_by_rule"][rule]) for r in runs]))
    rows += [("converged (%)", [pct(summaries[r]["converged_rate"]) for r in runs]),
             ("mean rewrites", [f"{summaries[r]['mean_rewrites']:.2f}" for r in runs]),
             ("problems", [str(summaries[r]["n"]) for r in runs])]
    lines = ["| | " + " | ".join(runs) + " |", "|---" * (len(runs) + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows]
    return "\n".join(lines) + "\n"


__all__ = ["ANSWER_STYLES", "FINAL_RULES", "PolishConfig", "PolishResult", "SelfPolish", "answers_agree",
           "choose_final", "clean_answer", "format_polish_table", "is_correct", "summarize_polish"]
