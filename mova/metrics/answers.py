"""Final-answer extraction and numeric comparison for reasoning tasks (GSM8K, SVAMP, R3 rewards, Self-Polish).

A reasoning model is scored on its *final* answer only, so how that answer is pulled out of free text decides
the score as much as the model does. The extractors live in a registry (:data:`ANSWER_EXTRACTORS`) so that a
task names its rule in its config and every consumer (the GSM8K evaluation, the R3 rewards, Self-Polish)
applies the same one:

========== ===================================================================================================
mode       what it returns
========== ===================================================================================================
gsm8k      the value after the first ``####`` (GSM8K's own gold format), tolerant of ``####42``,
           ``#### $1,000.`` -- cleaned to a plain number string (``"1000"``)
strict     lm-evaluation-harness' GSM8K ``strict-match`` filter exactly: regex ``#### (\\-?[0-9\\.\\,]+)``, first
           match, the raw captured text (``"1,000."``); ``None`` where the harness writes ``[invalid]``
flexible   lm-evaluation-harness' ``flexible-extract`` filter exactly: regex
           ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, the *last* match, first non-empty group, stripped
answer_is  the number after the last "The answer is" / "the final answer is" / "Answer:" (CoT prompting style)
========== ===================================================================================================

The two lm-eval modes return the harness' raw strings on purpose (so results can be compared one to one with
published harness numbers); compare them with :func:`numbers_match`, which normalises ``$``, commas, a trailing
period and units the way the harness' ``regexes_to_ignore`` do, and then compares numerically.

Every function here returns ``None`` / ``False`` for text it cannot read; none of them raises on model
output, because one malformed sample must never stop an evaluation or an RL run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from mova.registry import Registry

Extractor = Callable[[str], "str | None"]

#: mode name -> extractor(text) -> answer string or None.
ANSWER_EXTRACTORS: Registry[Extractor] = Registry("answer extraction mode")
#: decorator: add an answer extractor under a name (usable as ``extract_answer(text, mode=name)``).
register_extractor = ANSWER_EXTRACTORS.register


def extract_answer(text: str, mode: str = "gsm8k") -> str | None:
    """The final answer in ``text`` by rule ``mode`` (see the module table), or ``None`` when there is none.

    An unknown ``mode`` is a programming/config error and raises :class:`~mova.errors.UnknownNameError`;
    a non-string ``text`` (e.g. ``None`` from a failed generation) gives ``None``.
    """
    extractor = ANSWER_EXTRACTORS[mode]
    return extractor(text) if isinstance(text, str) else None


# --- number normalisation ----------------------------------------------------------------------------
_NUMBER_PREFIX = re.compile(r"(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+))(?:\s*/\s*(?P<den>\d+(?:\.\d+)?))?")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})


def normalize_number(s: object) -> float | None:
    """``s`` as a float, or ``None`` when it is not a number.

    Accepts what models and datasets write around a number: ``$``, thousands commas, a trailing period,
    a trailing unit or word (``"12 apples"``, ``"50%"``), a unicode minus, a simple fraction (``"3/4"``).
    Text that does not *start* with a number (``"about 12"``), a number followed directly by more digits
    after a second period (``"1.2.3"``), and non-finite values give ``None``.
    """
    if isinstance(s, bool) or s is None:
        return None
    if isinstance(s, (int, float)):
        return float(s) if math.isfinite(s) else None
    if not isinstance(s, str):
        return None
    text = s.strip().translate(_MINUS_SIGNS).replace(",", "").replace("$", "").strip()
    match = _NUMBER_PREFIX.match(text)
    if not match:
        return None
    rest = text[match.end():]
    if rest[:1].isdigit() or re.match(r"\.\d", rest):
        return None
    value = float(match.group("num"))
    if match.group("den") is not None:
        den = float(match.group("den"))
        if den == 0:
            return None
        value /= den
    return value if math.isfinite(value) else None


def numbers_match(a: object, b: object, rel_tol: float = 1e-4) -> bool:
    """True when ``a`` and ``b`` normalise to numbers within ``rel_tol`` (relative; ``1e-9`` absolute near 0).

    ``None`` or unreadable values never match anything (not even each other).
    """
    x, y = normalize_number(a), normalize_number(b)
    if x is None or y is None:
        return False
    return math.isclose(x, y, rel_tol=rel_tol, abs_tol=1e-9)


def format_number(value: float) -> str:
    """A canonical string for a number: ``72.0`` -> ``"72"``, ``0.5`` -> ``"0.5"``."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


