"""generate() with images in every decoding mode, each against a reference that does not share the code path.

References: the plain LLM generating from the merged embeddings (transformers' own expansion of a top-level
tensor), a full forward without a KV cache at every step, and each sample generated alone without padding.
"""

from __future__ import annotations

import copy

import pytest
import torch

from mova.model.builder import build_model
from tests.conftest import random_image, tiny_model_config

PROMPTS = ["USER: <image>\nWhat is in the picture? ASSISTANT:", "USER: <image> and <image> compare? ASSISTANT:"]
NEW = 4


@pytest.fixture(scope="module", params=["full", "share_by_row"])
def setup(request):
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(sam_scheme=request.param), load_weights=False)
    model.eval()
    images = [[random_image(0)], [random_image(1, (40, 300)), random_image(2, (500, 70))]]
    batch = processor(PROMPTS, images, padding_side="left")
    return model, processor, batch, images


def _gen_kwargs(processor):
    return {"max_new_tokens": NEW, "min_new_tokens": NEW, "pad_token_id": processor.tokenizer.pad_token_id}


def _merged(model, batch):
    """The prompt embeddings with the visual tokens in place and their position ids (the LLM's inputs)."""
    ids, mask, images = batch["input_ids"], batch["attention_mask"], batch["images"]
    image_mask = ids == model.config.image_token_id
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids.masked_fill(image_mask, 0))
        merged = model.merge_image_embeds(embeds, image_mask, images)
    return merged, model.compute_position_ids(ids, mask, images)


def _llm_generate(model, processor, batch, **kw):
    """The wrapped LLM on the merged embeddings: transformers expands these top-level tensors itself."""
    merged, positions = _merged(model, batch)
    with torch.no_grad():
        return model.language_model.generate(inputs_embeds=merged, attention_mask=batch["attention_mask"],
                                             position_ids=positions, suppress_tokens=[model.config.image_token_id],
                                             **_gen_kwargs(processor), **kw)


@pytest.mark.parametrize("mode", [
    {"num_beams": 2, "do_sample": False},
    {"num_beams": 3, "num_return_sequences": 2, "do_sample": False},
    {"num_beams": 2, "do_sample": True},
])
def test_beam_modes_with_images_match_llm_on_merged_embeddings(setup, mode):
    model, processor, batch, _ = setup
    prompt_len = batch["input_ids"].shape[1]
    torch.manual_seed(3)
    with torch.no_grad():
        ours = model.generate(**batch, **_gen_kwargs(processor), output_scores=True, return_dict_in_generate=True,
                              **mode)
    torch.manual_seed(3)
    ref = _llm_generate(model, processor, batch, output_scores=True, return_dict_in_generate=True, **mode)
    assert torch.equal(ours.sequences[:, prompt_len:], ref.sequences)
    torch.testing.assert_close(ours.sequences_scores, ref.sequences_scores, rtol=1e-5, atol=1e-5)


def _repeated_batch(processor, images, n):
    """The batch with each sample written out ``n`` times by the processor (the expansion done by hand)."""
    prompts = [p for p in PROMPTS for _ in range(n)]
    return processor(prompts, [g for g in images for _ in range(n)], padding_side="left")


def test_num_return_sequences_sampling_matches_uncached_forward(setup):
    """Every step's logits of each returned sequence equal a full forward (no cache) over the same tokens,
    with the images of its own sample, expanded by the processor rather than by generate()."""
    model, processor, batch, images = setup
    torch.manual_seed(0)
    with torch.no_grad():
        gen = model.generate(**batch, **_gen_kwargs(processor), do_sample=True, num_return_sequences=2,
                             output_logits=True, return_dict_in_generate=True)
    rep = _repeated_batch(processor, images, 2)
    assert torch.equal(gen.sequences[:, : rep["input_ids"].shape[1]], rep["input_ids"])
    prompt_len = rep["input_ids"].shape[1]
    for t, step in enumerate(gen.logits):
        seq = gen.sequences[:, : prompt_len + t]
        mask = torch.cat([rep["attention_mask"], torch.ones(seq.shape[0], t, dtype=torch.long)], dim=1)
        with torch.no_grad():
            full = model(input_ids=seq, attention_mask=mask, images=rep["images"], use_cache=False).logits[:, -1]
        torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


