"""Visual experts: shapes, transforms, freezing, meta builds, and agreement with each family's own library.

Every check runs on tiny random encoders (no weights are downloaded); ``load_pretrained`` is exercised
on checkpoints written to a temporary folder in each library's own format.
"""

from __future__ import annotations

import json
import pickle
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from mova.config import ExpertConfig
from mova.errors import ConfigError, UnknownNameError
from mova.model.experts import EXPERT_REGISTRY, OcrWord, VisualExpert, build_expert, expert_class, to_rgb

FAMILIES = ["clip", "sam", "layoutlmv3", "timm", "ocr_text"]
PIXEL_FAMILIES = ["clip", "sam", "layoutlmv3", "timm"]
#: family -> (grid, hidden size, input side, has a CLS token) of its tiny encoder.
TINY_SHAPES = {
    "clip": ((8, 8), 64, 64, True),
    "sam": ((8, 8), 32, 128, False),
    "layoutlmv3": ((4, 4), 64, 64, True),
    "timm": ((4, 4), 64, 56, True),
}


def tiny(family: str, **kwargs) -> VisualExpert:
    return build_expert(ExpertConfig(family=family, tiny=True, **kwargs))


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Overwrite every parameter with seeded noise: library inits leave zeros (positions, SAM's relative
    positions) or 1e-5 layer scales that would make wrong wiring invisible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def pixels_for(expert: VisualExpert, n: int = 2) -> torch.Tensor:
    transform = expert.image_transform()
    return torch.stack([transform(noise_image(90 + 10 * i, 70, seed=i)) for i in range(n)])


# --- registry -----------------------------------------------------------------------------------
def test_all_families_registered():
    assert set(FAMILIES) <= set(EXPERT_REGISTRY)
    for family in FAMILIES:
        assert expert_class(family).family == family


def test_unknown_family_lists_known_ones():
    with pytest.raises(UnknownNameError) as info:
        build_expert(ExpertConfig(family="dino_v9"))
    message = str(info.value)
    assert "dino_v9" in message and all(f in message for f in FAMILIES)


# --- shapes, transforms, freezing (every family, tiny) -----------------------------------------
@pytest.mark.parametrize("use_cls", [False, True])
@pytest.mark.parametrize("family", PIXEL_FAMILIES)
def test_tiny_forward_shape(family: str, use_cls: bool):
    grid, hidden, _, has_cls = TINY_SHAPES[family]
    expert = tiny(family, use_cls=use_cls)
    assert expert.grid == grid and expert.hidden_size == hidden
    assert expert.num_prefix_tokens == int(use_cls and has_cls)
    with torch.no_grad():
        out = expert(pixels_for(expert))
    assert out.shape == (2, expert.num_prefix_tokens + grid[0] * grid[1], hidden)
    assert expert.num_tokens == out.shape[1]
    assert torch.isfinite(out).all()


def test_tiny_ocr_shape():
    expert = build_expert(ExpertConfig(family="ocr_text", tiny=True, max_tokens=24))
    assert expert.input_kind == "ocr"
    assert expert.grid == (1, 24) and expert.num_prefix_tokens == 0 and expert.num_tokens == 24
    assert expert.hidden_size == 0  # "the LLM's width": words are embedded by the LLM's table
    with pytest.raises(RuntimeError, match="read"):
        expert(torch.zeros(1, 3, 8, 8))


def odd_images() -> dict[str, Image.Image]:
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    palette = noise_image(33, 21).convert("P")
    return {
        "L": noise_image(50, 40).convert("L"),
        "RGBA": rgba,
        "P": palette,
        "CMYK": noise_image(30, 60).convert("CMYK"),
        "1x1": Image.new("RGB", (1, 1), (3, 4, 5)),
        "3000x2000": Image.new("RGB", (3000, 2000), (200, 100, 50)),
        "1x300": Image.new("RGB", (1, 300), (0, 0, 0)),
    }


@pytest.mark.parametrize("family", PIXEL_FAMILIES)
def test_transform_accepts_any_image(family: str):
    expert = tiny(family)
    side = TINY_SHAPES[family][2]
    transform = expert.image_transform()
    for name, image in odd_images().items():
        x = transform(image)
        assert x.shape == (3, side, side), name
        assert x.dtype == torch.float32 and torch.isfinite(x).all(), name
    # DataLoader workers receive the transform pickled.
    clone = pickle.loads(pickle.dumps(transform))
    image = noise_image(60, 45)
    assert torch.equal(clone(image), transform(image))


