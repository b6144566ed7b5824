"""OCR cost per image by RapidOCR's detector input size, on the demo's synthetic images.

Why: the OCR expert runs once per distinct image, and it dominates the demo's feature cache. RapidOCR
upsamples an image until its short side reaches ``det_limit_side_len`` (736 by default), so the demo's 128 px
images are detected at almost six times their size. The ``tiny`` preset sets 160. This prints, for each
setting, milliseconds per image and how many of the rendered words it read, so the choice rests on a number.

What is timed: ``OcrTextExpert.read`` on each image once (a new expert per setting, so nothing is cached), after
one warm-up image per setting (the first call loads the ONNX models), with the tiny preset's other OCR options;
wall time, and the process's CPU time (all its threads), which other tenants of a shared machine disturb less.
Images: the synthetic set's scenes (``mova.data.synthetic.sample_scenes``), shapes and words mixed as in the
demo; a word counts as read when the expert's words, joined, equal the rendered word (case-insensitive).

    python benchmarks/ocr.py                       # 100 images, det_limit_side_len 736 and 160
    python benchmarks/ocr.py --sizes 736,320,160 --images 200
    python benchmarks/ocr.py --quick               # smoke run: 6 images
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ocr_expert(det_limit_side_len: int) -> Any:
    """The tiny preset's OCR expert with another detector input size."""
    from mova.config import ExpertConfig, from_dict
    from mova.model.experts import build_expert
    from mova.presets import preset_dict

    entry = next(e for e in preset_dict("tiny")["experts"] if e["family"] == "ocr_text")
    entry["kwargs"] = {**entry.get("kwargs", {}), "det_limit_side_len": det_limit_side_len}
    return build_expert(from_dict(ExpertConfig, entry, "expert"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--sizes", default="736,160", help="comma-separated det_limit_side_len values")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: a few images")
    if p.parse_known_args(argv)[0].quick:  # quick sizes are defaults: explicit arguments still win
        p.set_defaults(images=6)
    args = p.parse_args(argv)

    from mova.data.synthetic import sample_scenes

    scenes = sample_scenes(random.Random(args.seed), args.images, set())
    n_words = sum(scene.word is not None for scene, _ in scenes)
    rows = []
    for size in (int(x) for x in args.sizes.split(",")):
        expert = ocr_expert(size)
        expert.read(scenes[0][1].copy().rotate(90))  # warm-up: loads the ONNX models (not one of the timed images)
        ms, cpu_ms, read = [], [], 0
        for scene, image in scenes:
            t0, c0 = time.perf_counter(), time.process_time()
            words = expert.read(image)
            ms.append(1000 * (time.perf_counter() - t0))
            cpu_ms.append(1000 * (time.process_time() - c0))
            if scene.word is not None and " ".join(w.text for w in words).strip().lower() == scene.word.lower():
                read += 1
        rows.append((size, statistics.mean(ms), statistics.median(ms), statistics.mean(cpu_ms), read))
        print(f"det_limit_side_len {size}: {statistics.mean(ms):.1f} ms per image", file=sys.stderr, flush=True)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"\nOCR (RapidOCR, tiny preset options) on {args.images} synthetic {scenes[0][1].size[0]} px images, "
          f"{n_words} with a word; OMP_NUM_THREADS={threads}\n")
    print("| det_limit_side_len | ms per image (mean) | ms per image (median) | CPU ms per image (mean) | words read |")
    print("|---:|---:|---:|---:|---:|")
    for size, mean, median, cpu, read in rows:
        print(f"| {size} | {mean:.1f} | {median:.1f} | {cpu:.1f} | {read} of {n_words} |")


if __name__ == "__main__":
    main()
