"""A Mova model with no visual experts (the ``smol`` preset's shape): the plain LM's numbers, a clear error for
an image, a save/load round trip and a text-only training stage. Checked on a small random Llama saved as a
normal Hugging Face folder, against that folder loaded by transformers alone."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from mova.cli import main
from mova.config import load_model_config
from mova.errors import PlaceholderMismatchError
from mova.model.builder import build_model, load_pretrained, load_tokenizer
from mova.model.info import format_info, model_info
from mova.presets import PRESETS
from tests.conftest import tiny_model_config


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=1024)).save_pretrained(folder)
    load_tokenizer(tiny_model_config()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_only(llm_folder):
    cfg = load_model_config("tiny", [f"llm.name_or_path={llm_folder}", "experts=[]"])
    model, processor = build_model(cfg)
    return cfg, model.eval(), processor


def test_the_smol_preset_has_no_experts_and_names_smollm2():
    assert PRESETS["smol"]["experts"] == [] and PRESETS["smol"]["llm"] == {"name_or_path": "smollm2-135m-instruct"}


def test_logits_and_loss_are_the_plain_lms(text_only, llm_folder):
    _, model, processor = text_only
    reference = AutoModelForCausalLM.from_pretrained(llm_folder).eval()  # its own object, loaded by transformers
    enc = processor(text=["USER: what is two and two? ASSISTANT: four", "USER: hi ASSISTANT:"],
                    return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model(**enc, labels=enc["input_ids"])
        ref = reference(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(ours.logits[mask], ref.logits[mask], rtol=1e-4, atol=1e-5)
    labels = enc["input_ids"].masked_fill(~mask, -100)
    ref_loss = torch.nn.functional.cross_entropy(ref.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                 ignore_index=-100)
    with torch.no_grad():
        our_loss = model(**enc, labels=labels).loss
    torch.testing.assert_close(our_loss, ref_loss, rtol=1e-5, atol=0)


def test_an_image_is_refused_not_dropped(text_only):
    from PIL import Image

    _, _, processor = text_only
    with pytest.raises(PlaceholderMismatchError, match="sample 0 has an image but this model has no visual experts"):
        processor(text=["<image>\nWhat is this?"], images=[Image.new("RGB", (32, 32))], return_tensors="pt")


def test_model_info_says_text_only(text_only):
    cfg, _, _ = text_only
    text = format_info(model_info(cfg))
    assert "no visual experts" in text and "visual tokens per image : 0" in text and "width 48" in text


def test_save_load_round_trip_keeps_the_logits(text_only, tmp_path):
    _, model, processor = text_only
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    loaded, loaded_proc = load_pretrained(tmp_path / "m")
    enc = processor(text=["USER: hello ASSISTANT:"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**enc).logits, model(**enc).logits)
    assert loaded_proc(text=["USER: hello ASSISTANT:"], return_tensors="pt")["input_ids"].tolist() == \
        enc["input_ids"].tolist()


def test_a_text_only_sft_stage_trains_the_lm(llm_folder, tmp_path, capsys):
    records = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"What is {i} plus one?"},
                                                  {"from": "gpt", "value": str(i + 1)}]} for i in range(4)]
    (tmp_path / "data.json").write_text(json.dumps(records))
    rc = main(["train", "sft", "model=tiny", f"model.llm.name_or_path={llm_folder}", "model.experts=[]",
               f"data.data_path={tmp_path / 'data.json'}", f"train.output_dir={tmp_path / 'run'}",
               "train.max_steps=2", "train.per_device_train_batch_size=2", "train.learning_rate=1e-2",
               "train.report_to=[]"])
    assert rc == 0
    trained, _ = load_pretrained(tmp_path / "run" / "final")
    before = AutoModelForCausalLM.from_pretrained(llm_folder)
    w_after = trained.get_input_embeddings().weight
    assert not torch.equal(w_after, before.get_input_embeddings().weight)  # the LM itself was trained