# --- extractors ----------------------------------------------------------------------------------------
_GSM8K = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")

#: lm-evaluation-harness ``lm_eval/tasks/gsm8k/gsm8k.yaml`` (v3.0) filter_list, reproduced from the yaml.
LM_EVAL_STRICT_PATTERN = r"#### (\-?[0-9\.\,]+)"
LM_EVAL_FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
_STRICT = re.compile(LM_EVAL_STRICT_PATTERN)
_FLEXIBLE = re.compile(LM_EVAL_FLEXIBLE_PATTERN)

_ANSWER_IS = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*:)\s*[:=]?\s*\**\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?(?:\s*/\s*[0-9]+)?)",
    re.IGNORECASE)


@register_extractor("gsm8k")
def _extract_gsm8k(text: str) -> str | None:
    match = _GSM8K.search(text)
    if not match:
        return None
    value = normalize_number(match.group(1))
    return None if value is None else format_number(value)


def _regex_filter(regex: re.Pattern[str], text: str, group_select: int) -> str | None:
    """The harness' ``RegexFilter`` semantics: ``findall``, pick ``group_select``, a tuple gives its first
    non-empty group, strip; no match (or an all-empty tuple) is the harness' ``[invalid]``, here ``None``."""
    found = regex.findall(text)
    if not found:
        return None
    picked = found[group_select]
    if isinstance(picked, tuple):
        non_empty = [g for g in picked if g]
        if not non_empty:
            return None
        picked = non_empty[0]
    return picked.strip()


@register_extractor("strict")
def _extract_strict(text: str) -> str | None:
    return _regex_filter(_STRICT, text, 0)


@register_extractor("flexible")
def _extract_flexible(text: str) -> str | None:
    return _regex_filter(_FLEXIBLE, text, -1)


@register_extractor("answer_is")
def _extract_answer_is(text: str) -> str | None:
    found = _ANSWER_IS.findall(text)
    if not found:
        return None
    value = normalize_number(found[-1])
    return None if value is None else format_number(value)


#: the harness' GSM8K ``exact_match`` settings: these patterns are deleted from prediction and reference
#: (in this order), then both are lower-cased and compared as strings.
LM_EVAL_IGNORE_PATTERNS = (",", "\\$", "(?s).*#### ", "\\.$")


def harness_exact_match(prediction: str | None, reference: str) -> bool:
    """lm-evaluation-harness' GSM8K ``exact_match`` of an extracted ``prediction`` against the gold
    ``answer`` field (the whole rationale ending in ``#### value``): string equality after deleting
    :data:`LM_EVAL_IGNORE_PATTERNS` and lower-casing. ``None`` stands for the harness' ``[invalid]``.

    Stricter than :func:`numbers_match` (``"72.0"`` does not equal ``"72"``); reported beside the numeric
    accuracy so that numbers can be put next to published harness results.
    """
    pred = "[invalid]" if prediction is None else prediction
    ref = reference
    for pattern in LM_EVAL_IGNORE_PATTERNS:
        pred = re.sub(pattern, "", pred)
        ref = re.sub(pattern, "", ref)
    return pred.lower() == ref.lower()


# --- multiple choice -------------------------------------------------------------------------------------
def extract_choice(text: str, choices: str = "ABCDE") -> str | None:
    """The chosen option letter in ``text`` (one of ``choices``), or ``None``.

    In order of trust: the last "answer is (X)" / "Answer: X"; else the last parenthesised ``(X)``; else a
    reply that starts with the letter and ``.``, ``)`` or ``:``, or is only the letter (``"B. Paris"``,
    ``"C"``). A bare capital elsewhere is not taken, because ``A`` is also an English article.
    """
    if not isinstance(text, str) or not choices:
        return None
    letters = re.escape(choices)
    patterns = (
        rf"answer\s*(?:is|:)\s*(?:option\s*)?\(?([{letters}])\)?(?![A-Za-z])",
        rf"\(([{letters}])\)",
    )
    for pattern in patterns:
        found = re.findall(pattern, text, flags=re.IGNORECASE if pattern is patterns[0] else 0)
        found = [f for f in found if f in choices]
        if found:
            return found[-1]
    start = re.match(rf"\s*([{letters}])(?:[.):]|\s*$)", text)
    return start.group(1) if start else None