def test_ocr_transform_returns_rgb_pil():
    transform = build_expert(ExpertConfig(family="ocr_text")).image_transform()
    for name, image in odd_images().items():
        out = transform(image)
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == image.size, name


def test_to_rgb_puts_transparency_on_white():
    clear = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(clear).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("LA", (2, 2), (0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)
    assert to_rgb(Image.new("CMYK", (2, 2), (0, 0, 0, 0))).mode == "RGB"


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_by_default(family: str):
    expert = tiny(family)
    assert not any(p.requires_grad for p in expert.parameters())
    expert.train()
    assert not any(m.training for m in expert.modules())
    trainable = tiny(family, frozen=False)
    assert all(p.requires_grad for p in trainable.parameters())
    trainable.train()
    assert trainable.training


# --- the real default architectures, on the meta device (no memory, no download) ----------------
@pytest.mark.parametrize(
    ("family", "extra", "grid", "hidden"),
    [
        ("clip", {}, (24, 24), 1024),
        ("sam", {}, (64, 64), 256),
        ("sam", {"model": "vit_h"}, (64, 64), 256),
        ("layoutlmv3", {}, (14, 14), 768),
        ("timm", {"model": "vit_large_patch14_dinov2.lvd142m", "image_size": 518}, (37, 37), 1024),
        ("timm", {}, (37, 37), 1024),
    ],
)
def test_real_architectures_on_meta(family: str, extra: dict, grid: tuple[int, int], hidden: int):
    with torch.device("meta"):
        expert = build_expert(ExpertConfig(family=family, **extra))
    assert expert.grid == grid and expert.hidden_size == hidden
    params = list(expert.parameters())
    assert params and all(p.is_meta for p in params)
    # The transform of a meta-built expert is usable (the processor builds experts this way).
    x = expert.image_transform()(noise_image(64, 48))
    side = {"clip": 336, "sam": 1024, "layoutlmv3": 224, "timm": 518}[family]
    assert x.shape == (3, side, side) and not x.is_meta


def test_layoutlmv3_other_config_offline_is_a_clear_error():
    with pytest.raises(ConfigError, match="layoutlmv3-large"):
        build_expert(ExpertConfig(family="layoutlmv3", model="microsoft/layoutlmv3-large"))


# --- clip: agreement with open_clip --------------------------------------------------------------
def test_clip_matches_open_clip_tokens():
    expert = tiny("clip", feature_layer=-1, final_norm=True)
    visual = randomize(expert.visual)
    x = pixels_for(expert)
    visual.output_tokens = True
    with torch.no_grad():
        pooled, tokens = visual(x)
        out = expert(x)
        with_cls = tiny("clip", feature_layer=-1, final_norm=True, use_cls=True)
        with_cls.load_state_dict(expert.state_dict())
        out_cls = with_cls(x)
    torch.testing.assert_close(out, tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_cls[:, 1:], tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_cls[:, 0] @ visual.proj, pooled, atol=1e-5, rtol=0)


@pytest.mark.parametrize("final_norm", [False, True])
def test_clip_intermediate_layer_matches_forward_intermediates(final_norm: bool):
    expert = tiny("clip", feature_layer=-2, final_norm=final_norm, use_cls=True)
    assert expert.layer_index == 0
    randomize(expert.visual, seed=1)
    x = pixels_for(expert)
    with torch.no_grad():
        ref = expert.visual.forward_intermediates(
            x, indices=[0], output_fmt="NLC", intermediates_only=True, output_extra_tokens=True,
            normalize_intermediates=final_norm,
        )
        out = expert(x)
    torch.testing.assert_close(out[:, 1:], ref["image_intermediates"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :1], ref["image_intermediates_prefix"][0], atol=1e-5, rtol=0)


def test_clip_feature_layer_out_of_range():
    with pytest.raises(ConfigError, match="feature_layer"):
        tiny("clip", feature_layer=2)


def test_clip_quick_gelu_follows_openai_tag():
    from open_clip.transformer import QuickGELU

    with torch.device("meta"):
        openai = build_expert(ExpertConfig(family="clip", pretrained="openai"))
        plain = build_expert(ExpertConfig(family="clip"))
    assert openai.quick_gelu and any(isinstance(m, QuickGELU) for m in openai.modules())
    assert not plain.quick_gelu and not any(isinstance(m, QuickGELU) for m in plain.modules())


def test_clip_load_pretrained_from_open_clip_folder(tmp_path: Path):
    import open_clip

    from mova.model.experts.clip import TINY_EMBED_DIM, TINY_VISION_CFG

    model_cfg = {
        "embed_dim": TINY_EMBED_DIM,
        "vision_cfg": TINY_VISION_CFG,
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    source = randomize(open_clip.CLIP(**model_cfg), seed=2)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    torch.save(source.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    where = f"local-dir:{tmp_path}"
    expert = build_expert(ExpertConfig(family="clip", model=where, pretrained=where), load_weights=True)
    assert expert.grid == (8, 8)
    for key, value in source.visual.state_dict().items():
        assert torch.equal(expert.visual.state_dict()[key], value), key


# --- sam: agreement with segment_anything ---------------------------------------------------------
def reference_sam_encoder():
    from segment_anything.modeling import ImageEncoderViT

    return ImageEncoderViT(
        img_size=128, patch_size=16, embed_dim=64, depth=2, num_heads=2, out_chans=32, window_size=4,
        global_attn_indexes=(1,), mlp_ratio=4, qkv_bias=True, use_rel_pos=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()


def test_sam_matches_image_encoder():
    expert = tiny("sam")
    randomize(expert.encoder, seed=3)
    reference = reference_sam_encoder()
    reference.load_state_dict(expert.encoder.state_dict())  # strict: same architecture
    x = pixels_for(expert)
    with torch.no_grad():
        want = reference(x).flatten(2).transpose(1, 2)
        got = expert(x)
    assert got.shape == (2, 64, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", [128, 1024])
@pytest.mark.parametrize("size", [(173, 101), (90, 151)])  # landscape pads the bottom, portrait the right
def test_sam_transform_matches_sam_preprocessing(side: int, size: tuple[int, int]):
    from segment_anything.modeling import Sam
    from segment_anything.utils.transforms import ResizeLongestSide

    with torch.device("meta"):
        expert = build_expert(ExpertConfig(family="sam", tiny=side == 128))
    image = noise_image(*size, seed=4)
    resized = ResizeLongestSide(side).apply_image(np.array(image))
    x = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    sam = SimpleNamespace(
        pixel_mean=torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1),
        pixel_std=torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1),
        image_encoder=SimpleNamespace(img_size=side),
    )
    want = Sam.preprocess(sam, x)[0]
    got = expert.image_transform()(image)
    assert got.shape == want.shape == (3, side, side)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_sam_load_pretrained_official_layout(tmp_path: Path, suffix: str):
    source = randomize(reference_sam_encoder(), seed=5)
    state = {f"image_encoder.{k}": v.contiguous() for k, v in source.state_dict().items()}
    state["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)  # other SAM parts are ignored
    path = tmp_path / f"sam_tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    expert = build_expert(ExpertConfig(family="sam", tiny=True, pretrained=str(path)), load_weights=True)
    for key, value in source.state_dict().items():
        assert torch.equal(expert.encoder.state_dict()[key], value), key
    # A different resolution interpolates the absolute and relative positions.
    small = build_expert(ExpertConfig(family="sam", tiny=True, image_size=64, pretrained=str(path)), load_weights=True)
    assert small.grid == (4, 4)
    with torch.no_grad():
        assert small(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 32)


# --- layoutlmv3: agreement with transformers ------------------------------------------------------
def reference_layoutlmv3():
    from transformers import LayoutLMv3Config, LayoutLMv3Model

    from mova.model.experts.layoutlmv3 import TINY_CONFIG

    return LayoutLMv3Model(LayoutLMv3Config(**TINY_CONFIG)).eval()  # with its text embeddings


def test_layoutlmv3_matches_model_last_hidden_state():
    expert = tiny("layoutlmv3", use_cls=True)
    randomize(expert.model, seed=6, std=0.05)
    reference = reference_layoutlmv3()
    missing, unexpected = reference.load_state_dict(expert.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("embeddings.") for k in missing)
    no_cls = tiny("layoutlmv3")
    no_cls.load_state_dict(expert.state_dict())
    x = pixels_for(expert)
    with torch.no_grad():
        want = reference(pixel_values=x).last_hidden_state
        got, got_no_cls = expert(x), no_cls(x)
    assert want.shape == (2, 17, 64)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_no_cls, want[:, 1:], atol=1e-5, rtol=0)


def test_layoutlmv3_transform_matches_image_processor():
    from transformers import LayoutLMv3ImageProcessorPil

    processor = LayoutLMv3ImageProcessorPil(apply_ocr=False, size={"height": 64, "width": 64})
    image = noise_image(150, 97, seed=7)
    want = processor(images=image, return_tensors="pt").pixel_values[0]
    got = tiny("layoutlmv3").image_transform()(image)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_layoutlmv3_load_pretrained_from_saved_model(tmp_path: Path):
    source = randomize(reference_layoutlmv3(), seed=8, std=0.05)
    source.save_pretrained(tmp_path)
    expert = build_expert(ExpertConfig(family="layoutlmv3", tiny=True, pretrained=str(tmp_path)), load_weights=True)
    x = pixels_for(expert)
    with torch.no_grad():
        torch.testing.assert_close(expert(x), source(pixel_values=x).last_hidden_state[:, 1:], atol=1e-5, rtol=0)
    bigger = build_expert(
        ExpertConfig(family="layoutlmv3", tiny=True, image_size=96, pretrained=str(tmp_path)), load_weights=True
    )
    assert bigger.grid == (6, 6)
    with torch.no_grad():
        assert bigger(pixels_for(bigger)).shape == (2, 36, 64)


# --- timm: agreement with forward_features --------------------------------------------------------
def test_timm_vit_matches_forward_features():
    expert = tiny("timm", use_cls=True)
    randomize(expert.model, seed=9)
    no_cls = tiny("timm")
    no_cls.load_state_dict(expert.state_dict())
    x = pixels_for(expert)
    with torch.no_grad():
        want = expert.model.forward_features(x)
        got, got_no_cls = expert(x), no_cls(x)
    assert want.shape == (2, 17, 64)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_no_cls, want[:, 1:], atol=1e-6, rtol=0)


def test_timm_register_tokens_are_dropped():
    from mova.model.experts.timm_expert import TINY_KWARGS

    expert = tiny("timm", model="vit_small_patch14_reg4_dinov2", kwargs=dict(TINY_KWARGS), use_cls=True)
    assert expert.model.num_prefix_tokens == 5 and expert.num_prefix_tokens == 1
    x = pixels_for(expert)
    with torch.no_grad():
        want = expert.model.forward_features(x)
        got = expert(x)
    assert got.shape == (2, 17, 64)
    torch.testing.assert_close(got, torch.cat([want[:, :1], want[:, 5:]], dim=1), atol=1e-6, rtol=0)


def test_timm_convnet_matches_forward_features():
    import timm

    small = {"dims": (16, 24, 32, 48), "depths": (1, 1, 1, 1)}  # convnext_atto's layout, narrower (fast init)
    expert = tiny("timm", model="convnext_atto", image_size=64, kwargs=small)
    assert expert.grid == (2, 2) and expert.hidden_size == 48 and expert.num_prefix_tokens == 0
    randomize(expert.model, seed=10)
    reference = timm.create_model("convnext_atto", pretrained=False, num_classes=0, **small).eval()
    reference.load_state_dict(expert.model.state_dict())
    x = pixels_for(expert)
    assert x.shape[-2:] == (64, 64)
    with torch.no_grad():
        want = reference.forward_features(x).flatten(2).transpose(1, 2)
        got = expert(x)
    assert got.shape == (2, 4, 48)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_timm_load_pretrained_from_file(tmp_path: Path):
    from safetensors.torch import save_file

    source = randomize(tiny("timm").model, seed=11)
    path = tmp_path / "tiny_vit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    expert = build_expert(ExpertConfig(family="timm", tiny=True, pretrained=str(path)), load_weights=True)
    for key, value in source.state_dict().items():
        assert torch.equal(expert.model.state_dict()[key], value), key


def test_timm_unknown_model():
    with pytest.raises(UnknownNameError, match="convnext_atto"):
        build_expert(ExpertConfig(family="timm", model="convnext_nonexistent"))


# --- ocr_text: RapidOCR -----------------------------------------------------------------------------
def text_image() -> tuple[Image.Image, dict[str, tuple[int, int, int, int]]]:
    """Three words in two lines; WORLD starts a little higher than HELLO but is on the same line."""
    try:
        font = ImageFont.truetype("DejaVuSans-Bold.ttf", 48)
    except OSError:
        font = ImageFont.load_default(size=48)
    image = Image.new("RGB", (560, 320), "white")
    draw = ImageDraw.Draw(image)
    spots = {"HELLO": (30, 45), "WORLD": (320, 38), "MOVA": (30, 200)}
    boxes = {}
    for word, xy in spots.items():
        draw.text(xy, word, fill="black", font=font)
        boxes[word] = draw.textbbox(xy, word, font=font)
    return image, boxes


@pytest.fixture(scope="module")
def ocr_expert() -> VisualExpert:
    """One OCR expert for the module: creating the RapidOCR engine costs about a second."""
    return build_expert(ExpertConfig(family="ocr_text"))


def test_ocr_reads_words_in_order_with_boxes_and_caches(ocr_expert: VisualExpert):
    expert = ocr_expert
    calls = expert.engine_calls
    image, drawn = text_image()
    words = expert.read(image)
    assert all(isinstance(w, OcrWord) for w in words)
    text = " ".join(w.text for w in words).upper()
    assert "HELLO" in text and "WORLD" in text and "MOVA" in text
    assert text.index("HELLO") < text.index("WORLD") < text.index("MOVA")  # reading order
    hello = next(w for w in words if "HELLO" in w.text.upper())
    x0, y0, x1, y1 = drawn["HELLO"]
    want = (x0 / image.width, y0 / image.height, x1 / image.width, y1 / image.height)
    assert all(abs(a - b) < 0.06 for a, b in zip(hello.box, want)), (hello.box, want)
    assert all(0.0 <= v <= 1.0 for w in words for v in w.box) and all(w.score >= 0.5 for w in words)
    assert expert.engine_calls == calls + 1 and expert.cache_hits == 0

    again = expert.read(image.copy())  # same pixels, another object: served from the cache (no engine call)
    assert again == words and expert.engine_calls == calls + 1 and expert.cache_hits == 1

    clone = pickle.loads(pickle.dumps(expert))  # DataLoader workers: engine dropped, cache kept
    assert clone._engine is None and clone.read(image) == words and clone.engine_calls == calls + 1


def test_ocr_blank_image_has_no_words(ocr_expert: VisualExpert):
    calls = ocr_expert.engine_calls
    assert ocr_expert.read(Image.new("L", (64, 48), 255)) == []
    assert ocr_expert.engine_calls == calls + 1


def test_ocr_cache_is_a_bounded_lru(monkeypatch: pytest.MonkeyPatch):
    expert = build_expert(ExpertConfig(family="ocr_text", kwargs={"cache_size": 2}))
    seen: list[tuple[int, int, int]] = []

    def fake_recognise(rgb: Image.Image) -> list[OcrWord]:  # stands in for the engine
        seen.append(rgb.getpixel((0, 0)))
        return [OcrWord(text=str(rgb.getpixel((0, 0))[0]), box=(0.0, 0.0, 1.0, 1.0), score=1.0)]

    monkeypatch.setattr(expert, "_recognise", fake_recognise)
    a, b, c = (Image.new("RGB", (4, 4), (v, v, v)) for v in (1, 2, 3))
    for image in (a, b, a, c, b):  # a is fresher than b when c arrives, so b is evicted
        expert.read(image)
    assert [p[0] for p in seen] == [1, 2, 3, 2]
    # c is still cached (b then c are the two freshest); its grayscale twin has the same RGB pixels.
    assert expert.read(c.convert("L"))[0].text == "3" and expert.cache_hits == 2 and len(seen) == 4
