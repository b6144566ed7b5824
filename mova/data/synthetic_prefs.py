"""Separable synthetic text preferences with a controllable share of flipped labels.

Each pair answers the same request twice; both answers are built from the same neutral filler words,
and the preferred one carries words from a "helpful" set where the other carries words from an
"unhelpful" set. A reward model can therefore reach (near) perfect accuracy on clean labels, and any
accuracy lost with noisy labels is the noise's doing. ``flip_share`` swaps chosen and rejected on
exactly ``round(flip_share * n)`` training pairs (drawn at random); the rows say which in
``label_noise``, so analyses can check which pairs a strength estimate finds. Held-out pairs are
always clean.

    python -m mova.data.synthetic_prefs runs/synth --train 256 --test 128 --flip-share 0.2
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

GOOD = ("clear", "careful", "accurate", "kind", "useful", "precise", "honest", "safe")
BAD = ("rude", "wrong", "sloppy", "harmful", "vague", "false", "lazy", "unsafe")
FILLER = ("the", "answer", "is", "about", "this", "item", "and", "it", "says", "that", "we", "see", "a", "list",
          "of", "steps", "for", "you", "here", "now")
OBJECTS = ("lamp", "river", "garden", "engine", "letter", "bridge", "window", "kettle", "ladder", "violin")


def _answer(rng: random.Random, markers: tuple[str, ...], n_words: int, n_markers: int) -> str:
    words = [rng.choice(FILLER) for _ in range(n_words)]
    for _ in range(n_markers):
        words.insert(rng.randrange(len(words) + 1), rng.choice(markers))
    return " ".join(words).capitalize() + "."


def make_pairs(n: int, seed: int, flip_share: float = 0.0, n_words: int = 6, n_markers: int = 1,
               prefix: str = "synth") -> list[dict]:
    """``n`` rows ``{"id", "prompt", "chosen", "rejected", "label_noise"}``; ``flip_share`` of them swapped."""
    if not 0 <= flip_share < 1:
        raise ValueError(f"flip_share must be in [0, 1), got {flip_share}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        obj = rng.choice(OBJECTS)
        prompt = f"Request {i}: tell me about the {obj}.\n"
        good = _answer(rng, GOOD, n_words, n_markers)
        bad = _answer(rng, BAD, n_words, n_markers)
        rows.append({"id": f"{prefix}:{i}", "prompt": prompt, "chosen": good, "rejected": bad, "label_noise": False})
    flipped = rng.sample(range(n), int(round(flip_share * n)))
    for i in flipped:
        r = rows[i]
        r["chosen"], r["rejected"], r["label_noise"] = r["rejected"], r["chosen"], True
    return rows


def write_synthetic_prefs(out_dir: str | Path, n_train: int = 256, n_test: int = 128, flip_share: float = 0.0,
                          seed: int = 0, **kwargs: int) -> tuple[Path, Path]:
    """Write ``train.jsonl`` (with ``flip_share`` flipped labels) and a clean ``test.jsonl``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train = make_pairs(n_train, seed, flip_share, prefix="train", **kwargs)
    test = make_pairs(n_test, seed + 10_000, 0.0, prefix="test", **kwargs)
    paths = out_dir / "train.jsonl", out_dir / "test.jsonl"
    for path, rows in zip(paths, (train, test)):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--test", type=int, default=128)
    p.add_argument("--flip-share", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(*write_synthetic_prefs(a.out_dir, a.train, a.test, a.flip_share, a.seed))


if __name__ == "__main__":
    main()
