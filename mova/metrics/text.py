"""Text-generation metrics for TRACE-style tasks: exact match, ROUGE-L, edit similarity, SARI and BLEU.

Where a well-kept library exists it does the work and this module only fixes the conventions (which
variant, which scale, what an empty prediction scores):

* ROUGE-L is ``rouge-score``'s sentence-level ``rougeL`` F-measure, averaged over samples (no stemming,
  the library's own lower-casing tokenizer);
* BLEU is ``sacrebleu``'s corpus BLEU (13a tokenizer, 0-100), one or more references per sample;
* ``final_number`` (GSM8K-format probes) reads numbers with :mod:`mova.metrics.answers`.

Two metrics are written here because no offline package of ours computes them:

* **edit similarity** ``1 - lev(pred, ref) / max(len(pred), len(ref))`` on characters (Levenshtein with unit
  costs; two empty strings are identical, 1.0), the code-completion score of Py150 in TRACE, in [0, 1];
* **SARI** (Xu et al., 2016, "Optimizing Statistical Machine Translation for Text Simplification"): per
  sentence the mean over n = 1..4 of the keep F1, the deletion precision and the addition F1, computed with
  n-gram counts in which the source's and the prediction's counts are multiplied by the number of
  references; inputs are lower-cased and tokenized with sacrebleu's 13a tokenizer, as in the widely used
  implementation behind Hugging Face ``evaluate``'s ``sari``; the corpus score is the mean over
  sentences, on a 0-100 scale (tests check the published example values).

:data:`TEXT_METRICS` maps a metric name to a corpus scorer ``fn(predictions, references, sources) -> score
in [0, 1]`` so that a task names its metric in data (``task.json``) rather than in an if-chain.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from mova.errors import UnknownNameError

# --- exact match --------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation and English articles, collapse whitespace (the SQuAD normalisation)."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str, normalize: bool = False) -> bool:
    """``prediction == reference``; TRACE's official accuracy compares the strings as they are
    (``normalize=False``). With ``normalize`` both sides go through :func:`normalize_text` first."""
    if normalize:
        return normalize_text(prediction) == normalize_text(reference)
    return prediction == reference


def accuracy(predictions: Sequence[str], references: Sequence[str], normalize: bool = False) -> float:
    """Fraction of exact matches, in [0, 1] (0.0 for no samples)."""
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    return sum(exact_match(p, r, normalize) for p, r in zip(predictions, references)) / len(predictions)


# --- ROUGE-L -------------------------------------------------------------------------------------

_ROUGE = None


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean sentence-level ROUGE-L F-measure (``rouge-score``), in [0, 1]."""
    global _ROUGE
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    total = sum(_ROUGE.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references))
    return total / len(predictions)


# --- edit similarity ----------------------------------------------------------------------------

def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit insert / delete / substitute costs (two-row dynamic programme)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity_one(prediction: str, reference: str) -> float:
    """``1 - lev / max(len)`` on characters, in [0, 1]; two empty strings score 1."""
    longest = max(len(prediction), len(reference))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(prediction, reference) / longest


def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean :func:`edit_similarity_one` over samples, in [0, 1]."""
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    return sum(edit_similarity_one(p, r) for p, r in zip(predictions, references)) / len(predictions)


# --- SARI -----------------------------------------------------------------------------------------

def _sari_tokens(text: str) -> list[str]:
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()(text.lower()).split()


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p > 0 or r > 0 else 0.0


def _sari_ngram(source: list[tuple], prediction: list[tuple], references: list[list[tuple]]
                ) -> tuple[float, float, float]:
    """(keep F1, deletion precision, addition F1) for one n-gram order."""
    n_refs = len(references)
    ref_counts: Counter = Counter(g for ref in references for g in ref)
    # Source and prediction counts weigh as much as all references together.
    src = Counter({g: c * n_refs for g, c in Counter(source).items()})
    pred = Counter({g: c * n_refs for g, c in Counter(prediction).items()})

    kept = src & pred  # n-grams of the source the prediction kept (min counts)
    kept_good = kept & ref_counts
    kept_wanted = src & ref_counts  # what the references keep of the source
    keep_p = sum(kept_good[g] / kept[g] for g in kept) / len(kept) if kept else 1.0
    keep_r = sum(kept_good.values()) / sum(kept_wanted.values()) if kept_wanted else 1.0

    deleted = src - pred  # n-grams of the source the prediction dropped (positive differences)
    deleted_good = deleted - ref_counts
    del_p = sum(deleted_good[g] / deleted[g] for g in deleted) / len(deleted) if deleted else 1.0

    added = set(pred) - set(src)
    added_good = added & set(ref_counts)
    added_wanted = set(ref_counts) - set(src)
    add_p = len(added_good) / len(added) if added else 1.0
    add_r = len(added_good) / len(added_wanted) if added_wanted else 1.0
    return _f1(keep_p, keep_r), del_p, _f1(add_p, add_r)


def sari_sentence(source: str, prediction: str, references: Sequence[str]) -> float:
    """SARI of one simplification, in [0, 1]."""
    if not references:
        raise ValueError("SARI needs at least one reference per sample")
    s, p = _sari_tokens(source), _sari_tokens(prediction)
    refs = [_sari_tokens(r) for r in references]
    keep = dele = add = 0.0
    for n in range(1, 5):
        k, d, a = _sari_ngram(_ngrams(s, n), _ngrams(p, n), [_ngrams(r, n) for r in refs])
        keep, dele, add = keep + k, dele + d, add + a
    return (keep + dele + add) / 12.0


def sari(sources: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus SARI on the conventional 0-100 scale: the mean of the sentence scores, times 100."""
    _check_lengths(predictions, references)
    _check_lengths(predictions, sources)
    if not predictions:
        return 0.0
    total = sum(sari_sentence(s, p, r) for s, p, r in zip(sources, predictions, references))
    return 100.0 * total / len(predictions)


