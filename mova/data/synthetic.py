"""A seeded, image-grounded synthetic VQA dataset in LLaVA format: proof that a model learns from pixels.

Every image-grounded answer is a single word from a small closed set, and every answer is uniformly
distributed within its question type, so a model that ignores the image scores chance
(1/4 for ``shape``, ``color``, ``position`` and ``count``; 1/8 for ``word``). Training on the real images
and on the same records with the images blanked (``blank=True``) then separates learning from pixels
from learning the answer prior.

Two kinds of image, half each:

* shapes: one to four copies of one shape in one colour, grouped in a small cluster in the left, right,
  top or bottom of a white canvas. Questions: ``shape``, ``color``, ``count`` and ``position`` (one each).
* word: one word from :data:`WORDS`, large and black, that only an OCR expert can read reliably.
  Question: ``word`` (the gold answer is the word as written, in capitals).

That gives the five question types equal counts. Files written to ``out_dir``:

* ``images/NNNNN.png`` -- train images first, then the held-out test images (never identical in pixels).
* ``align.json`` -- stage-1 captions (``<image>`` -> caption) for the train images.
* ``sft.json`` -- stage-2 QA on the train images plus a few percent text-only records (no ``image``).
* ``test.json`` -- QA on the held-out images, same format, every record with its ``type``.
* ``meta.json`` -- sizes, seed, vocabularies and per-type counts.

``python -m mova.data.synthetic OUT_DIR`` writes the default sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

#: Default sizes: OCR runs once per distinct image and dominates building the cache (``python
#: benchmarks/ocr.py`` prints its cost per image), so 500 images keep the demo short.
DEFAULT_TRAIN_IMAGES = 400
DEFAULT_TEST_IMAGES = 100
IMAGE_SIZE = 128
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
#: Fraction of images that carry a word; 1/2 balances the word type against the four shape types.
WORD_FRACTION = 0.5
#: Text-only records added to sft.json, as a fraction of its image records.
TEXT_ONLY_FRACTION = 0.03

SHAPES = ("circle", "square", "triangle", "star")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (20, 150, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 190, 0),
}
POSITIONS = ("left", "right", "top", "bottom")
COUNTS = ("one", "two", "three", "four")
WORDS = ("STOP", "OPEN", "SALE", "EXIT", "PUSH", "PULL", "HELP", "FIRE")
QUESTION_TYPES = ("shape", "color", "position", "count", "word")

#: Pixel geometry. Each cluster is centred on its region's centre, CLUSTER_OFFSET px from the image
#: centre along one axis, so its position class is never ambiguous; shapes sit on a 2x2 grid of CELL px.
CLUSTER_OFFSET = 32
CELL = 30
SHAPE_SIZES = (24, 26, 28)
JITTER = 2
#: Word fonts (Pillow's bundled FreeType font): 36-40 px reads reliably by RapidOCR on a 128 px canvas.
FONT_SIZES = (36, 38, 40)
WORD_JITTER = 8

QUESTIONS: dict[str, tuple[str, ...]] = {
    "shape": ("What shape is drawn?", "Which shape is in the image?", "What shape do you see?"),
    "color": ("What color is the drawing?", "Which color is used?", "What colour are the shapes drawn in?"),
    "position": ("Where is the drawing?", "Which side of the image is the drawing on?",
                 "Where are the shapes placed?"),
    "count": ("How many shapes are there?", "How many shapes can you count?", "Count the shapes."),
    "word": ("What word is written?", "What does the text say?", "Which word is shown in the image?"),
}

#: Text-only QA (no image): common knowledge with answers from the same closed vocabularies.
TEXT_ONLY: tuple[tuple[str, str], ...] = (
    ("What colour is a ripe banana?", "yellow"),
    ("What colour is grass?", "green"),
    ("What colour is the sky on a clear day?", "blue"),
    ("What colour is a ripe tomato?", "red"),
    ("How many sides does a triangle have?", "three"),
    ("How many sides does a square have?", "four"),
    ("How many wheels does a bicycle have?", "two"),
    ("What number comes after three?", "four"),
    ("What is the opposite of left?", "right"),
    ("What is the opposite of top?", "bottom"),
    ("What shape is a full moon?", "circle"),
    ("Which shape has three corners?", "triangle"),
)

# Offsets (in cells) of each shape around the cluster centre, for one to four shapes.
_ARRANGEMENTS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((0.0, 0.0),),
    2: ((-0.5, 0.0), (0.5, 0.0)),
    3: ((-0.5, 0.5), (0.5, 0.5), (0.0, -0.5)),
    4: ((-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)),
}
_REGION_CENTRES = {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)}


@dataclass(frozen=True)
class Scene:
    """What one image shows: a shape cluster (``word`` is None) or a word (the shape fields are None)."""

    shape: str | None = None
    color: str | None = None
    position: str | None = None
    count: int | None = None
    word: str | None = None
    size: int = 24  # shape size, or font size for a word
    dx: int = 0  # jitter of the cluster / word centre
    dy: int = 0

    @property
    def kind(self) -> str:
        return "word" if self.word else "shapes"

    def answers(self) -> dict[str, str]:
        """The gold one-word answer per question type this scene supports."""
        if self.word:
            return {"word": self.word}
        return {"shape": str(self.shape), "color": str(self.color), "position": str(self.position),
                "count": COUNTS[int(self.count) - 1]}

    def caption(self) -> str:
        if self.word:
            return f"the word {self.word} written in black"
        count = int(self.count)
        noun = str(self.shape) + ("s" if count > 1 else "")
        article = "a" if count == 1 else COUNTS[count - 1]
        where = "on the" if self.position in ("left", "right") else "at the"
        return f"{article} {self.color} {noun} {where} {self.position}"


# --- drawing -----------------------------------------------------------------------------------------
def _shape_polygon(shape: str, cx: float, cy: float, size: int) -> list[tuple[float, float]]:
    r = size / 2
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"no polygon for shape {shape!r}")


def shape_centres(scene: Scene, image_size: int = IMAGE_SIZE) -> list[tuple[float, float]]:
    """Pixel centres of the scene's shapes (exposed so tests can check the drawing against the answers)."""
    rx, ry = _REGION_CENTRES[str(scene.position)]
    cx = image_size / 2 + rx * CLUSTER_OFFSET + scene.dx
    cy = image_size / 2 + ry * CLUSTER_OFFSET + scene.dy
    return [(cx + ox * CELL, cy + oy * CELL) for ox, oy in _ARRANGEMENTS[int(scene.count)]]


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` without anti-aliasing, so every shape pixel has exactly its palette colour."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if scene.word:
        font = ImageFont.load_default(size=scene.size)
        x0, y0, x1, y1 = font.getbbox(scene.word)
        x = (image_size - (x1 - x0)) / 2 - x0 + scene.dx
        y = (image_size - (y1 - y0)) / 2 - y0 + scene.dy
        draw.text((x, y), scene.word, fill=TEXT_COLOR, font=font)
        return img
    fill = COLORS[str(scene.color)]
    r = scene.size / 2
    for cx, cy in shape_centres(scene, image_size):
        if scene.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif scene.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_shape_polygon(str(scene.shape), cx, cy, scene.size), fill=fill)
    return img


def blank_image(image_size: int = IMAGE_SIZE) -> Image.Image:
    return Image.new("RGB", (image_size, image_size), BACKGROUND)


# --- sampling ----------------------------------------------------------------------------------------
def _balanced(rng: random.Random, values: tuple[Any, ...], n: int) -> list[Any]:
    """``n`` values cycling through ``values`` then shuffled: every value as often as possible."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def _jittered(rng: random.Random, scene: Scene) -> Scene:
    if scene.word:
        return Scene(word=scene.word, size=rng.choice(FONT_SIZES), dx=rng.randint(-WORD_JITTER, WORD_JITTER),
                     dy=rng.randint(-WORD_JITTER, WORD_JITTER))
    return Scene(shape=scene.shape, color=scene.color, position=scene.position, count=scene.count,
                 size=rng.choice(SHAPE_SIZES), dx=rng.randint(-JITTER, JITTER), dy=rng.randint(-JITTER, JITTER))


def sample_scenes(rng: random.Random, n: int, seen: set[str]) -> list[tuple[Scene, Image.Image]]:
    """``n`` scenes, half words, every answer balanced within its type; pixels unique against ``seen``."""
    n_word = round(n * WORD_FRACTION)
    n_shape = n - n_word
    kinds = _balanced(rng, ("word",) * n_word + ("shapes",) * n_shape, n)
    words = iter(_balanced(rng, WORDS, n_word))
    shapes = iter(_balanced(rng, SHAPES, n_shape))
    colors = iter(_balanced(rng, tuple(COLORS), n_shape))
    positions = iter(_balanced(rng, POSITIONS, n_shape))
    counts = iter(_balanced(rng, (1, 2, 3, 4), n_shape))
    out = []
    for kind in kinds:
        if kind == "word":
            base = Scene(word=next(words))
        else:
            base = Scene(shape=next(shapes), color=next(colors), position=next(positions), count=next(counts))
        # Re-draw the jitter until the pixels are new: no test image duplicates a train image.
        for _ in range(1000):
            scene = _jittered(rng, base)
            img = render(scene)
            key = hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest()
            if key not in seen:
                seen.add(key)
                break
        else:
            raise RuntimeError(f"could not draw a unique image for {base}; too many images for the jitter space")
        out.append((scene, img))
    return out


# --- records -----------------------------------------------------------------------------------------
def qa_record(rec_id: str, image: str | None, question: str, answer: str, qtype: str) -> dict[str, Any]:
    """One LLaVA-format QA record; ``image`` None gives a text-only record (no ``<image>``, no key)."""
    human = f"<image>\n{question}" if image else question
    rec: dict[str, Any] = {"id": rec_id}
    if image:
        rec["image"] = image
    rec["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    rec["type"] = qtype
    return rec


def _qa_records(rng: random.Random, scenes: list[tuple[str, Scene]]) -> list[dict[str, Any]]:
    records = []
    for image, scene in scenes:
        stem = Path(image).stem
        for qtype, answer in scene.answers().items():
            records.append(qa_record(f"{stem}-{qtype}", image, rng.choice(QUESTIONS[qtype]), answer, qtype))
    return records


def _count_types(records: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r["type"]] = counts.get(r["type"], 0) + 1
    return dict(sorted(counts.items()))


def generate_dataset(out_dir: str | Path, n_train_images: int = DEFAULT_TRAIN_IMAGES,
                     n_test_images: int = DEFAULT_TEST_IMAGES, seed: int = 0, blank: bool = False) -> dict[str, Any]:
    """Write the dataset to ``out_dir`` and return its meta (also written to ``meta.json``).

    The same ``seed`` gives byte-identical files. ``blank=True`` writes the very same records, but every
    image is the uniform background: the control run that shows what the model gets without pixels.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    train = sample_scenes(rng, n_train_images, seen)
    test = sample_scenes(rng, n_test_images, seen)
    blank_img = blank_image() if blank else None
    named: dict[str, list[tuple[str, Scene]]] = {"train": [], "test": []}
    for split, items, start in (("train", train, 0), ("test", test, n_train_images)):
        for i, (scene, img) in enumerate(items):
            rel = f"images/{start + i:05d}.png"
            (blank_img or img).save(out / rel)
            named[split].append((rel, scene))
    # A rerun with fewer images must not leave the old run's extra images behind.
    written = {Path(rel).name for split in named.values() for rel, _ in split}
    for stale in (out / "images").glob("[0-9][0-9][0-9][0-9][0-9].png"):
        if stale.name not in written:
            stale.unlink()

    align = [{"id": Path(rel).stem, "image": rel,
              "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": scene.caption()}]}
             for rel, scene in named["train"]]
    sft = _qa_records(rng, named["train"])
    n_text = max(1, round(len(sft) * TEXT_ONLY_FRACTION)) if sft else 0
    for k in range(n_text):
        question, answer = TEXT_ONLY[k % len(TEXT_ONLY)]
        sft.append(qa_record(f"text-{k:04d}", None, question, answer, "text"))
    rng.shuffle(sft)
    test_records = _qa_records(rng, named["test"])

    meta: dict[str, Any] = {
        "seed": seed,
        "blank": blank,
        "image_size": IMAGE_SIZE,
        "n_train_images": n_train_images,
        "n_test_images": n_test_images,
        "n_align": len(align),
        "n_sft": len(sft),
        "n_test": len(test_records),
        "sft_per_type": _count_types(sft),
        "test_per_type": _count_types(test_records),
        "question_types": list(QUESTION_TYPES),
        "vocab": {"shape": list(SHAPES), "color": list(COLORS), "position": list(POSITIONS),
                  "count": list(COUNTS), "word": list(WORDS)},
        "chance": {"shape": 1 / len(SHAPES), "color": 1 / len(COLORS), "position": 1 / len(POSITIONS),
                   "count": 1 / len(COUNTS), "word": 1 / len(WORDS)},
    }
    for name, data in (("align.json", align), ("sft.json", sft), ("test.json", test_records), ("meta.json", meta)):
        (out / name).write_text(json.dumps(data, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write the synthetic image-grounded VQA dataset (LLaVA format).")
    p.add_argument("out_dir")
    p.add_argument("--train-images", type=int, default=DEFAULT_TRAIN_IMAGES)
    p.add_argument("--test-images", type=int, default=DEFAULT_TEST_IMAGES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blank", action="store_true", help="uniform images, same records (the control run)")
    args = p.parse_args(argv)
    meta = generate_dataset(args.out_dir, args.train_images, args.test_images, args.seed, args.blank)
    print(json.dumps({k: meta[k] for k in ("n_align", "n_sft", "n_test", "sft_per_type", "test_per_type")}))


if __name__ == "__main__":
    main()
