"""A generated multi-step arithmetic word-problem set with gold rationales, for CPU-scale R3 experiments.

GSM8K itself is far beyond a 2-layer, 64-wide model, so this set keeps GSM8K's *shape* (a word problem,
a line-per-step rationale, ``#### value``; plus a program-CoT form) at a size a tiny model can learn:

* Every number, given or intermediate, stays in 0..:data:`MAX_VALUE` (60). The repository's tiny
  tokenizer (``mova/assets/tiny-tokenizer``, a 1024-token byte-level BPE) writes each of ``" 0"`` ..
  ``" 60"`` as at most two tokens (a space and a single number token), while larger numbers split
  irregularly (``"345"`` -> ``"34" "5"``); so each number the model reads or writes is one symbol.
* Operations: add a number (1..9), take one away (1..9), double, triple; 2 to 4 of them per problem
  (:data:`MIN_STEPS`..:data:`MAX_STEPS`), so a demonstration has 3-5 CoT lines (steps + ``#### value``)
  and 3-5 program body lines -- the M of R3.
* Sentences come from a few fixed templates over short, common words (names, items), so the model spends
  its capacity on the arithmetic and on tracking the running value, not on vocabulary.

One record (GSM8K format plus a ``program`` field, read by :mod:`mova.data.reasoning`)::

    {"id": "train-0", "question": "Ann has 12 coins. She gets 7 more. Then she gives 5 away. How many coins
     does Ann have now?", "answer": "12 + 7 = 19\\n19 - 5 = 14\\n#### 14",
     "program": "def solution():\\n    coins = 12\\n    coins = coins + 7\\n    coins = coins - 5\\n    return coins"}

Train and test are drawn from one seeded generator and deduplicated on the question: no test question is
a training question (the templates, names and items are shared, as in any in-distribution held-out set).

    python -m mova.data.arith_mini --out data/arith_mini --train 2000 --test 200
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_VALUE = 60
MIN_STEPS, MAX_STEPS = 2, 4
NAMES = ("Ann", "Ben", "Sam", "Tom", "Kim", "Max", "Lea", "Joe")
ITEMS = ("coins", "cards", "books", "pens", "cups", "eggs")
PRONOUN = {"Ann": "She", "Ben": "He", "Sam": "He", "Tom": "He", "Kim": "She", "Max": "He", "Lea": "She",
           "Joe": "He"}


@dataclass(frozen=True)
class Op:
    """One operation: its sentence, its CoT line, its program line, and the arithmetic."""

    name: str
    sentence: str  # with {p} (pronoun) and {n}
    symbol: str
    apply: Callable[[int, int], int]
    operand: Callable[[random.Random], int]


OPS = (
    Op("add", "{p} gets {n} more.", "+", lambda x, n: x + n, lambda r: r.randint(1, 9)),
    Op("sub", "{p} gives {n} away.", "-", lambda x, n: x - n, lambda r: r.randint(1, 9)),
    Op("double", "{p} doubles them.", "*", lambda x, n: x * n, lambda r: 2),
    Op("triple", "{p} triples them.", "*", lambda x, n: x * n, lambda r: 3),
)


def make_problem(rng: random.Random) -> dict[str, Any] | None:
    """One random problem, or ``None`` when the drawn chain leaves 0..MAX_VALUE (the caller redraws)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    pronoun = PRONOUN[name]
    value = rng.randint(2, 20)
    sentences = [f"{name} has {value} {item}."]
    cot, body = [], [f"    {item} = {value}"]
    for i in range(rng.randint(MIN_STEPS, MAX_STEPS)):
        op = rng.choice(OPS)
        n = op.operand(rng)
        new = op.apply(value, n)
        if not 0 <= new <= MAX_VALUE:
            return None
        sentence = op.sentence.format(p=pronoun, n=n)
        sentences.append(sentence if i == 0 else "Then " + sentence[0].lower() + sentence[1:])
        cot.append(f"{value} {op.symbol} {n} = {new}")
        body.append(f"    {item} = {item} {op.symbol} {n}")
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    program = "def solution():\n" + "\n".join(body) + f"\n    return {item}"
    return {"question": " ".join(sentences), "answer": "\n".join(cot) + f"\n#### {value}", "program": program}


def generate(n_train: int, n_test: int, seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "test": [...]}`` with distinct questions across and within splits."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict[str, Any]]] = {"test": [], "train": []}
    wanted = {"test": n_test, "train": n_train}
    attempts = 0
    for split in ("test", "train"):  # test first: its questions are then excluded from train
        while len(splits[split]) < wanted[split]:
            attempts += 1
            if attempts > 200 * (n_train + n_test) + 1000:
                raise RuntimeError(f"could not draw {wanted[split]} distinct {split} problems")
            problem = make_problem(rng)
            if problem is None or problem["question"] in seen:
                continue
            seen.add(problem["question"])
            splits[split].append({"id": f"{split}-{len(splits[split])}", **problem})
    return {"train": splits["train"], "test": splits["test"]}


def write_arith_mini(out_dir: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0) -> Path:
    """Write ``train.jsonl`` and ``test.jsonl`` (and ``meta.json``) to ``out_dir``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = generate(n_train, n_test, seed)
    for split, rows in data.items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    meta = {"seed": seed, "train": n_train, "test": n_test, "max_value": MAX_VALUE,
            "steps": [MIN_STEPS, MAX_STEPS], "names": NAMES, "items": ITEMS, "ops": [o.name for o in OPS]}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/arith_mini")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(write_arith_mini(args.out, args.train, args.test, args.seed))


if __name__ == "__main__":
    main()
