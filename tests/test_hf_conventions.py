"""transformers conventions a user's tools rely on: input-embedding grads, attention implementation on the
experts, ``base_model``, and the ``past_key_values`` -> ``cache`` deprecation path of transformers 5.x."""

from __future__ import annotations

import copy

import pytest
import torch

from mova import MovaForCausalLM
from mova.model.builder import build_model
from tests.conftest import random_image, tiny_model_config


@pytest.fixture(scope="module")
def built():
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(), load_weights=False)
    return model.eval(), processor


def test_enable_input_require_grads_reaches_the_llm_embeddings(built):
    """With every weight frozen (adapters would be the only trainable part), the token embeddings' output must
    carry grad so that gradient checkpointing has something to recompute through."""
    model, processor = built
    batch = processor("USER: hello there ASSISTANT:")
    model.requires_grad_(False)
    try:
        assert not model(**batch).logits.requires_grad
        model.enable_input_require_grads()
        assert model(**batch).logits.requires_grad
        model.disable_input_require_grads()
        assert not model(**batch).logits.requires_grad
    finally:
        model.disable_input_require_grads()
        model.fusion.requires_grad_(True)
        model.language_model.requires_grad_(True)


def _attn(model):
    expert = model.experts["layoutlmv3"].model
    return model.language_model.config._attn_implementation, expert.config._attn_implementation


def test_attn_implementation_reaches_the_experts_that_support_it(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_model_config(overrides=["attn_implementation=eager"])
    model, processor = build_model(cfg, load_weights=False)
    assert _attn(model) == ("eager", "eager")
    model.save_pretrained(tmp_path)
    loaded = MovaForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert _attn(loaded) == ("sdpa", "sdpa")
    eager = MovaForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert _attn(eager) == ("eager", "eager")
    batch = processor("USER: <image> what? ASSISTANT:", random_image(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, eager(**batch).logits, rtol=1e-4, atol=1e-4)


def test_base_model_is_the_model(built):
    model, _ = built
    assert model.base_model is model


def test_past_key_values_is_renamed_with_a_deprecation_warning(built):
    model, processor = built
    batch = processor("USER: <image> what? ASSISTANT:", random_image(1))
    with torch.no_grad():
        first = model(**batch, use_cache=True)
        nxt = torch.tensor([[5]])
        mask = torch.cat([batch["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
        pos = model.compute_position_ids(batch["input_ids"], batch["attention_mask"], batch["images"])[:, -1:] + 1
        cache_a, cache_b = copy.deepcopy(first.cache), copy.deepcopy(first.cache)
        new = model(input_ids=nxt, attention_mask=mask, position_ids=pos, cache=cache_a).logits
        with pytest.warns(FutureWarning, match="past_key_values"):
            old = model(input_ids=nxt, attention_mask=mask, position_ids=pos, past_key_values=cache_b).logits
    torch.testing.assert_close(old, new)
