"""The synthetic VQA dataset is deterministic, well-formed and truthful; the VQA metric scores fairly."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mova.data import synthetic as syn
from mova.evaluation.vqa import evaluate_vqa
from mova.metrics.vqa import format_accuracy_table, normalize_answer, score_answer, summarize
from tests.conftest import tiny_model_config

N_TRAIN, N_TEST, SEED = 24, 12, 3
JSON_FILES = ("align.json", "sft.json", "test.json")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    syn.generate_dataset(out, N_TRAIN, N_TEST, seed=SEED)
    return out


def load(root: Path, name: str):
    return json.loads((root / name).read_text())


def answers_by_image(records: list[dict]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for r in records:
        if "image" in r:
            out.setdefault(r["image"], {})[r["type"]] = r["conversations"][1]["value"]
    return out


def pixels(root: Path, rel: str) -> np.ndarray:
    with Image.open(root / rel) as img:
        return np.asarray(img.convert("RGB"))


def components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of a boolean mask (a small flood fill; the images are 128 px)."""
    seen = np.zeros_like(mask, dtype=bool)
    comps = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, comp = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            comp.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        comps.append(comp)
    return comps


def shape_from_fill(comp: list[tuple[int, int]]) -> str:
    """Classify a drawn shape by how much of its bounding box it fills: 1.0, pi/4, 1/2, ~0.38."""
    ys, xs = zip(*comp)
    fill = len(comp) / ((max(ys) - min(ys) + 1) * (max(xs) - min(xs) + 1))
    if fill > 0.9:
        return "square"
    if fill > 0.65:
        return "circle"
    if fill > 0.46:
        return "triangle"
    return "star"


def test_deterministic_for_a_seed(data_dir, tmp_path):
    syn.generate_dataset(tmp_path, N_TRAIN, N_TEST, seed=SEED)
    for name in (*JSON_FILES, "meta.json"):
        assert (tmp_path / name).read_bytes() == (data_dir / name).read_bytes(), name
    images = sorted(p.name for p in (data_dir / "images").iterdir())
    assert images == sorted(p.name for p in (tmp_path / "images").iterdir())
    for name in images:
        assert (tmp_path / "images" / name).read_bytes() == (data_dir / "images" / name).read_bytes(), name
    other = tmp_path / "other"
    syn.generate_dataset(other, N_TRAIN, N_TEST, seed=SEED + 1)
    assert (other / "test.json").read_bytes() != (data_dir / "test.json").read_bytes()


def test_files_and_records_well_formed(data_dir):
    meta, align, sft, test = load(data_dir, "meta.json"), *(load(data_dir, n) for n in JSON_FILES)
    assert len(align) == N_TRAIN and len(list((data_dir / "images").glob("*.png"))) == N_TRAIN + N_TEST
    assert meta["seed"] == SEED and meta["n_sft"] == len(sft) and meta["n_test"] == len(test)
    vocab = {t: set(v) for t, v in meta["vocab"].items()}
    for r in align:
        assert r["conversations"][0] == {"from": "human", "value": "<image>"}
        assert r["conversations"][1]["from"] == "gpt" and r["conversations"][1]["value"]
        assert (data_dir / r["image"]).is_file() and r["image"].startswith("images/")
    ids = [r["id"] for r in sft + test]
    assert len(ids) == len(set(ids))
    text_only = [r for r in sft if "image" not in r]
    assert 1 <= len(text_only) <= 0.1 * len(sft)
    for r in sft + test:
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        answer = gpt["value"]
        assert answer == answer.strip() and " " not in answer
        if "image" in r:
            assert human["value"].startswith("<image>\n") and human["value"].count("<image>") == 1
            assert (data_dir / r["image"]).is_file()
            assert answer in vocab[r["type"]]
        else:
            assert r["type"] == "text" and "<image>" not in human["value"]
    # Balanced: every question type equally often, every answer equally often within its type.
    assert len(set(meta["test_per_type"].values())) == 1 and set(meta["test_per_type"]) == set(syn.QUESTION_TYPES)
    image_sft = [r for r in sft if "image" in r]
    assert len(set(Counter(r["type"] for r in image_sft).values())) == 1
    for qtype in syn.QUESTION_TYPES:
        counts = Counter(r["conversations"][1]["value"] for r in image_sft if r["type"] == qtype)
        assert max(counts.values()) - min(counts.values()) <= 1, (qtype, counts)


def test_answers_match_the_pixels(data_dir):
    records = load(data_dir, "sft.json") + load(data_dir, "test.json")
    checked = 0
    palette = {tuple(v): k for k, v in syn.COLORS.items()}
    for rel, answers in answers_by_image(records).items():
        arr = pixels(data_dir, rel)
        ink = (arr != syn.BACKGROUND).any(-1)
        colours = {tuple(int(c) for c in px) for px in arr[ink]}
        if "word" in answers:
            assert set(answers) == {"word"} and answers["word"] in syn.WORDS
            assert all(px[0] == px[1] == px[2] for px in colours)  # black (anti-aliased) text only
            continue
        assert colours == {syn.COLORS[answers["color"]]}, (rel, answers, {palette.get(c) for c in colours})
        comps = components(ink)
        assert syn.COUNTS[len(comps) - 1] == answers["count"], (rel, answers)
        assert {shape_from_fill(c) for c in comps} == {answers["shape"]}, (rel, answers)
        ys, xs = np.nonzero(ink)
        dx, dy = xs.mean() - arr.shape[1] / 2, ys.mean() - arr.shape[0] / 2
        side = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("bottom" if dy > 0 else "top")
        assert side == answers["position"] and max(abs(dx), abs(dy)) > 20, (rel, answers, dx, dy)
        checked += 1
    assert checked >= (N_TRAIN + N_TEST) // 2 - 1