# --- BLEU -----------------------------------------------------------------------------------------

def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU from ``sacrebleu`` (13a tokenizer, no smoothing beyond its default), 0-100.

    ``references[i]`` lists sample ``i``'s references (any number, may differ per sample).
    """
    import sacrebleu

    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    width = max(len(r) for r in references)
    # sacrebleu wants one stream per reference position; a sample with fewer references pads with None.
    streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


# --- registry ------------------------------------------------------------------------------------

def _check_lengths(a: Sequence, b: Sequence) -> None:
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} predictions but {len(b)} references/sources")


def _as_lists(references: Sequence[str | Sequence[str]]) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def _first(references: Sequence[str | Sequence[str]]) -> list[str]:
    return [refs[0] for refs in _as_lists(references)]


def final_number_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """GSM8K-format accuracy: the last number in each prediction (lm-eval's ``flexible`` rule) against the
    gold's number (after ``####`` when the gold is a full GSM8K solution, else the gold itself), compared
    numerically (:func:`mova.metrics.answers.numbers_match`). Used for general-ability probes."""
    from mova.metrics.answers import extract_answer as extract
    from mova.metrics.answers import numbers_match

    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    hits = 0
    for p, r in zip(predictions, references):
        gold = extract(r, "gsm8k") if "####" in r else r
        hits += numbers_match(extract(p, "flexible"), gold)
    return hits / len(predictions)


CorpusMetric = Callable[[Sequence[str], Sequence, Sequence[str]], float]

#: metric name -> ``fn(predictions, references, sources) -> score in [0, 1]``. A reference may be a string
#: or a list of strings (SARI and BLEU use all of them, the others the first).
TEXT_METRICS: dict[str, CorpusMetric] = {
    "accuracy": lambda p, r, s: accuracy(p, _first(r)),
    "accuracy_normalized": lambda p, r, s: accuracy(p, _first(r), normalize=True),
    "rouge_l": lambda p, r, s: rouge_l(p, _first(r)),
    "edit_similarity": lambda p, r, s: edit_similarity(p, _first(r)),
    "sari": lambda p, r, s: sari(s, p, _as_lists(r)) / 100.0,
    "bleu": lambda p, r, s: bleu(p, _as_lists(r)) / 100.0,
    "final_number": lambda p, r, s: final_number_accuracy(p, _first(r)),
}


def get_metric(name: str) -> CorpusMetric:
    if name not in TEXT_METRICS:
        raise UnknownNameError("text metric", name, TEXT_METRICS)
    return TEXT_METRICS[name]


def score(name: str, predictions: Sequence[str], references: Sequence, sources: Sequence[str] | None = None) -> float:
    """Corpus score in [0, 1] of metric ``name`` (sources default to empty strings)."""
    return get_metric(name)(list(predictions), list(references), list(sources or [""] * len(predictions)))


__all__ = ["TEXT_METRICS", "accuracy", "bleu", "edit_similarity", "edit_similarity_one", "exact_match",
           "final_number_accuracy",
           "get_metric", "levenshtein", "normalize_text", "rouge_l", "sari", "sari_sentence", "score"]
