"""Answer extraction: GSM8K / lm-eval-harness parity, number normalisation, multiple choice.

The harness parity is checked two ways: against an independent re-reading of the published
``lm_eval/tasks/gsm8k/gsm8k.yaml`` (v3.0) filter chain (``regex`` with its ``[invalid]`` fallback, then
``take_first``), always; and against the harness' own filter classes and exact-match metric when
``lm_eval`` is importable (it is not a dependency: the full install pulls scipy, scikit-learn, aiohttp and
``evaluate``; ``pip install --no-deps lm-eval`` is enough for these filter classes).
"""

from __future__ import annotations

import random
import re

import pytest

from mova.errors import UnknownNameError
from mova.metrics.answers import (
    ANSWER_EXTRACTORS,
    LM_EVAL_FLEXIBLE_PATTERN,
    LM_EVAL_STRICT_PATTERN,
    extract_answer,
    extract_choice,
    harness_exact_match,
    normalize_number,
    numbers_match,
)

#: what models really write after a GSM8K few-shot prompt, including the awkward cases.
MODEL_OUTPUTS = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
    "She has 5 + 3 = 8 apples.\n#### 8\n\nQuestion: Tom has 3 cats.\nAnswer: 3 + 1 = 4\n#### 4",
    "The total is $1,250.\n#### $1,250",
    "The total is 1,250.\n#### 1,250.",
    "#### -7",
    "####-7",
    "####  12",
    "#### 3.5 hours",
    "#### .5",
    "#### ,",
    "The answer is 42.",
    "The answer is $42.50.",
    "So the final answer is 1,000 dollars",
    "Answer: 17",
    "He pays 2 * 3 = 6 dollars. The answer is 6. Then 7 more.",
    "no numbers here",
    "",
    "I think it is 12 or maybe 13",
    "The price is 3.14159 and the count is -2",
    "They need 1/2 of 10 = 5 cups",
    "The answer is -0.25",
    "It costs $1.5 million.",
    "3...",
    "#### 12\n#### 13",
    "Numbers: 1, 2, 3.",
    "#### 1e5",
    "Step 1: 4 * 6 = 24\nStep 2: 24 - 9 = 15\n#### 15",
    "the answer is: 9",
    "#### 007",
    "He had 10.5.5 things",
    "Total = 5 + 5\n#### 10.00",
    "\u2212 5 degrees\n#### \u22125",
]


def _published_regex_filter(pattern: str, group_select: int, text: str) -> str:
    """The yaml's ``regex`` filter + ``take_first`` on one response, written from the harness' documented
    behaviour (all matches; pick one by index; a match of a multi-group pattern is its first non-empty
    group; strip; no match -> the fallback string ``[invalid]``)."""
    compiled = re.compile(pattern)
    matches = []
    for m in compiled.finditer(text):
        if compiled.groups > 1:
            groups = [g for g in m.groups() if g]
            matches.append(groups[0] if groups else None)
        elif compiled.groups == 1:
            matches.append(m.group(1))
        else:
            matches.append(m.group(0))
    if not matches:
        return "[invalid]"
    chosen = matches[group_select]
    return "[invalid]" if chosen is None else chosen.strip()


def _as_harness(value: str | None) -> str:
    return "[invalid]" if value is None else value


def test_patterns_are_the_published_yaml_ones():
    assert LM_EVAL_STRICT_PATTERN == "#### (\\-?[0-9\\.\\,]+)"
    assert LM_EVAL_FLEXIBLE_PATTERN == "(-?[$0-9.,]{2,})|(-?[0-9]+)"


@pytest.mark.parametrize("text", MODEL_OUTPUTS)
def test_strict_and_flexible_match_the_published_filters(text):
    assert _as_harness(extract_answer(text, "strict")) == _published_regex_filter(LM_EVAL_STRICT_PATTERN, 0, text)
    assert _as_harness(extract_answer(text, "flexible")) == _published_regex_filter(LM_EVAL_FLEXIBLE_PATTERN, -1, text)


def test_strict_and_flexible_match_lm_eval_itself():
    extraction = pytest.importorskip("lm_eval.filters.extraction")
    selection = pytest.importorskip("lm_eval.filters.selection")
    import importlib.resources

    import yaml

    spec = yaml.safe_load((importlib.resources.files("lm_eval") / "tasks/gsm8k/gsm8k.yaml").read_text())
    filters = {f["name"]: f["filter"] for f in spec["filter_list"]}
    assert filters["strict-match"][0]["regex_pattern"] == LM_EVAL_STRICT_PATTERN
    assert filters["flexible-extract"][0]["regex_pattern"] == LM_EVAL_FLEXIBLE_PATTERN
    for name, mode in (("strict-match", "strict"), ("flexible-extract", "flexible")):
        regex_cfg = {k: v for k, v in filters[name][0].items() if k != "function"}
        resps = [[t] for t in MODEL_OUTPUTS]
        out = list(selection.TakeFirstFilter().apply(extraction.RegexFilter(**regex_cfg).apply(resps, []), []))
        assert out == [_as_harness(extract_answer(t, mode)) for t in MODEL_OUTPUTS], name

    metrics = pytest.importorskip("lm_eval.api.metrics")
    metric = next(m for m in spec["metric_list"] if m["metric"] == "exact_match")
    gold = "She had 3 + 4 = 7.\n#### 7"
    for text in MODEL_OUTPUTS + ["#### 7", "#### 7.", "#### $7", "#### 7.0"]:
        pred = _as_harness(extract_answer(text, "strict"))
        ref = metrics.exact_match_hf_evaluate([pred], [gold], regexes_to_ignore=metric["regexes_to_ignore"],
                                              ignore_case=True, ignore_punctuation=False)["exact_match"]
        assert bool(ref) == harness_exact_match(extract_answer(text, "strict"), gold), text


