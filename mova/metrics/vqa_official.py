"""VQAv2 and TextVQA accuracy with the benchmarks' own answer processing, as pure functions.

The VQA evaluation (visualqa.org/evaluation, ``vqaEval.py``) processes answers before comparing them:
lower case; periods removed unless inside a number; number words as digits; articles dropped; missing
apostrophes of contractions restored (``dont`` -> ``don't``); punctuation other than apostrophes and colons
removed (where it touches a space, or everywhere when the text has a comma between digits, so ``100,978``
-> ``100978``) or else turned into a space. A prediction then scores ``min(1, matches / 3)`` against each of
the 10 leave-one-out sets of 9 human answers, averaged.

* VQAv2 (:func:`vqav2_accuracy`): the evaluation server's rule. The prediction is always processed; the
  human answers (already normalised in the annotation files) get the punctuation step only when they are
  not all the same.
* TextVQA (:func:`textvqa_accuracy`): the TextVQA / EvalAI rule (``TextVQAAccuracyEvaluator``): prediction and
  every human answer go through :func:`evalai_answer` (a word-level clean-up, then the steps above).

Both quirks of the reference code are kept: the period rule removes a period that is not followed by a
digit (its look-behind is written as a look-ahead and never fires), and at most 32 periods are removed
(``re.UNICODE`` passed as the count).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: the evaluation's table of contractions written without their apostrophe(s).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
#: the punctuation the evaluation strips, in its order (apostrophe, colon and period are not in it).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
#: what the reference pattern ``(?!<=\d)(\.)(?!\d)`` matches: a period not followed by a digit.
_PERIOD = re.compile(r"\.(?!\d)")
_MAX_PERIODS = 32


def process_punctuation(text: str) -> str:
    """The punctuation step: each mark is deleted when it touches a space anywhere in ``text`` (or when the
    text has a digit-comma-digit), else replaced by a space; then stray periods are deleted."""
    out = text
    glued = _DIGIT_COMMA_DIGIT.search(text) is not None
    for mark in PUNCTUATION:
        touches_space = (mark + " ") in text or (" " + mark) in text
        out = out.replace(mark, "" if touches_space or glued else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digits_articles(text: str) -> str:
    """Lower case, number words as digits, articles dropped, contractions given their apostrophes."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def _clean_whitespace(text: str) -> str:
    return str(text).replace("\n", " ").replace("\t", " ").strip()


def normalize_vqa_answer(text: str) -> str:
    """An answer as the VQA evaluation compares it (whitespace, punctuation, then digits and articles)."""
    return process_digits_articles(process_punctuation(_clean_whitespace(text)))


def evalai_answer(text: str) -> str:
    """The EvalAI answer processor of TextVQA (and of VQAv2 submission scripts): lower case, ``,`` and ``?``
    deleted, ``'s`` split off as a word, then :func:`normalize_vqa_answer`'s steps."""
    text = str(text).lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return normalize_vqa_answer(text)


def _leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    scores = [min(1.0, sum(a == prediction for j, a in enumerate(answers) if j != i) / 3)
              for i in range(len(answers))]
    return sum(scores) / len(scores) if scores else 0.0


def vqav2_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """The VQAv2 evaluation server's accuracy of one prediction against its (usually 10) human answers."""
    gold = [_clean_whitespace(a) for a in answers]
    if len(set(gold)) > 1:
        gold = [process_punctuation(a) for a in gold]
    return _leave_one_out(normalize_vqa_answer(prediction), gold)


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA's accuracy: prediction and human answers through :func:`evalai_answer`, then the VQA rule."""
    return _leave_one_out(evalai_answer(prediction), [evalai_answer(a) for a in answers])
