"""Every command that reads a dataset resolves a record's image the same way (``mova.data.records``): relative
to its folder and never outside it. Absolute paths, ``..`` escapes and a symlink pointing out of the folder
(here at a "secret" file beside it) are refused with the record named, whether training, caching features,
evaluating VQA, reading RL prompts or preference pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mova.cli import main
from mova.config import DataConfig
from mova.data.llava import BadRecordError, LlavaDataset
from mova.data.preference import load_text_preferences
from mova.errors import DataError
from mova.rl.prompts import load_prompts

ESCAPES = ("absolute", "dotdot", "symlink")


def _folder(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp/data`` with one good image and a symlink to ``tmp/secret.png`` (outside the folder)."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (200, 30, 30)).save(data / "images" / "ok.png")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), (0, 0, 0)).save(secret)
    (data / "images" / "link.png").symlink_to(secret)
    return data, secret


def _bad(kind: str, secret: Path) -> str:
    return {"absolute": str(secret), "dotdot": "images/../../secret.png", "symlink": "images/link.png"}[kind]


def _llava(data: Path, image: str) -> Path:
    records = [{"id": "good", "image": "images/ok.png", "conversations": [
                   {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]},
               {"id": "evil", "image": image, "conversations": [
                   {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]}]
    path = data / "records.json"
    path.write_text(json.dumps(records))
    return path


@pytest.mark.parametrize("kind", ESCAPES)
def test_training_refuses(tmp_path, kind):
    from mova.model.builder import build_mova_config, load_tokenizer
    from mova.model.processing_mova import MovaProcessor
    from tests.conftest import tiny_model_config

    data, secret = _folder(tmp_path)
    cfg = tiny_model_config()
    tok = load_tokenizer(cfg)
    processor = MovaProcessor(tok, build_mova_config(cfg, tok))
    path = _llava(data, _bad(kind, secret))
    with pytest.raises(BadRecordError, match=r"record 1 \(id 'evil'\): .*(refused|escapes)"):
        LlavaDataset(json.loads(path.read_text()), processor, DataConfig(data_path=str(path)), "vicuna_v1",
                     progress=False)


@pytest.mark.parametrize("kind", ESCAPES)
def test_cache_features_refuses(tmp_path, capsys, kind):
    data, secret = _folder(tmp_path)
    path = _llava(data, _bad(kind, secret))
    rc = main(["cache-features", "--config", "tiny", "--data", str(path), "--out",
               str(tmp_path / "cache"), "--experts", "clip", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "record 1 (id 'evil')" in err and ("refused" in err or "escapes" in err), err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


@pytest.mark.parametrize("kind", ESCAPES)
def test_vqa_evaluation_refuses(tmp_path, capsys, kind):
    from mova.model.builder import build_model
    from tests.conftest import tiny_model_config

    data, secret = _folder(tmp_path)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    path = _llava(data, _bad(kind, secret))
    rc = main(["eval", "vqa", "--model", str(tmp_path / "ckpt"), "--data", str(path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and ("refused" in err or "escapes" in err), err


@pytest.mark.parametrize("kind", ESCAPES)
def test_rl_prompts_refuse(tmp_path, kind):
    data, secret = _folder(tmp_path)
    path = data / "prompts.jsonl"
    path.write_text(json.dumps({"id": "ok", "prompt": "Colour?", "image": "images/ok.png"}) + "\n"
                    + json.dumps({"id": "evil", "prompt": "Colour?", "image": _bad(kind, secret)}) + "\n")
    with pytest.raises(DataError, match=r"\(id evil\): .*(refused|escapes)"):
        load_prompts(path)
    assert load_prompts(data / "prompts.jsonl", limit=1)[0].image == (data / "images" / "ok.png").resolve()


@pytest.mark.parametrize("kind", ESCAPES)
def test_preference_pairs_refuse(tmp_path, kind):
    data, secret = _folder(tmp_path)
    path = data / "pairs.jsonl"
    path.write_text(json.dumps({"id": "evil", "prompt": "Colour?", "chosen": "Red.", "rejected": "Blue.",
                                "image": _bad(kind, secret)}) + "\n")
    with pytest.raises(DataError, match="image path refused"):
        load_text_preferences(path)
