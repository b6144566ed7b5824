"""MovaProcessor: bad input gets a clear error, odd images are converted, counts are right."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mova.errors import ImageLoadError, PlaceholderMismatchError, SequenceTooLongError, UnknownNameError
from mova.model.builder import build_model, build_mova_config, load_tokenizer
from mova.model.processing_mova import MovaProcessor
from tests.conftest import random_image, tiny_model_config


@pytest.fixture(scope="module")
def processor():
    cfg = tiny_model_config()
    tok = load_tokenizer(cfg)
    return MovaProcessor(tok, build_mova_config(cfg, tok))


def test_placeholder_expands_to_layout_tokens(processor):
    batch = processor(["<image> one", "two <image><image>"], [random_image(0), random_image(1), random_image(2)])
    n = processor.layout.num_tokens()
    counts = (batch["input_ids"] == processor.image_token_id).sum(-1).tolist()
    assert counts == [n, 2 * n]
    assert batch["images"]["clip"].shape[0] == 3
    # left padding by default: the shorter row starts with pad and a zero mask
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][1, 0] == 1


def test_right_padding(processor):
    batch = processor(["<image> a", "b <image> c d e"], [random_image(0), random_image(1)], padding_side="right")
    assert batch["attention_mask"][0, -1] == 0 and batch["attention_mask"][0, 0] == 1


@pytest.mark.parametrize("texts,images,match", [
    (["<image> <image> two"], [random_image(0)], "2 <image> placeholder"),
    (["no placeholder"], [random_image(0)], "0 <image> placeholder"),
    (["<image> a", "b"], [[random_image(0)], [random_image(1)]], "sample 1 has 0"),
])
def test_placeholder_mismatch(processor, texts, images, match):
    with pytest.raises(PlaceholderMismatchError, match=match):
        processor(texts, images)


def test_missing_and_corrupt_image_files(processor, tmp_path):
    with pytest.raises(ImageLoadError, match="not found: .*nope.png"):
        processor("<image> x", [str(tmp_path / "nope.png")])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ImageLoadError, match="bad.jpg"):
        processor("<image> x", [str(bad)])
    trunc = tmp_path / "trunc.png"
    random_image(3).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:60])
    with pytest.raises(ImageLoadError, match="trunc.png"):
        processor("<image> x", [str(trunc)])


def test_odd_modes_and_sizes_are_converted(processor, tmp_path):
    rgba = Image.new("RGBA", (30, 20), (255, 0, 0, 0))
    pal = random_image(0).convert("P")
    gray = random_image(1).convert("L")
    tiny = Image.new("RGB", (1, 1), "blue")
    huge = Image.new("RGB", (3000, 2000), "green")
    path = tmp_path / "gray.png"
    gray.save(path)
    batch = processor(["<image>"] * 6, [rgba, pal, gray, tiny, huge, str(path)])
    for name, transform_out in batch["images"].items():
        assert transform_out.shape[0] == 6 and torch.isfinite(transform_out).all(), name
    # a fully transparent image becomes white, not black
    white = processor("<image>", [Image.new("RGB", (30, 20), "white")])["images"]["clip"]
    torch.testing.assert_close(batch["images"]["clip"][0], white[0])


def test_sequence_longer_than_context_is_refused():
    cfg = tiny_model_config(overrides=["llm.config.max_position_embeddings=120"])
    tok = load_tokenizer(cfg)
    proc = MovaProcessor(tok, build_mova_config(cfg, tok))
    proc("<image> short", [random_image(0)])  # 104 visual positions + a few text tokens fit
    with pytest.raises(SequenceTooLongError, match=r"sample 1: .* visual tokens using 104 positions .* 120"):
        proc(["<image> ok", "<image> " + "word " * 30], [random_image(0), random_image(1)])


def test_unknown_family_scheme_and_fusion_list_known():
    with pytest.raises(UnknownNameError, match="clip.*sam"):
        build_model(tiny_model_config(overrides=["experts.0.family=vit_magic"]), load_weights=False)
    with pytest.raises(UnknownNameError, match="share_by_row"):
        build_model(tiny_model_config(overrides=["experts.0.position_scheme=spiral"]), load_weights=False)
    with pytest.raises(UnknownNameError, match="qformer"):
        build_model(tiny_model_config(overrides=["fusion.type=perceiver"]), load_weights=False)
