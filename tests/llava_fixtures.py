"""A small LLaVA-format dataset written to a temp folder, for trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from mova.presets import TINY_LLM, TINY_TOKENIZER

COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 220)}


def write_llava_dataset(root: Path, n: int = 24, text_only: int = 4) -> Path:
    """``root/data.json`` + ``root/images``: coloured circles with a colour question each."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    names = list(COLORS)
    for i in range(n):
        color = names[i % len(names)]
        img = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(img).ellipse((8 + i % 5, 8, 50, 50), fill=COLORS[color])
        img.save(root / "images" / f"{i:03d}.png")
        records.append({"id": f"img-{i}", "image": f"images/{i:03d}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the circle?"},
            {"from": "gpt", "value": f"It is {color}."}]})
    for j in range(text_only):
        records.append({"id": f"txt-{j}", "conversations": [
            {"from": "human", "value": f"Count to {j + 2}."},
            {"from": "gpt", "value": " ".join(str(k) for k in range(1, j + 3))}]})
    (root / "data.json").write_text(json.dumps(records))
    return root / "data.json"


def tiny_recipe(data: Path, image_folder: Path, stage: str = "align", data_extra: dict | None = None,
                **train: object) -> dict:
    """A run config (as a dict) on a 2-expert tiny model: quick enough for in-process trainer tests."""
    return {
        "stage": stage,
        "model": {"experts": [{"family": "clip", "tiny": True},
                              {"family": "sam", "tiny": True, "position_scheme": "share_by_row"}],
                  "llm": {"config": dict(TINY_LLM), "tokenizer": str(TINY_TOKENIZER)}},
        "data": {"data_path": str(data), "image_folder": str(image_folder), **(data_extra or {})},
        "train": {"logging_steps": 1, "report_to": [], "learning_rate": 3e-3, "per_device_train_batch_size": 4,
                  "warmup_ratio": 0.0, **train},
    }


def write_hub_llava_folder(root: Path, n: int = 12, eval_n: int = 4, embedded: bool = True,
                           card: bool = False) -> Path:
    """``root`` laid out like a Hub dataset repository: ``data/train-00000-of-00001.parquet`` and
    ``data/validation-00000-of-00001.parquet`` of LLaVA records whose images are embedded (the Hub's ``Image``
    feature, bytes in the parquet) or, with ``embedded=False``, paths under ``root/images``. With ``card`` a
    README.md names the files in a ``configs:`` block (under config ``colours``) instead of the file names."""
    import io

    import datasets

    names = list(COLORS)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, count, offset in (("train", n, 0), ("validation", eval_n, 100)):
        rows: dict[str, list] = {"id": [], "image": [], "conversations": []}
        for i in range(offset, offset + count):
            color = names[i % len(names)]
            img = Image.new("RGB", (64, 64), "white")
            ImageDraw.Draw(img).ellipse((8 + i % 5, 8, 50, 50), fill=COLORS[color])
            if embedded:
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                rows["image"].append({"bytes": buf.getvalue(), "path": None})
            else:
                (root / "images").mkdir(exist_ok=True)
                img.save(root / "images" / f"{i:03d}.png")
                rows["image"].append(f"images/{i:03d}.png")
            rows["id"].append(f"hub-{i}")
            rows["conversations"].append([{"from": "human", "value": "<image>\nWhat color is the circle?"},
                                          {"from": "gpt", "value": f"It is {color}."}])
        ds = datasets.Dataset.from_dict(rows)
        if embedded:
            ds = ds.cast_column("image", datasets.Image())
        name = f"{split}-00000-of-00001.parquet" if not card else f"part-{split}.parquet"
        ds.to_parquet(str(root / "data" / name))
    if card:
        (root / "README.md").write_text(
            "---\nconfigs:\n- config_name: colours\n  data_files:\n"
            "  - split: train\n    path: data/part-train.parquet\n"
            "  - split: validation\n    path: data/part-validation.parquet\n---\n# colours\n")
    return root
