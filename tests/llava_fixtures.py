"""A small LLaVA-format dataset written to a temp folder, for trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

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