def test_held_out_images_are_disjoint(data_dir):
    train = {r["image"] for r in load(data_dir, "sft.json") + load(data_dir, "align.json") if "image" in r}
    test = {r["image"] for r in load(data_dir, "test.json")}
    assert len(train) == N_TRAIN and len(test) == N_TEST and not train & test

    def digest(rel: str) -> str:
        return hashlib.sha1(pixels(data_dir, rel).tobytes()).hexdigest()

    assert not {digest(r) for r in train} & {digest(r) for r in test}


def test_blank_mode_same_records_uniform_images(data_dir, tmp_path):
    meta = syn.generate_dataset(tmp_path, N_TRAIN, N_TEST, seed=SEED, blank=True)
    assert meta["blank"] is True
    for name in JSON_FILES:
        assert (tmp_path / name).read_bytes() == (data_dir / name).read_bytes(), name
    for path in (tmp_path / "images").glob("*.png"):
        arr = pixels(tmp_path, f"images/{path.name}")
        assert (arr == syn.BACKGROUND).all(), path.name


def test_ocr_expert_reads_the_rendered_words(data_dir):
    pytest.importorskip("rapidocr_onnxruntime")
    from mova.config import ExpertConfig
    from mova.model.experts import build_expert

    ocr = build_expert(ExpertConfig(family="ocr_text"))
    words = [r for r in load(data_dir, "test.json") if r["type"] == "word"][:2]
    assert words
    for r in words:
        with Image.open(data_dir / r["image"]) as img:
            assert [w.text for w in ocr.read(img)] == [r["conversations"][1]["value"]], r["image"]


@pytest.mark.parametrize(("prediction", "gold", "correct"), [
    ("circle", "circle", True),
    ("  Circle.", "circle", True),
    ("CIRCLE!\n", "circle", True),
    ("stop", "STOP", True),
    ("The square", "square", True),
    ("a star, I think", "star", True),
    ("3", "three", True),
    ("three shapes", "three", True),
    ("circles", "circle", False),
    ("circ", "circle", False),
    ("red circle", "circle", False),
    ("", "circle", False),
    ("...", "circle", False),
    ("", "", False),
])
def test_score_answer(prediction, gold, correct):
    assert score_answer(prediction, gold) is correct


def test_normalize_answer():
    assert normalize_answer("  Left,  of centre") == "left"
    assert normalize_answer("the") == "the"
    assert normalize_answer("Don't") == "dont"


def test_summarize_and_table():
    preds = [{"type": "shape", "correct": True}, {"type": "shape", "correct": False},
             {"type": "word", "correct": True}, {"type": "word", "correct": True}]
    res = summarize(preds)
    assert res["overall"] == 0.75 and res["per_type"] == {"shape": 0.5, "word": 1.0}
    assert res["n"] == 4 and res["n_per_type"] == {"shape": 2, "word": 2}
    blanked = summarize([{"type": "shape", "correct": False}, {"type": "shape", "correct": False}])
    table = format_accuracy_table({"images": res, "blanked": blanked})
    lines = table.splitlines()
    assert lines[0].split() == ["type", "n", "images", "blanked"]
    assert lines[2].split() == ["shape", "2", "50.0", "0.0"]
    assert lines[3].split() == ["word", "2", "100.0", "-"]
    assert lines[-1].split() == ["overall", "4", "75.0", "0.0"]


def test_evaluate_vqa_on_a_tiny_untrained_model(data_dir):
    from mova.model.builder import build_model

    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.train()
    test = load(data_dir, "test.json")
    records = [next(r for r in test if r["type"] == t) for t in syn.QUESTION_TYPES]
    records.append(next(r for r in load(data_dir, "sft.json") if "image" not in r))
    res = evaluate_vqa(model, processor, records, data_dir, batch_size=6, progress=False)
    assert model.training  # the caller's mode is restored
    assert set(res["per_type"]) == {*syn.QUESTION_TYPES, "text"} and res["n"] == len(records)
    assert 0.0 <= res["overall"] <= 1.0 and all(0.0 <= a <= 1.0 for a in res["per_type"].values())
    assert res["n_per_type"] == dict.fromkeys(res["per_type"], 1)
    assert [p["id"] for p in res["predictions"]] == [r["id"] for r in records]
    for p in res["predictions"]:
        assert isinstance(p["prediction"], str) and p["correct"] == score_answer(p["prediction"], p["answer"])
    assert "overall" in format_accuracy_table({"untrained": res})
