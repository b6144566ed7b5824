"""One start token per sequence, for any tokenizer and chat template, in generation and training alike.

A ChatML tokenizer whose ``bos_token`` is ``<|im_start|>`` (SmolLM2-Instruct's) gets no extra start token in
front of its template's own; the tiny tokenizer (``<s>``, a template that does not write it) keeps one.
"""

from __future__ import annotations

import pytest

from mova.data.pairs import PairEncoder
from mova.data.preference.dataset import PreferencePair
from mova.model.builder import build_mova_config, load_tokenizer
from mova.model.processing_mova import MovaProcessor
from mova.model.processing_text import TextProcessor, joined_ids
from mova.model.templates import render
from mova.trainers.text_sft import encode_prompt_answer
from tests.conftest import tiny_model_config

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CONVERSATION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def tiny_tok():
    return load_tokenizer(tiny_model_config())


@pytest.fixture(scope="module")
def chatml_tok():
    tok = load_tokenizer(tiny_model_config())
    tok.add_special_tokens({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    tok.chat_template = CHATML
    return tok


def _processors(tok, template):
    cfg = tiny_model_config()
    cfg.template = template
    return [TextProcessor(tok), MovaProcessor(tok, build_mova_config(cfg, tok))]


def test_a_template_that_writes_its_start_token_gets_no_second_one(chatml_tok):
    bos = chatml_tok.bos_token_id
    for proc in _processors(chatml_tok, "tokenizer"):
        prompt = proc.apply_chat_template(CONVERSATION, template="tokenizer")
        assert prompt.startswith("<|im_start|>user")
        generated = proc([prompt], padding_side="left")["input_ids"][0].tolist()
        answered = CONVERSATION + [{"role": "assistant", "content": "Paris"}]
        trained, _ = proc.encode_segments(render("tokenizer", answered, chatml_tok), [])
        for ids in (generated, trained):
            assert ids[0] == bos and ids[1] != bos, type(proc).__name__
        assert trained[:len(generated)] == generated  # generation sees the prompt training saw
    # raw text and prompt/answer samples: the start token is the template's, so none in front of them either
    assert joined_ids(chatml_tok, "Say hi.", ["Hi."])[0][0] != bos
    assert encode_prompt_answer(chatml_tok, "Say hi.", "Hi.")["input_ids"][0] != bos


def test_a_tokenizer_whose_template_does_not_write_it_keeps_one_start_token(tiny_tok):
    bos = tiny_tok.bos_token_id
    for proc in _processors(tiny_tok, "vicuna_v1"):
        prompt = proc.apply_chat_template(CONVERSATION, template="vicuna_v1")
        generated = proc([prompt])["input_ids"][0].tolist()
        trained, _ = proc.encode_segments(render("vicuna_v1", CONVERSATION, tiny_tok, True), [])
        assert generated == trained and generated[0] == bos and generated[1] != bos
        # a prompt that already begins with it is not given a second one
        assert proc([tiny_tok.bos_token + prompt])["input_ids"][0].tolist() == generated
    # plain-text pairs (DPO's ``raw`` template) start as plain-model generation does
    pair = PreferencePair("0", 0, [{"from": "human", "value": "Q?\n"}], "A.", "B.", None)
    enc = PairEncoder(tiny_tok, "raw").encode(pair)
    assert enc.prompt_ids[0].item() == bos and enc.prompt_ids[1].item() != bos
    assert TextProcessor(tiny_tok)(["Q?\n"])["input_ids"][0, 0].item() == bos