def test_static_cache_with_left_padding_matches_each_sample_alone(setup):
    model, processor, batch, images = setup
    with torch.no_grad():
        gen = model.generate(**batch, **_gen_kwargs(processor), do_sample=False, cache_implementation="static",
                             output_logits=True, return_dict_in_generate=True)
    prompt_len = batch["input_ids"].shape[1]
    for i, (prompt, group) in enumerate(zip(PROMPTS, images)):
        alone = processor(prompt, group)
        with torch.no_grad():
            ref = model.generate(**alone, **_gen_kwargs(processor), do_sample=False, use_cache=False,
                                 output_logits=True, return_dict_in_generate=True)
        n = alone["input_ids"].shape[1]
        assert torch.equal(gen.sequences[i, prompt_len:], ref.sequences[0, n:])
        for step, ref_step in zip(gen.logits, ref.logits):
            torch.testing.assert_close(step[i], ref_step[0], rtol=1e-4, atol=1e-4)


def test_inputs_embeds_with_images_are_merged(setup):
    """``inputs_embeds`` holding the image token's embedding get the visual tokens, like ``input_ids``."""
    model, processor, batch, _ = setup
    ids = batch["input_ids"]
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        by_embeds = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], images=batch["images"]).logits
        by_ids = model(**batch).logits
        merged, positions = _merged(model, batch)
        llm = model.language_model(inputs_embeds=merged, attention_mask=batch["attention_mask"],
                                   position_ids=positions).logits
        ignored = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(by_embeds, llm)
    torch.testing.assert_close(by_ids, llm)
    assert (by_embeds - ignored).abs().max() > 1e-2  # the images changed the answer

    with torch.no_grad():
        ours = model.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"], images=batch["images"],
                              do_sample=False, **_gen_kwargs(processor))
    ref = _llm_generate(model, processor, batch, do_sample=False)
    assert torch.equal(ours, ref)


def test_prompt_lookup_and_assisted_decoding_with_images(setup):
    """Candidates copied from the prompt may be image tokens: they are never proposed (nor generated)."""
    model, processor, _, images = setup
    one = processor(PROMPTS[1], images[1])
    kw = {**_gen_kwargs(processor), "max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False}
    with torch.no_grad():
        ref = model.generate(**one, use_cache=False, **kw)
        lookup = model.generate(**one, prompt_lookup_num_tokens=3, **kw)
        assisted = model.generate(**one, assistant_model=model, **kw)
    assert torch.equal(lookup, ref)
    assert torch.equal(assisted, ref)


def test_forward_without_mask_is_not_read_as_packed(setup):
    """Compressed image positions repeat or jump; with no mask and no cache they must not split the sample."""
    model, processor, _, images = setup
    one = processor(PROMPTS[1], images[1])
    with torch.no_grad():
        bare = model(input_ids=one["input_ids"], images=one["images"], use_cache=False).logits
        masked = model(**one, use_cache=False).logits
    torch.testing.assert_close(bare, masked)


def test_decoding_step_compiles_as_one_graph(setup):
    """After the prefill, generate() passes no images, so a decoding step has no data-dependent branch and
    compiles with ``fullgraph=True`` (tracing only: the ``eager`` backend keeps the test fast on a CPU)."""
    model, _, batch, _ = setup
    with torch.no_grad():
        prefill = model(**batch, use_cache=True)
        positions = model.compute_position_ids(batch["input_ids"], batch["attention_mask"], batch["images"])
        ids = torch.cat([batch["input_ids"], prefill.logits[:, -1:].argmax(-1)], 1)
        mask = torch.cat([batch["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1)
        inputs = model.prepare_inputs_for_generation(ids, next_sequence_length=1, cache=prefill.cache,
                                                     attention_mask=mask, images=batch["images"],
                                                     position_ids=positions[:, -1:] + 1, use_cache=True)
        assert "images" not in inputs
        eager = model(**{**inputs, "cache": copy.deepcopy(prefill.cache)}).logits
        torch._dynamo.reset()
        traced = torch.compile(model, fullgraph=True, backend="eager")(**inputs).logits
    torch.testing.assert_close(traced, eager)
