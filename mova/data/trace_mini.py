"""A generated mini TRACE: five small synthetic tasks in TRACE's folder layout, one per metric kind.

The real benchmark (eight tasks, thousands of long prompts) needs a GPU and a pretrained LLM; this one lets
tests and the CPU demo run the whole continual pipeline -- sequential training, the score matrix, replay,
EWC, RCL's teacher paths -- on a 64-wide, 2-layer model with the repository's 1024-token tiny tokenizer in
seconds per task. Every task therefore uses words that tokenizer holds as single tokens (colours, shapes,
number words, digits), a short task-specific prefix that tells the tasks apart, and an answer that is a
simple function of the prompt, so a tiny model learns it within a few hundred steps and can forget it:

===========  ================  =====================================================================
task         metric            prompt -> answer
===========  ================  =====================================================================
stance       accuracy          "Stance: red star and blue moon" -> "yes" when a warm colour is named
summary      rouge_l           "Summarize: the red circle is above the ..." -> the content words
code         edit_similarity   "Complete: two three four" -> the next three number words
numeric      accuracy          "Add: 3 and 4" -> "7"
simplify     sari              "Simplify: the colour of the detailed photo is grey" -> plain words
===========  ================  =====================================================================

Each training record also carries ``"reasoning"``: a gold reasoning sentence ("I see red, a warm colour.").
Nothing in the continual loop or RCL's generation reads it; it exists only to train the tiny *teacher*
that the demo's RCL run needs (a real run uses a capable LLM as the teacher instead). Each task folder
also has ``task.json`` (its metric) and ``rcl_demos.json`` (two demonstrations with reasoning, for the
teacher's few-shot prompt); the root has ``order.json``.

``python -m mova.data.trace_mini OUT_DIR`` writes the default sizes; deterministic given ``seed``.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

MINI_ORDER = ["stance", "summary", "code", "numeric", "simplify"]
MINI_METRICS = {"stance": "accuracy", "summary": "rouge_l", "code": "edit_similarity", "numeric": "accuracy",
                "simplify": "sari"}

WARM = ["red", "pink", "orange", "yellow"]
COOL = ["blue", "green", "purple", "gray", "white", "black", "brown"]
SHAPES = ["star", "moon", "circle", "square", "triangle", "banana", "tomato", "bicycle"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
PLACES = ["above", "below", "on", "at"]
#: simplify: complex word -> plain word ("" drops it).
SIMPLER = {"colour": "color", "grey": "gray", "picture": "photo", "detailed": "", "curious": ""}

Record = dict[str, Any]


def _stance(rng: random.Random) -> Record:
    warm = rng.random() < 0.5
    n = rng.randint(2, 3)
    colours = [rng.choice(COOL) for _ in range(n)]
    if warm:
        colours[rng.randrange(n)] = rng.choice(WARM)
    text = " and ".join(f"{c} {rng.choice(SHAPES)}" for c in colours)
    found = next((c for c in colours if c in WARM), None)
    reasoning = f"I see {found}, a warm colour." if found else "I see no warm colour."
    return {"prompt": f"Stance: {text}\nAnswer:", "answer": "yes" if warm else "no", "reasoning": reasoning}


def _summary(rng: random.Random) -> Record:
    parts = []
    for _ in range(rng.randint(1, 2)):
        parts.append(f"the {rng.choice(WARM + COOL)} {rng.choice(SHAPES)} is {rng.choice(PLACES)} "
                     f"the {rng.choice(WARM + COOL)} {rng.choice(SHAPES)}")
    text = " and ".join(parts)
    kept = [w for w in text.split() if w not in ("the", "is", "and")]
    return {"prompt": f"Summarize: {text}\nAnswer:", "answer": " ".join(kept),
            "reasoning": "Drop the, is and and."}


def _code(rng: random.Random) -> Record:
    start = rng.randint(0, 5)
    shown = NUMBER_WORDS[start:start + 3]
    nxt = NUMBER_WORDS[start + 3:start + 6]
    return {"prompt": f"Complete: {' '.join(shown)}\nAnswer:", "answer": " ".join(nxt),
            "reasoning": f"After {shown[-1]} comes {nxt[0]}."}


def _numeric(rng: random.Random) -> Record:
    a, b = rng.randint(0, 6), rng.randint(0, 6)
    return {"prompt": f"Add: {a} and {b}\nAnswer:", "answer": str(a + b), "reasoning": f"{a} plus {b} is {a + b}."}


def _simplify(rng: random.Random) -> Record:
    templates = [
        "the colour of the {adj} picture is grey",
        "the {adj} picture shows a {c} {s}",
        "the colour of the {s} is grey",
        "a {adj} picture of the {c} {s}",
        "the {c} {s} is on the grey picture",
    ]
    text = rng.choice(templates).format(adj=rng.choice(["detailed", "curious"]), c=rng.choice(WARM + COOL),
                                        s=rng.choice(SHAPES))
    simple = " ".join(SIMPLER.get(w, w) for w in text.split() if SIMPLER.get(w, w))
    changed = sorted({w for w in text.split() if w in SIMPLER})
    reasoning = "Use plain words for " + " and ".join(changed) + "."
    return {"prompt": f"Simplify: {text}\nAnswer:", "answer": simple, "source": text, "reasoning": reasoning}


GENERATORS: dict[str, Callable[[random.Random], Record]] = {
    "stance": _stance, "summary": _summary, "code": _code, "numeric": _numeric, "simplify": _simplify,
}


def write_mini_trace(out_dir: str | Path, *, n_train: int = 200, n_eval: int = 20, n_test: int = 40,
                     tasks: list[str] | None = None, seed: int = 0) -> Path:
    """Write the mini benchmark to ``out_dir`` (one folder per task) and return the path."""
    out = Path(out_dir)
    tasks = list(tasks or MINI_ORDER)
    unknown = [t for t in tasks if t not in GENERATORS]
    if unknown:
        raise ValueError(f"unknown mini TRACE task(s) {unknown}; known: {MINI_ORDER}")
    for k, name in enumerate(tasks):
        rng = random.Random(f"{seed}-{name}")
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        sizes = {"train": n_train, "eval": n_eval, "test": n_test}
        for split, size in sizes.items():
            records = [GENERATORS[name](rng) for _ in range(size)]
            if split != "train":  # held-out splits carry no gold reasoning: only the teacher's data does
                records = [{k2: v for k2, v in r.items() if k2 != "reasoning"} for r in records]
            (folder / f"{split}.json").write_text(json.dumps(records, indent=1) + "\n")
        demos = [GENERATORS[name](rng) for _ in range(2)]
        (folder / "rcl_demos.json").write_text(json.dumps(demos, indent=1) + "\n")
        (folder / "task.json").write_text(json.dumps({"metric": MINI_METRICS[name]}) + "\n")
        del k
    (out / "order.json").write_text(json.dumps(tasks) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=200)
    p.add_argument("--eval", type=int, default=20)
    p.add_argument("--test", type=int, default=40)
    p.add_argument("--tasks", default=",".join(MINI_ORDER))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = write_mini_trace(a.out_dir, n_train=a.train, n_eval=a.eval, n_test=a.test, tasks=a.tasks.split(","),
                            seed=a.seed)
    print(f"wrote mini TRACE to {path}")


if __name__ == "__main__":
    main()
