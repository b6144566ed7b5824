"""``mova export``: the release folder loads without Mova (fresh process) and with it, with Mova's logits;
LoRA merging, chat templates, the card, the bundle's refusals and an upload that cannot happen."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from mova.cli import main
from mova.export.bundle import BundleError, build_bundle
from mova.export.chat_template import JINJA_TEMPLATES
from mova.export.errors import ExportError
from mova.export.verify import verify_export
from mova.model.builder import build_model, load_pretrained
from mova.model.modeling_mova import MovaForCausalLM
from mova.model.templates import render_text
from mova.presets import TINY_TOKENIZER
from tests.conftest import random_image, tiny_model_config

FAKE_TOKEN = "hf_fakeExportTestToken0123456789abcdef"


def small_config():
    """SAM (a compressed position scheme) and LayoutLMv3: the experts whose libraries import fastest."""
    cfg = tiny_model_config(sam_scheme="share_by_row")
    cfg.experts = [e for e in cfg.experts if e.family in ("sam", "layoutlmv3")]
    return cfg


def write_run(folder: Path, model, processor, stage: str, init_from: str | None, lora: dict | None = None) -> Path:
    """A checkpoint laid out as a Mova stage writes it: ``<run>/final`` and ``<run>/summary.json``."""
    final = folder / "final"
    model.save_pretrained(final)
    processor.save_pretrained(final)
    summary = {"stage": stage, "global_step": 12, "first_loss": 5.5, "last_loss": 1.25, "train_runtime_s": 3.0,
               "final_model": str(final),
               "config": {"stage": stage, "init_from": init_from, "data": {"data_path": f"/data/{stage}.json"},
                          "train": {"learning_rate": 2e-5, "per_device_train_batch_size": 4, "max_steps": 12,
                                    "lora": lora or {"r": 0}}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return final


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model, processor = build_model(small_config(), load_weights=False)
    model.eval()
    align = write_run(root / "align", model, processor, "align", None)
    final = write_run(root / "sft", model, processor, "sft", str(align))
    evals = root / "eval-suite"
    evals.mkdir()
    (evals / "results.md").write_text("# Evaluation of sft\n\nsome prose\n\n| task | accuracy |\n|---|---|\n"
                                      "| vqa | 0.875 |\n\nDefinitions follow.\n")
    out = root / "release"
    code = main(["export", str(final), "--out", str(out), "--eval-dir", str(evals), "--max-shard-size", "300KB",
                 "--name", "someone/tiny-mova"])
    assert code == 0
    image = root / "probe.png"
    random_image(3).save(image)
    return {"root": root, "final": final, "out": out, "model": model, "processor": processor, "image": image}


def test_standalone_load_in_a_fresh_process_without_mova_gives_mova_logits(exported):
    proc = exported["processor"]
    cases = {
        "text": {"prompt": proc.apply_chat_template([{"role": "user", "content": "Name a colour."}]), "images": []},
        "image": {"prompt": proc.apply_chat_template([{"role": "user", "content": "<image>\nWhat shape is it?"}]),
                  "images": [str(exported["image"])]},
        # pipeline("image-text-to-text", model=folder, trust_remote_code=True) on a chat with an image part
        "pipeline": {"messages": [{"role": "user", "content": [{"type": "image", "path": str(exported["image"])},
                                                               {"type": "text", "text": "\nWhat shape is it?"}]}]},
    }
    report = verify_export(exported["out"], exported["model"], proc, cases)
    assert report.model_class.startswith("transformers_modules.")  # the folder's code, not Mova's
    assert report.processor_class.startswith("transformers_modules.")
    assert report.ids_equal == {"text": True, "image": True}
    # generate() and the pipeline's reply through the folder's code; no loader asked on the terminal
    assert report.generated_equal == {"text": True, "image": True, "pipeline": True}
    assert report.max_abs_diff["text"] <= 1e-5 and report.max_abs_diff["image"] <= 1e-5, report.max_abs_diff


def test_folder_loads_through_mova_classes_too(exported):
    model, processor = load_pretrained(exported["out"])
    auto = AutoModelForCausalLM.from_pretrained(exported["out"])  # mova registers its model type on import
    assert type(model) is MovaForCausalLM and type(auto) is MovaForCausalLM
    inputs = processor(processor.apply_chat_template([{"role": "user", "content": "<image>\nColour?"}]),
                       images=[exported["image"]])
    with torch.no_grad():
        ref = exported["model"](**inputs).logits
        assert torch.allclose(model.eval()(**inputs).logits, ref, atol=1e-5, rtol=0)
        assert torch.allclose(auto.eval()(**inputs).logits, ref, atol=1e-5, rtol=0)


def test_folder_contents_and_card(exported):
    out = exported["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_mova.MovaForCausalLM"
    assert config["auto_map"]["AutoProcessor"] == "processing_mova.MovaProcessor"
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").is_file()  # 300KB shards
    weights = {k: v for s in shards for k, v in load_file(str(s)).items()}
    for name, param in exported["model"].state_dict().items():
        assert torch.equal(weights[name], param), name
    gen = json.loads((out / "generation_config.json").read_text())
    tok = exported["processor"].tokenizer
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] == tok.pad_token_id
    # bundle: only the experts in use (no open_clip / timm code), and nothing from training or the CLI
    py = sorted(p.name for p in out.glob("*.py"))
    assert "experts_sam.py" in py and "experts_layoutlmv3.py" in py
    assert not {"experts_clip.py", "experts_timm_expert.py", "experts_ocr_text.py"} & set(py)
    assert not any("trainers" in p or "cli" in p for p in py)
    for p in out.glob("*.py"):
        assert "import mova" not in p.read_text() and "from mova" not in p.read_text(), p.name
    requirements = (out / "requirements.txt").read_text()
    assert "segment" in requirements.lower() and "open_clip" not in requirements
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for expected in ("| sam | sam |", "share_by_row", "| layoutlmv3 | layoutlmv3 |", "`mlp`", "| vqa | 0.875 |",
                     "**Evaluation of sft**", "`align.json`", "`sft.json`", "trust_remote_code=True",
                     "someone/tiny-mova"):
        assert expected in card, expected
    assert card.index("`align.json`") < card.index("`sft.json`")  # recipe in training order


def test_sam_row_positions_in_the_card(exported):
    # tiny SAM: 128 px / patch 16 = 8x8 grid; share_by_row gives one position per row.
    card = (exported["out"] / "README.md").read_text()
    row = next(line for line in card.splitlines() if line.startswith("| sam |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "8x8" and cells[4] == "64" and cells[5] == "8"


CONVERSATIONS = [
    [{"role": "user", "content": "<image>\nWhat is it?"}],
    [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A red circle."},
     {"role": "user", "content": "And the 'background'?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}],
]


@pytest.mark.parametrize("template", sorted(JINJA_TEMPLATES))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_chat_templates_render_like_mova(template, add_generation_prompt):
    tok = PreTrainedTokenizerFast.from_pretrained(str(TINY_TOKENIZER))
    for messages in CONVERSATIONS:
        jinja = tok.apply_chat_template(messages, chat_template=JINJA_TEMPLATES[template], tokenize=False,
                                        add_generation_prompt=add_generation_prompt)
        assert jinja == render_text(template, messages, tok, add_generation_prompt)
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nWhat is it?"}]}]
    assert tok.apply_chat_template(parts, chat_template=JINJA_TEMPLATES[template], tokenize=False,
                                   add_generation_prompt=True) == render_text(template, CONVERSATIONS[0], tok, True)


def test_exported_tokenizer_carries_the_models_template(exported):
    tok = PreTrainedTokenizerFast.from_pretrained(str(exported["out"]))
    messages = CONVERSATIONS[1]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        render_text("vicuna_v1", messages, tok, True)


def test_lora_adapters_are_merged_on_request(tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model, processor = build_model(small_config(), load_weights=False)
    r, alpha = 4, 8
    model.language_model = get_peft_model(model.language_model, LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # peft starts B at zero: the merge would change nothing
    model.eval()
    final = write_run(tmp_path / "sft", model, processor, "sft", None,
                      lora={"r": r, "alpha": alpha, "target_modules": ["q_proj", "v_proj"], "merge": False})
    inputs = processor(processor.apply_chat_template([{"role": "user", "content": "<image>\nShape?"}]),
                       images=[random_image(5)])
    with torch.no_grad():
        ref = model(**inputs).logits
    out = tmp_path / "release"
    with pytest.raises(ExportError, match="--merge-lora"):
        from mova.export.export import ExportOptions, export_model

        export_model(ExportOptions(str(final), str(out)))
    assert main(["export", str(final), "--out", str(out), "--merge-lora", "--overwrite"]) == 0
    merged, _ = load_pretrained(out)
    with torch.no_grad():
        assert torch.allclose(merged.eval()(**inputs).logits, ref, atol=1e-5, rtol=0)
    # W + (alpha / r) B A, computed from the saved unmerged tensors
    saved = load_file(str(final / "model.safetensors"))
    pre = "language_model.base_model.model.model.layers.0.self_attn.q_proj."
    expected = saved[pre + "base_layer.weight"] + (alpha / r) * (saved[pre + "lora_B.default.weight"]
                                                                 @ saved[pre + "lora_A.default.weight"])
    got = merged.language_model.model.layers[0].self_attn.q_proj.weight
    assert torch.allclose(got, expected, atol=1e-6)
    assert "merged into the LLM" in (out / "README.md").read_text()


def test_upload_without_network_fails_clearly_keeps_the_folder_and_hides_the_token(exported, monkeypatch, capfd,
                                                                                    caplog):
    out = exported["out"]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", "--push-only", str(out), "--push-to-hub", "someone/tiny-mova"]) == 2
    offline = capfd.readouterr()
    assert "offline" in offline.err and "intact" in offline.err
    # not offline, but nothing listens at the endpoint: the network error path
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    assert main(["export", "--push-only", str(out), "--push-to-hub", "someone/tiny-mova"]) == 2
    refused = capfd.readouterr()
    assert "cannot upload" in refused.err and "intact" in refused.err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
    for text in (offline.out, offline.err, refused.out, refused.err, caplog.text):
        assert FAKE_TOKEN not in text
    for content in after.values():
        assert FAKE_TOKEN.encode() not in content


def forget_modules(*prefixes: str) -> None:
    """Drop a test package from the import system (each test writes its own under the same name)."""
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]
    importlib.invalidate_caches()


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("body, message", [
    ("import not_a_library_anywhere_xyz\n", "neither in the bundle nor an installed library"),
    ("def f():\n    from fakepkg.trainers.loop import train\n", "does not ship with a model"),
    ("import fakepkg.model.b\n\nX = fakepkg.model.b.Y\n", "flat bundle cannot provide"),
])
def test_bundle_refuses_what_it_cannot_ship(tmp_path, monkeypatch, body, message):
    write_package(tmp_path, {"fakepkg/__init__.py": "", "fakepkg/model/__init__.py": "",
                             "fakepkg/model/b.py": "Y = 1\n", "fakepkg/trainers/__init__.py": "",
                             "fakepkg/trainers/loop.py": "def train():\n    pass\n",
                             "fakepkg/model/a.py": body})
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(BundleError, match=message):
            build_bundle([], roots=("fakepkg.model.a",), package="fakepkg", generated={},
                         excluded=("fakepkg.trainers",))
    finally:
        forget_modules("fakepkg")


def test_bundle_rewrites_first_party_imports(tmp_path, monkeypatch):
    write_package(tmp_path, {"fakepkg/__init__.py": "", "fakepkg/model/__init__.py": "",
                             "fakepkg/util.py": "Z = 2\n",
                             "fakepkg/model/b.py": "from fakepkg.util import Z\nY = Z + 1\n",
                             "fakepkg/model/a.py": "import json\nfrom fakepkg.model.b import Y  # why\n\n\n"
                                                   "def f():\n    from .b import Y as W\n    return W\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    bundle = build_bundle([], roots=("fakepkg.model.a",), package="fakepkg", generated={})
    assert sorted(bundle.files) == ["a.py", "b.py", "fakepkg_util.py"]
    assert "from .b import Y  # why\n" in bundle.files["a.py"] and "    from .b import Y as W\n" in bundle.files["a.py"]
    assert "from .fakepkg_util import Z\n" in bundle.files["b.py"]
    assert bundle.requirements == {}  # json is the standard library
    folder = tmp_path / "out"
    bundle.write(folder)
    monkeypatch.syspath_prepend(str(tmp_path))
    (folder / "__init__.py").write_text("")
    try:
        assert importlib.import_module("out.a").f() == 3
    finally:
        forget_modules("fakepkg", "out")


def test_export_refuses_a_non_empty_folder(exported, tmp_path):
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert main(["export", str(exported["final"]), "--out", str(target)]) == 2
    assert sorted(os.listdir(target)) == ["notes.txt"]


def test_export_refuses_an_eval_dir_without_results_before_writing(exported, tmp_path, capfd):
    empty = tmp_path / "no-results"
    empty.mkdir()
    target = tmp_path / "release"
    assert main(["export", str(exported["final"]), "--out", str(target), "--eval-dir", str(empty)]) == 2
    assert "no results.md" in capfd.readouterr().err and not target.exists()
