"""Feature cache: cached = live features and logits, no rework, stale caches refused, crash-safe shards, CLI."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

import mova.data.feature_cache.store as fc_store
from mova.cli import main
from mova.config import ExpertConfig
from mova.data.feature_cache import (
    CacheMissError,
    FeatureCache,
    StaleCacheError,
    attach_cached_features,
    build_cache,
    expert_fingerprint,
    image_key,
    prime_ocr_memo,
)
from mova.model.builder import build_model
from mova.model.experts import build_expert
from mova.model.experts.ocr_text import OcrWord
from tests.conftest import random_image, tiny_model_config

PIXEL_EXPERTS = ["clip", "sam", "layoutlmv3", "timm"]


@pytest.fixture(scope="module")
def model_and_processor():
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    return model.eval(), processor


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(5):
        path = folder / f"img{i}.png"
        random_image(i, (96 + 16 * i, 80)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def caches(model_and_processor, image_files, tmp_path_factory):
    """One float32 and one bfloat16 cache of the five images (one batch, as the live reference)."""
    model, processor = model_and_processor
    roots = {}
    for dtype in ("float32", "bfloat16"):
        roots[dtype] = tmp_path_factory.mktemp(f"cache-{dtype}")
        stats = build_cache(model, processor, image_files, roots[dtype], batch_size=8, dtype=dtype, progress=False)
        assert stats.new == 5 and stats.cached == 0 and set(stats.entries.values()) == {5}
    return roots


def _live(model, processor, image_files):
    from mova.model.processing_mova import load_image

    imgs = [load_image(p) for p in image_files]
    with torch.no_grad():
        return {n: model.experts[n](torch.stack([processor.transforms[n](im) for im in imgs])) for n in PIXEL_EXPERTS}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_features_equal_live_output(model_and_processor, image_files, caches, dtype):
    model, processor = model_and_processor
    cache = FeatureCache(caches[dtype])
    assert sorted(cache.open_model(model)) == sorted(PIXEL_EXPERTS)
    keys = [cache.key_for(p) for p in image_files]  # from the path memo ...
    from mova.model.processing_mova import load_image

    assert keys == [image_key(load_image(p)) for p in image_files]  # ... equal to hashing the pixels
    for name, live in _live(model, processor, image_files).items():
        got = cache.lookup(name, keys)
        assert got.dtype == getattr(torch, dtype) and got.shape == live.shape
        assert torch.equal(got, live.to(got.dtype)), name  # float32: exact; bf16: the live output rounded
    clone = copy.deepcopy(cache)  # as DataLoader workers get it: open shard handles are dropped, then reopen
    assert torch.equal(clone.lookup("sam", keys[::-1]), cache.lookup("sam", keys[::-1]))


def test_changed_file_under_same_path_is_a_miss(model_and_processor, image_files, caches, tmp_path):
    model, _ = model_and_processor
    cache = FeatureCache(caches["float32"])
    cache.open_for(model.experts["clip"])
    path = tmp_path / "img.png"
    shutil.copy(image_files[1], path)
    key = cache.key_for(path)
    assert cache.has("clip", key)
    random_image(99).save(path)
    assert not cache.has("clip", cache.key_for(path))


def test_cached_ocr_words_skip_the_engine():
    expert = build_expert(ExpertConfig(family="ocr_text"))
    img = random_image(3)
    words = [OcrWord("hello", (0.1, 0.1, 0.4, 0.2), 0.9)]
    prime_ocr_memo(expert, img, words)
    assert expert.read(img) == words and expert.engine_calls == 0


def test_logits_from_cache_equal_logits_from_pixels(model_and_processor, image_files, caches, monkeypatch):
    model, processor = model_and_processor
    prompts = ["USER: <image>\nWhat is it? ASSISTANT:", "<image><image> compare", "<image> and <image>"]
    batch = processor(prompts, [str(p) for p in image_files])
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     images=batch["images"]).logits
    cache = FeatureCache(caches["float32"])
    cache.open_model(model)
    keys = [cache.key_for(p) for p in image_files]
    images = attach_cached_features(batch["images"], cache, keys, model.config)
    assert not set(PIXEL_EXPERTS) & set(images) and {f"{n}.features" for n in PIXEL_EXPERTS} <= set(images)
    for name in PIXEL_EXPERTS:  # the experts must not run at all
        monkeypatch.setattr(model.experts[name], "forward", lambda *a, **k: pytest.fail("expert ran"))
    with torch.no_grad():
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=images).logits
    assert (got - want).abs().max().item() <= 1e-6

    unknown = keys[:-1] + ["0" * 64]
    with pytest.raises(CacheMissError, match=r"img4\.png.*expert 'clip'"):
        attach_cached_features(batch["images"], cache, unknown, model.config, image_names=[str(p) for p in image_files])
    assert attach_cached_features(batch["images"], cache, unknown, model.config, allow_missing=True) is None


def test_second_build_caches_nothing_new(model_and_processor, image_files, caches, tmp_path):
    model, processor = model_and_processor
    root = caches["float32"]
    before = sorted(p.relative_to(root) for p in root.rglob("shard-*"))
    twin = tmp_path / "same-picture-other-name.png"
    shutil.copy(image_files[0], twin)
    stats = build_cache(model, processor, [*image_files, twin], root, dtype="float32", progress=False)
    assert (stats.images, stats.new, stats.cached) == (6, 0, 6)
    assert set(stats.entries.values()) == {0}
    assert sorted(p.relative_to(root) for p in root.rglob("shard-*")) == before


def _clip_like(model, **changes):
    cfg = ExpertConfig(**{**vars(model.experts["clip"].cfg), **changes})
    expert = build_expert(cfg)
    expert.load_state_dict(model.experts["clip"].state_dict())
    return expert


def test_changed_expert_is_refused(model_and_processor, caches):
    model, _ = model_and_processor
    cache = FeatureCache(caches["float32"])
    base = expert_fingerprint(model.experts["clip"])
    # Options that only act after the expert keep the cache.
    assert expert_fingerprint(_clip_like(model, position_scheme="share_all", pool=2)) == base
    cache.open_for(_clip_like(model, position_scheme="share_all", pool=2))

    layer = _clip_like(model, feature_layer=0)
    with pytest.raises(StaleCacheError, match=r"expert 'clip'.*feature_layer \(cache: -1, model: 0\)") as err:
        cache.open_for(layer)
    assert base in str(err.value) and expert_fingerprint(layer) in str(err.value)

    perturbed = copy.deepcopy(model.experts["clip"])
    with torch.no_grad():
        w = perturbed.visual.transformer.resblocks[0].mlp.c_fc.weight
        w.view(-1)[w.numel() // 2 + 7] += 1e-3  # not in any sampled slice: only the bit sum sees it
    with pytest.raises(StaleCacheError, match=r"expert 'clip'.*weights.*a different seed builds a different expert"):
        cache.open_for(perturbed)  # a tiny expert: its weights come from the seed, and the error says so

    with pytest.raises(StaleCacheError, match=r"weights_dtype.*float32.*bfloat16"):
        cache.open_for(copy.deepcopy(model.experts["clip"]).to(torch.bfloat16))

    bigger = build_expert(ExpertConfig(**{**vars(model.experts["clip"].cfg), "image_size": 96}))
    with pytest.raises(StaleCacheError, match=r"image_size \(cache: None, model: 96\)"):
        cache.open_for(bigger)


def test_token_shape_mismatch_is_refused(model_and_processor, caches, tmp_path):
    model, _ = model_and_processor
    root = tmp_path / "copy"
    shutil.copytree(caches["float32"], root)
    folder = FeatureCache(root).folder("sam", expert_fingerprint(model.experts["sam"]))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["token_shape"] = [16, 32]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StaleCacheError, match=r"expert 'sam'.*\[16, 32\].*\[64, 32\]"):
        FeatureCache(root).open_for(model.experts["sam"])


def test_interrupted_shard_write_is_invisible(model_and_processor, image_files, tmp_path, monkeypatch):
    model, processor = model_and_processor
    root = tmp_path / "cache"
    build_cache(model, processor, image_files[:2], root, dtype="float32", experts=["clip"], progress=False)

    def crash(tensors, path, metadata):
        path.write_bytes(b"\x00garbage, half a shard")
        raise RuntimeError("power cut")

    monkeypatch.setattr(fc_store, "_save_tensors", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        build_cache(model, processor, image_files, root, dtype="float32", experts=["clip"], progress=False)
    monkeypatch.undo()
    folder = FeatureCache(root).folder("clip", expert_fingerprint(model.experts["clip"]))
    assert sorted(p.name for p in folder.iterdir() if "shard" in p.name) == ["shard-00000.safetensors"]
    # A kill -9 mid-write leaves a hidden temp file; a torn visible file is never indexed.
    (folder / ".shard-00001.safetensors.tmp").write_bytes(b"torn")
    (folder / "shard-00002.safetensors").write_bytes(b"not a safetensors file")

    cache = FeatureCache(root)
    cache.open_for(model.experts["clip"])
    keys = [cache.key_for(p) for p in image_files]
    assert cache.lookup("clip", keys[:2]).shape == (2, 64, 64)
    assert cache.missing("clip", keys) == keys[2:]

    stats = build_cache(model, processor, image_files, root, dtype="float32", experts=["clip"], progress=False)
    assert (stats.new, stats.cached) == (3, 2)
    assert not (folder / ".shard-00001.safetensors.tmp").exists()
    cache = FeatureCache(root)
    cache.open_for(model.experts["clip"])
    assert cache.missing("clip", keys) == []
    assert torch.equal(cache.lookup("clip", keys), _live(model, processor, image_files)["clip"])


def test_cli_end_to_end(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(2):
        random_image(10 + i).save(folder / f"{i}.png")
    data = tmp_path / "llava.json"
    data.write_text(json.dumps([
        {"id": "a", "image": "0.png", "conversations": []},
        {"id": "b", "conversations": []},
        {"id": "c", "image": "1.png", "conversations": []},
        {"id": "d", "image": "0.png", "conversations": []},
    ]))
    out = tmp_path / "cache"
    argv = ["cache-features", "--config", "tiny", "--data", str(data), "--image-folder", str(folder), "--out",
            str(out), "--batch-size", "4", "--no-progress", "--experts", "clip,sam,ocr_text"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "images : 2 (cached new: 2, already cached: 0" in text and "1 without image" in text
    assert "images/s" in text and "MB" in text
    folders = sorted(p.name.split("-")[0] for p in out.iterdir() if p.is_dir())
    assert folders == ["clip", "ocr_text", "sam"]
    ocr = next(out.glob("ocr_text-*"))
    index = json.loads((ocr / "index.json").read_text())
    assert len(index["entries"]) == 2 and index["shards"][0]["file"] == "shard-00000.json"
    assert len(json.loads((out / "image-keys.json").read_text())) == 2
