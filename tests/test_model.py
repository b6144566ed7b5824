"""MovaForCausalLM: cached generation vs full forward, save/load, text-only parity, training plumbing."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from mova import MovaForCausalLM, MovaProcessor
from mova.model.builder import build_model
from tests.conftest import random_image, tiny_model_config

SCHEMES = ["full", "share_by_row", "share_by_col", "share_all"]
PROMPTS = ["USER: <image>\nWhat is in the picture? ASSISTANT:", "USER: <image> and <image> compare? ASSISTANT:"]


def _build(**kw):
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(**kw), load_weights=False)
    return model.eval(), processor


def _batch(processor):
    imgs = [[random_image(0)], [random_image(1, (40, 300)), random_image(2, (500, 70))]]
    return processor(PROMPTS, imgs, padding_side="left")


def _naive_positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _max_step_diff(model, batch, gen, position_fn):
    """Largest |logit difference| between generate()'s step logits and a full forward per step."""
    prompt_len = batch["input_ids"].shape[1]
    worst = 0.0
    for t, step_logits in enumerate(gen.logits):
        seq = gen.sequences[:, : prompt_len + t]
        mask = torch.cat([batch["attention_mask"], torch.ones(seq.shape[0], t, dtype=torch.long)], dim=1)
        pos = position_fn(seq, mask)
        with torch.no_grad():
            full = model(input_ids=seq, attention_mask=mask, position_ids=pos, images=batch["images"]).logits[:, -1]
        worst = max(worst, (full - step_logits).abs().max().item())
    return worst


@pytest.mark.parametrize("fusion,scheme", [("mlp", s) for s in SCHEMES] + [("qformer", "share_by_row")])
def test_cached_generation_matches_full_forward(fusion, scheme):
    model, processor = _build(fusion=fusion, sam_scheme=scheme,
                              overrides=[f"experts.0.position_scheme={scheme}", f"fusion.position_scheme={scheme}"])
    batch = _batch(processor)
    with torch.no_grad():
        gen = model.generate(**batch, max_new_tokens=5, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=processor.tokenizer.pad_token_id)
    right = _max_step_diff(model, batch, gen, lambda s, m: model.compute_position_ids(s, m, batch["images"]))
    assert right < 1e-4, f"generate() disagrees with a full forward by {right:.2e}"
    if scheme != "full":
        # The same check with the positions an uncompressed LLM would use must fail.
        wrong = _max_step_diff(model, batch, gen, lambda s, m: _naive_positions(m))
        assert wrong > 1e-3, f"wrong position ids went unnoticed (diff {wrong:.2e})"


def test_position_ids_continue_after_image():
    model, processor = _build(sam_scheme="share_by_row")
    batch = processor(["<image> ok", "a b <image> ok"], [random_image(0), random_image(1)], padding_side="left")
    pos = model.compute_position_ids(batch["input_ids"], batch["attention_mask"], batch["images"])
    layout = model.layout
    used = layout.num_positions()  # clip 64 + sam 8 rows + layoutlmv3 16 + timm 16
    assert used == 64 + 8 + 16 + 16
    n_tok = layout.num_tokens()
    ids0 = batch["input_ids"][0]
    first_img = int((ids0 == model.config.image_token_id).nonzero()[0])
    start = int(pos[0, first_img])
    # BOS then the image: the image starts at id 1, and the first text token after it at 1 + used.
    assert start == 1
    assert int(pos[0, first_img + n_tok]) == 1 + used
    text = ((batch["input_ids"] != model.config.image_token_id) & (batch["attention_mask"] == 1)).sum(-1)
    # Every row ends at (text tokens - 1) + the image's positions, whatever the padding.
    assert pos[:, -1].tolist() == (text - 1 + used).tolist()


