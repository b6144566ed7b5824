"""Text metrics against published values, hand-worked examples and independent plain-loop computations."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from mova.metrics.text import (
    TEXT_METRICS,
    accuracy,
    bleu,
    edit_similarity,
    edit_similarity_one,
    levenshtein,
    normalize_text,
    rouge_l,
    sari,
    score,
)


def test_sari_matches_published_example():
    # The documented example of the SARI metric in Hugging Face `evaluate` (sari's model card):
    # {'sari': 26.953601953601954}.
    value = sari(["About 95 species are currently accepted."], ["About 95 you now get in."],
                 [["About 95 species are currently known.", "About 95 species are now accepted.",
                   "95 species are now accepted."]])
    assert value == pytest.approx(26.953601953601954, abs=1e-9)


def test_sari_hand_worked_cases():
    # Copying the source when the reference equals the source: keep F1 = 1 and nothing is deleted or added,
    # so every component is 1 -> 100.
    assert sari(["the cat sat"], ["the cat sat"], [["the cat sat"]]) == pytest.approx(100.0)
    # Source "a b", prediction "a c", reference "a c": 1-grams keep {a}: P = R = 1; deleted {b}, which the
    # reference also drops: del precision 1; added {c}, wanted {c}: add F1 1. 2-grams: kept none (P = 1 by
    # convention, nothing the reference keeps: R = 1), deleted "a b" correctly (1), added "a c" correctly (1).
    # n = 3, 4: no n-grams at all: every component 1. -> 100.
    assert sari(["a b"], ["a c"], [["a c"]]) == pytest.approx(100.0)
    # Same but the prediction copies the source. 1-grams: kept {a, b}, of which the reference keeps only a:
    # keep P = (1 + 0) / 2, R = 1 (a, the one wanted, is kept) -> F1 2/3; nothing deleted -> del 1; nothing
    # added -> add P = 1, but "c" wanted -> R = 0 -> F1 0. 2-grams: "a b" kept, unwanted: keep P = 0, nothing
    # wanted -> R = 1 -> F1 0; del 1; "a c" wanted, not added -> add F1 0. n = 3, 4: every component 1.
    # keep mean (2/3 + 0 + 1 + 1) / 4, del 1, add (0 + 0 + 1 + 1) / 4.
    expected = ((2 / 3 + 0 + 1 + 1) / 4 + 1 + 0.5) / 3
    assert sari(["a b"], ["a b"], [["a c"]]) == pytest.approx(100 * expected)


def _lev_full_matrix(a: str, b: str) -> int:
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
    return d[len(a)][len(b)]


def test_edit_similarity_vs_plain_levenshtein():
    rng = random.Random(0)
    preds, refs = [], []
    for _ in range(60):
        a = "".join(rng.choice("abc d") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc d") for _ in range(rng.randint(0, 12)))
        assert levenshtein(a, b) == _lev_full_matrix(a, b)
        preds.append(a)
        refs.append(b)
    expected = [1.0 if not max(len(a), len(b)) else 1 - _lev_full_matrix(a, b) / max(len(a), len(b))
                for a, b in zip(preds, refs)]
    assert edit_similarity(preds, refs) == pytest.approx(sum(expected) / len(expected))
    assert edit_similarity_one("kitten", "sitting") == pytest.approx(1 - 3 / 7)  # the textbook distance 3
    assert edit_similarity_one("", "") == 1.0


def test_rouge_l_hand_worked():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5: P = 5/6, R = 5/5, F = 10/11.
    assert rouge_l(["the cat sat on the mat"], ["the cat on the mat"]) == pytest.approx(10 / 11)
    # Mean over samples; no common word scores 0.
    assert rouge_l(["a b c d", "x"], ["a c", "y"]) == pytest.approx((2 * (2 / 4) * 1 / (2 / 4 + 1)) / 2)


def _plain_bleu(preds: list[list[str]], refs: list[list[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002), one reference per sample, no smoothing."""
    match, total = [0] * 4, [0] * 4
    for p, r in zip(preds, refs):
        for n in range(1, 5):
            pc = Counter(tuple(p[i:i + n]) for i in range(len(p) - n + 1))
            rc = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            match[n - 1] += sum(min(c, rc[g]) for g, c in pc.items())
            total[n - 1] += max(len(p) - n + 1, 0)
    if min(match) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(match, total)) / 4
    c, r = sum(len(p) for p in preds), sum(len(x) for x in refs)
    bp = 1.0 if c > r else math.exp(1 - r / c)
    return 100 * bp * math.exp(log_p)


def test_bleu_vs_plain_computation():
    rng = random.Random(1)
    words = ["red", "blue", "star", "moon", "is", "the"]
    preds, refs = [], []
    for _ in range(20):
        ref = [rng.choice(words) for _ in range(rng.randint(6, 10))]
        pred = [w if rng.random() < 0.8 else rng.choice(words) for w in ref][: rng.randint(5, len(ref))]
        preds.append(pred)
        refs.append(ref)
    expected = _plain_bleu(preds, refs)
    assert expected > 0
    got = bleu([" ".join(p) for p in preds], [[" ".join(r)] for r in refs])
    assert got == pytest.approx(expected, rel=1e-9)
    assert bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)


def test_accuracy_modes():
    assert accuracy(["Yes", "no", "7"], ["yes", "no", "7"]) == pytest.approx(2 / 3)  # official: exact
    assert accuracy(["Yes.", "the  no", "7"], ["yes", "no", "7"], normalize=True) == pytest.approx(1.0)
    assert normalize_text("The  Cat, sat!") == "cat sat"
    assert score("accuracy_normalized", ["Yes."], [["yes"]]) == 1.0


def test_final_number_for_gsm8k_format_probes():
    preds = ["She pays 3 * 4 = 12 dollars, so the answer is 12.", "The total is 1,000", "no number"]
    golds = ["3 apples at 4 each: 3*4=12\n#### 12", "1000", "#### 7"]
    assert score("final_number", preds, golds) == pytest.approx(2 / 3)


def test_registry_scales_to_unit_interval():
    for name in set(TEXT_METRICS) - {"final_number"}:
        text = "the red star is above the blue moon"
        v = score(name, [text], [[text]], [text])
        assert v == pytest.approx(1.0), name
