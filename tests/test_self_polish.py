"""Self-Polish: the loop's stopping and final-choice rules (a scripted generator), answer cleaning, the four
dataset formats, the shipped prompt files, and ``mova polish`` end to end on a tiny random LM."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest

from mova.cli import main as cli_main
from mova.data.polish_problems import PROMPTS_DIR, Problem, PromptFile, load_problems
from mova.errors import ConfigError, DataError
from mova.evaluation.self_polish import (
    FINAL_RULES,
    PolishConfig,
    SelfPolish,
    answers_agree,
    choose_final,
    clean_answer,
    summarize_polish,
)
from mova.inference.generation import Generation
from mova.inference.sampling import SamplingParams
from tests.conftest import save_tiny_text_lm

ARITH = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def query_of(prompt: str) -> str | None:
    """The problem text of an answer prompt's final query (``Q: ...`` up to its options or ``A:``)."""
    if not prompt.endswith("\nA:") or "Q: " not in prompt:
        return None
    return prompt.rsplit("Q: ", 1)[1].rsplit("\nA:", 1)[0].split("\nAnswer Choices:")[0]


def rewrite_of(prompt: str) -> str | None:
    if not prompt.endswith("\nRewritten problem:"):
        return None
    return prompt.rsplit("Original problem: ", 1)[1].rsplit("\nRewritten problem:", 1)[0]


class ScriptedBackend:
    """Answers and rewrites from tables keyed by problem text; records every call's prompts."""

    name = "scripted"

    def __init__(self, answers: dict[str, str], rewrites: dict[str, str]):
        self.answers, self.rewrites = answers, rewrites
        self.calls: list[tuple[str, list[str], SamplingParams]] = []

    def generate(self, prompts: Sequence[str], images=None, *, params=None, desc="") -> list[Generation]:
        out = []
        kinds = set()
        for p in prompts:
            if (key := rewrite_of(p)) is not None:
                kinds.add("rewrite")
                text = self.rewrites[key]
            else:
                key = query_of(p)
                assert key is not None, p[-200:]
                kinds.add("answer")
                text = self.answers[key]
            out.append(Generation(text=text, num_tokens=len(text.split()), finished=True))
        assert len(kinds) == 1, "one call mixes rewriting and answering"
        self.calls.append((kinds.pop(), [self._key(p) for p in prompts], params))
        return out

    @staticmethod
    def _key(prompt: str) -> str:
        return rewrite_of(prompt) or query_of(prompt)

    def chat(self, conversations, images=None, *, params=None, desc=""):
        return self.generate([c[0]["content"] for c in conversations], params=params, desc=desc)


