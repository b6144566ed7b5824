"""MovaProcessor as a transformers ProcessorMixin: AutoProcessor save/load, chat messages with image parts, and
``pipeline("image-text-to-text")`` on a Mova checkpoint (the exported folder: tests/test_export.py)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, ProcessorMixin, pipeline

from mova import MovaForCausalLM, MovaProcessor
from mova.model.builder import build_model
from tests.conftest import random_image, tiny_model_config

QUESTION = "\nWhat shape is it?"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    image = folder / "probe.png"
    random_image(5).save(image)
    return {"folder": folder, "model": model.eval(), "processor": processor, "image": image}


def _same_inputs(a, b):
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
    assert a["images"].keys() == b["images"].keys()
    for key in a["images"]:
        assert torch.equal(a["images"][key], b["images"][key]), key


def test_auto_processor_round_trip(checkpoint):
    folder, original = checkpoint["folder"], checkpoint["processor"]
    assert isinstance(original, ProcessorMixin)
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved == {"processor_class": "MovaProcessor", "padding_side": "left"}
    loaded = AutoProcessor.from_pretrained(folder)
    assert type(loaded) is MovaProcessor
    prompt = original.apply_chat_template([{"role": "user", "content": "<image>" + QUESTION}])
    _same_inputs(loaded(prompt, images=[checkpoint["image"]]), original(prompt, images=[checkpoint["image"]]))


def test_checkpoint_saved_before_processor_config_still_loads(checkpoint, tmp_path):
    for f in checkpoint["folder"].iterdir():
        if f.name != "processor_config.json":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "mova_processor.json").write_text(json.dumps({"padding_side": "right"}))
    assert MovaProcessor.from_pretrained(tmp_path).padding_side == "right"


def test_chat_with_image_parts_equals_the_placeholder_prompt(checkpoint):
    processor, image = checkpoint["processor"], checkpoint["image"]
    parts = [{"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": QUESTION}]}]
    text = [{"role": "user", "content": "<image>" + QUESTION}]
    assert processor.apply_chat_template(parts) == processor.apply_chat_template(text)
    by_parts = processor.apply_chat_template(parts, tokenize=True, return_dict=True)
    _same_inputs(by_parts, processor(processor.apply_chat_template(text), images=[image]))
    # An assistant prefill stays open: the prompt ends with its text, no end-of-turn token after it.
    prefill = parts + [{"role": "assistant", "content": "It is a"}]
    assert processor.apply_chat_template(prefill, continue_final_message=True).endswith("ASSISTANT: It is a")


def _greedy_reply(model, processor, messages, n=5):
    inputs = processor(processor.apply_chat_template(messages), images=[messages[0]["content"][0]["path"]])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=n, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_pipeline_answers_with_a_checkpoint_folder(checkpoint):
    assert AutoModelForImageTextToText.from_pretrained(checkpoint["folder"]).__class__ is MovaForCausalLM
    pipe = pipeline("image-text-to-text", model=str(checkpoint["folder"]))
    messages = [{"role": "user", "content": [{"type": "image", "path": str(checkpoint["image"])},
                                             {"type": "text", "text": QUESTION}]}]
    reply = pipe(text=messages, max_new_tokens=5, do_sample=False)[0]["generated_text"][-1]
    assert reply["role"] == "assistant"
    assert reply["content"] == _greedy_reply(checkpoint["model"], checkpoint["processor"], messages)