def test_harness_exact_match_rules():
    gold = "Some working.\n#### 1,250"
    assert harness_exact_match("1,250", gold)
    assert harness_exact_match("$1250.", gold)
    assert not harness_exact_match("1250.0", gold)  # the harness compares strings
    assert not harness_exact_match(None, gold)


def test_gsm8k_mode_reads_the_first_marker_and_cleans_it():
    assert extract_answer("x\n#### 72") == "72"
    assert extract_answer("#### $1,250.") == "1250"
    assert extract_answer("####-7") == "-7"
    assert extract_answer("#### 12\n#### 13") == "12"
    assert extract_answer("#### 3.5 hours") == "3.5"
    assert extract_answer("#### 10.00") == "10"
    assert extract_answer("#### ,") is None
    assert extract_answer("The answer is 5") is None
    assert extract_answer(None) is None  # type: ignore[arg-type]


def test_answer_is_mode():
    assert extract_answer("The answer is 42.", "answer_is") == "42"
    assert extract_answer("so The Final Answer is $1,000 dollars", "answer_is") == "1000"
    assert extract_answer("Answer: 17", "answer_is") == "17"
    assert extract_answer("the answer is: -0.25", "answer_is") == "-0.25"
    assert extract_answer("The answer is 3. No wait, the answer is 4.", "answer_is") == "4"
    assert extract_answer("The answer is unclear", "answer_is") is None


def test_unknown_mode_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="answer_is"):
        extract_answer("#### 1", "nope")
    assert {"gsm8k", "strict", "flexible", "answer_is"} <= set(ANSWER_EXTRACTORS)


@pytest.mark.parametrize("text,value", [
    ("72", 72.0), ("$1,250", 1250.0), ("1,250.", 1250.0), ("-7", -7.0), (" 3.5 hours", 3.5), (".5", 0.5),
    ("50%", 50.0), ("3/4", 0.75), ("\u22125", -5.0), ("+4", 4.0), ("12 apples", 12.0), (7, 7.0), (2.5, 2.5),
])
def test_normalize_number_reads(text, value):
    assert normalize_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "[invalid]", "about 12", "1.2.3", "abc", None, "1/0", float("nan"), True, ","])
def test_normalize_number_rejects(text):
    assert normalize_number(text) is None


def test_numbers_match_against_direct_float_comparison():
    rng = random.Random(0)
    for _ in range(300):
        x = rng.choice([rng.randint(-10_000, 10_000), round(rng.uniform(-1000, 1000), rng.randint(0, 4))])
        y = x if rng.random() < 0.5 else x * (1 + rng.choice([1e-6, 1e-5, 1e-3, 0.1, -1e-3]))
        written = f"${x:,}" if rng.random() < 0.5 else f"{x}."
        expected = abs(x - y) <= max(1e-4 * max(abs(x), abs(y)), 1e-9)
        assert numbers_match(written, y) == expected, (written, y)
    assert not numbers_match(None, None)
    assert not numbers_match("[invalid]", "[invalid]")


@pytest.mark.parametrize("text,choice", [
    ("The answer is (B).", "B"), ("Answer: C", "C"), ("I pick (A) ... no, (D)", "D"), ("E. all of the above", "E"),
    ("A", "A"), ("A train leaves at noon", None), ("the answer is b", None), ("(F)", None), ("", None),
    ("So the answer is option C", "C"),
])
def test_extract_choice(text, choice):
    assert extract_choice(text) == choice


def test_cot_rewards_scale_and_never_raise():
    from mova.rl.rewards import score

    completions = ["2 + 3 = 5\n#### 5", "#### 6", "The answer is 5.", "I do not know", "", None, "#### 5.0000001",
                   "#### ,"]
    gold = ["x\n#### 5"] * 4 + ["5", 5, "5", "5"]
    got = score("gsm8k_cot", ["q"] * len(completions), completions, answer=gold)
    assert got == [1.0, 0.2, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    got = score("answer_is_cot", ["q"] * 3, ["The answer is 4. #### 5", "Answer: 5", "answer unknown"], answer=[5] * 3)
    assert got == [0.2, 1.0, 0.0]
    with pytest.raises(Exception, match="answer"):
        score("gsm8k_cot", ["q"], ["#### 5"], gold=["5"])