def chain(name: str, answers: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Versions ``name/v0 .. name/vT`` with the given answer replies; each rewrite gives the next version."""
    ans, rew = {}, {}
    for t, a in enumerate(answers):
        ans[f"{name} v{t}"] = a
        rew[f"{name} v{t}"] = f"{name} v{t + 1}"
    return ans, rew


def scripted(chains: dict[str, list[str]]) -> tuple[ScriptedBackend, list[Problem]]:
    ans, rew = {}, {}
    for name, replies in chains.items():
        a, r = chain(name, replies)
        ans.update(a)
        rew.update(r)
    problems = [Problem(name, f"{name} v0", "7") for name in chains]
    return ScriptedBackend(ans, rew), problems


def test_loop_stops_when_two_consecutive_answers_agree():
    backend, problems = scripted({
        "p1": ["The answer is 5.", "The answer is 7.", "The answer is 7.", "The answer is 9."],
        "p2": ["The answer is 7.", "It is 7.00 in total. The answer is 7.", "never asked"],
        "p3": ["The answer is 1.", "The answer is 2.", "The answer is 1.", "The answer is 3."],
    })
    results = SelfPolish(backend, PolishConfig(max_rounds=3, final="original")).run(problems)
    p1, p2, p3 = results
    assert p1.converged and p1.rounds == 2 and p1.answers == ["5", "7", "7"] and p1.final_answer == "7"
    assert p2.converged and p2.rounds == 1 and p2.versions == ["p2 v0", "p2 v1"] and p2.final_answer == "7"
    assert not p3.converged and p3.rounds == 3 and p3.answers == ["1", "2", "1", "3"]
    assert p3.final_answer == "1" and p3.final_rule == "original"
    assert p3.answer_by_rule == {"original": "1", "first": "2", "last": "3", "vote": "1"}
    # converged problems leave the batch: round 1 rewrites all three, round 2 two, round 3 only p3
    rewrites = [keys for kind, keys, _ in backend.calls if kind == "rewrite"]
    assert rewrites == [["p1 v0", "p2 v0", "p3 v0"], ["p1 v1", "p3 v1"], ["p3 v2"]]
    answers = [keys for kind, keys, _ in backend.calls if kind == "answer"]
    assert answers[0] == ["p1 v0", "p2 v0", "p3 v0"] and answers[-1] == ["p3 v3"]
    # all versions and raw answers are kept
    assert p1.raw_answers == ["The answer is 5.", "The answer is 7.", "The answer is 7."]
    assert p1.to_dict()["rounds"] == 2


def test_unreadable_answers_never_agree_and_get_no_vote():
    backend, problems = scripted({"p": ["no idea", "still no idea", "The answer is 4.", "hmm"]})
    (r,) = SelfPolish(backend, PolishConfig(max_rounds=3, final="vote")).run(problems)
    assert r.answers == [None, None, "4", None] and not r.converged and r.rounds == 3
    assert r.answer_by_rule == {"original": None, "first": None, "last": None, "vote": "4"}


def test_zero_rounds_means_no_rewrites():
    backend, problems = scripted({"p": ["The answer is 7."]})
    (r,) = SelfPolish(backend, PolishConfig(max_rounds=0)).run(problems)
    assert [k for k, _, _ in backend.calls] == ["answer"] and r.rounds == 0 and r.correct and r.correct_original


def reference_final(answers: list[str | None], rule: str) -> str | None:
    """An independent statement of the final-choice rule for a run that did not converge."""
    if rule == "original":
        return answers[0]
    if rule == "first":
        return answers[1] if len(answers) > 1 else answers[0]
    if rule == "last":
        return answers[-1]
    counts: dict[float, int] = {}
    latest: dict[float, int] = {}
    for i, a in enumerate(answers):
        if a is not None:
            counts[float(a)] = counts.get(float(a), 0) + 1
            latest[float(a)] = i
    if not counts:
        return None
    best = max(counts, key=lambda v: (counts[v], latest[v]))
    return answers[latest[best]]


def test_final_choice_rules_on_random_sequences():
    import random

    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 5)
        seq: list[str | None] = [rng.choice(["1", "2", "3", "2.0", None]) for _ in range(n)]
        for rule in FINAL_RULES:
            got = choose_final(seq, False, rule)
            want = reference_final(seq, rule)
            assert (got is None and want is None) or answers_agree(got, want), (seq, rule, got, want)
        assert choose_final(seq, True, "original") == seq[-1]  # converged: the agreed answer
    assert choose_final(["1", "2", "3"], False, "vote") == "3"  # a three-way tie goes to the latest
    with pytest.raises(ConfigError, match="final"):
        choose_final(["1"], False, "best")
    with pytest.raises(ConfigError, match="final"):
        PolishConfig(final="majority")


@pytest.mark.parametrize(("text", "expected"), [
    ("12 * 3 = 36, minus 6 is 30. The answer is 30.", "30"),
    ("The answer is $1,250.", "1250"),
    ("So she pays 3.50 dollars. The answer is 3.5", "3.5"),
    ("The final answer is -4.", "-4"),
    ("They have 12 apples and eat 5, leaving 7 apples.", "7"),
    ("Half of it, so the answer is 3/4.", "0.75"),
    ("I cannot tell.", None),
])
def test_clean_answer_numbers(text, expected):
    got = clean_answer(text, Problem("x", "q", None))
    assert (got is None) if expected is None else answers_agree(got, expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("20 / 4 = 5 groups, 5 * 3 = 15. The answer is (B).", "B"),
    ("Answer: D", "D"),
    ("(C) 26 cm", "C"),
    ("E", "E"),
    ("A rectangle has no answer here", None),
])
def test_clean_answer_choices(text, expected):
    p = Problem("x", "q", "B", "choice", ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) 5"])
    assert clean_answer(text, p) == expected


def test_choice_problems_polish_with_the_choice_prompt():
    p = Problem("q", "q v0", "C", "choice", ["(A) 1", "(B) 2", "(C) 3"])
    backend = ScriptedBackend({"q v0": "The answer is (A).", "q v1": "The answer is (C).", "q v2": "(C)"},
                              {"q v0": "q v1", "q v1": "q v2"})
    (r,) = SelfPolish(backend, PolishConfig(max_rounds=3, answer_style="standard")).run([p])
    assert r.answers == ["A", "C", "C"] and r.converged and r.correct and r.correct_original is False


def test_summary_counts_with_and_without_polishing():
    backend, problems = scripted({
        "a": ["The answer is 7.", "The answer is 7."],                       # right, right
        "b": ["The answer is 3.", "The answer is 7.", "The answer is 7."],   # wrong -> right
        "c": ["The answer is 7.", "The answer is 2.", "The answer is 2."],   # right -> wrong
        "d": ["The answer is 1.", "The answer is 7.", "The answer is 5."],   # never settles
    })
    results = SelfPolish(backend, PolishConfig(max_rounds=2, final="first")).run(problems)
    s = summarize_polish(results, "first")
    assert s["accuracy_original"] == 2 / 4
    assert s["accuracy_polished"] == 3 / 4  # a, b and d (first rewrite's answer is 7)
    assert s["accuracy_by_rule"]["original"] == 2 / 4 and s["accuracy_by_rule"]["last"] == 2 / 4
    assert s["converged_rate"] == 3 / 4 and s["mean_rewrites"] == (1 + 2 + 2 + 2) / 4


def test_dataset_formats(tmp_path):
    gsm = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"}]
    svamp = [{"ID": "chal-1", "Body": "Jack had 8 pens", "Question": "How many pens did he give away if 3 are left?",
              "Equation": "( 8.0 - 3.0 )", "Answer": 5.0}]
    multi = [{"iIndex": 12, "sQuestion": "A box has 2 rows of 6 eggs. How many eggs?", "lSolutions": [12.0]}]
    aqua = [{"question": "What is 2 + 2?", "options": ["A)3", "B)4", "C)5", "D)6", "E)7"], "rationale": "2+2=4",
             "correct": "B"}]
    cases = {"gsm8k": (gsm, "7", "number"), "svamp": (svamp, "5", "number"),
             "multiarith": (multi, "12", "number"), "aqua": (aqua, "B", "choice")}
    for fmt, (records, gold, kind) in cases.items():
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records))
        (p,), detected = load_problems(path)
        assert detected == fmt and p.gold == gold and p.kind == kind
    (s,), _ = load_problems(tmp_path / "svamp.jsonl")
    assert s.question == "Jack had 8 pens. How many pens did he give away if 3 are left?" and s.id == "chal-1"
    (a,), _ = load_problems(tmp_path / "aqua.jsonl")
    assert a.options[1] == "(B) 4" and a.letters == "ABCDE"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"sQuestion": "x"}, {"iIndex": 3}]))
    with pytest.raises(DataError, match="record 1"):
        load_problems(bad, "multiarith")
    bad.write_text(json.dumps([{"text": "x"}]))
    with pytest.raises(DataError, match="format"):
        load_problems(bad)


def test_shipped_prompt_examples_answer_themselves():
    """Each shipped answer prompt's examples, read back by the answer cleaner, give their own answers; the
    rewrite examples keep every number the original's answer needs (a copied-wrong example would teach the
    model to drop facts)."""
    names = sorted(p.stem for p in PROMPTS_DIR.glob("*.json"))
    assert {"rewrite", "answer_standard", "answer_cot", "answer_choice_standard", "answer_choice_cot"} <= set(names)
    for name in names:
        pf = PromptFile.load(name)
        if name == "rewrite":
            for ex in pf.examples:
                assert set(re.findall(r"\d+", ex["rewritten"])) - {"2", "3", "5"} <= set(re.findall(r"\d+",
                                                                                                  ex["original"]))
            assert pf.render(problem="P?").endswith("Original problem: P?\nRewritten problem:")
            continue
        kind = "choice" if "choice" in name else "number"
        for ex in pf.examples:
            text = pf.example_template.format(**ex).split("\nA:", 1)[1]
            assert clean_answer(text, Problem("x", "q", None, kind)) == ex["answer"], (name, ex)
        rendered = pf.render(2, question="NEW", options="(A) 1 (B) 2")
        assert rendered.count("Q: ") == 3 and query_of(rendered) == "NEW"
    with pytest.raises(DataError, match="shipped prompts"):
        PromptFile.load("no_such_prompt")


def test_cot_numbers_in_shipped_examples_are_right():
    """The arithmetic in the chain-of-thought examples is correct (``a op b = c`` steps recomputed)."""
    for name in ("answer_cot", "answer_choice_cot"):
        for ex in PromptFile.load(name).examples:
            for a, op, b, c in re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", ex["reasoning"]):
                assert ARITH[op](float(a), float(b)) == float(c), ex["reasoning"]


def test_mova_polish_cli_end_to_end(tmp_path, capsys):
    save_tiny_text_lm(tmp_path / "lm")
    data = tmp_path / "gsm.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"Ann has {i} pens and gets {i + 1} more. How many?",
                                          "answer": f"#### {2 * i + 1}"}) for i in range(3)))
    out = tmp_path / "out"
    rc = cli_main(["polish", "--checkpoint", str(tmp_path / "lm"), "--data", str(data), "--max-rounds", "1",
                   "--answer-max-new-tokens", "6", "--rewrite-max-new-tokens", "6", "--shots", "1",
                   "--out-dir", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "polish.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["versions"]) == len(r["answers"]) == len(r["raw_answers"]) for r in rows)
    assert all(r["versions"][0].startswith("Ann has") for r in rows)
    record = json.loads((out / "results.json").read_text())
    assert record["summary"]["n"] == 3 and record["config"]["max_rounds"] == 1
    assert record["provenance"]["seed"] == 0 and record["provenance"]["versions"]["torch"]
    assert record["summary"]["accuracy_original"] == sum(r["correct_original"] for r in rows) / 3
    assert "accuracy, Self-Polish" in (out / "results.md").read_text()
    # the suite's self_polish task with the same settings gives the same per-problem results
    suite = tmp_path / "suite"
    rc = cli_main(["eval", "run", "--checkpoint", str(tmp_path / "lm"), "--tasks", "self_polish",
                   "--task-option", f"self_polish.data={data}", "--task-option", "self_polish.max_rounds=1",
                   "--task-option", "self_polish.answer_max_new_tokens=6",
                   "--task-option", "self_polish.rewrite_max_new_tokens=6", "--task-option", "self_polish.shots=1",
                   "--out-dir", str(suite), "--no-progress", "--device", "cpu"])
    assert rc == 0
    again = [json.loads(line) for line in (suite / "lm" / "self_polish" / "polish.jsonl").read_text().splitlines()]
    assert again == rows
    metrics = json.loads((suite / "lm" / "summary.json").read_text())["tasks"]["self_polish"]["metrics"]
    assert metrics["accuracy_original"] == record["summary"]["accuracy_original"]
    assert metrics["mean_rewrites"] == record["summary"]["mean_rewrites"]
