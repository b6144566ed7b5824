"""Shared helpers: tiny model configs that build in about a second, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mova.config import ModelConfig, apply_overrides, from_dict  # noqa: E402
from mova.presets import preset_dict  # noqa: E402


def tiny_model_config(*, ocr: bool = False, fusion: str = "mlp", sam_scheme: str = "share_by_row",
                      overrides: list[str] | None = None) -> ModelConfig:
    """The ``tiny`` preset, by default without the OCR expert (the real OCR engine is the slow part of a test)."""
    data = preset_dict("tiny")
    if not ocr:
        data["experts"] = [e for e in data["experts"] if e["family"] != "ocr_text"]
    for e in data["experts"]:
        if e["family"] == "sam":
            e["position_scheme"] = sam_scheme
    data["fusion"]["type"] = fusion
    if fusion == "qformer":
        data["fusion"].update(num_queries=6, num_heads=2)
    return from_dict(ModelConfig, apply_overrides(data, overrides or []), "model")


def random_image(seed: int, size: tuple[int, int] = (96, 80)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size[1], size[0], 3, generator=g) * 255).to(torch.uint8).numpy()
    img = Image.fromarray(arr)
    ImageDraw.Draw(img).ellipse((10, 10, 50, 50), fill=(255, 0, 0))
    return img


@pytest.fixture
def images():
    return [random_image(i) for i in range(4)]


def save_tiny_text_lm(folder, seed: int = 0, tied: bool = False):
    """A 2-layer, 64-wide random Llama with the repository's tiny tokenizer, saved to ``folder``."""
    from mova.model.tiny import tiny_text_lm

    return tiny_text_lm(folder, seed=seed, tied=tied)


def torchrun(*args: str, nproc: int = 2, timeout: int = 600):
    """Run ``python -m torch.distributed.run --nproc_per_node N ARGS`` (e.g. ``"-m", "mova.cli", "train", ...``
    or a script path) from the repository root on a free port, one OpenMP thread per process; fails the
    test with the processes' output tails unless every process exits 0. Returns the completed process."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:  # a free port: a fixed one collides with any other run on the machine
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", port,
           *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