def test_text_only_behaves_like_wrapped_llm():
    model, processor = _build()
    batch = processor(["hello there", "a longer text prompt here"], padding_side="left")
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = model.language_model(**batch).logits
        gen_ours = model.generate(**batch, max_new_tokens=4, do_sample=False)
        gen_theirs = model.language_model.generate(**batch, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert torch.equal(gen_ours, gen_theirs)


@pytest.mark.parametrize("fusion", ["mlp", "qformer"])
def test_save_and_load_give_identical_logits(tmp_path, fusion):
    model, processor = _build(fusion=fusion)
    batch = _batch(processor)
    with torch.no_grad():
        ref = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = MovaForCausalLM.from_pretrained(tmp_path).eval()
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(auto, MovaForCausalLM)
    batch2 = _batch(MovaProcessor.from_pretrained(tmp_path))
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch2).logits, ref, rtol=0, atol=0)
        torch.testing.assert_close(auto(**batch2).logits, ref, rtol=0, atol=0)


def test_experts_frozen_fusion_trainable_and_labels_mask_images():
    model, processor = _build()
    model.train()
    assert all(not p.requires_grad for p in model.experts.parameters())
    assert all(not e.training for e in model.experts.values())
    assert all(p.requires_grad for p in model.fusion.parameters())
    batch = _batch(processor)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    out = model(**batch, labels=labels)
    out.loss.backward()
    assert all(p.grad is None for p in model.experts.parameters())
    assert model.fusion.projectors["clip"][0].weight.grad.abs().sum() > 0
    # Image-token labels are ignored: the loss equals one computed with them masked by hand.
    manual = labels.masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch, labels=manual).loss, out.loss)


def test_gradient_checkpointing_gives_same_gradients():
    model, processor = _build()
    batch = _batch(processor)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)

    def grads():
        model.zero_grad()
        model(**batch, labels=labels).loss.backward()
        return model.fusion.projectors["sam"][2].weight.grad.clone()

    model.train()
    plain = grads()
    model.activation_checkpointing_enable()
    assert model.language_model.is_activation_checkpointing
    torch.testing.assert_close(grads(), plain, rtol=1e-5, atol=1e-6)


def test_bf16_and_eager_attention():
    torch.manual_seed(0)
    model, processor = build_model(tiny_model_config(overrides=["dtype=bfloat16", "attn_implementation=eager"]),
                                   load_weights=False)
    assert model.language_model.config._attn_implementation == "eager"
    batch = _batch(processor)
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.dtype == torch.bfloat16
    assert torch.isfinite(out.logits.float()).all()


def _word_image(word: str):
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (320, 120), "white")
    ImageDraw.Draw(img).text((20, 30), word, fill="black", font=ImageFont.load_default(size=56))
    return img


def test_ocr_words_become_llm_embedded_tokens_and_generation_stays_exact():
    model, processor = _build(ocr=True)
    imgs = [_word_image("HELLO"), random_image(1)]  # the second image has no text: an empty OCR block
    batch = processor(["<image> read it", "<image> and this one please"], imgs)
    ids = batch["images"]["ocr_text.input_ids"]
    read = processor.tokenizer.decode(ids[0][ids[0] >= 0])
    assert "HELLO" in read.upper()
    assert (ids[1] >= 0).sum() == 0
    n = processor.layout.num_tokens
    assert (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist() == [n(((ids[0] >= 0).sum(),)), n((0,))]
    # Untrained box embeddings are zero: OCR tokens are exactly the LLM's own embeddings of the words.
    with torch.no_grad():
        visual = model.encode_images(batch["images"])
        ocr_part = visual.embeds[visual.lengths[0] - int((ids[0] >= 0).sum()): visual.lengths[0]]
        torch.testing.assert_close(ocr_part, model.get_input_embeddings()(ids[0][ids[0] >= 0]))
        gen = model.generate(**batch, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=processor.tokenizer.pad_token_id)
    diff = _max_step_diff(model, batch, gen, lambda s, m: model.compute_position_ids(s, m, batch["images"]))
    assert diff < 1e-4
