"""Chat templates render the formats users know and mark assistant turns as targets."""

import pytest
from transformers import AutoTokenizer

from mova.errors import UnknownNameError
from mova.model.templates import VICUNA_SYSTEM, render, render_text
from mova.presets import TINY_TOKENIZER

CONV = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A red circle."}]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)


def test_plain_keeps_only_image_and_caption(tok):
    segs = render("plain", CONV, tok)
    assert "".join(s.text for s in segs) == "<image>A red circle.</s>\n"
    assert [s.is_target for s in segs] == [False, True]


def test_vicuna_v1_format(tok):
    text = render_text("vicuna_v1", CONV, tok, add_generation_prompt=False)
    assert text == f"{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A red circle.</s>"
    prompt = render_text("vicuna_v1", CONV[:1], tok)
    assert prompt.endswith("USER: <image>\nWhat is it? ASSISTANT:")


def test_tokenizer_template_targets(tok):
    segs = render("tokenizer", CONV, tok)
    assert [s.is_target for s in segs] == [False, True]
    assert segs[1].text.startswith(" A red circle.") or "A red circle." in segs[1].text


def test_unknown_template():
    with pytest.raises(UnknownNameError, match="vicuna_v1"):
        render("alpaca", CONV)
